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


class CEDiceLoss(nn.Module):
    """Weighted sum of cross-entropy and soft Dice (eq. 5 with both weights 1).

    Args:
        ce_weight, dice_weight: weights of the two terms (either may be 0).
        dice_eps: smoothing of the Dice term.
        dice_include_background: whether the Dice term includes class 0.
        class_weights: optional per-class weights for the cross-entropy (for a sigmoid
            head: ``[w_background, w_foreground]``, applied per pixel).

    Shapes:
        ``logits (B, C, *spatial)``, ``target (B, *spatial)`` -> scalar.
    """

    def __init__(
        self,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        dice_eps: float = 1.0,
        dice_include_background: bool = True,
        class_weights: list[float] | None = None,
    ):
        super().__init__()
        if ce_weight < 0 or dice_weight < 0 or ce_weight + dice_weight == 0:
            raise ValueError(f"loss weights must be >= 0 and not both 0, got ce={ce_weight}, dice={dice_weight}")
        self.ce_weight, self.dice_weight = ce_weight, dice_weight
        self.dice_eps, self.dice_include_background = dice_eps, dice_include_background
        self.register_buffer(
            "class_weights", torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = logits.new_zeros((), dtype=torch.float32)
        if self.ce_weight:
            loss = loss + self.ce_weight * self._cross_entropy(logits.float(), target.long())
        if self.dice_weight:
            loss = loss + self.dice_weight * soft_dice_loss(
                logits, target, self.dice_eps, self.dice_include_background
            )
        return loss

    def _cross_entropy(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] > 1:
            return F.cross_entropy(logits, target, weight=self.class_weights)
        weight = self.class_weights[target] if self.class_weights is not None else None
        return F.binary_cross_entropy_with_logits(logits[:, 0], target.float(), weight=weight)
