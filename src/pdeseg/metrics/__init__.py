"""Segmentation metrics: Dice, IoU, accuracy, BraTS regions, HD95, per-case accumulation."""

from pdeseg.metrics import segmentation
from pdeseg.metrics.segmentation import *  # noqa: F403  (the public names listed in segmentation.__all__)

__all__ = list(segmentation.__all__)
