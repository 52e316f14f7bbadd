"""Figures of single cases: overlays (truth red, prediction green), class-by-class masks, and
the cell figure of a 2D object image (boundary errors, foreground probability, PDE penalty
maps). Used by ``evaluate`` and by the studies' reports."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from pdeseg.inference.predict import Predictor

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


def write_cell_figure(predictor: Predictor, case, path: Path, classes: np.ndarray | None = None, loaded=None,
                      title: str | None = None, cells: np.ndarray | None = None) -> Path:
    """The figure of one 2D object image (:func:`pdeseg.viz.cells.plot_cell_case`): image,
    boundary errors at 2 px, foreground probability and the PDE penalty maps, with the
    penalty options of the run's loss terms.

    Args:
        predictor: the model; its logits of the case give the probabilities (one more
            forward pass where the caller has the classes already: only for the cases drawn).
        case: the cached case (``(H, W, 1)`` as one slice).
        path: the PNG to write.
        classes: the predicted classes ``(H, W, 1)`` as scored; default: the argmax of the
            same logits. Outside a field of view both truth and prediction are background,
            as in the scoring.
        loaded: the read case, whose raw image is shown (default: the normalised cached one).
        title: default ``"<case>, <domain>: <model>"``.
        cells: the predicted cells ``(H, W, 1)`` as scored (outlined); default: the model's
            cells of the same logits.
    """
    from pdeseg.data.pipeline.sampling import case_volume
    from pdeseg.nn.output import class_probabilities, predicted_classes
    from pdeseg.viz.cells import case_image, penalty_options_from_config, plot_cell_case

    image, label = case_volume(case)
    logits = predictor.predict_logits(image)[None]
    probabilities = class_probabilities(logits, predictor.head)[0, ..., 0]  # (C, H, W)
    pred = np.asarray(classes if classes is not None else predicted_classes(logits, predictor.head)[0].numpy())[..., 0]
    if cells is None:
        cells = predictor.cells(logits[0], pred[..., None].astype(np.uint8))
    truth = np.asarray(label[..., 0])
    if case.valid is not None:  # as the scoring: nothing outside the field of view is scored
        inside = np.asarray(case.valid[0])
        truth, pred = np.where(inside, truth, 0), np.where(inside, pred, 0)
    shown = loaded.image if loaded is not None and tuple(loaded.image.shape[1:3]) == truth.shape else image
    domain = f", {case.domain}" if getattr(case, "domain", "") else ""
    return plot_cell_case(case_image(shown, predictor.modalities), truth, pred, probabilities, path,
                          title=title or f"{case.case_id}{domain}: {predictor.name}",
                          penalty_options=penalty_options_from_config(predictor.config),
                          instances=np.asarray(cells)[..., 0] if cells is not None else True)


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
