"""The loss-term table: registry name -> loss constructor (explicit; no filesystem scanning).

A config's ``loss.terms: [{name, weight, ...options}]`` picks entries of :data:`LOSSES`; a
term's options are its constructor's keyword arguments, checked when the config is resolved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from pdeseg.losses.pde import PDEConsistencyLoss, PhaseFieldLoss, ReactionDiffusionLoss, TotalVariationLoss
from pdeseg.losses.segmentation import CrossEntropyLoss, InstanceMapsLoss, SoftDiceLoss


@dataclass(frozen=True)
class LossEntry:
    """A registered loss term.

    Attributes:
        build: the constructor; its keyword arguments are the term's options in a config.
        description: one line for listings.
    """

    build: Callable[..., nn.Module]
    description: str


LOSSES: dict[str, LossEntry] = {
    "ce": LossEntry(CrossEntropyLoss, "cross-entropy (binary CE for a one-channel sigmoid head); option class_weights"),
    "dice": LossEntry(SoftDiceLoss, "soft Dice with squared denominators (paper 000 eq. 4); options eps, include_background"),
    "pde_consistency": LossEntry(PDEConsistencyLoss, "PDE layers' implicit-step residual reported by the model (paper 001); 0 without PDE layers"),
    "tv": LossEntry(TotalVariationLoss, "smoothed isotropic total variation of the foreground probabilities; options eps, channels (classes|union)"),
    "phase_field": LossEntry(PhaseFieldLoss, "Modica-Mortola interface energy of the foreground probabilities (paper 004); options eps, channels (classes|union)"),
    "instance_maps": LossEntry(InstanceMapsLoss, "mean squared error of the extra maps of cell targets distance or flows (the representation's regression channels)"),
    "reaction_diffusion": LossEntry(ReactionDiffusionLoss, "squared residual of D lap(p) + f(p), Allen-Cahn or Fisher-KPP (paper 004); options diffusion, a, reaction, channels"),
}
