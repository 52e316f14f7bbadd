"""Training augmentation, applied identically to image and label (MONAI dictionary transforms), 2D and 3D.

Sample layout: ``{"image": (C, *spatial) float tensor, "label": (1, *spatial) tensor}``.
Geometric transforms interpolate the image linearly and the label by nearest neighbour, so
an augmented label only holds values of the input label (plus 0 where the affine transform
brings in space from outside the sample).

Order: a flip per spatial axis; one affine transform (rotation about each axis in 3D, shift,
zoom); optionally an elastic deformation; then intensity changes on the image only:
brightness (additive), contrast (multiplicative), optionally gamma and Gaussian noise, and
optionally a contrast inversion (``invert_prob``: every channel negated, which for the
zero-centred normalisations ``zscore`` / ``zscore_all`` is the image with bright and dark
swapped: fluorescence nuclei, bright on dark, then look like stained or brightfield nuclei,
dark on bright).

The elastic deformation (``augment.elastic``) has a fixed, moderate strength:

* 3D, MONAI ``Rand3DElasticd``: a random displacement field, uniform noise smoothed by a
  Gaussian of sd :data:`ELASTIC_3D_SIGMA` voxels and scaled by :data:`ELASTIC_3D_MAGNITUDE`;
  measured on a 64^3 field, displacements have an sd of about 0.35-1.4 voxels and reach
  about 2-6 voxels. Smoothing a full-resolution field costs about 0.2 s per 64x64x32 patch
  on one CPU core, which is why it is off by default;
* 2D, MONAI ``Rand2DElasticd``: control points every :data:`ELASTIC_2D_SPACING` pixels, each
  moved by up to :data:`ELASTIC_2D_MAGNITUDE` pixels, interpolated in between.

Outside the sample the elastic deformation repeats the border (no new label values).

Randomness: the returned ``Compose`` is a MONAI ``Randomizable``; ``set_random_state`` reseeds
every transform in it. The trainer reseeds it each epoch; :class:`~pdeseg.data.pipeline.sampling.PatchDataset`
reseeds it for every patch from ``(seed, epoch, index)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from monai import transforms as mt

from pdeseg.config import AugmentConfig

#: 3D elastic deformation: range of the smoothing sd (voxels) and of the displacement scale (MONAI's units).
ELASTIC_3D_SIGMA = (5.0, 8.0)
ELASTIC_3D_MAGNITUDE = (100.0, 200.0)
#: 2D elastic deformation: control-point spacing (pixels) and range of their displacement (pixels).
ELASTIC_2D_SPACING = 20
ELASTIC_2D_MAGNITUDE = (1.0, 3.0)


def build_train_transform(cfg: AugmentConfig, spatial_size: Sequence[int], spatial_dims: int = 2) -> mt.Compose | None:
    """The training augmentation of ``cfg`` for samples of ``spatial_size`` (see the module notes).

    Args:
        cfg: the augmentation settings.
        spatial_size: ``(H, W)`` or ``(X, Y, Z)``, the sample size (sets the shift range).
        spatial_dims: 2 or 3.

    Returns:
        A MONAI ``Compose`` over ``{"image", "label"}``, or None when augmentation is disabled.
    """
    if not cfg.enabled:
        return None
    keys = ["image", "label"]
    shift = [cfg.shift_frac * s for s in spatial_size]
    angle = math.radians(cfg.rotate_deg)
    steps: list = [mt.RandFlipd(keys, prob=cfg.flip_prob, spatial_axis=axis) for axis in range(spatial_dims)]
    steps.append(
        mt.RandAffined(
            keys,
            prob=cfg.affine_prob,
            rotate_range=angle if spatial_dims == 2 else (angle,) * 3,
            translate_range=shift,
            scale_range=(cfg.scale_range,) * spatial_dims,
            mode=("bilinear", "nearest"),
            padding_mode="zeros",
        )
    )
    if cfg.elastic:
        if spatial_dims == 3:
            steps.append(mt.Rand3DElasticd(keys, sigma_range=ELASTIC_3D_SIGMA, magnitude_range=ELASTIC_3D_MAGNITUDE,
                                           prob=cfg.elastic_prob, mode=("bilinear", "nearest"), padding_mode="border"))
        else:
            steps.append(mt.Rand2DElasticd(keys, spacing=ELASTIC_2D_SPACING, magnitude_range=ELASTIC_2D_MAGNITUDE,
                                           prob=cfg.elastic_prob, mode=("bilinear", "nearest"), padding_mode="border"))
    steps += [
        mt.RandShiftIntensityd("image", offsets=cfg.brightness, prob=cfg.intensity_prob),
        mt.RandScaleIntensityd("image", factors=cfg.contrast, prob=cfg.intensity_prob),
    ]
    if cfg.gamma > 0:
        steps.append(mt.RandAdjustContrastd("image", prob=cfg.intensity_prob, gamma=(1 - cfg.gamma, 1 + cfg.gamma),
                                            retain_stats=True))
    if cfg.noise_std > 0:
        steps.append(mt.RandGaussianNoised("image", prob=cfg.intensity_prob, std=cfg.noise_std))
    if cfg.invert_prob > 0:  # v * (1 + f) with f = -2: the negated image
        steps.append(mt.RandScaleIntensityd("image", factors=(-2.0, -2.0), prob=cfg.invert_prob))
    return mt.Compose(steps)
