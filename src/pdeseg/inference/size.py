"""Object size for cell models: segment an image at the object size the model was trained at.

A cell model learns objects of the sizes in its training images; nuclei twice or half as wide
come out split or missed. As in Cellpose, each image is rescaled so that its objects have the
training size (the checkpoint's ``object_diameter``: the median equivalent diameter, in pixels,
of the training objects), segmented there, and its class logits and maps are interpolated back
to the image's own grid, where the cells are found. So the cells are always on the input's grid.

The objects' size in an image is either given (``diameter`` in pixels) or estimated (``auto``):

1. segment the image at its own scale;
2. take the median equivalent diameter ``sqrt(4 area / pi)`` of the cells found;
3. when it differs from the training size by more than :data:`KEEP_WITHIN` (a factor), segment
   again at the scale ``object_diameter / estimate`` (the second pass is the result); else the
   first pass is the result.

This is Cellpose's refinement step (its size model's second stage: the median diameter of the
masks found) without the style-vector regression of its first stage: the network itself finds
the objects. It works while the first pass finds objects whose median size is right even if
their shapes are not (objects split in a few pieces or merged with a neighbour shift the
median); ``tests/test_pretrained.py`` measures it on synthetic nuclei rescaled x0.5 and x2.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

#: ``auto`` keeps the first pass when the estimated size is within this factor of the
#: training size (no second pass: the rescale would change little).
KEEP_WITHIN = 1.15
#: The scale factor is kept within ``[1 / MAX_SCALE, MAX_SCALE]`` (an estimate outside says
#: the first pass found noise, not objects).
MAX_SCALE = 4.0


def equivalent_diameters(instances: np.ndarray) -> np.ndarray:
    """Equivalent diameters ``sqrt(4 area / pi)`` in pixels of the objects of an instance map
    ``(X, Y)`` or a stack ``(X, Y, Z)`` whose ids restart in each plane (each plane's objects
    counted apart)."""
    inst = np.asarray(instances)
    planes = inst[..., None] if inst.ndim == 2 else inst
    areas = []
    for z in range(planes.shape[-1]):
        counts = np.bincount(planes[..., z].ravel().astype(np.int64))[1:]
        areas.append(counts[counts > 0])
    area = np.concatenate(areas) if areas else np.zeros(0)
    return np.sqrt(4.0 * area / math.pi)


def median_diameter(instances: np.ndarray) -> float | None:
    """The median equivalent diameter in pixels, or None when there is no object."""
    d = equivalent_diameters(instances)
    return float(np.median(d)) if d.size else None


def scale_for(train_diameter: float, diameter: float) -> float:
    """The factor an image is resized by so that objects of ``diameter`` pixels become
    ``train_diameter`` pixels, clipped to ``[1 / MAX_SCALE, MAX_SCALE]``."""
    return float(min(max(train_diameter / diameter, 1.0 / MAX_SCALE), MAX_SCALE))


def rescale_planes(image: np.ndarray, factor: float) -> np.ndarray:
    """A normalised case ``(C, X, Y, Z)`` resized by ``factor`` along X and Y (bilinear,
    antialiased when shrinking), Z unchanged; float32."""
    c, x, y, z = image.shape
    size = (max(1, round(x * factor)), max(1, round(y * factor)))
    planes = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, 3, 0))).float()  # (Z, C, X, Y)
    out = F.interpolate(planes, size=size, mode="bilinear", align_corners=False, antialias=factor < 1)
    return np.ascontiguousarray(np.moveaxis(out.numpy(), 0, 3))
