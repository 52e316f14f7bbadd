"""Standard finite-difference stencils on ``(B, C, *spatial)`` tensors, 2D and 3D.

Conventions shared by the PDE layers (:mod:`pdeseg.nn.pde.layer`) and the PDE losses
(:mod:`pdeseg.losses.pde`):

* axis ``i`` is spatial axis ``i`` of the tensor (``(D, H, W)`` in 3D, ``(H, W)`` in 2D),
  with grid spacing ``h_i`` (``spacing[i]``, physical units such as mm);
* the boundary is **replicate** (zero flux, a Neumann condition): the value beyond the
  edge equals the edge value, so a constant field has zero derivatives everywhere and
  diffusion conserves nothing leaking out of the domain;
* second differences are the 3-point ``(u[x+e_i] - 2 u[x] + u[x-e_i]) / h_i**2``
  (second order); gradients for energies are forward differences
  ``(u[x+e_i] - u[x]) / h_i`` (zero at the far edge, as replicate padding gives).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def check_spacing(spacing: Sequence[float] | None, spatial_dims: int) -> tuple[float, ...]:
    """``spacing`` as a tuple of ``spatial_dims`` positive floats (``None`` -> all 1).

    Raises:
        ValueError: wrong length or a non-positive entry.
    """
    if spacing is None:
        return (1.0,) * spatial_dims
    out = tuple(float(s) for s in spacing)
    if len(out) != spatial_dims or any(not s > 0 for s in out):
        raise ValueError(f"spacing must be {spatial_dims} positive numbers (one per spatial axis), got {list(spacing)}")
    return out


def replicate_pad(u: torch.Tensor, width: int) -> torch.Tensor:
    """Pad every spatial axis of ``(B, C, *spatial)`` by ``width`` with edge values."""
    dims = u.dim() - 2
    return F.pad(u, (width,) * (2 * dims), mode="replicate") if width else u


def neighbour_sums(u: torch.Tensor) -> list[torch.Tensor]:
    """Per spatial axis ``i``: ``u[x + e_i] + u[x - e_i]`` with a replicate boundary.

    Built from shifted views joined with the edge plane (no padded copy of the whole
    tensor per axis), which keeps the backward pass light.

    Shapes:
        ``(B, C, *S)`` -> list of ``len(S)`` tensors ``(B, C, *S)``.
    """
    out = []
    for dim in range(2, u.dim()):
        n = u.shape[dim]
        if n == 1:
            out.append(2 * u)
            continue
        plus = torch.cat([u.narrow(dim, 1, n - 1), u.narrow(dim, n - 1, 1)], dim)
        minus = torch.cat([u.narrow(dim, 0, 1), u.narrow(dim, 0, n - 1)], dim)
        out.append(plus + minus)
    return out


def second_differences(u: torch.Tensor, spacing: Sequence[float] | None = None) -> list[torch.Tensor]:
    """Per axis ``i``: ``(u[x+e_i] - 2 u[x] + u[x-e_i]) / h_i**2`` (replicate boundary).

    Shapes:
        ``(B, C, *S)`` -> list of ``len(S)`` tensors ``(B, C, *S)``.
    """
    h = check_spacing(spacing, u.dim() - 2)
    return [(s - 2 * u) / hi**2 for s, hi in zip(neighbour_sums(u), h)]


def laplacian(u: torch.Tensor, spacing: Sequence[float] | None = None) -> torch.Tensor:
    """The 5-point (2D) or 7-point (3D) Laplacian ``sum_i d_ii u`` with a replicate boundary.

    Shapes:
        ``(B, C, *S)`` -> ``(B, C, *S)``.
    """
    return torch.stack(second_differences(u, spacing)).sum(0)


def forward_gradient(u: torch.Tensor, spacing: Sequence[float] | None = None) -> list[torch.Tensor]:
    """Per axis ``i``: ``(u[x+e_i] - u[x]) / h_i``, zero on the last plane (replicate).

    Shapes:
        ``(B, C, *S)`` -> list of ``len(S)`` tensors ``(B, C, *S)``.
    """
    dims = u.dim() - 2
    h = check_spacing(spacing, dims)
    out = []
    for axis in range(dims):
        d = torch.diff(u, dim=2 + axis) / h[axis]
        pad = [0, 0] * dims
        pad[2 * (dims - 1 - axis) + 1] = 1  # one zero plane at the far end of this axis
        out.append(F.pad(d, pad))
    return out
