"""Training augmentation, applied identically to image and label (MONAI dictionary transforms), 2D and 3D.

Sample layout: ``{"image": (C, *spatial) float tensor, "label": (1, *spatial) tensor}``.
Geometric transforms interpolate the image linearly and the label by nearest neighbour.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from monai import transforms as mt

from pdeseg.config import AugmentConfig


def build_train_transform(cfg: AugmentConfig, spatial_size: Sequence[int], spatial_dims: int = 2) -> mt.Compose | None:
    """A flip per spatial axis, one combined affine (rotation, shift, zoom), brightness and contrast.

    In 3D the rotation range applies about each axis. Returns None when augmentation is disabled.
    """
    if not cfg.enabled:
        return None
    keys = ["image", "label"]
    shift = [cfg.shift_frac * s for s in spatial_size]
    angle = math.radians(cfg.rotate_deg)
    return mt.Compose(
        [mt.RandFlipd(keys, prob=cfg.flip_prob, spatial_axis=axis) for axis in range(spatial_dims)]
        + [
            mt.RandAffined(
                keys,
                prob=cfg.affine_prob,
                rotate_range=angle if spatial_dims == 2 else (angle,) * 3,
                translate_range=shift,
                scale_range=(cfg.scale_range,) * spatial_dims,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            mt.RandShiftIntensityd("image", offsets=cfg.brightness, prob=cfg.intensity_prob),
            mt.RandScaleIntensityd("image", factors=cfg.contrast, prob=cfg.intensity_prob),
        ]
    )
