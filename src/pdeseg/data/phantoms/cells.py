"""Synthetic phase-contrast cell images in the LIVECell layout, so that the COCO reader, the
instance targets and the unseen-cell-type protocols run without any real data.

Three cell types that differ in size, shape, texture and contact:

* ``round``: small near-circular cells (radius 4.5-6.5 px, about 100 px in area), smooth
  interior with a darker centre, apart from each other;
* ``elongated``: spindle-like ellipses (semi-axes 12-17 and 3-4.2 px, about 160 px, any
  orientation, eccentricity near 0.97), finely striped along their long axis, apart from
  each other;
* ``clustered``: large irregular blobs (radius 8-11 px with a wobbly outline, about 260 px)
  in clusters of 2-4 cells that touch along a shared border (the union of overlapping blobs
  split between them), a granular interior and a slightly brighter line where two cells meet.

Every cell is kept clean for a boundary output: no part narrower than 3 pixels, one piece,
and an interior (the cell less its boundary pixels, the rule of
:func:`pdeseg.data.pipeline.label_geometry.boundary_targets`) in one piece, so that the watershed of the
true 3-class target gives the cells back.
Separate objects (single cells, clusters) keep at least ``GAP`` pixels of background between
them, and every cell lies wholly inside the image. Rendering imitates phase contrast: a grey
background with smooth shading, dark cells, a bright halo fading outwards from every cell,
a slight blur and Gaussian noise; 8-bit grey.

:func:`write_cell_phantom` writes::

    <out>/images/<TYPE>_<n>.tif                         grey uint8 (TYPE upper-cased: ROUND_0.tif)
    <out>/annotations/livecell_coco_{train,val,test}.json   all types (as LIVECell's split files)
    <out>/annotations/<type>_{train,val,test}.json         one type (as LIVECell_single_cells)

Each image entry holds ``id``, ``file_name``, ``height``, ``width`` and ``cell_type`` (the
upper-cased type); each annotation ``id``, ``image_id``, ``category_id`` 1 (``cell``),
``segmentation``, ``area``, ``bbox`` ``[x, y, w, h]`` and ``iscrowd`` 0, numbered in the
order of the generator's instance labels. With ``segmentation="mixed"`` the annotations of
an image cycle through a polygon (outline of the mask, exact up to rasterisation), a
compressed RLE and an uncompressed RLE (both exact); ``"rle"`` or ``"polygon"`` use one form.
Everything is deterministic given the seed; 24 images of 128x128 take a fraction of a second.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from pdeseg.data.phantoms.brats import _smooth_noise, phantom_case_seed

log = logging.getLogger(__name__)

CELL_TYPES = ("round", "elongated", "clustered")
SPLITS = ("train", "val", "test")
SEGMENTATIONS = ("mixed", "rle", "polygon")
#: Background pixels kept between separate objects (cells, clusters).
GAP = 3
_MIN_SIZE = 48


def _ellipse(a: float, b: float, angle: float) -> np.ndarray:
    """Boolean patch of an ellipse with semi-axes ``a`` (along ``angle``) and ``b``."""
    r = int(np.ceil(max(a, b))) + 1
    y, x = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float64)
    c, s = np.cos(angle), np.sin(angle)
    u, v = x * c + y * s, -x * s + y * c
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _blob_level(y: np.ndarray, x: np.ndarray, cy: float, cx: float, r0: float, harmonics) -> np.ndarray:
    """Normalised radius of points relative to a wobbly outline (< 1 inside)."""
    dy, dx = y - cy, x - cx
    theta = np.arctan2(dy, dx)
    radius = r0 * (1 + sum(a * np.cos(k * theta + p) for k, a, p in harmonics))
    return np.hypot(dy, dx) / radius


def _cluster(rng: np.random.Generator) -> list[np.ndarray]:
    """Patches (same frame) of 2-4 touching irregular cells."""
    n = int(rng.integers(2, 5))
    centres, radii, shapes = [np.zeros(2)], [rng.uniform(8, 11)], []
    for _ in range(n - 1):
        base = rng.integers(len(centres))
        r = rng.uniform(8, 11)
        phi = rng.uniform(0, 2 * np.pi)
        dist = 0.8 * (radii[base] + r)  # blobs overlap: the union is split between them
        centres.append(centres[base] + dist * np.array([np.sin(phi), np.cos(phi)]))
        radii.append(r)
    for _r in radii:
        shapes.append([(k, rng.uniform(0, 0.12), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4)])
    pts = np.array(centres)
    lo = np.floor(pts.min(0) - max(radii) * 1.5) - 1
    hi = np.ceil(pts.max(0) + max(radii) * 1.5) + 1
    y, x = np.mgrid[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1].astype(np.float64)
    levels = np.stack([_blob_level(y, x, c[0], c[1], r, h) for c, r, h in zip(centres, radii, shapes)])
    inside = levels.min(0) < 1
    owner = levels.argmin(0)
    cells = [_clean(inside & (owner == i)) for i in range(n)]
    return [c for c in cells if c is not None]


def _clean(m: np.ndarray) -> np.ndarray | None:
    """A cell shape a boundary output can describe, or None: no part narrower than 3 pixels
    (opened by a 3x3 square), one 4-connected piece of at least 30 pixels, and an interior
    (the cell less its pixels with a face neighbour outside it, the rule of
    :func:`pdeseg.data.pipeline.label_geometry.boundary_targets`) that is one 4-connected piece too."""
    m = ndimage.binary_opening(m, structure=np.ones((3, 3), bool))
    lab, k = ndimage.label(m)
    if k > 1:
        m = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    if m.sum() < 30:
        return None
    interior = ndimage.binary_erosion(m, structure=ndimage.generate_binary_structure(2, 1), border_value=0)
    return m if ndimage.label(interior)[1] == 1 else None


def _shapes(cell_type: str, rng: np.random.Generator) -> list[np.ndarray]:
    """One object to place: a list of same-frame boolean patches (one per cell)."""
    if cell_type == "round":
        r = rng.uniform(4.5, 6.5)
        shape = _clean(_ellipse(r * rng.uniform(1.0, 1.15), r, rng.uniform(0, np.pi)))
    elif cell_type == "elongated":
        shape = _clean(_ellipse(rng.uniform(12, 17), rng.uniform(3.0, 4.2), rng.uniform(0, np.pi)))
    else:
        return _cluster(rng)
    return [] if shape is None else [shape]


#: Objects tried per image of 128x128 (scaled with the image area): (min, max).
_COUNTS = {"round": (9, 15), "elongated": (5, 9), "clustered": (3, 5)}
#: Rendering per type: cell darkness below the background, halo (amplitude, width in pixels).
_LOOK = {"round": dict(dark=62.0, halo=(48.0, 2.2)), "elongated": dict(dark=52.0, halo=(40.0, 1.6)),
         "clustered": dict(dark=70.0, halo=(55.0, 2.6))}


def _texture(cell_type: str, rng: np.random.Generator, instances: np.ndarray) -> np.ndarray:
    h, w = instances.shape
    if cell_type == "round":  # smooth, with a darker nucleus in the middle of each cell
        tex = 4.0 * _smooth_noise(rng, (h, w, 1), 6)[..., 0]
        inner = ndimage.distance_transform_edt(instances > 0)
        tex -= 14.0 * np.clip(inner - 3.0, 0, 3) / 3
        return tex
    if cell_type == "elongated":  # fine stripes along each cell's long axis
        tex = np.zeros((h, w), np.float32)
        yy, xx = np.mgrid[0:h, 0:w]
        for sl, label in zip(ndimage.find_objects(instances), range(1, instances.max() + 1)):
            if sl is None:
                continue
            m = instances[sl] == label
            y, x = yy[sl][m], xx[sl][m]
            cov = np.cov(np.stack([y, x]))
            vals, vecs = np.linalg.eigh(cov)
            minor = vecs[:, 0]  # stripes run along the major axis: vary across it
            tex[y, x] = 9.0 * np.sin(2 * np.pi * (minor[0] * y + minor[1] * x) / 2.5 + rng.uniform(0, 6.3))
        return tex
    grain = ndimage.gaussian_filter(rng.standard_normal((h, w)), 0.8)  # granular
    return 14.0 * grain / max(float(grain.std()), 1e-6)


def make_cell_image(cell_type: str, rng: np.random.Generator,
                    size: Sequence[int] = (128, 128)) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic phase-contrast image of ``cell_type``.

    Returns:
        ``(image uint8 (H, W), instances int32 (H, W))``: 0 background, cells 1..N.

    Raises:
        ValueError: unknown cell type, or a size that is not two integers >= 48.
    """
    if cell_type not in CELL_TYPES:
        raise ValueError(f"cell_type must be one of {', '.join(CELL_TYPES)}, got {cell_type!r}")
    h, w = _check_size(size)
    instances = np.zeros((h, w), np.int32)
    blocked = np.zeros((h, w), bool)  # cells grown by GAP: where no new object may go
    lo, hi = _COUNTS[cell_type]
    scale = h * w / (128 * 128)
    target = max(1, int(round(rng.integers(lo, hi + 1) * scale)))
    placed = 0
    for _ in range(target * 30):
        if placed >= target:
            break
        patches = _shapes(cell_type, rng)
        if not patches:
            continue
        union = np.logical_or.reduce(patches)
        ph, pw = union.shape
        if ph + 2 > h or pw + 2 > w:
            continue
        y0, x0 = int(rng.integers(1, h - ph)), int(rng.integers(1, w - pw))
        window = (slice(y0, y0 + ph), slice(x0, x0 + pw))
        if (blocked[window] & union).any():
            continue
        for p in patches:
            instances[window][p] = instances.max() + 1
        # grow by GAP in a padded frame (the dilation reaches past the patch)
        pad = GAP
        frame = np.zeros((ph + 2 * pad, pw + 2 * pad), bool)
        frame[pad:pad + ph, pad:pad + pw] = union
        grown = ndimage.binary_dilation(frame, iterations=GAP)
        ys, xs = np.nonzero(grown)
        ys, xs = ys + y0 - pad, xs + x0 - pad
        ok = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        blocked[ys[ok], xs[ok]] = True
        placed += 1
    image = _render(cell_type, rng, instances)
    return image, instances


def _render(cell_type: str, rng: np.random.Generator, instances: np.ndarray) -> np.ndarray:
    h, w = instances.shape
    look = _LOOK[cell_type]
    cells = instances > 0
    image = 128.0 + 7.0 * _smooth_noise(rng, (h, w, 1), 24)[..., 0]
    outside = ndimage.distance_transform_edt(~cells) if cells.any() else np.full((h, w), np.inf)
    amp, width = look["halo"]
    image += np.where(cells, 0.0, amp * np.exp(-(outside - 1.0) / width))
    tex = _texture(cell_type, rng, instances)
    image = np.where(cells, image - look["dark"] * rng.uniform(0.9, 1.1) + tex, image)
    # where two cells meet, a thin bright line (as the membranes of touching cells look)
    contact = np.zeros((h, w), bool)
    for axis in (0, 1):
        a = instances
        b = np.roll(instances, -1, axis=axis)
        edge = (a > 0) & (b > 0) & (a != b)
        if axis == 0:
            edge[-1, :] = False
        else:
            edge[:, -1] = False
        contact |= edge | np.roll(edge, 1, axis=axis)
    image[contact] += 30.0
    image = ndimage.gaussian_filter(image, 0.6) + rng.normal(0, 5.0, (h, w))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    try:
        dims = tuple(int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be two integers (height, width), got {size!r}") from None
    if len(dims) != 2 or min(dims) < _MIN_SIZE or any(d != s for d, s in zip(dims, size)):
        raise ValueError(f"size must be two integers >= {_MIN_SIZE} (height, width), got {size!r}")
    return dims  # type: ignore[return-value]


# --------------------------------------------------------------------------------------
# COCO annotations
# --------------------------------------------------------------------------------------


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE of a boolean mask (``counts`` a list, column-major runs starting
    with background), the form ``iscrowd`` annotations use. The tests check it against
    ``pycocotools.mask.encode``."""
    flat = np.asarray(mask, bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": list(mask.shape), "counts": [int(c) for c in counts]}


def compressed_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE (``counts`` a string) of a boolean mask, by pycocotools."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def polygons(mask: np.ndarray) -> list[list[float]] | None:
    """Outline polygons of a mask in COCO coordinates (pixel ``(x, y)`` covers
    ``[x, x+1) x [y, y+1)``), or None when a polygon cannot describe it (holes, parts
    too small for 3 points)."""
    from skimage import measure

    ys, xs = np.nonzero(mask)
    if not len(ys):
        return None
    y0, x0 = ys.min(), xs.min()
    crop = np.pad(mask[y0:ys.max() + 1, x0:xs.max() + 1], 1)
    if ndimage.label(~crop)[1] > 1:  # a hole: polygons are filled
        return None
    out = []
    for c in measure.find_contours(crop.astype(np.float32), 0.5):
        c = c[:-1]  # closed: drop the repeated point
        if len(c) < 3:
            return None
        # undo the padding and the crop; pixel centres sit at +0.5 in COCO coordinates
        yx = c + np.array([y0 - 1 + 0.5, x0 - 1 + 0.5])
        out.append([round(float(v), 2) for v in yx[:, ::-1].ravel()])
    return out or None


def _annotation(mask: np.ndarray, form: str, ann_id: int, image_id: int) -> dict:
    ys, xs = np.nonzero(mask)
    seg = polygons(mask) if form == "polygon" else None
    if seg is None:
        seg = uncompressed_rle(mask) if form == "uncompressed" else compressed_rle(mask)
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "segmentation": seg, "area": int(mask.sum()),
            "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
            "iscrowd": 0}


def phantom_case(cell_type: str, index: int, seed: int = 0,
                 size: Sequence[int] = (128, 128)) -> tuple[np.ndarray, np.ndarray]:
    """Image ``index`` of ``cell_type`` in the data set of ``seed`` (what
    :func:`write_cell_phantom` writes as ``<TYPE>_<index>.tif``): ``(image, instances)``."""
    if cell_type not in CELL_TYPES:
        raise ValueError(f"cell_type must be one of {', '.join(CELL_TYPES)}, got {cell_type!r}")
    rng = np.random.default_rng(phantom_case_seed(seed, 1000 * CELL_TYPES.index(cell_type) + int(index)))
    return make_cell_image(cell_type, rng, size)


def _split_counts(n: int) -> tuple[int, int, int]:
    n_test = max(1, round(0.2 * n)) if n >= 3 else 0
    n_val = max(1, round(0.2 * n)) if n >= 3 else 0
    return n - n_val - n_test, n_val, n_test


def write_cell_phantom(out_dir: str | os.PathLike, n_per_type: int = 8, size: Sequence[int] = (128, 128), seed: int = 0,
                       cell_types: Sequence[str] = CELL_TYPES, segmentation: str = "mixed") -> Path:
    """Write a synthetic LIVECell-like data set (layout in the module docstring).

    Args:
        n_per_type: images per cell type (>= 1); of each type about 60 % go to ``train``,
            20 % to ``val`` and 20 % to ``test`` (all to ``train`` below 3 images).
        size: ``(height, width)`` of every image (>= 48 each).
        seed: data set seed; image ``i`` of type ``t`` uses a seed derived from both.
        cell_types: a selection of :data:`CELL_TYPES`.
        segmentation: ``mixed``, ``rle`` or ``polygon`` (see the module docstring).

    Returns:
        the data set folder.

    Raises:
        ValueError: unknown cell types or segmentation form, ``n_per_type < 1``, a bad size.
    """
    import tifffile

    cell_types = tuple(cell_types)
    odd = [t for t in cell_types if t not in CELL_TYPES]
    if odd or not cell_types or len(set(cell_types)) != len(cell_types):
        raise ValueError(f"cell_types must be distinct names among {', '.join(CELL_TYPES)}, got {list(cell_types)}")
    if segmentation not in SEGMENTATIONS:
        raise ValueError(f"segmentation must be one of {', '.join(SEGMENTATIONS)}, got {segmentation!r}")
    if isinstance(n_per_type, bool) or int(n_per_type) != n_per_type or n_per_type < 1:
        raise ValueError(f"n_per_type must be an integer >= 1, got {n_per_type!r}")
    h, w = _check_size(size)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    forms = {"mixed": ("polygon", "compressed", "uncompressed"), "rle": ("compressed", "uncompressed"),
             "polygon": ("polygon",)}[segmentation]
    files: dict[tuple[str, str], dict] = {}
    image_id = ann_id = 0
    for cell_type in cell_types:
        splits = [s for s, k in zip(SPLITS, _split_counts(int(n_per_type))) for _ in range(k)]
        for i, split in enumerate(splits):
            image, instances = phantom_case(cell_type, i, seed, (h, w))
            name = f"{cell_type.upper()}_{i}.tif"
            tifffile.imwrite(out / "images" / name, image)
            image_id += 1
            entry = {"id": image_id, "file_name": name, "height": h, "width": w, "cell_type": cell_type.upper()}
            anns = []
            for label in range(1, int(instances.max()) + 1):
                ann_id += 1
                anns.append(_annotation(instances == label, forms[(label - 1) % len(forms)], ann_id, image_id))
            for key in (("livecell_coco", split), (cell_type, split)):
                d = files.setdefault(key, {"images": [], "annotations": []})
                d["images"].append(entry)
                d["annotations"] += anns
    info = {"description": "synthetic phase-contrast cells written by pdeseg (LIVECell layout)", "version": "1"}
    for prefix in ("livecell_coco", *cell_types):
        for split in SPLITS:
            d = files.get((prefix, split), {"images": [], "annotations": []})
            doc = {"info": info, "licenses": [], "categories": [{"id": 1, "name": "cell", "supercategory": "cell"}],
                   **d}
            (out / "annotations" / f"{prefix}_{split}.json").write_text(json.dumps(doc))
    log.info("wrote %d synthetic cell images (%s, %dx%d) to %s", image_id, ", ".join(cell_types), h, w, out)
    return out
