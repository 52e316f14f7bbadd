"""Self-describing checkpoints, written atomically and loadable with ``weights_only=True``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts::

    format, format_version, pdeseg_version
    model:         {"name": registry name, "kwargs": constructor kwargs}
    state_dict:    model weights (contiguous fp32 tensors)
    preprocessing: {"modalities", "normalization", "spatial_size", "resize", "divisor", "num_classes"}
    config:        the resolved experiment config
    training:      {"epoch", "global_step", "best_score", "best_epoch", "history"}
    optimizer, scheduler, rng   (only in ``last.pt``, for resuming)

Loading needs only :mod:`pdeseg.registry` and the network modules, never the trainer.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pdeseg import __version__
from pdeseg.registry import build_model

FORMAT = "pdeseg-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file is not a readable pdeseg checkpoint; the message names it."""


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Model weights as contiguous CPU tensors (unwraps DDP / compiled modules)."""
    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write ``payload`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "pdeseg_version": __version__, **payload}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` and check its format.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: unreadable, or not a pdeseg checkpoint of a known version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a pdeseg checkpoint")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {ckpt['format_version']} is newer than this pdeseg understands")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any] | str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model a checkpoint describes, load its weights, return it in eval mode."""
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt, map_location)
    model = build_model(ckpt["model"]["name"], **ckpt["model"]["kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
