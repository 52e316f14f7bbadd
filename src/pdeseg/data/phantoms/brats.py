"""Synthetic BraTS-like brain MRI phantoms, written as real NIfTI files.

A phantom case is a skull-stripped brain (a jittered, wobbly ellipsoid) with
white matter, a grey-matter cortex with sulci, an interhemispheric fissure,
deep grey nuclei, two lateral ventricles and a thin CSF rim, plus one glioma-like
tumour: a necrotic core (label 1) inside an enhancing rim (label 4), surrounded
by a larger, irregular oedema (label 2) that spreads mainly through white
matter. Four contrasts (FLAIR, T1, T1ce, T2) are rendered from the tissue map
with realistic relative intensities, then degraded by partial-volume blur,
tissue texture, a smooth multiplicative bias field per modality, a per-case
global scale and Rician noise. Outside the brain every modality is exactly 0,
as in BraTS.

:func:`write_phantom_dataset` writes cases in the BraTS 2018-2021 layout::

    <out>/<prefix>_<NNN>/<prefix>_<NNN>_{flair,t1,t1ce,t2,seg}.nii.gz

int16 data, 1 mm isotropic, with the BraTS affine ``diag(-1, -1, 1)`` and the
Y translation ``H - 1``, so that the real BraTS reader is exercised end to end.

Everything is deterministic given the seed (same seed, byte-identical arrays).
Only numpy and scipy.ndimage are used; a 128x128x48 case takes a few tenths of
a second.
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = ["MODALITIES", "make_phantom_case", "phantom_case_seed", "write_lgg_phantom_dataset",
           "write_phantom_dataset"]

logger = logging.getLogger(__name__)

#: Modality names, in the order BraTS readers usually stack them.
MODALITIES: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")

# Tissue codes of the internal tissue map (not BraTS labels).
BG, CSF, GM, WM, OEDEMA, ENHANCING, NECROSIS = range(7)
_TISSUE_TO_LABEL = np.array([0, 0, 0, 0, 2, 4, 1], dtype=np.int16)

# Relative intensities per tissue code [BG, CSF, GM, WM, oedema, enhancing, necrosis].
# T1: WM > GM > CSF, tumour hypo-intense, oedema slightly hypo.
# T1ce: as T1, enhancing rim strongly bright, necrosis dark.
# T2: CSF brightest, necrosis and oedema bright, GM > WM.
# FLAIR: CSF suppressed, oedema and tumour bright, GM >= WM.
_CONTRAST = {
    "flair": np.array([0.0, 0.18, 0.86, 0.68, 1.50, 1.20, 0.95]),
    "t1": np.array([0.0, 0.30, 0.64, 0.86, 0.56, 0.50, 0.36]),
    "t1ce": np.array([0.0, 0.28, 0.60, 0.80, 0.52, 1.90, 0.30]),
    "t2": np.array([0.0, 2.1, 0.88, 0.62, 1.28, 1.02, 1.45]),
}
# Typical BraTS-like magnitudes (arbitrary units) for each modality.
_BASE_SCALE = {"flair": 330.0, "t1": 420.0, "t1ce": 380.0, "t2": 650.0}
# Within-tissue texture amplitude per tissue code (tumour is heterogeneous).
_TEXTURE_AMP = np.array([0.0, 0.03, 0.035, 0.03, 0.07, 0.10, 0.12], dtype=np.float32)

_MIN_DIM = 16


# ----------------------------------------------------------------------------- helpers


def _bspline_matrix(n_out: int, cell: float, offset: float) -> np.ndarray:
    """Cubic B-spline interpolation matrix (n_out, n_knots), knot spacing ``cell`` voxels."""
    t = np.arange(n_out, dtype=np.float64) / cell + offset
    k = np.floor(t).astype(np.int64)
    u = t - k
    w = np.stack(
        [
            (1.0 - u) ** 3 / 6.0,
            (3.0 * u**3 - 6.0 * u**2 + 4.0) / 6.0,
            (-3.0 * u**3 + 3.0 * u**2 + 3.0 * u + 1.0) / 6.0,
            u**3 / 6.0,
        ],
        axis=1,
    )
    mat = np.zeros((n_out, int(k[-1]) + 4), dtype=np.float64)
    rows = np.arange(n_out)
    for j in range(4):
        mat[rows, k + j] = w[:, j]
    return mat


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], cell: float) -> np.ndarray:
    """Smooth random field, zero mean, unit std, correlation length ~``cell`` voxels.

    Gaussian noise on a coarse grid, upsampled separably with cubic B-spline
    matrices (C2-smooth; a few ms for 128x128x48).

    Returns:
        float32 array of ``shape``.
    """
    cell = max(float(cell), 1.0)
    mats = [_bspline_matrix(int(n), cell, rng.uniform()) for n in shape]
    g = rng.standard_normal(tuple(m.shape[1] for m in mats))
    # three 2D matrix products (BLAS): contract gx, then gy, then gz
    f = np.tensordot(mats[0], g, axes=(1, 0))  # (X, gy, gz)
    f = np.tensordot(f, mats[1], axes=(1, 1)).astype(np.float32)  # (X, gz, Y)
    f = np.tensordot(f, mats[2].astype(np.float32), axes=(1, 1))  # (X, Y, Z)
    f -= f.mean()
    f /= max(float(f.std()), 1e-6)
    return f


def _rotation(rng: np.random.Generator, max_deg: Sequence[float]) -> np.ndarray:
    """Random rotation matrix from angles (about x, y, z) uniform in +-max_deg degrees."""
    ax, ay, az = (np.deg2rad(rng.uniform(-m, m)) for m in max_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    try:
        dims = tuple(int(s) for s in shape)
    except TypeError as exc:
        raise ValueError(f"shape must be a sequence of 3 integers, got {shape!r}") from exc
    if len(dims) != 3 or any(d != s for d, s in zip(dims, shape)):
        raise ValueError(f"shape must be 3 integers (X, Y, Z), got {shape!r}")
    if min(dims) < _MIN_DIM:
        raise ValueError(
            f"every dimension of shape must be >= {_MIN_DIM} voxels for a usable brain phantom, "
            f"got {dims}"
        )
    return dims  # type: ignore[return-value]


def phantom_case_seed(seed: int, index: int) -> int:
    """Seed of case ``index`` derived deterministically from the dataset ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _brats_affine(shape: Sequence[int]) -> np.ndarray:
    """BraTS-style 1 mm affine: diag(-1, -1, 1) with the Y origin at H - 1."""
    aff = np.diag([-1.0, -1.0, 1.0, 1.0])
    aff[1, 3] = shape[1] - 1
    return aff


# ----------------------------------------------------------------------------- anatomy


def _make_tissue(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Tissue map (X, Y, Z) uint8 with codes BG, CSF, GM, WM, OEDEMA, ENHANCING, NECROSIS."""
    sx, sy, sz = shape
    dims = np.array(shape, dtype=np.float64)

    # --- brain ellipsoid: centre, semi-axes, orientation (all jittered per case)
    centre = (dims - 1) / 2 + rng.uniform(-0.03, 0.03, 3) * dims
    semi = np.array([0.39, 0.45, 0.45]) * dims * rng.uniform(0.88, 1.04, 3)
    # keep the wobbly surface (+~8%) inside the volume
    semi = np.minimum(semi, (dims / 2 - 1 - np.abs(centre - (dims - 1) / 2)) / 1.1)
    rot = _rotation(rng, (4.0, 4.0, 10.0))
    mean_semi = float(np.mean(semi))

    # brain-frame normalised coordinates q = R^T (p - c) / semi, by broadcasting
    px = (np.arange(sx, dtype=np.float32) - centre[0])[:, None, None]
    py = (np.arange(sy, dtype=np.float32) - centre[1])[None, :, None]
    pz = (np.arange(sz, dtype=np.float32) - centre[2])[None, None, :]
    q = [
        (rot[0, i] * px + rot[1, i] * py + rot[2, i] * pz).astype(np.float32) / np.float32(semi[i])
        for i in range(3)
    ]
    qx, qy, qz = q
    r = np.sqrt(qx * qx + qy * qy + qz * qz)

    # wobbly outer surface
    n_surf = _smooth_noise(rng, shape, cell=max(mean_semi / 2.5, 3.0))
    s = r / (1.0 + 0.035 * n_surf)
    brain = s < 1.0

    tissue = np.zeros(shape, dtype=np.uint8)
    tissue[brain] = WM

    # --- cortex: grey-matter band with a wobbly inner (GM/WM) boundary
    n_gm = _smooth_noise(rng, shape, cell=max(mean_semi / 7.0, 2.0))
    gm_depth = rng.uniform(0.82, 0.87)
    gm_inner = gm_depth + 0.06 * n_gm
    tissue[brain & (s > gm_inner)] = GM

    # sulci: zero level sets of a smooth field, in the outer part of the cortex
    n_sulc = _smooth_noise(rng, shape, cell=max(mean_semi / 6.0, 2.0))
    sulci = brain & (np.abs(n_sulc) < 0.1) & (s > gm_inner + 0.04)
    # thin CSF rim at the surface (about 1-1.5 voxel)
    rim = brain & (s > 1.0 - rng.uniform(1.0, 1.6) / mean_semi)
    tissue[sulci | rim] = CSF

    # interhemispheric fissure (CSF) lined by medial cortex (GM), in the rotated frame;
    # it stops above the corpus callosum, so the hemispheres join around the ventricles
    xmm = np.abs(qx * np.float32(semi[0]) + 0.8 * n_surf)  # distance to the midline in voxels
    callosum = (np.abs(qy + 0.02) < 0.42) & (qz < 0.38)
    tissue[brain & (xmm < 3.0) & (s > 0.5) & ~callosum] = GM
    tissue[brain & (xmm < 0.9) & (s > 0.55) & ~callosum] = CSF

    # deep grey nuclei (thalamus / basal ganglia) either side of the ventricles
    for side in (-1.0, 1.0):
        d = ((qx - side * 0.27) / 0.1) ** 2 + ((qy - 0.06) / 0.18) ** 2 + ((qz + 0.05) / 0.25) ** 2
        tissue[brain & (d < 1.0 + 0.2 * n_gm)] = GM

    # lateral ventricles: two curved, elongated blobs near the centre (frontal horns at low Y)
    vsize = rng.uniform(0.8, 1.3)
    n_v = _smooth_noise(rng, shape, cell=max(mean_semi / 6.0, 2.0))
    for side in (-1.0, 1.0):
        cx = side * (0.1 * vsize + 0.03) - side * 0.3 * (qy + 0.02) ** 2  # banana shape
        d = (
            ((qx - cx) / (0.075 * vsize)) ** 2
            + ((qy + 0.02) / (0.4 * vsize)) ** 2
            + ((qz - 0.1) / (0.3 * vsize)) ** 2
        )
        tissue[brain & (d < 1.0 + 0.25 * n_v)] = CSF

    # --- tumour: centre inside one hemisphere, in normalised brain coordinates
    side = rng.choice([-1.0, 1.0])
    while True:
        ct = np.array(
            [side * rng.uniform(0.28, 0.58), rng.uniform(-0.55, 0.55), rng.uniform(-0.45, 0.45)]
        )
        if np.linalg.norm(ct) < 0.65:
            break
    rho = rng.uniform(0.12, 0.24)  # core radius, as a fraction of the brain semi-axes
    axes = rho * rng.uniform(0.8, 1.2, 3)
    # tumour-frame radius: 1 on the (unperturbed) boundary of the core
    dt = np.sqrt(
        ((qx - ct[0]) / axes[0]) ** 2
        + ((qy - ct[1]) / axes[1]) ** 2
        + ((qz - ct[2]) / axes[2]) ** 2
    )
    core_vox = rho * mean_semi  # core radius in voxels

    n_core = _smooth_noise(rng, shape, cell=max(0.6 * core_vox, 2.0))
    n_ed = _smooth_noise(rng, shape, cell=max(0.5 * core_vox, 2.0))
    n_nec = _smooth_noise(rng, shape, cell=max(0.5 * core_vox, 2.0))

    core_thr = 1.0 + 0.22 * n_core
    core = brain & (dt < core_thr)
    # necrosis fraction: about a quarter of cases have little or none
    nec_frac = rng.uniform(0.0, 0.4) if rng.uniform() < 0.25 else rng.uniform(0.62, 0.9)
    # necrosis follows the (irregular) core outline, leaving an enhancing rim of varying thickness
    # (at least ~1.5 voxels thick, so it survives partial-volume blur on small grids)
    nec_cap = min(0.88, 1.0 - 1.5 / core_vox)
    nec_local = np.minimum(nec_frac * (1.0 + 0.12 * n_nec), nec_cap)
    necrosis = core & (dt < core_thr * nec_local)
    # oedema: larger and irregular, mostly in white matter (only the inner part reaches cortex)
    ed_thr = rng.uniform(1.35, 2.1) * (1.0 + 0.3 * n_ed)
    ed_region = brain & ~core & (dt < ed_thr)
    oedema = ed_region & ((tissue == WM) | ((tissue == GM) & (dt < 0.8 * ed_thr)))

    tissue[oedema] = OEDEMA
    tissue[core] = ENHANCING
    tissue[necrosis] = NECROSIS
    return tissue


def _render(tissue: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Render four MR contrasts (X, Y, Z) float32 >= 0 from a tissue map, with nuisances."""
    shape = tissue.shape
    inside = np.flatnonzero(tissue != BG)
    mean_dim = float(np.mean(shape))

    texture = _smooth_noise(rng, shape, cell=2.0)
    texture *= _TEXTURE_AMP[tissue]
    texture += 1.0
    psf = rng.uniform(0.6, 0.9)  # partial-volume blur (voxels)
    case_scale = rng.uniform(0.6, 1.6)
    noise_frac = rng.uniform(0.015, 0.05)

    images: dict[str, np.ndarray] = {}
    for name in MODALITIES:
        # per-case contrast jitter (scanner / protocol differences), small enough to keep the order
        lut = (_CONTRAST[name] * rng.uniform(0.96, 1.04, len(_CONTRAST[name]))).astype(np.float32)
        img = lut[tissue]
        img = ndimage.gaussian_filter(img, sigma=psf, mode="constant", truncate=3.0)
        img *= texture
        bias = _smooth_noise(rng, shape, cell=mean_dim / 1.5)
        img *= np.exp(rng.uniform(0.06, 0.16) * bias)
        img *= np.float32(_BASE_SCALE[name] * case_scale * rng.uniform(0.85, 1.15))
        # Rician magnitude noise inside the brain; exactly zero outside (skull-stripped)
        vals = img.ravel()[inside]
        sigma = np.float32(noise_frac * float(np.median(vals)))
        re = vals + sigma * rng.standard_normal(vals.shape, dtype=np.float32)
        im = sigma * rng.standard_normal(vals.shape, dtype=np.float32)
        out = np.zeros(shape, dtype=np.float32)
        out.ravel()[inside] = np.sqrt(re * re + im * im)
        images[name] = out
    return images


def _make_phantom_case_with_tissue(
    shape: tuple[int, int, int] = (128, 128, 48), seed: int = 0
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Like :func:`make_phantom_case`, also returning the tissue map (X, Y, Z) uint8.

    Tissue codes: 0 background, 1 CSF, 2 GM, 3 WM, 4 oedema, 5 enhancing, 6 necrosis.
    """
    dims = _check_shape(shape)
    rng = np.random.default_rng(int(seed))
    tissue = _make_tissue(dims, rng)
    images = _render(tissue, rng)
    label = _TISSUE_TO_LABEL[tissue]
    return images, label, tissue


# ----------------------------------------------------------------------------- public API


def make_phantom_case(
    shape: tuple[int, int, int] = (128, 128, 48), seed: int = 0
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Generate one synthetic BraTS-like case in memory.

    Args:
        shape: volume size (X, Y, Z) in voxels (1 mm isotropic); every dim >= 16.
        seed: random seed; the same seed gives byte-identical arrays.

    Returns:
        ``(images, label)``: ``images`` maps ``'flair', 't1', 't1ce', 't2'`` to
        float32 volumes of shape (X, Y, Z) in arbitrary MR-like units, >= 0 and
        exactly 0 outside the brain; ``label`` is int16 (X, Y, Z) with values in
        {0 background, 1 necrotic core, 2 oedema, 4 enhancing tumour}.

    Raises:
        ValueError: if ``shape`` is not 3 integers or any dimension is < 16.
    """
    images, label, _ = _make_phantom_case_with_tissue(shape, seed)
    return images, label


def write_phantom_dataset(
    out_dir: str | os.PathLike,
    n_cases: int = 12,
    seed: int = 0,
    shape: tuple[int, int, int] = (128, 128, 48),
    prefix: str = "Phantom",
) -> list[pathlib.Path]:
    """Write a synthetic dataset in the BraTS 2018-2021 folder layout.

    Each case ``i`` (1-based) goes to
    ``out_dir/<prefix>_<iii>/<prefix>_<iii>_{flair,t1,t1ce,t2,seg}.nii.gz`` as
    int16 NIfTI with the BraTS 1 mm affine (``iii`` zero-padded to 3 digits, or
    more when ``n_cases > 999`` so that name order is case order). Case ``i`` uses a seed derived
    deterministically from ``(seed, i)``. Existing files are overwritten.

    Args:
        out_dir: output folder (created if missing).
        n_cases: number of cases, >= 1.
        seed: dataset seed.
        shape: volume size (X, Y, Z); every dim >= 16.
        prefix: case name prefix (no path separators).

    Returns:
        The case folders, sorted.

    Raises:
        ValueError: if ``n_cases < 1``, the shape is invalid, or the prefix is
            empty or contains a path separator.
    """
    if isinstance(n_cases, bool) or not isinstance(n_cases, (int, np.integer)) or n_cases < 1:
        raise ValueError(f"n_cases must be an integer >= 1, got {n_cases!r}")
    dims = _check_shape(shape)
    if not prefix or "/" in prefix or "\\" in prefix or prefix in (".", ".."):
        raise ValueError(f"prefix must be a non-empty name without path separators, got {prefix!r}")

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    affine = _brats_affine(dims)
    width = max(3, len(str(int(n_cases))))
    paths: list[pathlib.Path] = []
    for i in range(1, int(n_cases) + 1):
        name = f"{prefix}_{i:0{width}d}"
        case_dir = out / name
        case_dir.mkdir(exist_ok=True)
        images, label = make_phantom_case(dims, seed=phantom_case_seed(seed, i))
        volumes = {m: np.clip(np.rint(images[m]), 0, np.iinfo(np.int16).max) for m in MODALITIES}
        volumes["seg"] = label
        for key, arr in volumes.items():
            img = nib.Nifti1Image(arr.astype(np.int16), affine)
            img.header.set_xyzt_units(xyz="mm")
            img.set_qform(affine, code=1)
            img.set_sform(affine, code=1)
            nib.save(img, case_dir / f"{name}_{key}.nii.gz")
        counts = {lab: int((label == lab).sum()) for lab in (1, 2, 4)}
        logger.info(
            "phantom case %d/%d written to %s (voxels NCR=%d ED=%d ET=%d)",
            i, n_cases, case_dir, counts[1], counts[2], counts[4],
        )
        paths.append(case_dir)
    return sorted(paths)


def write_lgg_phantom_dataset(
    out_dir: str | os.PathLike,
    n_cases: int = 8,
    seed: int = 0,
    shape: tuple[int, int, int] = (64, 64, 24),
) -> list[pathlib.Path]:
    """Write synthetic patients in the Kaggle LGG ``kaggle_3m`` layout (for tests and demos).

    Patient ``i`` goes to ``out_dir/kaggle_3m/TCGA_PH_<iiii>_20260101/`` as one RGB TIFF per
    axial slice (``..._<n>.tif``: pre-contrast from T1, FLAIR, post-contrast from T1ce, each
    scaled to 0..255 by its 99.5th percentile) and a 0/255 mask TIFF (``..._<n>_mask.tif``,
    255 = any tumour label), ``n = 1..Z``. Slices are the phantom's ``(X, Y)`` planes.

    Returns:
        The patient folders, sorted.

    Raises:
        ValueError: if ``n_cases < 1`` or the shape is invalid.
    """
    import tifffile

    if isinstance(n_cases, bool) or not isinstance(n_cases, (int, np.integer)) or n_cases < 1:
        raise ValueError(f"n_cases must be an integer >= 1, got {n_cases!r}")
    dims = _check_shape(shape)
    root = pathlib.Path(out_dir) / "kaggle_3m"
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(1, int(n_cases) + 1):
        name = f"TCGA_PH_{i:04d}_20260101"
        folder = root / name
        folder.mkdir(exist_ok=True)
        images, label = make_phantom_case(dims, seed=phantom_case_seed(seed, i))
        rgb = []
        for m in ("t1", "flair", "t1ce"):
            v = images[m]
            top = float(np.percentile(v[v > 0], 99.5)) if (v > 0).any() else 1.0
            rgb.append(np.clip(np.rint(v / top * 255), 0, 255).astype(np.uint8))
        volume = np.stack(rgb, axis=-2)  # (X, Y, 3, Z)
        for z in range(dims[2]):
            tifffile.imwrite(folder / f"{name}_{z + 1}.tif", np.ascontiguousarray(volume[..., z]), photometric="rgb")
            tifffile.imwrite(folder / f"{name}_{z + 1}_mask.tif", ((label[..., z] > 0) * 255).astype(np.uint8))
        paths.append(folder)
    logger.info("wrote %d synthetic LGG patients to %s", n_cases, root)
    return sorted(paths)
