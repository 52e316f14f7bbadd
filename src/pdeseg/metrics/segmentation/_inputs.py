"""Input checks shared by the segmentation metrics (private to this package).

Label maps arrive as numpy arrays or torch tensors; these helpers turn them into numpy, refuse float or
mismatched inputs with a message that says what to pass instead, and validate the arguments a data format
supplies: the number of classes, region mappings, class names and the voxel spacing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

try:  # torch is a hard dependency of the package, but keep the numpy core importable alone
    import torch
except ImportError:  # pragma: no cover
    torch = None  # type: ignore[assignment]


def is_tensor(x: Any) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


def to_numpy(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as a numpy array (torch tensors are detached and moved to the CPU)."""
    if is_tensor(x):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}") from exc


def check_label_dtype(x: Any, name: str) -> None:
    if is_tensor(x):
        ok = x.dtype == torch.bool or not (x.dtype.is_floating_point or x.dtype.is_complex)
        dtype = str(x.dtype)
    else:
        ok = x.dtype == np.bool_ or np.issubdtype(x.dtype, np.integer)
        dtype = str(x.dtype)
    if not ok:
        raise ValueError(
            f"{name} must hold integer class labels, got dtype {dtype}. Take argmax over the "
            "channel dimension of logits/probabilities, or cast label volumes read as float "
            "(e.g. nibabel get_fdata()) with np.rint(x).astype(np.int64)."
        )


def check_pair(pred: Any, target: Any) -> None:
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(
            f"pred and target must have the same shape, got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}. Pass label maps (argmax over the channel dimension), "
            "not one-hot or probability tensors."
        )


def check_num_classes(num_classes: Any) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def check_range(lo: int, hi: int, name: str, num_classes: int) -> None:
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"{name} has labels in [{lo}, {hi}] but num_classes={num_classes} allows only "
            f"[0, {num_classes - 1}]. Map raw dataset labels to contiguous classes first "
            "(BraTS: 4 -> 3), or raise num_classes."
        )


def label_range(x: np.ndarray) -> tuple[int, int]:
    """(min, max) of a non-empty integer/bool numpy array."""
    if x.dtype == np.bool_:
        return 0, int(x.any())
    lo = int(x.min()) if np.issubdtype(x.dtype, np.signedinteger) else 0
    return lo, int(x.max())


def check_regions(regions: Mapping[str, Sequence[int]] | None, num_classes: int | None) -> dict[str, tuple[int, ...]]:
    """Validate a region mapping and return it as ``{name: tuple(classes)}``."""
    if regions is None:
        return {}
    if not isinstance(regions, Mapping):
        raise ValueError(f"regions must be a mapping name -> class ids (e.g. {{'WT': (1, 2, 3)}}), got {type(regions).__name__}")
    out: dict[str, tuple[int, ...]] = {}
    for name, classes in regions.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"region names must be non-empty strings, got {name!r}")
        if isinstance(classes, (int, np.integer)):
            classes = (classes,)
        try:
            cls = tuple(int(c) for c in classes)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"region {name!r} must be a sequence of class ids, got {classes!r}") from exc
        if not cls:
            raise ValueError(f"region {name!r} has no classes")
        if min(cls) < 0:
            raise ValueError(f"region {name!r} has negative class ids {cls}")
        if num_classes is not None:
            bad = [c for c in cls if c < 0 or c >= num_classes]
            if bad:
                raise ValueError(
                    f"region {name!r} uses classes {bad} outside [0, {num_classes - 1}] "
                    f"(num_classes={num_classes}). Pass regions=None for tasks without BraTS regions."
                )
        out[name] = cls
    return out


def check_spacing(spacing: Any, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        raise ValueError(
            "spacing is required for HD95 (distances are reported in mm). Pass the voxel size, "
            "e.g. the NIfTI header's pixdim / nibabel img.header.get_zooms(), or 1.0 to report "
            "distances in voxels."
        )
    if is_tensor(spacing):
        spacing = spacing.detach().cpu().numpy()
    sp = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if sp.ndim != 1:
        raise ValueError(f"spacing must be a number or a 1-D sequence, got shape {sp.shape}")
    if sp.size == 1:
        sp = np.repeat(sp, ndim)
    if sp.size != ndim:
        raise ValueError(f"spacing has {sp.size} entries but the masks have {ndim} dimensions")
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing must be positive and finite, got {tuple(sp.tolist())}")
    return tuple(float(s) for s in sp)


def resolve_class_names(num_classes: int, class_names: Sequence[str] | None) -> tuple[str, ...]:
    if class_names is None:
        return tuple(f"class{i}" for i in range(num_classes))
    names = tuple(str(n) for n in class_names)
    if len(names) != num_classes:
        raise ValueError(f"class_names has {len(names)} entries but num_classes={num_classes}")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be unique, got {names}")
    return names
