"""Figures of one 2D object image (microscopy): where the predicted boundaries are right or
wrong, and where the PDE penalties of :mod:`pdeseg.losses.pde` sit on the predicted
probabilities.

* :func:`boundary_errors`: matched, false and missed boundary pixels of two masks, with the
  boundary-pixel rule and the distance rule of :func:`pdeseg.metrics.instances.boundary_f1`
  (so the maps add up to the case's BF1; see the function).
* :func:`boundary_error_overlay`: those pixels coloured on the image (matched green, false
  red, missed blue), optionally over the outlines of the predicted cells.
* :func:`penalty_maps`: per-pixel phase-field energy density, reaction–diffusion residual and
  TV density of the foreground probability ``p = 1 - P(background)``, from the loss
  module's own density functions; :func:`penalty_integrals` their integrals.
* :func:`plot_cell_case`: one row image | boundary errors | ``p`` | energy | residual.

Array layout: images ``(H, W)`` (grey) or ``(H, W, 3)`` (RGB), class maps ``(H, W)``,
probabilities ``(C, H, W)`` (class axis first, as :func:`pdeseg.nn.output.class_probabilities`
gives them for one image; a trailing slice axis of size 1 is dropped). Distances are in pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from matplotlib.patches import Patch

from pdeseg.data.files import write_atomically
from pdeseg.data.pipeline.label_geometry import predicted_instances
from pdeseg.losses.pde import (
    phase_field_density,
    reaction_diffusion_residual,
    total_variation_density,
)
from pdeseg.metrics.instances import boundary_f1, boundary_matches, boundary_targets
from pdeseg.viz.figures import subplots as _subplots
from pdeseg.viz.overlays import _to_gray_rgb

#: Colours of :func:`boundary_error_overlay` (RGB, 0..255) and their legend labels.
MATCHED, FALSE, MISSED, OUTLINE = (0, 230, 0), (255, 30, 30), (40, 120, 255), (255, 215, 0)
LEGEND = ((MATCHED, "matched boundary"), (FALSE, "false boundary"), (MISSED, "missed boundary"),
          (OUTLINE, "predicted cells"))
#: Defaults of :func:`penalty_maps` (the loss terms' defaults: PhaseFieldLoss eps 1,
#: ReactionDiffusionLoss D 1, a 0.5, Allen–Cahn; TotalVariationLoss eps 0.01).
PENALTY_DEFAULTS = {"eps": 1.0, "diffusion": 1.0, "a": 0.5, "kind": "allen_cahn", "tv_eps": 0.01}


class BoundaryErrors(NamedTuple):
    """Boolean ``(H, W)`` maps of :func:`boundary_errors` (unpacks as a 3-tuple)."""

    matched: np.ndarray  # predicted boundary within the tolerance of a true boundary
    false: np.ndarray  # predicted boundary farther than the tolerance from every true boundary
    missed: np.ndarray  # true boundary farther than the tolerance from every predicted boundary


def boundary_pixels(mask: Any) -> np.ndarray:
    """Boundary pixels of a mask or instance label image, bool of its shape.

    The rule of :mod:`pdeseg.metrics.instances` (its documented boundary class of
    :func:`~pdeseg.metrics.instances.boundary_targets`, ``find_boundaries(mode='inner',
    connectivity=1)``): object pixels with a face neighbour inside the image that is
    background or another object; the image frame is not a boundary.

    Raises:
        ValueError: a float or negative label image, or one that is not 2-D or 3-D.
    """
    return boundary_targets(mask) == 2


def boundary_errors(truth_mask: Any, pred_mask: Any, tolerance: float = 2) -> BoundaryErrors:
    """Which boundary pixels :func:`~pdeseg.metrics.instances.boundary_f1` counts as right or wrong.

    Computed by :func:`~pdeseg.metrics.instances.boundary_matches`, the matching behind
    boundary_f1 (same boundary pixels, same distance rule), so that for ``B_p``, ``B_t`` the
    predicted and true boundary pixels

        precision = matched.sum() / B_p.sum(),    recall = 1 - missed.sum() / B_t.sum(),

    equal ``boundary_f1(pred_mask, true_mask, tolerance)``'s wherever both boundaries are
    non-empty. With one boundary empty every pixel of the other is false (or missed).

    Args:
        truth_mask: true mask (bool / 0-1) or instance label image, ``(H, W)`` (or 3-D).
        pred_mask: predicted mask or label image, same shape.
        tolerance: the largest matching distance in pixels, ``>= 0``.

    Returns:
        :class:`BoundaryErrors` ``(matched, false, missed)``, bool maps of the masks' shape;
        ``matched | false`` is the predicted boundary, and the three never overlap.

    Raises:
        ValueError: shapes differ, float or negative labels, or a bad tolerance.
    """
    bp, bt, p_ok, t_ok = boundary_matches(pred_mask, truth_mask, tolerance)
    return BoundaryErrors(p_ok, bp & ~p_ok, bt & ~t_ok)


def display_rgb(image: Any) -> np.ndarray:
    """``(H, W)`` intensities -> grey ``(H, W, 3)`` uint8 (1st / 99th percentiles); ``(H, W, 3)``
    RGB -> uint8 as is when it is uint8 (or float in 0..255), else scaled by its percentiles."""
    image = np.asarray(image)
    if image.ndim == 2:
        return _to_gray_rgb(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be (H, W) grey or (H, W, 3) RGB, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image
    x = image.astype(np.float64)
    if x.size and x.min() >= 0 and x.max() <= 255 and x.max() > 1:
        return np.rint(x).astype(np.uint8)
    lo, hi = np.percentile(x, [1, 99]) if x.size else (0.0, 1.0)
    return (np.clip((x - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8) if hi > lo else np.zeros(x.shape, np.uint8)


def case_image(image: Any, modalities: Any = None) -> np.ndarray:
    """The picture of a cell case: ``(C, H, W)`` or ``(C, H, W, 1)`` channels -> ``(H, W, 3)``
    when the channels are ``red, green, blue``, else the first channel ``(H, W)``."""
    x = np.asarray(image, dtype=np.float32)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim == 2:
        return x
    if list(modalities or [])[:3] == ["red", "green", "blue"] and x.shape[0] >= 3:
        return np.moveaxis(x[:3], 0, -1)
    return x[0]


def boundary_error_overlay(image: Any, truth_classes: Any, pred_classes: Any, tolerance: float = 2,
                           instances: bool | np.ndarray = False) -> np.ndarray:
    """The image with the boundary errors of the foreground (classes ``> 0``, as the case's
    ``bf1_*`` are scored) drawn on it: :data:`MATCHED` green, :data:`FALSE` red,
    :data:`MISSED` blue.

    Args:
        image: ``(H, W)`` grey (any range) or ``(H, W, 3)`` RGB.
        truth_classes, pred_classes: ``(H, W)`` integer class maps (0 background).
        tolerance: matching distance in pixels (see :func:`boundary_errors`).
        instances: first draw the outlines of the predicted cells in :data:`OUTLINE` yellow:
            these cells ``(H, W)`` (the model's own, as scored), or with True the cells of
            the class map (:func:`pdeseg.data.pipeline.label_geometry.predicted_instances`);
            the error colours are drawn over them, so yellow shows where touching predicted
            cells meet.

    Returns:
        ``(H, W, 3)`` uint8.

    Raises:
        ValueError: image, truth and prediction of different sizes, or a bad tolerance.
    """
    rgb = display_rgb(image).copy()
    truth, pred = np.asarray(truth_classes), np.asarray(pred_classes)
    if rgb.shape[:2] != truth.shape or truth.shape != pred.shape:
        raise ValueError(f"boundary_error_overlay: image {rgb.shape[:2]}, truth {truth.shape} and prediction "
                         f"{pred.shape} differ")
    errors = boundary_errors(truth > 0, pred > 0, tolerance)
    if isinstance(instances, np.ndarray):
        rgb[boundary_pixels(instances.reshape(pred.shape))] = OUTLINE
    elif instances:
        rgb[boundary_pixels(predicted_instances(pred))] = OUTLINE
    rgb[errors.matched] = MATCHED
    rgb[errors.false] = FALSE
    rgb[errors.missed] = MISSED
    return rgb


def _probabilities(probabilities: Any) -> np.ndarray:
    p = probabilities.detach().cpu().double().numpy() if isinstance(probabilities, torch.Tensor) \
        else np.asarray(probabilities, dtype=np.float64)
    if p.ndim == 4 and p.shape[-1] == 1:
        p = p[..., 0]
    if p.ndim != 3 or p.shape[0] < 1:
        raise ValueError(f"probabilities must have shape (C, H, W) (class axis first), got {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("probabilities hold NaN or inf")
    return p


def foreground_probability(probabilities: Any) -> np.ndarray:
    """``p = 1 - P(background)`` ``(H, W)`` of class probabilities ``(C, H, W)`` (``C >= 2``);
    a single channel ``(1, H, W)`` is taken as ``p`` itself."""
    p = _probabilities(probabilities)
    return p[0] if p.shape[0] == 1 else 1.0 - p[0]


def penalty_maps(probabilities: Any, eps: float = 1.0, diffusion: float = 1.0, a: float = 0.5,
                 kind: str = "allen_cahn", tv_eps: float = 0.01) -> dict[str, np.ndarray]:
    """Where the PDE penalties of :mod:`pdeseg.losses.pde` sit, per pixel (grid units).

    All act on the foreground probability ``p = 1 - P(background)`` (the penalties'
    ``channels: union``), through the loss module's own functions:

    * ``phase_field``: ``eps/2 |grad p|^2 + W(p)/eps``, :func:`~pdeseg.losses.pde.phase_field_density`
      (its sum is :func:`~pdeseg.losses.pde.phase_field_energy`);
    * ``reaction_diffusion``: ``|D lap p + f(p)|``, :func:`~pdeseg.losses.pde.reaction_diffusion_residual`
      (``ReactionDiffusionLoss`` is the mean of its square);
    * ``total_variation``: ``sqrt(|grad p|^2 + e^2) - e``, :func:`~pdeseg.losses.pde.total_variation_density`
      (its sum is :func:`~pdeseg.losses.pde.total_variation`);
    * ``foreground``: ``p`` itself.

    Args:
        probabilities: class probabilities ``(C, H, W)`` or ``(C, H, W, 1)`` (numpy or torch);
            one channel is taken as ``p``.
        eps: phase-field interface width (pixels), ``> 0``.
        diffusion, a, kind: the reaction–diffusion residual's ``D``, parameter and reaction
            (``allen_cahn`` or ``fisher_kpp``).
        tv_eps: the TV smoothing ``e >= 0``.

    Returns:
        ``{"foreground", "phase_field", "reaction_diffusion", "total_variation"}``, float64
        ``(H, W)`` maps.

    Raises:
        ValueError: a bad shape, non-finite probabilities, or an invalid penalty option.
    """
    p = foreground_probability(probabilities)
    pt = torch.from_numpy(np.ascontiguousarray(p))[None, None]
    with torch.no_grad():
        maps = {
            "phase_field": phase_field_density(pt, eps),
            "reaction_diffusion": reaction_diffusion_residual(pt, diffusion, a, kind).abs(),
            "total_variation": total_variation_density(pt, None, tv_eps),
        }
    return {"foreground": p, **{k: v[0, 0].numpy() for k, v in maps.items()}}


def penalty_options_from_config(config: Any) -> dict[str, Any]:
    """:func:`penalty_maps` options of a run's loss terms (a config dict, e.g. a checkpoint's
    ``config``, or an :class:`~pdeseg.config.ExperimentConfig`): ``phase_field``'s ``eps``,
    ``reaction_diffusion``'s ``diffusion``, ``a`` and ``reaction``, ``tv``'s ``eps``; the
    defaults (:data:`PENALTY_DEFAULTS`) for terms the run did not train with."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    terms = ((config or {}).get("loss") or {}).get("terms") or []
    out = dict(PENALTY_DEFAULTS)
    for term in terms:
        term = term if isinstance(term, dict) else dict(term)
        name = term.get("name")
        if name == "phase_field" and "eps" in term:
            out["eps"] = float(term["eps"])
        elif name == "reaction_diffusion":
            out.update({k: float(term[k]) for k in ("diffusion", "a") if k in term})
            if "reaction" in term:
                out["kind"] = str(term["reaction"])
        elif name == "tv" and "eps" in term:
            out["tv_eps"] = float(term["eps"])
    return out


def penalty_integrals(maps: dict[str, np.ndarray]) -> dict[str, float]:
    """The loss-side numbers of :func:`penalty_maps`: the phase-field energy and TV integrals
    (sums over pixels) and the mean squared reaction–diffusion residual (the
    ``ReactionDiffusionLoss`` value of ``p``)."""
    return {"phase_field": float(maps["phase_field"].sum()),
            "reaction_diffusion": float(np.mean(np.square(maps["reaction_diffusion"]))),
            "total_variation": float(maps["total_variation"].sum())}


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def plot_cell_case(image: Any, truth: Any, pred: Any, probabilities: Any, path: str | Path, title: str = "",
                   tolerance: float = 2, penalty_options: dict[str, Any] | None = None,
                   instances: bool | np.ndarray = True) -> Path:
    """One row: image | boundary errors | foreground probability | phase-field energy density |
    reaction–diffusion residual, with colour bars; the boundary F1 at ``tolerance`` (as
    the case's ``bf1_*``: foreground of truth and prediction) and the penalties' integrals
    (:func:`penalty_integrals`) in the titles. Written through a temporary file.

    Args:
        image: ``(H, W)`` grey or ``(H, W, 3)`` RGB.
        truth, pred: ``(H, W)`` class maps (0 background; pixels outside a field of view
            should already be 0 in both, as the scoring sets them).
        probabilities: ``(C, H, W)`` class probabilities of the prediction.
        path: the PNG to write (its folder is created).
        title: figure title (e.g. the case and model).
        tolerance: boundary matching distance in pixels.
        penalty_options: keyword arguments of :func:`penalty_maps` (default :data:`PENALTY_DEFAULTS`).
        instances: outline the predicted cells in the boundary panel (True: the class map's
            cells; or the model's cells ``(H, W)``, see :func:`boundary_error_overlay`).

    Returns:
        ``path``.
    """
    truth, pred = np.asarray(truth), np.asarray(pred)
    opts = {**PENALTY_DEFAULTS, **(penalty_options or {})}
    maps = penalty_maps(probabilities, **opts)
    if maps["foreground"].shape != truth.shape:
        raise ValueError(f"probabilities of size {maps['foreground'].shape} for class maps of size {truth.shape}")
    totals = penalty_integrals(maps)
    f1 = boundary_f1(pred > 0, truth > 0, tolerance)["f1"]
    overlay = boundary_error_overlay(image, truth, pred, tolerance, instances=instances)

    h, w = truth.shape
    panel = 3.3
    fig, axes = _subplots(1, 5, figsize=(5 * panel, panel * h / w + 1.3), squeeze=False)
    axes = axes[0]
    shown = display_rgb(image)
    axes[0].imshow(shown, interpolation="nearest")
    axes[0].set_title("image", fontsize=9)
    axes[1].imshow(overlay, interpolation="nearest")
    axes[1].set_title(f"boundary errors, BF1@{tolerance:g}px = {f1:.3f}", fontsize=9)
    handles = [Patch(color=np.array(c) / 255, label=label) for c, label in LEGEND[: 4 if instances is not False else 3]]
    axes[1].legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=2, fontsize=7,
                   frameon=False, handlelength=1.0)
    im = axes[2].imshow(maps["foreground"], cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    axes[2].set_title(f"P(foreground) = 1 - P(bg)\nTV = {totals['total_variation']:.4g}", fontsize=9)
    fig.colorbar(im, ax=axes[2], fraction=0.046, pad=0.02)
    im = axes[3].imshow(maps["phase_field"], cmap="magma", interpolation="nearest")
    axes[3].set_title(f"phase-field energy density (eps {opts['eps']:g})\nE = {totals['phase_field']:.4g}", fontsize=9)
    fig.colorbar(im, ax=axes[3], fraction=0.046, pad=0.02)
    im = axes[4].imshow(maps["reaction_diffusion"], cmap="magma", interpolation="nearest")
    reaction = "Allen-Cahn" if opts["kind"] == "allen_cahn" else "Fisher-KPP"
    axes[4].set_title(f"|D lap p + f(p)| ({reaction}, D {opts['diffusion']:g}, a {opts['a']:g})\n"
                      f"mean r^2 = {totals['reaction_diffusion']:.4g}", fontsize=9)
    fig.colorbar(im, ax=axes[4], fraction=0.046, pad=0.02)
    for ax in axes:
        _bare(ax)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    return path
