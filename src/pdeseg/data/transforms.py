"""Training augmentation, applied identically to image and label (MONAI dictionary transforms).

Sample layout: ``{"image": (C, H, W) float tensor, "label": (1, H, W) tensor}``.
Geometric transforms use bilinear interpolation for the image and nearest for the label.
"""

from __future__ import annotations

import math

from monai import transforms as mt

from pdeseg.config import AugmentConfig


def build_train_transform(cfg: AugmentConfig, spatial_size: tuple[int, int]) -> mt.Compose | None:
    """Flips, one combined affine (rotation, shift, zoom), brightness and contrast.

    Returns None when augmentation is disabled.
    """
    if not cfg.enabled:
        return None
    keys = ["image", "label"]
    shift = [cfg.shift_frac * s for s in spatial_size]
    return mt.Compose(
        [
            mt.RandFlipd(keys, prob=cfg.flip_prob, spatial_axis=0),
            mt.RandFlipd(keys, prob=cfg.flip_prob, spatial_axis=1),
            mt.RandAffined(
                keys,
                prob=cfg.affine_prob,
                rotate_range=math.radians(cfg.rotate_deg),
                translate_range=shift,
                scale_range=(cfg.scale_range, cfg.scale_range),
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            mt.RandShiftIntensityd("image", offsets=cfg.brightness, prob=cfg.intensity_prob),
            mt.RandScaleIntensityd("image", factors=cfg.contrast, prob=cfg.intensity_prob),
        ]
    )
