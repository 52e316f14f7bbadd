"""Truth-versus-prediction overlays on the MRI slice, as paper 002 shows them:
ground truth outlined in red, prediction outlined in green (yellow where they coincide)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

RED, GREEN, YELLOW = (255, 0, 0), (0, 255, 0), (255, 255, 0)


def _to_gray_rgb(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` intensities -> ``(H, W, 3)`` uint8, scaled by the 1st / 99th percentiles."""
    image = np.asarray(image, dtype=np.float64)
    lo, hi = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
    scaled = np.clip((image - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(image)
    return np.repeat((scaled * 255).astype(np.uint8)[..., None], 3, axis=-1)


def outline(mask: np.ndarray) -> np.ndarray:
    """The inner boundary pixels of a binary mask (mask minus its erosion)."""
    mask = np.asarray(mask, dtype=bool)
    return mask & ~ndimage.binary_erosion(mask)


def overlay(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8: ``image`` in grey, outlines of ``truth > 0`` red and of
    ``prediction > 0`` green (yellow where the outlines meet).

    Args:
        image: ``(H, W)`` slice (any intensity range), or ``(H, W, 3)`` RGB.
        truth, prediction: ``(H, W)`` class maps; every non-zero class counts as foreground.
    """
    image = np.asarray(image)
    rgb = image.astype(np.uint8) if image.ndim == 3 else _to_gray_rgb(image)
    if rgb.shape[:2] != np.shape(truth) or np.shape(truth) != np.shape(prediction):
        raise ValueError(f"overlay: image {rgb.shape[:2]}, truth {np.shape(truth)} and prediction {np.shape(prediction)} differ")
    t, p = outline(np.asarray(truth) > 0), outline(np.asarray(prediction) > 0)
    out = rgb.copy()
    out[t] = RED
    out[p] = GREEN
    out[t & p] = YELLOW
    return out


def write_overlay(
    image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, path: str | Path, scale: int = 2, rotate: bool = True
) -> Path:
    """Write :func:`overlay` as a PNG, enlarged ``scale`` times (nearest) so outlines stay
    visible; ``rotate`` shows ``rot90`` (BraTS slices are stored x-major)."""
    from PIL import Image

    rgb = overlay(image, truth, prediction)
    rgb = np.rot90(rgb) if rotate else rgb
    img = Image.fromarray(np.ascontiguousarray(rgb))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
