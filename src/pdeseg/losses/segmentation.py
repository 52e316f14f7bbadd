"""Segmentation losses on logits (paper 000, eqs. 3-5).

``L = w_ce * CE + w_dice * (1 - (2 sum y p + eps) / (sum y^2 + sum p^2 + eps))``
where ``p = softmax(logits)``, ``y`` the one-hot target, and the sums run over every
pixel and class (eq. 4, squared denominators as in the V-Net / paper formulation).

A one-channel (sigmoid) head is a binary task: the CE term is the binary cross-entropy
on ``sigmoid(z)`` and the Dice term uses ``p = [1 - sigmoid(z), sigmoid(z)]``
(:mod:`pdeseg.nn.output`).

Target pixels equal to :data:`~pdeseg.config.IGNORE_LABEL` (outside a field of view) are left
out of both terms: CE averages over the other pixels, Dice sums over them only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pdeseg.config import IGNORE_LABEL
from pdeseg.nn.output import class_probabilities


def split_ignored(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(target with ignored pixels set to class 0, bool mask of the pixels that count)``;
    the mask is None when no pixel is ignored."""
    ignored = target == IGNORE_LABEL
    if not bool(ignored.any()):
        return target, None
    return target.masked_fill(ignored, 0), ~ignored


def soft_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    eps: float = 1.0,
    include_background: bool = True,
) -> torch.Tensor:
    """Soft Dice loss with squared denominators, pooled over pixels, classes and batch.

    Args:
        logits: ``(B, K, *spatial)``, ``K = C`` (softmax) or 1 (sigmoid, ``C = 2``).
        target: ``(B, *spatial)`` integer class indices in ``[0, C)``.
        eps: smoothing constant of eq. 4.
        include_background: sum over class 0 as well (the paper's eq. 4 does).

    Returns:
        scalar loss in ``[0, 1]``.
    """
    probs = class_probabilities(logits)
    target, keep = split_ignored(target.long())
    onehot = F.one_hot(target, probs.shape[1]).movedim(-1, 1).to(probs.dtype)
    if keep is not None:
        keep = keep[:, None].to(probs.dtype)
        probs, onehot = probs * keep, onehot * keep
    if not include_background:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
    inter = (probs * onehot).sum()
    denom = (onehot * onehot).sum() + (probs * probs).sum()
    return 1.0 - (2.0 * inter + eps) / (denom + eps)


class CrossEntropyLoss(nn.Module):
    """Cross-entropy on logits: softmax CE over ``C`` channels, or the binary CE of
    ``sigmoid(z)`` for a one-channel head.

    Args:
        class_weights: optional per-class weights (for a sigmoid head
            ``[w_background, w_foreground]``, applied per pixel).

    Shapes:
        ``logits (B, K, *spatial)``, ``target (B, *spatial)`` -> scalar.
    """

    def __init__(self, class_weights: list[float] | None = None):
        super().__init__()
        if class_weights is not None and (not class_weights or min(class_weights) < 0):
            raise ValueError(f"class_weights must be a non-empty list of weights >= 0, got {class_weights}")
        self.register_buffer("class_weights", torch.tensor(class_weights, dtype=torch.float32) if class_weights else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = logits.float(), target.long()
        if logits.shape[1] > 1:
            if not bool((target != IGNORE_LABEL).any()):
                return logits.sum() * 0.0  # every pixel ignored: nothing to learn from this batch
            return F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=IGNORE_LABEL)
        target, keep = split_ignored(target)
        weight = self.class_weights[target] if self.class_weights is not None else None
        if keep is None:
            return F.binary_cross_entropy_with_logits(logits[:, 0], target.float(), weight=weight)
        per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], target.float(), weight=weight, reduction="none")
        return (per_pixel * keep).sum() / keep.sum().clamp(min=1)


class SoftDiceLoss(nn.Module):
    """:func:`soft_dice_loss` as a module (squared denominators, pooled over the batch).

    Args:
        eps: smoothing constant of eq. 4.
        include_background: sum over class 0 as well (the paper's eq. 4 does).
    """

    def __init__(self, eps: float = 1.0, include_background: bool = True):
        super().__init__()
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.eps, self.include_background = float(eps), bool(include_background)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_dice_loss(logits, target, self.eps, self.include_background)
