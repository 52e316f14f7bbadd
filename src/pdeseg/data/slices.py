"""2D slice datasets over cached cases, and the spatial fitting shared with inference."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from pdeseg.data.cache import CachedCase

log = logging.getLogger(__name__)


def select_slices(case: CachedCase, selection: str, slice_range: Sequence[int] | None = None) -> list[int]:
    """Slice indices (along the last, axial, axis) of one case.

    ``middle``: the volume's middle axial slice, one per case (paper 000's protocol);
    ``tumour_middle``: the centre of the tumour's axial extent (the volume's middle when
    the case has no tumour); ``range``: the inclusive
    ``[first, last]``, clipped to the volume; ``brain``: slices with brain voxels;
    ``tumour``: slices with any tumour label; ``all``: every slice.
    """
    n = case.num_slices
    if selection == "middle":
        return [n // 2]
    if selection == "tumour_middle":
        tumour = case.slices("tumour")
        return [tumour[len(tumour) // 2] if tumour else n // 2]
    if selection == "range":
        if slice_range is None:
            raise ValueError("slice selection 'range' needs slice_range=[first, last]")
        first, last = max(0, int(slice_range[0])), min(n - 1, int(slice_range[1]))
        return list(range(first, last + 1))
    if selection == "brain":
        return case.slices("brain")
    if selection == "tumour":
        if not case.meta["has_label"]:
            raise ValueError(f"case {case.case_id} has no label, so 'tumour' slices cannot be selected")
        return case.slices("tumour")
    if selection == "all":
        return list(range(n))
    raise ValueError(f"unknown slice selection {selection!r}")


def center_crop_or_pad(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Centre-crop or zero-pad the last two dims of ``x`` to ``size`` ``(H, W)``."""
    for dim, target in zip((-2, -1), size):
        cur = x.shape[dim]
        if cur > target:
            start = (cur - target) // 2
            x = x.narrow(dim, start, target)
        elif cur < target:
            before = (target - cur) // 2
            pad = [0, 0, 0, 0]
            pad[(0 if dim == -1 else 2)] = before
            pad[(1 if dim == -1 else 3)] = target - cur - before
            x = F.pad(x, pad)
    return x


def pad_to_multiple(x: torch.Tensor, divisor: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Zero-pad the last two dims up to multiples of ``divisor``.

    Returns the padded tensor and ``(top, bottom, left, right)`` to undo it with :func:`unpad`.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    pads = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
    if ph or pw:
        x = F.pad(x, (pads[2], pads[3], pads[0], pads[1]))
    return x, pads


def unpad(x: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    top, bottom, left, right = pads
    h, w = x.shape[-2:]
    return x[..., top : h - bottom, left : w - right]


def fit_slice(
    image: torch.Tensor,
    label: torch.Tensor | None,
    spatial_size: Sequence[int] | None,
    resize: bool,
    divisor: int = 16,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Bring a slice to the training size: crop/pad or resize to ``spatial_size``, then pad
    to a multiple of ``divisor``.

    Args:
        image: ``(C, H, W)`` float.
        label: ``(H, W)`` integer or None.

    Returns:
        ``(image (C, H', W'), label (H', W') or None)``.
    """
    if spatial_size is not None:
        if resize:
            image = F.interpolate(image[None], size=tuple(spatial_size), mode="bilinear", align_corners=False)[0]
            if label is not None:
                label = F.interpolate(label[None, None].float(), size=tuple(spatial_size), mode="nearest")[0, 0].to(label.dtype)
        else:
            image = center_crop_or_pad(image, spatial_size)
            label = center_crop_or_pad(label, spatial_size) if label is not None else None
    image, _ = pad_to_multiple(image, divisor)
    if label is not None:
        label, _ = pad_to_multiple(label, divisor)
    return image, label


def _plain(x) -> torch.Tensor:
    """A plain ``torch.Tensor`` (MONAI transforms return ``MetaTensor``)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


class SliceDataset(Dataset):
    """Axial slices of cached cases.

    Each item is ``{"image": (C, H, W) float32, "label": (H, W) int64, "case": str, "z": int}``.

    Args:
        cases: cached cases (labelled).
        selection, slice_range: see :func:`select_slices`.
        spatial_size, resize: see :func:`fit_slice`.
        transform: optional dictionary transform (augmentation) applied after fitting.
    """

    def __init__(
        self,
        cases: list[CachedCase],
        selection: str = "tumour",
        slice_range: Sequence[int] | None = None,
        spatial_size: Sequence[int] | None = None,
        resize: bool = False,
        transform: Callable | None = None,
        divisor: int = 16,
    ):
        if not cases:
            raise ValueError("SliceDataset: no cases given (empty split?)")
        sizes = {tuple(c.meta["shape"][:2]) for c in cases}
        if spatial_size is None and len(sizes) > 1:
            raise ValueError(
                f"cases have different slice sizes {sorted(sizes)} (e.g. BraTS 2020 and 2023 grids mixed); "
                "set data.spatial_size: [H, W] so that slices can be batched"
            )
        self.cases = cases
        self.spatial_size, self.resize, self.transform, self.divisor = spatial_size, resize, transform, divisor
        self.items = [(i, z) for i, c in enumerate(cases) for z in select_slices(c, selection, slice_range)]
        if not self.items:
            raise ValueError(f"SliceDataset: selection {selection!r} gives no slices for cases {[c.case_id for c in cases]}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        ci, z = self.items[index]
        case = self.cases[ci]
        image = torch.from_numpy(np.asarray(case.image[z], dtype=np.float32))
        label = torch.from_numpy(np.asarray(case.label[z], dtype=np.int64))
        image, label = fit_slice(image, label, self.spatial_size, self.resize, self.divisor)
        if self.transform is not None:
            out = self.transform({"image": image, "label": label[None]})
            # plain tensors: MONAI's MetaTensor would add Python overhead to every op of the model
            image = _plain(out["image"]).float()
            label = _plain(out["label"])[0].round().long()
        return {"image": image.contiguous(), "label": label.contiguous(), "case": case.case_id, "z": z}
