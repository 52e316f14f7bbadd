"""Evaluate a checkpoint on a split or a folder: per-case CSV and a summary (JSON + Markdown).

Two scopes:

* ``volume`` (default): every case is segmented whole, slice by slice, and scored in 3D;
* ``slices``: only the slices the training config selects (e.g. the paper's middle slice),
  scored per case over those slices.

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


from pdeseg.config import DataConfig
from pdeseg.data.files import check_output_folder
from pdeseg.data.pipeline.prepare import load_cached_cases
from pdeseg.data.pipeline.splits import load_split
from pdeseg.errors import ConfigError, DataError
from pdeseg.inference.options import WINDOW_OVERLAP, InferenceOptions
from pdeseg.inference.predict import Predictor, ensemble_members
from pdeseg.inference.score import score

log = logging.getLogger(__name__)


def cases_of(predictor: Predictor, root: str | Path, case_ids: list[str] | None, progress: bool = False) -> list:
    """``(reader case, cached case)`` pairs of ``case_ids`` (None: every case) under ``root``,
    read and normalised as the predictor's model was trained (its config's cache folder, and
    its format options when ``root`` is the folder it was trained on).

    Raises:
        DataError: unreadable cases (see :func:`~pdeseg.data.pipeline.prepare.load_cached_cases`).
    """
    cfg = predictor.config
    data = cfg.data if cfg is not None else DataConfig()
    same_root = cfg is not None and str(root) == str(data.root)
    return load_cached_cases(root, predictor.spec, data.cache_dir, case_ids, progress,
                             data.format_options if same_root else None)


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
) -> dict[str, Any]:
    """Score ``checkpoint`` and write ``per_case.csv``, ``summary.json``, ``summary.md`` to ``out_dir``.

    Cases are read, normalised and cached exactly as in training, then scored through the
    one scoring path (:func:`pdeseg.inference.score.score`), so ``evaluate`` and ``compare``
    give one checkpoint the same numbers.

    ``figures=N`` (volume scope) also writes, for the first N cases, the slice with the most
    true foreground: ``figures/overlays/<case>_z<z>.png`` (truth red, prediction green; paper
    002) and ``figures/class_masks.png`` (image, manual mask, each predicted class and the
    composite; paper 003 Fig. 3). ``figure_cases`` names the cases to draw instead. For 2D
    object images (microscopy formats) each drawn case also gets ``figures/cells/<case>.png``
    (:func:`write_cell_figure`: boundary errors at 2 px and the PDE penalty maps).

    ``options`` are the inference options (:class:`~pdeseg.inference.options.InferenceOptions`;
    its ``postprocess`` applies the checkpoint config's post-processing to whole cases in volume
    scope); ``surface_tolerance_mm`` adds ``surface_dice_<region>`` at that tolerance (volume scope).

    Returns:
        the summary: ``metrics`` (``{metric: {mean, std, median, n}}``) plus ``cases``,
        ``scope``, ``split``, ``checkpoint`` and the ``inference`` options used.

    Raises:
        ConfigError: a bad inference option or tolerance, figures or distance metrics
            outside volume scope, or no data folder.
        RunFolderError: ``out_dir`` cannot be created or written (checked before scoring).
    """
    members = ensemble_members(checkpoint)
    if len(members) > 1 and split != "all":
        raise ConfigError(f"{len(members)} checkpoints (an ensemble) have no common held-out split {split!r}: every case "
                          "was seen by some member; score the ensemble on other data with --split all --data FOLDER")
    checkpoint, out_dir = members[0], Path(out_dir)
    if surface_tolerance_mm is not None and scope != "volume":
        raise ConfigError("surface Dice needs whole volumes: use scope volume")
    predictor = Predictor.from_checkpoints(members, options)
    cfg = predictor.config
    root = data_root or (cfg.data.root if cfg is not None else None)
    if not root:
        raise ConfigError("no data folder: pass --data (the checkpoint's config names none)")
    if (figures or figure_cases) and scope != "volume":
        raise ConfigError("figures are drawn from whole volumes: use scope volume")
    check_output_folder(out_dir, "--out")  # before the scoring, not after it
    fmt = predictor.format
    entries = cases_of(predictor, root, _case_ids(checkpoint, split), progress)
    if not entries:
        raise DataError(f"no cases to evaluate in split {split!r}")
    unknown = sorted(set(figure_cases or []) - {c.case_id for c, _ in entries})
    if unknown:
        raise ConfigError(f"figure cases {unknown} are not among the cases of split {split!r}")
    drawn = {c.case_id for c, _ in entries if c.case_id in figure_cases} if figure_cases else {c.case_id for c, _ in entries[:figures]}
    reader_case = {entry.case_id: case for case, entry in entries}
    panels = []

    def draw_or_save(entry, classes, cells) -> None:  # each case is segmented once, by the scoring itself
        if entry.case_id not in drawn and not save_predictions:
            return
        loaded = reader_case[entry.case_id].load(predictor.modalities)
        if entry.case_id in drawn:
            panels.append(case_panel(loaded, classes))
            if fmt.object_metrics:
                write_cell_figure(predictor, entry, out_dir / "figures" / "cells" / f"{entry.case_id}.png", classes, loaded,
                                  cells=cells)
        if save_predictions:
            fmt.write_prediction(classes, loaded, out_dir / "predictions", objects=cells)

    from pdeseg.viz.case_figures import case_panel, write_case_figures, write_cell_figure

    result = score(predictor, [e for _, e in entries], scope, with_hd95=with_hd95, progress=progress,
                   each_case=draw_or_save if scope == "volume" else None, surface_tolerance_mm=surface_tolerance_mm)
    rows = result.rows
    if panels:
        write_case_figures(panels, fmt, out_dir / "figures", predictor.spec.class_names)
    inference = {"tta": predictor.tta, "overlap": predictor.overlap, "stitch": predictor.stitch,
                 "precision": predictor.precision, "surface_tolerance_mm": surface_tolerance_mm, "postprocess": predictor.postprocessing.describe(),
                 "models": predictor.name}
    named = str(checkpoint) if len(members) == 1 else [str(m) for m in members]
    summary = {"scope": scope, "split": split, "checkpoint": named, "cases": len(rows), "inference": inference,
               "metrics": result.summary()}
    if result.pooled:
        summary["pooled"] = result.pooled
    write_results(rows, summary, out_dir)
    return summary


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
        f"Split **{summary['split']}**, {summary['cases']} cases, scope **{summary['scope']}**. "
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
