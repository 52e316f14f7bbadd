"""Segmentation losses on logits (paper 000, eqs. 3-5).

``L = w_ce * CE + w_dice * (1 - (2 sum y p + eps) / (sum y^2 + sum p^2 + eps))``
where ``p = softmax(logits)``, ``y`` the one-hot target, and the sums run over every
pixel and class (eq. 4, squared denominators as in the V-Net / paper formulation).

A one-channel (sigmoid) head is a binary task: the CE term is the binary cross-entropy
on ``sigmoid(z)`` and the Dice term uses ``p = [1 - sigmoid(z), sigmoid(z)]``
(:mod:`pdeseg.nn.output`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pdeseg.nn.output import class_probabilities


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
    onehot = F.one_hot(target.long(), probs.shape[1]).movedim(-1, 1).to(probs.dtype)
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
            return F.cross_entropy(logits, target, weight=self.class_weights)
        weight = self.class_weights[target] if self.class_weights is not None else None
        return F.binary_cross_entropy_with_logits(logits[:, 0], target.float(), weight=weight)


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
