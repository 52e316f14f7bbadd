"""Loss and per-case metrics of a model over a slice data set (used for validation and evaluation)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pdeseg.metrics.segmentation import MetricAccumulator
from pdeseg.nn.output import predicted_classes
from pdeseg.training.runtime import autocast


@torch.no_grad()
def evaluate_loader(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    precision: str = "32",
    loss_fn: nn.Module | None = None,
    accumulator: MetricAccumulator | None = None,
    channels_last: bool = False,
    progress: bool = False,
) -> tuple[float | None, MetricAccumulator]:
    """Run ``model`` over ``loader``; accumulate confusion counts per case.

    Args:
        accumulator: where the counts go (its classes and regions name the metrics);
            default: a BraTS :class:`MetricAccumulator`.

    Returns:
        ``(mean loss over slices or None, accumulator)``; ``accumulator.summary()`` gives
        the per-metric mean over cases.
    """
    model.eval()
    acc = accumulator if accumulator is not None else MetricAccumulator()
    total, count = 0.0, 0
    for batch in tqdm(loader, desc="evaluating", unit="batch", disable=not progress, leave=False):
        x = batch["image"].to(device)
        y = batch["label"].to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            logits = model(x)
        if loss_fn is not None:
            total += float(loss_fn(logits.float(), y)) * x.shape[0]
            count += x.shape[0]
        acc.update(predicted_classes(logits), y, list(batch["case"]))  # counted on the model's device
    return (total / count if count else None), acc
