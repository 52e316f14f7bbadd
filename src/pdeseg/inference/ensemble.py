"""Several checkpoints used as one model: which files an ensemble is made of
(:func:`ensemble_members`), the model that averages their class probabilities
(:class:`EnsembleModel`), and the checkpoint fields that must agree or be checked.
:meth:`pdeseg.inference.predict.Predictor.from_checkpoints` builds ensembles from these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from pdeseg.config import ExperimentConfig
from pdeseg.errors import CheckpointError
from pdeseg.nn.output import OutputHead, mean_output


def ensemble_members(checkpoints: Sequence[str | Path] | str | Path) -> list[Path]:
    """The checkpoint files named: files as given, a folder as every ``best.pt`` below it
    (sorted).

    Raises:
        CheckpointError: nothing named, or a folder holding no ``best.pt``.
    """
    items = [checkpoints] if isinstance(checkpoints, (str, Path)) else list(checkpoints)
    paths: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(path.rglob("best.pt"))
            if not found:
                raise CheckpointError(f"{path}: a folder given as a checkpoint must hold best.pt files (e.g. the fold*/ "
                                      "runs of pdeseg train --folds), found none")
            paths += found
        else:
            paths.append(path)
    if not paths:
        raise CheckpointError("no checkpoint given")
    return paths


def object_diameter(ckpt: dict, path) -> float | None:
    """The training object size a checkpoint states (``object_diameter``, px), or None.

    Raises:
        CheckpointError: a value that is not a size > 0.
    """
    value = ckpt.get("object_diameter")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise CheckpointError(f"{path}: object_diameter must be a size in pixels > 0, got {value!r}")
    return float(value)


def postprocess_rules(config: ExperimentConfig | None) -> dict:
    """The post-processing rules a checkpoint's config turns on (unset rules left out)."""
    rules = config.postprocess.model_dump() if config is not None else {}
    return {k: v for k, v in rules.items() if v is not None}


class EnsembleModel(nn.Module):
    """Several trained models of one preprocessing spec used as one: the logits of the mean of
    their class probabilities (softmax, or sigmoid for a one-channel head), as test-time
    augmentation averages its passes (see the module docstring), so stitching, mirroring and
    argmax work unchanged.

    Shapes:
        ``x (B, C, *S)`` -> logits ``(B, K, *S)``.
    """

    def __init__(self, members: Sequence[nn.Module], head: OutputHead):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one model")
        self.members = nn.ModuleList(members)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mean_output([(member(x).float(), ()) for member in self.members], self.head)


