"""Segmentation losses on logits (paper 000, eqs. 3-5).

``L = w_ce * CE + w_dice * (1 - (2 sum y p + eps) / (sum y^2 + sum p^2 + eps))``
where ``p = softmax(logits)``, ``y`` the one-hot target, and the sums run over every
pixel and class (eq. 4, squared denominators as in the V-Net / paper formulation).

A one-channel (sigmoid) head is a binary task: the CE term is the binary cross-entropy
on ``sigmoid(z)`` and the Dice term uses ``p = [1 - sigmoid(z), sigmoid(z)]``
(:mod:`pdeseg.nn.output`).

A region head (``output: regions``) is trained on its regions: the CE term is the binary
cross-entropy of each region probability ``m_k`` against the region's mask, averaged over
regions and pixels, and the Dice term is the mean over regions of each region's soft Dice
(pooled over pixels and batch), so that the small innermost region (ET) weighs as much as the
whole tumour.

Target pixels equal to :data:`~pdeseg.config.IGNORE_LABEL` (outside a field of view) are left
out of both terms: CE averages over the other pixels, Dice sums over them only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pdeseg.config import IGNORE_LABEL
from pdeseg.nn.output import OutputHead, class_probabilities, log_region_probabilities, region_probabilities


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
    head: OutputHead | None = None,
) -> torch.Tensor:
    """Soft Dice loss with squared denominators, pooled over pixels, classes and batch.

    Args:
        logits: ``(B, K, *spatial)``, ``K = C`` (softmax) or 1 (sigmoid, ``C = 2``).
        target: ``(B, *spatial)`` integer class indices in ``[0, C)``.
        eps: smoothing constant of eq. 4.
        include_background: sum over class 0 as well (the paper's eq. 4 does).
        head: the output head; a region head gives the mean over regions of each region's
            soft Dice (``include_background`` does not apply).

    Returns:
        scalar loss in ``[0, 1]``.
    """
    if head is not None and head.kind == "regions":
        return _region_dice_loss(logits, target, eps, head)
    probs = class_probabilities(logits, head)
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


def region_targets(target: torch.Tensor, head: OutputHead) -> torch.Tensor:
    """``(B, *S)`` class labels -> ``(B, K, *S)`` float masks of the head's regions."""
    return torch.stack([torch.isin(target, torch.tensor(ids, device=target.device)) for ids in head.regions], 1).float()


def _region_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float, head: OutputHead) -> torch.Tensor:
    m = region_probabilities(logits)
    target, keep = split_ignored(target.long())
    y = region_targets(target, head).to(m.dtype)
    if keep is not None:
        keep = keep[:, None].to(m.dtype)
        m, y = m * keep, y * keep
    dims = [0, *range(2, m.dim())]
    inter = (m * y).sum(dims)
    denom = (y * y).sum(dims) + (m * m).sum(dims)
    return 1.0 - ((2.0 * inter + eps) / (denom + eps)).mean()


def region_bce_loss(logits: torch.Tensor, target: torch.Tensor, head: OutputHead) -> torch.Tensor:
    """Binary cross-entropy of each region probability against its mask, mean over regions
    and the pixels that count. Shapes: ``logits (B, K, *S)``, ``target (B, *S)`` -> scalar."""
    log_m, log_not = log_region_probabilities(logits)
    target, keep = split_ignored(target.long())
    y = region_targets(target, head).to(log_m.dtype)
    per_pixel = -(y * log_m + (1 - y) * log_not)
    if keep is None:
        return per_pixel.mean()
    keep = keep[:, None].to(per_pixel.dtype)
    return (per_pixel * keep).sum() / (keep.sum() * per_pixel.shape[1]).clamp(min=1)


class CrossEntropyLoss(nn.Module):
    """Cross-entropy on logits: softmax CE over ``C`` channels, or the binary CE of
    ``sigmoid(z)`` for a one-channel head.

    Args:
        class_weights: optional per-class weights (for a sigmoid head
            ``[w_background, w_foreground]``, applied per pixel).
        head: the output head (set by the run, not a config option); a region head gets
            :func:`region_bce_loss`.

    Shapes:
        ``logits (B, K, *spatial)``, ``target (B, *spatial)`` -> scalar.
    """

    def __init__(self, class_weights: list[float] | None = None, head: OutputHead | None = None):
        super().__init__()
        if class_weights is not None and (not isinstance(class_weights, (list, tuple)) or not class_weights or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) for w in class_weights) or min(class_weights) < 0):
            raise ValueError(f"class_weights must be a non-empty list of weights >= 0, got {class_weights}")
        if class_weights and head is not None and head.kind == "regions":
            raise ValueError("class_weights weigh classes of a softmax or sigmoid head; output: regions weighs its regions equally")
        if class_weights and head is not None and len(class_weights) != head.num_classes:
            raise ValueError(f"class_weights has {len(class_weights)} weight(s) but the data set has {head.num_classes} "
                             "classes: give one weight per class, background first")
        self.register_buffer("class_weights", torch.tensor(class_weights, dtype=torch.float32) if class_weights else None)
        self.head = head

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = logits.float(), target.long()
        if self.head is not None and self.head.kind == "regions":
            return region_bce_loss(logits, target, self.head)
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
        head: the output head (set by the run, not a config option).
    """

    def __init__(self, eps: float = 1.0, include_background: bool = True, head: OutputHead | None = None):
        super().__init__()
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.eps, self.include_background, self.head = float(eps), bool(include_background), head

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_dice_loss(logits, target, self.eps, self.include_background, self.head)


class InstanceMapsLoss(nn.Module):
    """Mean squared error of a cell representation's extra maps (the channels after the class
    logits; :mod:`pdeseg.data.pipeline.representations`): ``mean((z_maps - t)^2)`` over maps
    and pixels, with ``t`` the targets the representation made from the augmented instance
    image (e.g. Cellpose-style flows at 5x unit length, or normalised distances). Pixels
    carrying :data:`~pdeseg.config.IGNORE_LABEL` in the class target are left out.

    Args:
        head: the output head (set by the run); it must have maps.

    Shapes:
        ``logits (B, K + M, *spatial)``, ``target (B, *spatial)``, ``maps (B, M, *spatial)`` -> scalar.
    """

    uses_maps = True

    def __init__(self, head: OutputHead | None = None):
        super().__init__()
        if head is not None and not head.maps:
            raise ValueError("instance_maps trains the extra maps of data.format_options.targets distance or flows; "
                             "this task's output has none")
        self.head = head

    def forward(self, logits: torch.Tensor, target: torch.Tensor, maps: torch.Tensor | None = None) -> torch.Tensor:
        if maps is None:
            raise ValueError("instance_maps needs the maps' targets (batches from a cell data set with targets distance "
                             "or flows)")
        k = self.head.class_channels if self.head is not None else logits.shape[1] - maps.shape[1]
        pred = logits[:, k:].float()
        if pred.shape != maps.shape:
            raise ValueError(f"instance_maps: the output has maps of shape {tuple(pred.shape)}, the targets {tuple(maps.shape)}")
        per_pixel = (pred - maps.float()).pow(2)
        ignored = target == IGNORE_LABEL
        if not bool(ignored.any()):
            return per_pixel.mean()
        keep = (~ignored)[:, None].to(per_pixel.dtype)
        return (per_pixel * keep).sum() / (keep.sum() * per_pixel.shape[1]).clamp(min=1)
