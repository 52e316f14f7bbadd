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

Networks whose coarsest feature map is normalised per sample (instance or group norm) break
when that map holds a single voxel: instance norm refuses it in training and returns zeros
otherwise. ``min_blocks=2`` pads one more multiple along the last dim when the padded input
would shrink to one voxel at the coarsest level. A network with deep supervision crops its
lower-resolution heads with :func:`crop_scaled`, which keeps exactly the head voxels that
overlap the unpadded input.
"""

from __future__ import annotations

import math
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


def pad_to_multiple(
    x: torch.Tensor, multiple: int | Sequence[int], min_blocks: int = 1
) -> tuple[torch.Tensor, Pads]:
    """Zero-pad every spatial dim of ``x`` up to a multiple of ``multiple``.

    Args:
        x: ``(B, C, *spatial)``, e.g. ``(B, C, H, W)`` or ``(B, C, D, H, W)``.
        multiple: one int for all spatial dims, or one per spatial dim.
        min_blocks: the padded volume holds at least this many ``multiple``-sized blocks
            (i.e. the network's coarsest feature map at least this many voxels); when it
            would hold fewer, the last spatial dim gets more multiples. 1 (the default)
            never adds anything beyond the next multiple.

    Returns:
        ``(x_padded, pads)``: ``x_padded`` is ``(B, C, *padded)`` with each padded size the
        smallest multiple ``>=`` the input size; ``pads`` holds ``(before, after)`` per
        spatial dim, ``before = total // 2``. When nothing needs padding ``x_padded is x``.

    Raises:
        ValueError: for fewer than 3 dims, a multiple that is not a positive int, or
            ``min_blocks < 1``.
    """
    if x.dim() < 3:
        raise ValueError(f"pad_to_multiple expects (B, C, *spatial), got shape {tuple(x.shape)}")
    if not isinstance(min_blocks, int) or min_blocks < 1:
        raise ValueError(f"min_blocks must be a positive int, got {min_blocks!r}")
    spatial = x.shape[2:]
    multiples = _multiples(multiple, len(spatial))
    blocks = [-(-size // m) for size, m in zip(spatial, multiples)]
    others = math.prod(blocks[:-1])
    blocks[-1] = max(blocks[-1], -(-min_blocks // others))
    pads = tuple(_split(b * m - size) for b, m, size in zip(blocks, multiples, spatial))
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


def crop_scaled(x: torch.Tensor, pads: Pads, factor: int | Sequence[int]) -> torch.Tensor:
    """Crop a lower-resolution output of a padded input to the part over the unpadded input.

    A network that ran on the padded input (``pads`` from :func:`pad_to_multiple`) and
    produced ``x`` at ``1/factor`` of that resolution (e.g. a deep-supervision head after
    ``k`` 2x downsamplings, ``factor = 2**k``) maps voxel ``j`` of ``x`` to padded voxels
    ``[j * factor, (j + 1) * factor)``. Per dim, with ``before`` and ``after`` the pads and
    ``n`` the unpadded size, this keeps ``ceil(n / factor)`` voxels from ``before // factor``
    on: the size a divisible input of size ``n`` gives, and the size
    :class:`~pdeseg.losses.composite.CompositeLoss` then downsamples the target to. Every
    kept voxel overlaps the input (the first may also cover some of the ``before`` pad; a
    last voxel that covers only a sliver of the input may be left out). The nearest target
    sample of kept voxel ``j`` lies in its footprint or at most one voxel of ``x`` before
    it; when the sizes are multiples (no padding) the correspondence is exact.

    Args:
        x: ``(B, K, *coarse)`` with ``coarse[d] * factor[d]`` the padded size of dim ``d``.
        pads: the ``(before, after)`` pairs :func:`pad_to_multiple` returned.
        factor: the downsampling factor, one int or one per spatial dim.

    Returns:
        ``(B, K, *ceil(n / factor))``, a view of ``x`` (``x`` itself when nothing is cut).

    Raises:
        ValueError: if ``pads`` does not have one pair per spatial dim of ``x``.
    """
    spatial = x.shape[2:]
    if x.dim() < 3 or len(pads) != len(spatial):
        raise ValueError(f"crop_scaled got {len(pads)} (before, after) pairs for a tensor of shape {tuple(x.shape)}")
    factors = _multiples(factor, len(spatial))
    slices = []
    for (before, after), size, f in zip(pads, spatial, factors):
        start = before // f
        keep = -(-(size * f - before - after) // f)
        slices.append(slice(start, start + keep))
    if all(s.start == 0 and s.stop == size for s, size in zip(slices, spatial)):
        return x
    return x[(..., *slices)]


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
