"""pdeseg: PDE-informed segmentation networks and losses for medical and microscopy images."""

__version__ = "0.1.0"
