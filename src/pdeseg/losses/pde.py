"""PDE-based loss terms on predicted probabilities and on PDE-layer residuals.

* :class:`PDEConsistencyLoss` (paper 001's ``L_reg``, first part): the residual that
  :class:`~pdeseg.nn.pde3d_unet.PDE3DUNet` reports in training, i.e. how far the
  features are from satisfying each PDE layer's implicit step after its inner
  iterations (or, for a regulariser-only layer, from being a fixed point of the PDE).
  Models without PDE layers, and every model in eval mode, report none: the term is 0.
* :class:`TotalVariationLoss` (``L_reg``, second part): smoothed isotropic total
  variation of the foreground probabilities,

      TV_e(p) = sum_x ( sqrt(|grad p(x)|^2 + e^2) - e ) * prod_i h_i,

  with forward differences and a replicate boundary (:mod:`pdeseg.nn.pde.stencils`).
  For a smooth indicator of a disk of radius ``R`` it tends to the perimeter ``2 pi R``
  as the grid is refined and ``e -> 0`` (the coarea formula). As a loss it is divided by
  the number of voxels and classes (a mean), so its weight does not depend on the patch
  size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from pdeseg.nn.output import class_probabilities
from pdeseg.nn.pde.stencils import check_spacing, forward_gradient


def total_variation(p: torch.Tensor, spacing: Sequence[float] | None = None, eps: float = 0.0) -> torch.Tensor:
    """Smoothed isotropic TV integral of ``p`` per batch item and channel.

    Args:
        p: ``(B, C, *S)``.
        spacing: grid spacing per axis (default 1).
        eps: smoothing ``e >= 0``; ``sqrt(|g|^2 + e^2) - e`` is differentiable at 0 for ``e > 0``.

    Returns:
        ``(B, C)``: ``sum_x (sqrt(|grad p|^2 + e^2) - e) * prod h``.
    """
    h = check_spacing(spacing, p.dim() - 2)
    g2 = sum(g.pow(2) for g in forward_gradient(p, h))
    density = torch.sqrt(g2 + eps**2) - eps
    cell = float(torch.tensor(h).prod())
    return density.flatten(2).sum(-1) * cell


def foreground_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """``(B, K, *S)`` logits -> ``(B, C - 1, *S)`` probabilities of the foreground classes
    (softmax channels 1..C-1, or ``sigmoid(z)`` for a one-channel head)."""
    return class_probabilities(logits)[:, 1:]


class TotalVariationLoss(nn.Module):
    """Mean smoothed TV of the foreground probabilities (see the module docstring).

    Args:
        eps: smoothing ``e`` (in probability per voxel), ``> 0``.

    Shapes:
        ``logits (B, K, *S)``, ``target`` unused -> scalar.
    """

    def __init__(self, eps: float = 0.01):
        super().__init__()
        if not eps > 0:
            raise ValueError(f"tv eps must be > 0, got {eps}")
        self.eps = float(eps)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = foreground_probabilities(logits)
        return total_variation(p, None, self.eps).sum() / p[:, :1].numel() / p.shape[1]


class PDEConsistencyLoss(nn.Module):
    """The model's reported PDE residual (``aux["pde_residual"]``), or 0 without one.

    Shapes:
        ``logits (B, K, *S)``, ``target`` unused, ``aux`` a dict -> scalar.
    """

    uses_aux = True

    def forward(self, logits: torch.Tensor, target: torch.Tensor, aux: dict[str, Any] | None = None) -> torch.Tensor:
        residual = (aux or {}).get("pde_residual")
        if residual is None:
            return logits.new_zeros((), dtype=torch.float32)
        return residual.float()
