"""Synthetic 3D data sets in the MSD / nnU-Net raw layout, so that the volumetric path
(reader, patches, CT normalisation, anisotropic spacing, sliding window, NIfTI output) runs
end to end without any real data.

Two kinds of task:

* ``mri``: a small hippocampus-like task: a textured grey-matter background in an
  ellipsoidal head with a dark CSF rim, and one curved elongated structure split into an
  anterior (label 1) and a posterior (label 2) part of slightly different brightness;
  uint8-like intensities, 1 mm isotropic (like MSD Task04).
* ``ct``: a liver-CT-like task in Hounsfield units on an anisotropic grid (0.8 x 0.8 x
  2.5 mm by default): air (-1000 HU) around an elliptical body of fat (-100) and soft
  tissue (+40), a vertebra (+700), a liver (+60, label 1) with one to three hypodense
  lesions (+15, label 2), and Gaussian noise; int16 (like MSD Task03 / LiTS).

Layouts: ``msd`` (``dataset.json`` with ``modality`` and ``labels`` index -> name,
``imagesTr/<task>_NNN.nii.gz``) or ``nnunet`` (``channel_names``, ``labels`` name -> value,
``file_ending``, ``imagesTr/<task>_NNN_0000.nii.gz``). Cases are deterministic given the
seed; each takes milliseconds.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from pdeseg.data.phantoms.brats import _smooth_noise, phantom_case_seed

log = logging.getLogger(__name__)

KINDS = ("mri", "ct")
LAYOUTS = ("msd", "nnunet")
#: Default grid and voxel size of each kind.
DEFAULT_SHAPE = {"mri": (36, 48, 36), "ct": (96, 96, 32)}
DEFAULT_SPACING = {"mri": (1.0, 1.0, 1.0), "ct": (0.8, 0.8, 2.5)}
CLASSES = {"mri": ("background", "Anterior", "Posterior"), "ct": ("background", "liver", "cancer")}
CHANNEL = {"mri": "MRI", "ct": "CT"}


def _grid(shape, spacing):
    """Physical coordinates (mm) of every voxel, centred on the volume."""
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    return np.meshgrid(*axes, indexing="ij")


def make_mri_case(shape=DEFAULT_SHAPE["mri"], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One hippocampus-like case: ``(image float32 (X, Y, Z) in 0..255, label uint8)``."""
    rng = np.random.default_rng(seed)
    x, y, z = _grid(shape, (1.0, 1.0, 1.0))
    sx, sy, sz = (n / 2 for n in shape)
    head = (x / (0.95 * sx)) ** 2 + (y / (0.95 * sy)) ** 2 + (z / (0.95 * sz)) ** 2 < 1
    # a curved tube along y: its centre line bends in x, its radius tapers towards the back
    t = y / sy  # -1 (front) .. 1 (back)
    cx = rng.uniform(-0.15, 0.15) * sx + 0.25 * sx * t**2 * rng.choice([-1, 1])
    cz = rng.uniform(-0.15, 0.15) * sz + 0.1 * sz * t
    radius = (0.28 - 0.1 * (t + 1) / 2) * min(sx, sz) * rng.uniform(0.85, 1.15)
    wobble = 0.9 + 0.2 * _smooth_noise(rng, shape, 6) * 0.5
    tube = (((x - cx) ** 2 + (z - cz) ** 2) < (radius * wobble) ** 2) & (np.abs(t) < rng.uniform(0.7, 0.85))
    split = rng.uniform(-0.15, 0.15) * sy
    label = np.zeros(shape, np.uint8)
    label[tube & (y < split)] = 1
    label[tube & (y >= split)] = 2
    image = np.where(head, 110.0, 8.0) + 18 * _smooth_noise(rng, shape, 5) * head
    rim = head & ~ndimage.binary_erosion(head, iterations=2)
    image[rim] = 35.0
    image[label == 1] = 165.0
    image[label == 2] = 150.0
    image = ndimage.gaussian_filter(image, 0.7) * rng.uniform(0.85, 1.15)
    image += rng.normal(0, 6.0, shape)
    return np.clip(image, 0, 255).astype(np.float32), label


def make_ct_case(shape=DEFAULT_SHAPE["ct"], spacing=DEFAULT_SPACING["ct"], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One liver-CT-like case: ``(image float32 (X, Y, Z) in HU, label uint8)``; shapes are
    defined in millimetres, so they look the same at any voxel size."""
    rng = np.random.default_rng(seed)
    x, y, z = _grid(shape, spacing)
    ext = [(n - 1) / 2 * s for n, s in zip(shape, spacing)]
    a, b = 0.85 * ext[0] * rng.uniform(0.9, 1.0), 0.7 * ext[1] * rng.uniform(0.9, 1.0)
    body = (x / a) ** 2 + (y / b) ** 2 < 1
    inner = (x / (a - 6)) ** 2 + (y / (b - 6)) ** 2 < 1  # ~6 mm of subcutaneous fat
    spine = ((x - 0) ** 2 + (y - 0.65 * b) ** 2) < (0.12 * b) ** 2
    # liver: an ellipsoid in the right upper part, bumpy surface, tapering along z
    lc = np.array([-0.35 * a, -0.1 * b, rng.uniform(-0.1, 0.1) * ext[2]])
    lr = np.array([0.42 * a, 0.5 * b, 0.8 * ext[2]]) * rng.uniform(0.85, 1.1, 3)
    r = ((x - lc[0]) / lr[0]) ** 2 + ((y - lc[1]) / lr[1]) ** 2 + ((z - lc[2]) / lr[2]) ** 2
    liver = (r + 0.15 * _smooth_noise(rng, shape, 8)) < 1
    liver &= inner
    label = np.zeros(shape, np.uint8)
    label[liver] = 1
    points = np.argwhere(ndimage.binary_erosion(liver, iterations=2))
    for _ in range(int(rng.integers(1, 4))):
        if not len(points):
            break
        c = points[rng.integers(len(points))] * np.array(spacing) - np.array(ext)
        rad = rng.uniform(5, 12)  # mm
        lesion = (((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) < rad**2) & liver
        label[lesion] = 2
    hu = np.full(shape, -1000.0)
    hu[body] = -100.0
    hu[inner] = 40.0 + 10 * _smooth_noise(rng, shape, 10)[inner]
    hu[spine] = 700.0
    hu[label == 1] = 60.0 + rng.uniform(-8, 8)
    hu[label == 2] = 15.0 + rng.uniform(-8, 8)
    sigma = [0.6 / s for s in spacing]  # ~0.6 mm partial-volume blur
    hu = ndimage.gaussian_filter(hu, sigma) + rng.normal(0, 12.0, shape)
    return np.clip(hu, -1024, 3071).astype(np.float32), label


def _save(array: np.ndarray, affine: np.ndarray, dtype, path: Path) -> None:
    img = nib.Nifti1Image(array.astype(dtype), affine)
    img.header.set_xyzt_units(xyz="mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def write_msd_phantom_dataset(out_dir: str | os.PathLike, n_cases: int = 12, seed: int = 0, kind: str = "mri",
                              layout: str = "msd", shape=None, spacing=None, n_test: int = 2) -> Path:
    """Write a synthetic task folder ``<out_dir>`` (``dataset.json``, ``imagesTr``,
    ``labelsTr``, ``imagesTs``).

    Args:
        n_cases: labelled training cases (>= 1); ``n_test``: unlabelled ones in ``imagesTs``.
        kind: ``mri`` or ``ct`` (see the module docstring).
        layout: ``msd`` or ``nnunet``.
        shape, spacing: grid and voxel size (mm); defaults per kind.

    Returns:
        the task folder.

    Raises:
        ValueError: unknown kind or layout, ``n_cases < 1``, a shape or spacing that is not
            three positive numbers (sizes >= 16).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if isinstance(n_cases, bool) or int(n_cases) != n_cases or n_cases < 1 or n_test < 0:
        raise ValueError(f"n_cases must be an integer >= 1 and n_test >= 0, got {n_cases!r}, {n_test!r}")
    shape = tuple(int(s) for s in (shape or DEFAULT_SHAPE[kind]))
    spacing = tuple(float(s) for s in (spacing or DEFAULT_SPACING[kind]))
    if len(shape) != 3 or min(shape) < 16 or len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"shape must be 3 sizes >= 16 and spacing 3 positive numbers, got {shape}, {spacing}")
    out = Path(out_dir)
    task = "hippophantom" if kind == "mri" else "liverphantom"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-(n - 1) / 2 * s for n, s in zip(shape, spacing)]
    image_dtype = np.int16 if kind == "ct" else np.uint8
    suffix = "_0000" if layout == "nnunet" else ""
    training = []
    for i in range(1, n_cases + n_test + 1):
        case_seed = phantom_case_seed(seed, i)
        image, label = make_ct_case(shape, spacing, case_seed) if kind == "ct" else make_mri_case(shape, case_seed)
        name = f"{task}_{i:03d}"
        labelled = i <= n_cases
        images_dir = out / ("imagesTr" if labelled else "imagesTs")
        _save(np.rint(image), affine, image_dtype, images_dir / f"{name}{suffix}.nii.gz")
        if labelled:
            _save(label, affine, np.uint8, out / "labelsTr" / f"{name}.nii.gz")
            training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    classes = CLASSES[kind]
    meta = {"name": task, "description": f"synthetic {kind.upper()} phantom written by pdeseg", "tensorImageSize": "3D",
            "numTraining": n_cases}
    if layout == "msd":
        meta |= {"modality": {"0": CHANNEL[kind]}, "labels": {str(v): n for v, n in enumerate(classes)},
                 "numTest": n_test, "training": training,
                 "test": [f"./imagesTs/{task}_{i:03d}.nii.gz" for i in range(n_cases + 1, n_cases + n_test + 1)]}
    else:
        meta |= {"channel_names": {"0": CHANNEL[kind]}, "labels": {n: v for v, n in enumerate(classes)}, "file_ending": ".nii.gz"}
    (out / "dataset.json").write_text(json.dumps(meta, indent=1))
    log.info("wrote %d %s phantom cases (%s layout, %s voxels of %s mm) to %s", n_cases + n_test, kind, layout, shape, spacing, out)
    return out
