"""Evaluate a checkpoint on a split or a folder: per-case CSV and a summary (JSON + Markdown).

Two grids (``grid``):

* ``input`` (default): every case is segmented exactly as ``predict`` writes it (logits
  resampled back from the model's ``target_spacing``, a crop box pasted back,
  post-processing) and scored against its original label file on the input's own grid and
  spacing (nnU-Net's rule: the number a user reads is the number of the files they get);
* ``cache``: the cases as training validates them, normalised, cropped and resampled into
  the cache (faster where ``data.target_spacing`` resamples; the same where nothing is
  resampled or cropped).

Two scopes:

* ``volume`` (default): every case is segmented whole, slice by slice, and scored in 3D;
* ``slices``: only the slices the training config selects (e.g. the paper's middle slice),
  scored per case over those slices (on the cache grid, as fitted in training).

``dice_mean``, ``iou_mean``, ``precision_mean`` and ``recall_mean`` average the foreground
classes (BraTS: NCR, ED and ET; binary: the one foreground class), background excluded;
``iou_mean_all`` includes it. BraTS regions WT/TC/ET follow the BraTS empty-region rule
(both empty -> 1), and so do precision and recall. HD95 and the surface Dice at a tolerance
are optional (volume scope). Volume scope on a slice data set (LGG) is the per-patient
("per volume") Dice its authors report.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pdeseg.config import DataConfig
from pdeseg.data.files import check_output_folder
from pdeseg.data.pipeline.prepare import load_cached_cases
from pdeseg.data.pipeline.splits import load_split
from pdeseg.errors import ConfigError, DataError
from pdeseg.inference.options import WINDOW_OVERLAP, InferenceOptions
from pdeseg.inference.predict import Predictor, ensemble_members
from pdeseg.inference.score import score, score_inputs

#: The grids ``evaluate`` scores on (see the module docstring).
GRIDS = ("input", "cache")

log = logging.getLogger(__name__)


def cases_of(predictor: Predictor, root: str | Path, case_ids: list[str] | None, progress: bool = False) -> list:
    """``(reader case, cached case)`` pairs of ``case_ids`` (None: every case) under ``root``,
    read and normalised as the predictor's model was trained (its config's cache folder, and
    its format options when ``root`` is the folder it was trained on): the cache grid. Cropped to
    the non-zero box as in training (``data.crop_nonzero``), unless the predictor's options ask
    for a crop or none (``--crop`` / ``--no-crop``); a format's default crop at inference
    (BraTS) is the input grid's, where it is pasted back.

    Raises:
        DataError: unreadable cases (see :func:`~pdeseg.data.pipeline.prepare.load_cached_cases`).
    """
    cfg = predictor.config
    data = cfg.data if cfg is not None else DataConfig()
    same_root = cfg is not None and str(root) == str(data.root)
    spec = predictor.spec
    if predictor.options.crop is None and cfg is not None and spec.crop_nonzero != data.crop_nonzero:
        spec = spec.model_copy(update={"crop_nonzero": data.crop_nonzero})  # the training cache's grid
    return load_cached_cases(root, spec, data.cache_dir, case_ids, progress, data.format_options if same_root else None)


def input_cases(predictor: Predictor, root: str | Path, case_ids: list[str] | None) -> list:
    """The labelled reader cases of ``case_ids`` (None: every case) under ``root``, in that
    order, found with the format options the model was trained with when ``root`` is its
    training folder (nothing cached: :func:`~pdeseg.inference.score.score_inputs` reads them).

    Raises:
        DataError: bad data, or ids that are not under ``root``.
    """
    cfg = predictor.config
    data = cfg.data if cfg is not None else DataConfig()
    same_root = cfg is not None and str(root) == str(data.root)
    cases = predictor.format.find_cases(root, predictor.modalities, True,
                                        **((data.format_options or {}) if same_root else {}))
    if case_ids is None:
        return cases
    by_id = {c.case_id: c for c in cases}
    missing = [i for i in case_ids if i not in by_id]
    if missing:
        raise DataError(f"{root}: cases not found: {missing[:5]}")
    return [by_id[i] for i in case_ids]


def draw_cell_case(predictor: Predictor, case, path: Path, classes: np.ndarray | None = None, loaded=None,
                   title: str | None = None, cells: np.ndarray | None = None) -> Path:
    """The cell figure (:func:`pdeseg.viz.case_figures.write_cell_figure`) of a cached one-slice
    case ``(H, W, 1)``: the model's logits of it give the probabilities (one more forward pass,
    only for the cases drawn), and the classes and cells where not given (as scored).

    Args:
        classes, cells: ``(H, W, 1)`` as scored; default: the decode of the same logits.
        loaded: the read case, whose raw image is shown where it has the case's size
            (default: the normalised cached image).
        title: default ``"<case>, <domain>: <model>"``.
    """
    from pdeseg.data.pipeline.sampling import case_volume
    from pdeseg.viz.case_figures import write_cell_figure
    from pdeseg.viz.cells import penalty_options_from_config

    image, label = case_volume(case)
    seg = predictor.decode(predictor.predict_logits(image), with_probabilities=True, with_cells=classes is None)
    if classes is None:
        classes, cells = seg.classes, seg.instances
    shown = loaded.image if loaded is not None and tuple(loaded.image.shape[1:]) == tuple(label.shape) else image
    domain = f", {case.domain}" if getattr(case, "domain", "") else ""
    valid = None if case.valid is None else np.asarray(case.valid).transpose(1, 2, 0)
    return write_cell_figure(path, shown, label, classes, seg.probabilities, modalities=predictor.modalities,
                             title=title or f"{case.case_id}{domain}: {predictor.name}",
                             penalty_options=penalty_options_from_config(predictor.config), cells=cells, valid=valid)


def _case_ids(checkpoint: Path, split: str) -> list[str] | None:
    """Ids of the requested split (from the run's split.json), or None for every case."""
    if split == "all":
        return None
    split_file = checkpoint.parent / "split.json"
    if not split_file.is_file():
        raise DataError(f"{split_file} not found: cannot select split {split!r}; use --split all with --data")
    return load_split(split_file)[split]


def evaluate_checkpoint(
    checkpoint: str | Path | list[str | Path],
    out_dir: str | Path,
    options: InferenceOptions | None = None,
    data_root: str | None = None,
    split: str = "test",
    scope: str = "volume",
    with_hd95: bool = False,
    save_predictions: bool = False,
    progress: bool = True,
    figures: int = 0,
    figure_cases: list[str] | None = None,
    surface_tolerance_mm: float | None = None,
    grid: str | None = None,
) -> dict[str, Any]:
    """Score ``checkpoint`` and write ``per_case.csv``, ``summary.json``, ``summary.md`` to ``out_dir``.

    On the ``input`` grid (the default in volume scope) each case is segmented as ``predict``
    writes it and scored against its original label on its own grid and spacing
    (:func:`pdeseg.inference.score.score_inputs`). On the ``cache`` grid (``grid="cache"``, and
    always in slices scope) cases are read, normalised and cached exactly as in training, then
    scored through :func:`pdeseg.inference.score.score`, the path of training's validation,
    ``compare`` and ``ablate``. Both build their rows with the one
    :func:`~pdeseg.inference.score.case_row`; where nothing is resampled or cropped the two grids
    are one and give the same numbers.

    ``figures=N`` (volume scope) also writes, for the first N cases, the slice with the most
    true foreground: ``figures/overlays/<case>_z<z>.png`` (truth red, prediction green; paper
    002) and ``figures/class_masks.png`` (image, manual mask, each predicted class and the
    composite; paper 003 Fig. 3). ``figure_cases`` names the cases to draw instead. For 2D
    object images (microscopy formats) each drawn case also gets ``figures/cells/<case>.png``
    (boundary errors at 2 px and the PDE penalty maps). ``save_predictions`` writes each
    case's prediction under ``predictions/`` in the input's format (on the input grid: the
    very file ``predict`` writes).

    ``options`` are the inference options (:class:`~pdeseg.inference.options.InferenceOptions`;
    its ``postprocess`` applies the checkpoint config's post-processing to whole cases in volume
    scope); ``surface_tolerance_mm`` adds ``surface_dice_<region>`` at that tolerance (volume scope).

    Returns:
        the summary: ``metrics`` (``{metric: {mean, std, median, n}}``) plus ``cases``,
        ``scope``, ``grid``, ``split``, ``checkpoint`` and the ``inference`` options used.

    Raises:
        ConfigError: a bad inference option, grid or tolerance, figures or distance metrics
            outside volume scope, the input grid in slices scope, a diameter on the cache grid,
            or no data folder.
        RunFolderError: ``out_dir`` cannot be created or written (checked before scoring).
    """
    grid = _grid(grid, scope)
    members = ensemble_members(checkpoint)
    if len(members) > 1 and split != "all":
        raise ConfigError(f"{len(members)} checkpoints (an ensemble) have no common held-out split {split!r}: every case "
                          "was seen by some member; score the ensemble on other data with --split all --data FOLDER")
    checkpoint, out_dir = members[0], Path(out_dir)
    if surface_tolerance_mm is not None and scope != "volume":
        raise ConfigError("surface Dice needs whole volumes: use scope volume")
    predictor = Predictor.from_checkpoints(members, options)
    if grid == "cache" and predictor.options.diameter not in (None, "off"):
        raise ConfigError(f"diameter {predictor.options.diameter}: the cache grid scores the cached images as trained; "
                          "object-size rescaling applies to the input grid (--grid input)")
    cfg = predictor.config
    root = data_root or (cfg.data.root if cfg is not None else None)
    if not root:
        raise ConfigError("no data folder: pass --data (the checkpoint's config names none)")
    if (figures or figure_cases) and scope != "volume":
        raise ConfigError("figures are drawn from whole volumes: use scope volume")
    check_output_folder(out_dir, "--out")  # before the scoring, not after it
    if grid == "input":
        cases = input_cases(predictor, root, _case_ids(checkpoint, split))
        ids = [c.case_id for c in cases]
    else:
        entries = cases_of(predictor, root, _case_ids(checkpoint, split), progress)
        ids = [c.case_id for c, _ in entries]
    if not ids:
        raise DataError(f"no cases to evaluate in split {split!r}")
    unknown = sorted(set(figure_cases or []) - set(ids))
    if unknown:
        raise ConfigError(f"figure cases {unknown} are not among the cases of split {split!r}")
    drawn = set(figure_cases) if figure_cases else set(ids[:figures])
    panels: list[dict[str, Any]] = []
    if grid == "input":
        result = score_inputs(predictor, cases, with_hd95=with_hd95, progress=progress, surface_tolerance_mm=surface_tolerance_mm,
                              each_case=_input_drawer(predictor, out_dir, drawn, save_predictions, panels))
    else:
        result = score(predictor, [e for _, e in entries], scope, with_hd95=with_hd95, progress=progress,
                       each_case=_cache_drawer(predictor, out_dir, drawn, save_predictions, panels, entries)
                       if scope == "volume" else None, surface_tolerance_mm=surface_tolerance_mm)
    rows = result.rows
    if panels:
        from pdeseg.viz.case_figures import write_case_figures

        write_case_figures(panels, predictor.format, out_dir / "figures", predictor.spec.class_names)
    inference = {"tta": predictor.tta, "overlap": predictor.overlap, "stitch": predictor.stitch,
                 "precision": predictor.precision, "surface_tolerance_mm": surface_tolerance_mm, "postprocess": predictor.postprocessing.describe(),
                 "models": predictor.name}
    named = str(checkpoint) if len(members) == 1 else [str(m) for m in members]
    summary = {"scope": scope, "grid": grid, "split": split, "checkpoint": named, "cases": len(rows),
               "inference": inference, "metrics": result.summary()}
    if result.pooled:
        summary["pooled"] = result.pooled
    write_results(rows, summary, out_dir)
    return summary


def _grid(grid: str | None, scope: str) -> str:
    """The grid scored: ``input`` by default, ``cache`` for slices scope (slices are scored as
    fitted in training).

    Raises:
        ConfigError: an unknown grid, or the input grid asked for in slices scope.
    """
    if grid is None:
        return "cache" if scope == "slices" else "input"
    if grid not in GRIDS:
        raise ConfigError(f"grid must be one of {', '.join(GRIDS)}, got {grid!r}")
    if grid == "input" and scope == "slices":
        raise ConfigError("scope slices scores the slices as training fits them, on the cache grid: use --grid cache "
                          "(or scope volume for the input's own grid)")
    return grid


def _input_drawer(predictor: Predictor, out_dir: Path, drawn: set[str], save_predictions: bool, panels: list):
    """``each_case`` of :func:`~pdeseg.inference.score.score_inputs`: draws the cases in
    ``drawn`` and saves every prediction (the case is segmented once, by the scoring itself)."""
    fmt = predictor.format

    def each_case(loaded, seg) -> None:
        case_id = loaded.case.case_id
        if case_id in drawn:
            from pdeseg.viz.case_figures import case_panel, write_cell_figure
            from pdeseg.viz.cells import penalty_options_from_config

            panels.append(case_panel(loaded, seg.classes))
            if fmt.object_metrics:
                domain = f", {loaded.domain}" if loaded.domain else ""
                write_cell_figure(out_dir / "figures" / "cells" / f"{case_id}.png", loaded.image, loaded.label, seg.classes,
                                  seg.probabilities, modalities=predictor.modalities,
                                  title=f"{case_id}{domain}: {predictor.name}",
                                  penalty_options=penalty_options_from_config(predictor.config), cells=seg.instances,
                                  valid=loaded.valid)
        if save_predictions:
            fmt.write_prediction(seg.classes, loaded, out_dir / "predictions", objects=seg.instances)

    return each_case


def _cache_drawer(predictor: Predictor, out_dir: Path, drawn: set[str], save_predictions: bool, panels: list,
                  entries: list):
    """``each_case`` of :func:`~pdeseg.inference.score.score` (cache grid): as :func:`_input_drawer`
    with the cached case's classes (the cell figure's probabilities come from one more forward
    pass of the drawn case)."""
    fmt, reader_case = predictor.format, {entry.case_id: case for case, entry in entries}

    def each_case(entry, classes, cells) -> None:
        if entry.case_id not in drawn and not save_predictions:
            return
        loaded = reader_case[entry.case_id].load(predictor.modalities)
        if entry.case_id in drawn:
            from pdeseg.viz.case_figures import case_panel

            panels.append(case_panel(loaded, classes))
            if fmt.object_metrics:
                draw_cell_case(predictor, entry, out_dir / "figures" / "cells" / f"{entry.case_id}.png", classes, loaded,
                               cells=cells)
        if save_predictions:
            fmt.write_prediction(classes, loaded, out_dir / "predictions", objects=cells)

    return each_case


def write_results(rows: list[dict[str, Any]], summary: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    for row in rows:  # every key of every row: optional metrics may be missing from some
        keys += [k for k in row if k not in keys]
    with (out_dir / "per_case.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    (out_dir / "summary.md").write_text(summary_markdown(summary))


def summary_markdown(summary: dict[str, Any]) -> str:
    m = summary["metrics"]
    lines = [
        f"# Evaluation of `{summary['checkpoint']}`",
        "",
        f"Split **{summary['split']}**, {summary['cases']} cases, scope **{summary['scope']}**{_grid_note(summary)}. "
        "Mean Dice/IoU/precision/recall average the foreground classes (background excluded; `iou_mean_all` "
        "includes it); a class or region absent from both truth and prediction scores 1; HD95 and surface distances "
        "are in mm from the voxel spacing." + _inference_note(summary.get("inference")),
        "",
        "| metric | mean | sd | median |",
        "|---|---|---|---|",
    ]
    for key, s in m.items():
        lines.append(f"| {key} | {s['mean']:.4f} | {s['std']:.4f} | {s['median']:.4f} |")
    if summary.get("pooled"):
        lines += ["", "COCO mask AP of every image together (pycocotools' COCOeval on masks, IoU 0.50:0.95, up to "
                  "2000 cells an image, as LIVECell publishes it; the table above averages each image's own AP):", "",
                  "| metric | pooled |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in summary["pooled"].items()]
    return "\n".join(lines) + "\n"


def _grid_note(summary: dict[str, Any]) -> str:
    grid = summary.get("grid")
    if grid == "input":
        return ", on each input's own grid (as predict writes it)"
    if grid == "cache":
        return ", on the cache grid (as training validates)"
    return ""


def _inference_note(inference: dict[str, Any] | None) -> str:
    """One sentence on the inference options that change scores (empty when all are defaults)."""
    if not inference:
        return ""
    parts = []
    if inference.get("tta"):
        parts.append("test-time mirroring (probabilities averaged over every flip of the spatial axes)")
    if inference.get("overlap") is not None and inference["overlap"] != WINDOW_OVERLAP:
        parts.append(f"sliding-window overlap {inference['overlap']:g}")
    if inference.get("surface_tolerance_mm") is not None:
        parts.append(f"surface Dice at {inference['surface_tolerance_mm']:g} mm")
    return (" With " + ", ".join(parts) + ".") if parts else ""
