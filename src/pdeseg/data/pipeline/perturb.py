"""Perturbations of raw image intensities: Gaussian and Rician noise, and a smooth bias field.

Every random draw of a case depends only on ``(seed, case id, kind)`` (:func:`perturbation_rng`),
so every model sees the same noisy image, and the levels of one kind scale one and the same
standard-normal draw (common random numbers). Formulas, for an image ``x`` of shape
``(C, *spatial)``, channel ``c``, ``s_c`` its :func:`intensity_scale` and ``n, n1, n2``
independent standard normal fields:

* ``gaussian``: ``x + level * s_c * n``;
* ``rician``: ``sqrt((x + level * s_c * n1)^2 + (level * s_c * n2)^2)`` (the magnitude of a
  complex MR signal with Gaussian noise on the real and imaginary channels);
* ``bias``: ``x * exp(level * f_c)`` with ``f_c`` a random smooth field: a polynomial of degree
  <= 3 in normalised coordinates ``u_i = (2 k_i + 1) / n_i - 1`` (voxel centres in ``(-1, 1)``),
  standardised over the grid (:func:`bias_log_field`). So ``level`` is the standard deviation of
  the log bias field over the image.

``s_c`` is the 99th percentile of ``|x_c|`` over the channel's non-zero voxels, so a level means
the same on MRI, CT (Hounsfield units) and 8-bit images. Level 0 is the identity.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Sequence

import numpy as np

from pdeseg.data.pipeline.preprocess import nonzero_mask
from pdeseg.errors import ConfigError

KINDS = ("gaussian", "rician", "bias")
#: Highest total degree of the bias field's polynomial.
BIAS_DEGREE = 3
#: Normalisations for which exact zeros mean "outside the body": the perturbation leaves them 0.
ZERO_IS_BACKGROUND = ("zscore", "minmax")


def check_kind(kind: str) -> str:
    """Raises ConfigError for a perturbation kind that is not one of :data:`KINDS`."""
    if kind not in KINDS:
        raise ConfigError(f"--noise: unknown perturbation {kind!r}; use one or more of {', '.join(KINDS)}")
    return kind


def check_level(level: float) -> float:
    """Raises ConfigError for a level that is not a finite number >= 0."""
    if isinstance(level, bool) or not isinstance(level, (int, float, np.integer, np.floating)) \
            or not math.isfinite(level) or level < 0:
        raise ConfigError(f"--levels: a perturbation level must be a finite number >= 0 (a share of the image's "
                          f"intensity scale), got {level!r}")
    return float(level)


def intensity_scale(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Robust intensity scale of each channel: the 99th percentile of ``|x|`` over the channel's
    non-zero voxels (inside ``mask`` when given); 0 for a channel without any.

    Args:
        image: ``(C, *spatial)`` raw intensities; mask: bool ``(*spatial)`` or None.

    Returns:
        float64 ``(C,)``.
    """
    scales = np.zeros(image.shape[0])
    for c in range(image.shape[0]):
        values = np.abs(image[c][mask] if mask is not None else image[c]).astype(np.float64)
        values = values[values != 0]
        if values.size:
            scales[c] = float(np.percentile(values, 99))
    return scales


def perturbation_rng(seed: int, case_id: str, kind: str) -> np.random.Generator:
    """The random generator of one case's perturbation: a function of ``(seed, case id, kind)``
    only (stable across processes and machines), shared by every level of that kind."""
    digest = hashlib.sha256(f"pdeseg-robustness|{int(seed)}|{case_id}|{kind}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def bias_log_field(shape: Sequence[int], rng: np.random.Generator, degree: int = BIAS_DEGREE) -> np.ndarray:
    """A standardised random polynomial ``f`` of total degree ``1..degree`` on a grid of ``shape``
    (see the module docstring): mean 0 and sd 1 over the grid (all zeros where the grid has no
    spread, e.g. a single voxel).

    Returns:
        float64 ``shape``.
    """
    shape = tuple(int(n) for n in shape)
    axes = [(2 * np.arange(n) + 1) / n - 1 for n in shape]
    field_ = np.zeros(shape)
    for powers in itertools.product(range(degree + 1), repeat=len(shape)):
        if not 1 <= sum(powers) <= degree:
            continue
        term = np.ones(shape)
        for i, (u, p) in enumerate(zip(axes, powers)):
            if p:
                term = term * (u ** p).reshape([-1 if j == i else 1 for j in range(len(shape))])
        field_ += rng.standard_normal() * term
    sd = field_.std()
    return (field_ - field_.mean()) / sd if sd > 1e-12 else np.zeros(shape)


def perturb(image: np.ndarray, kind: str, level: float, *, seed: int = 0, case_id: str = "",
            scale: Sequence[float] | np.ndarray | None = None, mask: np.ndarray | None = None) -> np.ndarray:
    """Perturb raw intensities (formulas in the module docstring).

    Args:
        image: ``(C, *spatial)`` raw intensities.
        kind: ``gaussian``, ``rician`` or ``bias``.
        level: noise sd as a share of ``scale`` (``gaussian``, ``rician``), or sd of the log
            bias field (``bias``); 0 returns ``image`` itself.
        seed, case_id: select the random draw (:func:`perturbation_rng`); every level of one
            ``(seed, case_id, kind)`` scales the same draw.
        scale: intensity scale per channel (default :func:`intensity_scale` of ``image`` inside ``mask``).
        mask: bool ``(*spatial)``: perturb only these voxels (the others keep their values), or None.

    Returns:
        float32 ``(C, *spatial)`` (``image`` unchanged when ``level`` is 0).

    Raises:
        ConfigError: an unknown kind, or a level that is negative or not finite.
    """
    check_kind(kind)
    level = check_level(level)
    if level == 0:
        return image
    rng = perturbation_rng(seed, case_id, kind)
    x = np.asarray(image, dtype=np.float32)
    if kind == "bias":
        gain = np.stack([np.exp(level * bias_log_field(x.shape[1:], rng)) for _ in range(x.shape[0])]).astype(np.float32)
        out = x * gain
    else:
        s = np.asarray(intensity_scale(x, mask) if scale is None else scale, dtype=np.float64).reshape(-1)
        if s.size == 1:
            s = np.repeat(s, x.shape[0])
        sigma = (level * s).astype(np.float32).reshape((-1,) + (1,) * (x.ndim - 1))
        real = x + sigma * rng.standard_normal(x.shape, dtype=np.float32)
        if kind == "gaussian":
            out = real
        else:
            imag = sigma * rng.standard_normal(x.shape, dtype=np.float32)
            out = np.sqrt(real * real + imag * imag)
    if mask is not None:
        out = np.where(mask[None], out, x)
    return out.astype(np.float32, copy=False)


def perturbation_region(image: np.ndarray, normalization: str) -> tuple[np.ndarray | None, np.ndarray]:
    """``(mask, scale)`` of a raw case for :func:`perturb`: the voxels where any channel is
    non-zero for normalisations that treat zeros as background (:data:`ZERO_IS_BACKGROUND`),
    else None (every voxel); and the per-channel :func:`intensity_scale` inside that mask."""
    mask = nonzero_mask(image) if normalization in ZERO_IS_BACKGROUND else None
    return mask, intensity_scale(image, mask)
