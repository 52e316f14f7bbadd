"""Segmentation metrics: Dice, IoU, precision, recall, accuracy, BraTS regions, HD95, surface Dice, per-case accumulation."""

from pdeseg.metrics import segmentation
from pdeseg.metrics.segmentation import *  # noqa: F403  (the public names listed in segmentation.__all__)

__all__ = list(segmentation.__all__)
