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
* :class:`PhaseFieldLoss` (paper 004): the Modica–Mortola interface energy
  ``sum (eps/2 |grad p|^2 + W(p)/eps)``, ``W(p) = p^2 (1 - p)^2``, which tends to
  ``sqrt(2)/6`` times the boundary length as ``eps -> 0``.
* :class:`ReactionDiffusionLoss` (paper 004): the squared residual ``(D lap(p) + f(p))^2``
  with an Allen–Cahn or Fisher–KPP reaction ``f``.

The penalties act on probabilities in grid units (spacing 1); the functional forms take a
spacing for physical units.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from pdeseg.nn.output import OutputHead, class_probabilities
from pdeseg.nn.pde.stencils import check_spacing, forward_gradient, laplacian


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
    return total_variation_density(p, h, eps).flatten(2).sum(-1) * _cell_volume(h)


def _cell_volume(h: Sequence[float]) -> float:
    """``prod h_i``: the area (volume) of one grid cell."""
    return float(torch.tensor(h).prod())


def total_variation_density(p: torch.Tensor, spacing: Sequence[float] | None = None, eps: float = 0.0) -> torch.Tensor:
    """The integrand of :func:`total_variation`, per voxel: ``sqrt(|grad p|^2 + e^2) - e``
    (forward differences, replicate boundary; per unit area, i.e. not multiplied by the cell
    size), for maps of where the variation is.

    Shapes:
        ``(B, C, *S)`` -> ``(B, C, *S)``.
    """
    h = check_spacing(spacing, p.dim() - 2)
    g2 = sum(g.pow(2) for g in forward_gradient(p, h))
    return torch.sqrt(g2 + eps**2) - eps


def double_well(p: torch.Tensor) -> torch.Tensor:
    """``W(p) = p^2 (1 - p)^2``: zero at 0 and 1, ``c_W = int_0^1 sqrt(2 W) = sqrt(2) / 6``."""
    return p.pow(2) * (1 - p).pow(2)


def phase_field_energy(p: torch.Tensor, eps: float, spacing: Sequence[float] | None = None) -> torch.Tensor:
    """Modica–Mortola energy ``sum_x (eps/2 |grad p|^2 + W(p)/eps) prod h`` per item and channel.

    As ``eps -> 0`` it tends to ``c_W`` times the interface length (area in 3D) for the
    optimal profile ``p = (1 + tanh(d / (sqrt(2) eps))) / 2`` across the interface, with
    ``c_W = sqrt(2) / 6``. Gradients: forward differences, replicate boundary.

    Shapes:
        ``(B, C, *S)`` -> ``(B, C)``.
    """
    h = check_spacing(spacing, p.dim() - 2)
    return phase_field_density(p, eps, h).flatten(2).sum(-1) * _cell_volume(h)


def phase_field_density(p: torch.Tensor, eps: float, spacing: Sequence[float] | None = None) -> torch.Tensor:
    """The integrand of :func:`phase_field_energy`, per voxel: ``eps/2 |grad p|^2 + W(p)/eps``
    (forward differences, replicate boundary; per unit area), for maps of where the energy is.

    Shapes:
        ``(B, C, *S)`` -> ``(B, C, *S)``.
    """
    if not eps > 0:
        raise ValueError(f"phase-field eps must be > 0, got {eps}")
    h = check_spacing(spacing, p.dim() - 2)
    g2 = sum(g.pow(2) for g in forward_gradient(p, h))
    return 0.5 * eps * g2 + double_well(p) / eps


REACTIONS = ("allen_cahn", "fisher_kpp")


def reaction(p: torch.Tensor, kind: str, a: float) -> torch.Tensor:
    """``f(p)``: Allen–Cahn ``p (1 - p) (p - a)`` (bistable, threshold ``a``) or Fisher–KPP
    ``a p (1 - p)`` (logistic growth at rate ``a``)."""
    if kind == "allen_cahn":
        return p * (1 - p) * (p - a)
    if kind == "fisher_kpp":
        return a * p * (1 - p)
    raise ValueError(f"unknown reaction {kind!r}; choose one of {', '.join(REACTIONS)}")


def reaction_diffusion_residual(p: torch.Tensor, diffusion: float, a: float = 0.5, kind: str = "allen_cahn",
                                spacing: Sequence[float] | None = None) -> torch.Tensor:
    """The steady-state residual ``r = D lap(p) + f(p)`` of ``p_t = D lap(p) + f(p)``, with the
    3-point Laplacian and a replicate (zero-flux) boundary. For Allen–Cahn with ``a = 1/2``
    the standing front ``(1 + tanh(x / (2 sqrt(2 D)))) / 2`` makes it vanish.

    Shapes:
        ``(B, C, *S)`` -> ``(B, C, *S)``.
    """
    if not diffusion > 0:
        raise ValueError(f"diffusion D must be > 0, got {diffusion}")
    return diffusion * laplacian(p, spacing) + reaction(p, kind, a)


def mean_per_voxel(integrals: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``(B, C)`` grid-unit integrals of ``p`` (``(B, C, *S)``) -> their mean per voxel and
    class, so a penalty's weight does not depend on the patch size or class count."""
    return integrals.sum() / p[:, :1].numel() / p.shape[1]


#: What a penalty acts on: ``classes``, each foreground class's probability on its own;
#: ``union``, the probability of any foreground class, ``1 - P(background)`` (one channel:
#: a cell's interior and boundary classes together, so the penalty shapes the cell's outline
#: and not the thin boundary class).
TARGET_CHANNELS = ("classes", "union")


def foreground_probabilities(logits: torch.Tensor, channels: str = "classes", head: OutputHead | None = None) -> torch.Tensor:
    """``(B, K, *S)`` logits -> ``(B, C - 1, *S)`` probabilities of the foreground classes
    (softmax channels 1..C-1, ``sigmoid(z)`` for a one-channel head, the chain's class
    probabilities for a region ``head``), or with ``channels="union"`` ``(B, 1, *S)``:
    ``1 - P(background)``."""
    p = class_probabilities(logits, head)
    if channels == "union":
        return p[:, 1:] if p.shape[1] == 2 else 1 - p[:, :1]
    return p[:, 1:]


def _check_channels(channels: str, name: str) -> str:
    if channels not in TARGET_CHANNELS:
        raise ValueError(f"{name} channels must be one of {', '.join(TARGET_CHANNELS)}, got {channels!r}")
    return channels


class TotalVariationLoss(nn.Module):
    """Mean smoothed TV of the foreground probabilities (see the module docstring).

    Args:
        eps: smoothing ``e`` (in probability per voxel), ``> 0``.
        channels: ``classes`` or ``union`` (see :data:`TARGET_CHANNELS`).
        head: the output head (set by the run, not a config option).

    Shapes:
        ``logits (B, K, *S)``, ``target`` unused -> scalar.
    """

    def __init__(self, eps: float = 0.01, channels: str = "classes", head: OutputHead | None = None):
        super().__init__()
        if not eps > 0:
            raise ValueError(f"tv eps must be > 0, got {eps}")
        self.eps, self.channels, self.head = float(eps), _check_channels(channels, "tv"), head

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = foreground_probabilities(logits, self.channels, self.head)
        return mean_per_voxel(total_variation(p, None, self.eps), p)


class PhaseFieldLoss(nn.Module):
    """Mean Modica–Mortola energy density of the foreground probabilities (grid units).

    Args:
        eps: interface width ``eps`` in voxels, ``> 0``.
        channels: ``classes`` or ``union`` (see :data:`TARGET_CHANNELS`).
        head: the output head (set by the run, not a config option).

    Shapes:
        ``logits (B, K, *S)``, ``target`` unused -> scalar.
    """

    def __init__(self, eps: float = 1.0, channels: str = "classes", head: OutputHead | None = None):
        super().__init__()
        if not eps > 0:
            raise ValueError(f"phase_field eps must be > 0, got {eps}")
        self.eps, self.channels, self.head = float(eps), _check_channels(channels, "phase_field"), head

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = foreground_probabilities(logits, self.channels, self.head)
        return mean_per_voxel(phase_field_energy(p, self.eps), p)


class ReactionDiffusionLoss(nn.Module):
    """Mean squared steady-state residual ``(D lap(p) + f(p))^2`` of the foreground
    probabilities (grid units), ``f`` Allen–Cahn or Fisher–KPP.

    Args:
        diffusion: ``D > 0`` (voxels^2 per unit time).
        a: the reaction's parameter (Allen–Cahn threshold in (0, 1), Fisher–KPP rate > 0).
        reaction: ``allen_cahn`` or ``fisher_kpp``.
        channels: ``classes`` or ``union`` (see :data:`TARGET_CHANNELS`).
        head: the output head (set by the run, not a config option).

    Shapes:
        ``logits (B, K, *S)``, ``target`` unused -> scalar.
    """

    def __init__(self, diffusion: float = 1.0, a: float = 0.5, reaction: str = "allen_cahn", channels: str = "classes",
                 head: OutputHead | None = None):
        super().__init__()
        if not diffusion > 0:
            raise ValueError(f"reaction_diffusion diffusion must be > 0, got {diffusion}")
        if reaction not in REACTIONS:
            raise ValueError(f"unknown reaction {reaction!r}; choose one of {', '.join(REACTIONS)}")
        if reaction == "allen_cahn" and not 0 < a < 1:
            raise ValueError(f"the Allen–Cahn threshold a must be in (0, 1), got {a}")
        if reaction == "fisher_kpp" and not a > 0:
            raise ValueError(f"the Fisher–KPP rate a must be > 0, got {a}")
        self.diffusion, self.a, self.kind = float(diffusion), float(a), reaction
        self.channels, self.head = _check_channels(channels, "reaction_diffusion"), head

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = foreground_probabilities(logits, self.channels, self.head)
        return reaction_diffusion_residual(p, self.diffusion, self.a, self.kind).pow(2).mean()


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
