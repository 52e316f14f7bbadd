"""Pad-and-crop for networks that downsample: they accept any spatial size.

An encoder with ``k`` 2x downsamplings needs every spatial size divisible by ``2**k``.
Instead of asking callers to pad, a network pads its input with zeros up to that
multiple, runs, and crops its logits back to the input's size. The padding is split as
evenly as possible before and after each spatial dim (the extra voxel of an odd amount
goes after), so the image stays centred. Already divisible inputs pass through
untouched (no copy), so results at those sizes are bit-identical to a network without
this path.

Pads are recorded as one ``(before, after)`` pair per spatial dim, in the tensor's order
(``(H, W)`` for 2D, ``(D, H, W)`` for 3D).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

Pads = tuple[tuple[int, int], ...]

_AXIS_NAMES = ("D", "H", "W")


def _multiples(multiple: int | Sequence[int], n_spatial: int) -> tuple[int, ...]:
    """One positive multiple per spatial dim, from an int or a per-dim sequence."""
    values = (multiple,) * n_spatial if isinstance(multiple, int) else tuple(multiple)
    if len(values) != n_spatial or any(not isinstance(m, int) or m < 1 for m in values):
        raise ValueError(
            f"multiple must be a positive int or {n_spatial} positive ints (one per spatial dim), got {multiple!r}"
        )
    return values


def pad_to_multiple(x: torch.Tensor, multiple: int | Sequence[int]) -> tuple[torch.Tensor, Pads]:
    """Zero-pad every spatial dim of ``x`` up to a multiple of ``multiple``.

    Args:
        x: ``(B, C, *spatial)``, e.g. ``(B, C, H, W)`` or ``(B, C, D, H, W)``.
        multiple: one int for all spatial dims, or one per spatial dim.

    Returns:
        ``(x_padded, pads)``: ``x_padded`` is ``(B, C, *padded)`` with each padded size the
        smallest multiple ``>=`` the input size; ``pads`` holds ``(before, after)`` per
        spatial dim, ``before = total // 2``. When nothing needs padding ``x_padded is x``.

    Raises:
        ValueError: for fewer than 3 dims or a multiple that is not a positive int.
    """
    if x.dim() < 3:
        raise ValueError(f"pad_to_multiple expects (B, C, *spatial), got shape {tuple(x.shape)}")
    spatial = x.shape[2:]
    pads = tuple(_split((-size) % m) for size, m in zip(spatial, _multiples(multiple, len(spatial))))
    if not any(before or after for before, after in pads):
        return x, pads
    # F.pad takes (before, after) pairs starting from the last dim
    flat = [v for pair in reversed(pads) for v in pair]
    return F.pad(x, flat), pads


def _split(total: int) -> tuple[int, int]:
    """``total`` voxels of padding as ``(before, after)``, the odd one after."""
    return total // 2, total - total // 2


def crop_to(x: torch.Tensor, pads: Pads) -> torch.Tensor:
    """Undo :func:`pad_to_multiple`: remove ``pads`` from the spatial dims of ``x``.

    Args:
        x: ``(B, K, *padded)``, e.g. a network's logits on the padded input (the channel
            count may differ from the input's).
        pads: the ``(before, after)`` pairs :func:`pad_to_multiple` returned.

    Returns:
        ``(B, K, *spatial)``, a view of ``x``; ``x`` itself when all pads are zero.

    Raises:
        ValueError: if ``pads`` does not have one pair per spatial dim of ``x`` or asks to
            remove more than a dim holds.
    """
    spatial = x.shape[2:]
    if x.dim() < 3 or len(pads) != len(spatial):
        raise ValueError(f"crop_to got {len(pads)} (before, after) pairs for a tensor of shape {tuple(x.shape)}")
    if any(before < 0 or after < 0 or before + after >= size for (before, after), size in zip(pads, spatial)):
        raise ValueError(f"cannot crop {tuple(pads)} from spatial size {tuple(spatial)}")
    if not any(before or after for before, after in pads):
        return x
    return x[(..., *(slice(before, size - after) for (before, after), size in zip(pads, spatial)))]


def check_input(x: torch.Tensor, spatial_dims: int, channels: int, model: str) -> None:
    """Raise unless ``x`` is ``(B, channels, *spatial)`` with ``spatial_dims`` spatial dims.

    Args:
        x: the network's input.
        spatial_dims: the number of spatial dims the network was built for.
        channels: the number of input channels it was built for.
        model: the network's name, for the message.

    Raises:
        ValueError: naming the expected layout, e.g. ``(B, 4, H, W)``, and the shape given.
    """
    if x.dim() == spatial_dims + 2 and x.shape[1] == channels:
        return
    axes = _AXIS_NAMES[-spatial_dims:] if spatial_dims <= len(_AXIS_NAMES) else [f"S{i}" for i in range(spatial_dims)]
    expected = f"(B, {channels}, {', '.join(axes)})"
    raise ValueError(
        f"{model} (spatial_dims={spatial_dims}, in_channels={channels}) expects input {expected} of any spatial "
        f"size, got shape {tuple(x.shape)}"
    )
