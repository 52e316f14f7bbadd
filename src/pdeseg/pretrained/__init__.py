"""Trained models shipped inside the package: ``pdeseg.load("nuclei")``, ``pdeseg predict --model
nuclei``, ``pdeseg train --init nuclei``, ``pdeseg models nuclei``.

Each shipped model is one folder of this package, named in :data:`PRETRAINED` (an explicit
table, as :mod:`pdeseg.nn.models` names networks: nothing is found by scanning folders and
nothing is downloaded)::

    pretrained/<name>/
        card.yaml     the model card: training data and licence, the command that recreates
                      the weights, held-out scores with their split, expected inputs, limits
        weights.pt    a pdeseg checkpoint (format 2), floating tensors in float16 where that
                      was measured exact enough (``card.weights.dtype``), loaded with
                      ``torch.load(weights_only=True)``; also carries ``object_diameter``
        split.json    the train / val / test case ids, so that ``pdeseg evaluate --checkpoint
                      .../weights.pt --split test --data DIR`` scores the card's held-out images

A card is always shipped; the weights only once they have been trained and measured
(``scripts/make_pretrained.py`` writes them and fills the card's measured fields). A model whose
weights are absent is listed as *not installed* and refused with a message that names the
command that trains it.

A model folder written elsewhere (``scripts/make_pretrained.py --out DIR``) is used by its path:
``pdeseg.load("DIR")``, ``pdeseg predict --checkpoint DIR/weights.pt``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pdeseg.errors import CheckpointError, ConfigError

ROOT = Path(__file__).resolve().parent
WEIGHTS = "weights.pt"
CARD = "card.yaml"
SPLIT = "split.json"

#: The fields every card has (``None`` where a measured value is not yet known).
CARD_FIELDS = ("name", "summary", "task", "training_data", "weights_licence", "recreate", "held_out", "inputs",
               "limits", "weights")


@dataclass(frozen=True)
class Pretrained:
    """One shipped model.

    Attributes:
        name: what users type (``--model``, ``pdeseg.load``).
        description: one line for listings.
        folder: its folder; relative paths are below this package.
    """

    name: str
    description: str
    folder: Path

    @property
    def path(self) -> Path:
        return ROOT / self.folder

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS

    @property
    def installed(self) -> bool:
        return self.weights.is_file()


#: The shipped models, by name (explicit; see the module docstring).
PRETRAINED: dict[str, Pretrained] = {
    "nuclei": Pretrained("nuclei", "2D nuclei instances (fluorescence, stained histology, brightfield); DSB 2018, flows",
                         Path("nuclei")),
    "hippocampus": Pretrained("hippocampus", "3D hippocampus, anterior and posterior (T2 MRI, 1 mm); MSD Task04",
                              Path("hippocampus")),
}


def names() -> list[str]:
    """Every shipped model's name (installed or not), in table order."""
    return list(PRETRAINED)


def installed_models() -> list[str]:
    """The shipped models whose weights are present."""
    return [name for name, entry in PRETRAINED.items() if entry.installed]


def entry(name: str) -> Pretrained:
    """The table entry of ``name``.

    Raises:
        ConfigError: not a shipped model (the message lists them).
    """
    if name not in PRETRAINED:
        raise ConfigError(f"unknown pretrained model {name!r}; shipped models: {', '.join(PRETRAINED)} "
                          "(pdeseg models lists them with their cards)")
    return PRETRAINED[name]


def read_card(where: str | Path) -> dict[str, Any]:
    """A model card: ``where`` is a shipped model's name, a model folder or a ``card.yaml``.

    Raises:
        ConfigError: unknown name; CheckpointError: no card, or not a valid card.
    """
    import yaml

    if isinstance(where, str) and where in PRETRAINED:
        path = PRETRAINED[where].path / CARD
    else:
        path = Path(where)
        path = path / CARD if path.is_dir() else path
    if not path.is_file():
        raise CheckpointError(f"no model card at {path}")
    try:
        card = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise CheckpointError(f"{path}: not readable as YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(card, dict):
        raise CheckpointError(f"{path}: a model card is a mapping of {', '.join(CARD_FIELDS)}")
    missing = [f for f in CARD_FIELDS if f not in card]
    if missing:
        raise CheckpointError(f"{path}: the model card lacks {', '.join(missing)}")
    return card


def is_model_folder(path: str | Path) -> bool:
    """A folder holding a model's ``weights.pt`` and ``card.yaml``."""
    path = Path(path)
    return path.is_dir() and (path / WEIGHTS).is_file() and (path / CARD).is_file()


def weights_of(name: str) -> Path:
    """The weights file of a shipped model.

    Raises:
        ConfigError: not a shipped model.
        CheckpointError: its weights are not installed (the message names the recreate command).
    """
    e = entry(name)
    if not e.installed:
        raise CheckpointError(not_installed_message(name))
    return e.weights


def not_installed_message(name: str) -> str:
    e = PRETRAINED[name]
    recreate = ""
    try:
        commands = read_card(name).get("recreate") or []
        recreate = f"; the card's recreate commands train them: {' && '.join(commands)}" if commands else ""
    except CheckpointError:
        pass
    return (f"the weights of pretrained model {name!r} are not installed in this pdeseg ({e.weights} is missing){recreate}; "
            "or give a trained checkpoint with --checkpoint")


def resolve(name_or_path: str | Path) -> Path:
    """The checkpoint file a user's ``name_or_path`` stands for: a shipped model's name (a bare
    name in :data:`PRETRAINED`: a local file or folder of the same name is written ``./nuclei``),
    a model folder (its ``weights.pt``), or a path, returned as given (checked by its loader).

    Raises:
        ConfigError, CheckpointError: see :func:`weights_of`.
    """
    if isinstance(name_or_path, str) and name_or_path in PRETRAINED:
        if Path(name_or_path).exists():
            import logging

            logging.getLogger(__name__).warning("%r is the shipped model of that name; for the local path write ./%s",
                                                name_or_path, name_or_path)
        return weights_of(name_or_path)
    path = Path(name_or_path).expanduser()
    if not path.exists() and isinstance(name_or_path, str) and "/" not in name_or_path and not path.suffix:
        raise CheckpointError(f"{name_or_path!r} is neither a checkpoint file nor a shipped model "
                              f"({', '.join(PRETRAINED)}; pdeseg models lists them)")
    return path / WEIGHTS if is_model_folder(path) else path


def card_summary(card: dict[str, Any]) -> str:
    """One line: task, inputs and the headline held-out scores (or that none is measured yet): the
    card's ``metric`` (with its spread over seeds), then the instance scores of a cell model
    (AP50, mask AP) or the per-class Dice of a class model; ``pdeseg models NAME`` shows them all."""
    held = card.get("held_out") or {}
    scores = {k: v for k, v in (held.get("scores") or {}).items() if isinstance(v, (int, float))}
    metric = held.get("metric") if held.get("metric") in scores else next(iter(scores), None)
    keys = [metric] + [k for k in ("ap50", "mask_ap") if k in scores and k != metric]
    if metric == "dice_mean":
        keys += [k for k in scores if k.startswith("dice_") and k not in ("dice_mean", "dice_background", "dice_fg")]
    shown = ", ".join(f"{k} {scores[k]:.3f}" for k in keys if k is not None)
    if shown and isinstance(held.get("spread"), (int, float)):
        shown = shown.replace(f"{metric} {scores[metric]:.3f}", f"{metric} {scores[metric]:.3f} +- {held['spread']:.3f}", 1)
    if shown and held.get("cases"):
        shown += f" ({held['cases']} {held.get('scored_on', 'held-out')} cases)"
    shown = shown or "not measured yet"
    inputs = card.get("inputs") or {}
    what = ", ".join(str(inputs[k]) for k in ("modality", "channels") if inputs.get(k))
    return f"{card.get('task', '?')}; {what}; held-out {shown}"


def card_text(card: dict[str, Any]) -> str:
    """A card as readable text (``pdeseg models NAME``): every field, nested ones indented."""
    lines = [f"# {card.get('name')}: {card.get('summary', '')}".rstrip(), ""]

    def show(value: Any, indent: int) -> None:
        pad = "  " * indent
        if isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, (dict, list)) and v:
                    lines.append(f"{pad}{k}:")
                    show(v, indent + 1)
                else:
                    lines.append(f"{pad}{k}: {'(not measured yet)' if v is None else v}")
        elif isinstance(value, list):
            for v in value:
                if isinstance(v, (dict, list)):
                    lines.append(f"{pad}-")
                    show(v, indent + 1)
                else:
                    lines.append(f"{pad}- {v}")
        else:
            lines.append(f"{pad}{value}")

    show({k: v for k, v in card.items() if k not in ("name", "summary")}, 0)
    return "\n".join(lines) + "\n"
