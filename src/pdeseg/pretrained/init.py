"""Start a training run from trained weights (``train.init``, ``pdeseg train --init``): a
shipped model's name or a checkpoint. The run's network must be the one the weights were
trained for (same registered model and constructor kwargs) and its task spec must read and
mean the same (channels, normalisation, classes, output head, instance representation);
anything else is refused with the field and both values named, never loaded half-way.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pdeseg.config import TaskSpec
from pdeseg.errors import ConfigError

log = logging.getLogger(__name__)

#: Task-spec fields that decide what the weights compute; they must be equal to fine-tune.
#: (The data format, window size and sampling may differ: a nuclei model fine-tunes on a
#: folder of the user's own images.)
SPEC_FIELDS = ("modalities", "normalization", "ct_window", "ct_stats", "spatial_dims", "context_slices", "instance_targets",
               "boundary_width", "maps", "num_classes", "output", "regions", "target_spacing")


def init_checkpoint(init: str) -> tuple[Path, dict[str, Any]]:
    """``(path, loaded checkpoint)`` of a ``train.init`` value.

    Raises:
        ConfigError, CheckpointError: unknown name, weights not installed, unreadable file.
    """
    from pdeseg.checkpoint import load_checkpoint
    from pdeseg.pretrained import resolve

    path = resolve(init)
    return path, load_checkpoint(path)


def check_compatible(ckpt: dict[str, Any], where: str | Path, spec: TaskSpec, model_name: str,
                     kwargs: dict[str, Any]) -> None:
    """Refuse weights that are not this run's network or task.

    Raises:
        ConfigError: the model, a constructor kwarg or a task-spec field differs (named, with both values).
    """
    from pdeseg.checkpoint import preprocessing_spec

    theirs = ckpt["model"]
    if theirs["name"] != model_name:
        raise ConfigError(f"train.init {where}: its weights are a {theirs['name']!r} network, the config trains "
                          f"{model_name!r}; use models: [{{name: {theirs['name']}, kwargs: {theirs['kwargs']}}}]")
    stored = preprocessing_spec(ckpt, where)
    for field in SPEC_FIELDS:
        a, b = _plain(getattr(stored, field)), _plain(getattr(spec, field))
        if a != b:
            raise ConfigError(f"train.init {where}: its task spec has {field} = {a!r}, this config gives {b!r}; "
                              "fine-tuning keeps the model's task spec (set the config's data section to match, or "
                              "train from scratch)")
    keys = sorted(set(theirs["kwargs"]) | set(kwargs))
    differs = [k for k in keys if _plain(theirs["kwargs"].get(k)) != _plain(kwargs.get(k))]
    if differs:
        k = differs[0]
        raise ConfigError(f"train.init {where}: model kwarg {k} is {theirs['kwargs'].get(k)!r} in the weights but "
                          f"{kwargs.get(k)!r} in this config; the network must be the same to start from them")
    if list(stored.class_names) != list(spec.class_names):
        log.info("train.init %s: classes %s of the weights are called %s in these data", where, stored.class_names,
                 spec.class_names)


def load_init(model, init: str, spec: TaskSpec, model_name: str, kwargs: dict[str, Any]) -> Path:
    """Load ``init``'s weights into ``model`` after :func:`check_compatible`; returns its path."""
    from pdeseg.errors import CheckpointError

    path, ckpt = init_checkpoint(init)
    check_compatible(ckpt, path, spec, model_name, kwargs)
    target = getattr(model, "module", model)
    target = getattr(target, "_orig_mod", target)
    try:
        target.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"train.init {path}: weights do not fit {model_name} ({str(exc).splitlines()[0]})") from None
    log.info("starting from the weights of %s (%s, epoch %s)", init, path, (ckpt.get("training") or {}).get("epoch"))
    return path


def _plain(value: Any) -> Any:
    """Lists and tuples compared alike."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
