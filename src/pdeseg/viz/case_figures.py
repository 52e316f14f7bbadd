"""Figures of single cases: overlays (truth red, prediction green), class-by-class masks, and
the cell figure of a 2D object image (boundary errors, foreground probability, PDE penalty
maps). Used by ``evaluate`` and by the studies' reports.

Drawing takes arrays (images, labels, probabilities, cells) and never runs a model: the
callers (:mod:`pdeseg.inference.evaluate`, :mod:`pdeseg.experiments.figures`) predict.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def case_panel(loaded, classes) -> dict[str, Any]:
    """The slice of a case with the most true foreground: display image, truth, prediction."""
    z = int(np.argmax((loaded.label > 0).sum(axis=(0, 1))))
    mods = list(loaded.modalities)
    if len(mods) == 3 and loaded.convention == "binary":  # LGG: the RGB slice as the set shows it
        image = np.clip(loaded.image[..., z], 0, 255).transpose(1, 2, 0)
    else:
        image = loaded.image[mods.index("flair") if "flair" in mods else 0, ..., z]
    return {"case": f"{loaded.case.case_id} z={z}", "id": f"{loaded.case.case_id}_z{z}", "image": image,
            "truth": loaded.label[..., z], "prediction": classes[..., z]}


def write_cell_figure(path: Path, image: np.ndarray, truth: np.ndarray, classes: np.ndarray, probabilities: np.ndarray,
                      *, modalities=None, title: str = "", penalty_options: dict[str, Any] | None = None,
                      cells: np.ndarray | None = None, valid: np.ndarray | None = None) -> Path:
    """The figure of one 2D object image (:func:`pdeseg.viz.cells.plot_cell_case`): image,
    boundary errors at 2 px, foreground probability and the PDE penalty maps.

    Args:
        path: the PNG to write.
        image: ``(C, H, W)`` or ``(C, H, W, 1)`` the channels shown (RGB when ``modalities``
            are ``red, green, blue``, else the first).
        truth: ``(H, W)`` or ``(H, W, 1)`` true classes.
        classes: the predicted classes, same shape, as scored.
        probabilities: ``(K, H, W)`` or ``(K, H, W, 1)`` class probabilities of the prediction.
        modalities: the channel names of ``image``.
        title: the figure's title.
        penalty_options: the penalty maps' options (:func:`~pdeseg.viz.cells.penalty_options_from_config`).
        cells: the predicted cells (outlined), same shape as ``classes``; None: the class map's cells.
        valid: bool field of view, same shape: outside it truth and prediction are background,
            as in the scoring.
    """
    from pdeseg.viz.cells import case_image, plot_cell_case

    def plane(a):
        a = np.asarray(a)
        return a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a

    truth, pred = plane(truth), plane(classes)
    probs = np.asarray(probabilities)
    if probs.ndim == 4:
        probs = probs[..., 0]
    if valid is not None:  # as the scoring: nothing outside the field of view is scored
        inside = plane(valid).astype(bool)
        truth, pred = np.where(inside, truth, 0), np.where(inside, pred, 0)
    return plot_cell_case(case_image(image, modalities), truth, pred, probs, path, title=title,
                          penalty_options=penalty_options, instances=plane(cells) if cells is not None else True)


def write_case_figures(panels: list[dict[str, Any]], fmt, out_dir: Path, class_names) -> list[Path]:
    """Overlay PNGs (truth red, prediction green) and the class-by-class mask figure."""
    from pdeseg.viz.figures import plot_class_masks
    from pdeseg.viz.overlays import write_overlay

    paths = [write_overlay(p["image"], p["truth"], p["prediction"], out_dir / "overlays" / f"{p['id']}.png",
                           rotate=fmt.display_rotate) for p in panels]
    gray = [{**p, "image": p["image"].mean(axis=-1) if p["image"].ndim == 3 else p["image"]} for p in panels]
    paths.append(plot_class_masks(gray, class_names, out_dir / "class_masks.png", fmt.display_rotate))
    log.info("figures: %s", out_dir)
    return paths
