"""``pdeseg compare``: every model of a config on one patient split and several seeds.

Each (model, seed) run picks its checkpoint by the validation score (``best.pt``; the
test cases never reach the trainer), is scored on the validation and test cases, and
the results are aggregated over seeds (mean, sd, t 95% CI) and compared with the
baseline model on the same test cases and seeds (bootstrap CI, permutation p-value).

Output folder::

    config.yaml, split.json, environment.json     what was run, on what
    runs/<model>/seed<k>/                          one training run each (resumable)
    per_case.csv                                   model, seed, split, case, metrics
    runs.csv                                       model, seed, best epoch, times, parameters
    table.md, table.csv, comparison.md             Table-1-style table and the paired verdicts
    figures/*.png, report.html                     curves, panels, cable block, PDE layers, one page
    cable_coefficients.json, pde_layers.json       learned PDE coefficients per seed (PDE-UNet, PDE3D-UNet)
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pdeseg import __version__
from pdeseg.build import Experiment, resolve
from pdeseg.checkpoint import load_checkpoint
from pdeseg.config import ExperimentConfig, save_config
from pdeseg.data.cache import CachedCase
from pdeseg.data.files import make_folders
from pdeseg.data.formats import get_format
from pdeseg.data.sampling import case_volume
from pdeseg.data.setup import PreparedData, prepare_data
from pdeseg.data.splits import save_split
from pdeseg.errors import ConfigError
from pdeseg.experiments.stats import PairedResult, format_mean_ci, mean_ci, paired_comparison
from pdeseg.checkpoint import model_from_checkpoint
from pdeseg.inference.options import InferenceOptions
from pdeseg.inference.predict import Predictor
from pdeseg.inference.score import default_scope, score
from pdeseg.training.run import train_or_resume

log = logging.getLogger(__name__)

PRIMARY = ("dice_mean", "iou_mean")


@dataclass
class CompareResult:
    out_dir: Path
    rows: list[dict[str, Any]] = field(default_factory=list)  # per (model, seed, split, case)
    runs: list[dict[str, Any]] = field(default_factory=list)  # per (model, seed)
    paired: list[PairedResult] = field(default_factory=list)
    table: list[dict[str, Any]] = field(default_factory=list)
    data: PreparedData | None = None  # the cached cases and split the comparison used
    columns: list[tuple[str, str]] = field(default_factory=list)  # (header, key) of the metric columns
    unit: str = "slice"  # what the inference time is per: slice (slices scope) or case (volume scope)


#: Test columns of object data (microscopy): Dice of the cells (all foreground classes),
#: boundary F1 at 2 px, DSB score, AP50.
OBJECT_COLUMNS = (("test cell Dice", "test_dice_fg"), ("test BF1@2px", "test_bf1_2"), ("test DSB score", "test_dsb_score"), ("test AP50", "test_ap50"))


#: Columns of :func:`domain_table`: (heading, per-case row key).
DOMAIN_COLUMNS = (("cell Dice", "dice_fg"), ("BF1@2px", "bf1_2"), ("DSB score", "dsb_score"), ("AP50", "ap50"))
DOMAIN_HEADING = "Test metrics per domain"
NO_DOMAIN = "(none)"


def _finite(value: Any) -> bool:
    try:
        return value is not None and value != "" and bool(np.isfinite(float(value)))
    except (TypeError, ValueError):
        return False


def domain_table(rows: list[dict[str, Any]], by: str = "model", split: str = "test",
                 names: list[str] | None = None) -> list[dict[str, Any]]:
    """Per-case metrics of ``split`` by (model or variant, domain): mean over seeds of each
    seed's mean over that domain's cases, for the :data:`DOMAIN_COLUMNS`.

    Args:
        rows: per-case rows with ``by``, ``seed``, ``split``, ``case`` and metrics; the
            ``domain`` string of object data (cell type, imaging modality).
        by: the row field that names the compared thing (``model``, ``variant``).
        names: order of the models (default: as they first appear).

    Returns:
        ``{by, "domain", "cases", "seeds", <metric key>: float or None}`` per (name, domain)
        with cases, names in order and domains sorted; a metric no case of the domain has
        (DSB score where the data have no objects) is None. Empty when no row of ``split``
        carries a domain string, so callers show the table only for data with domains.
    """
    mine = [r for r in rows if r.get("split", split) == split]
    if not any(r.get("domain") for r in mine):
        return []
    names = names or list(dict.fromkeys(r[by] for r in mine))
    domains = sorted({str(r.get("domain") or "") for r in mine})
    table = []
    for name in names:
        for domain in domains:
            cases = [r for r in mine if r[by] == name and str(r.get("domain") or "") == domain]
            if not cases:
                continue
            seeds = sorted({r["seed"] for r in cases})
            row: dict[str, Any] = {by: name, "domain": domain or NO_DOMAIN, "cases": len({r["case"] for r in cases}),
                                   "seeds": len(seeds)}
            for _, key in DOMAIN_COLUMNS:
                per_seed = [np.mean(vals) for s in seeds
                            if (vals := [float(r[key]) for r in cases if r["seed"] == s and _finite(r.get(key))])]
                row[key] = float(np.mean(per_seed)) if per_seed else None
            table.append(row)
    return table


def _domain_cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


DOMAIN_NOTE = ("Test cases grouped by their domain (cell type or imaging modality): each seed's mean over the "
               "domain's cases, averaged over seeds; BF1@2px = boundary F1 of the foreground at 2 px; DSB score "
               "and AP50 of the predicted cells (- where the cases have no objects).")


def domain_columns(by: str = "model") -> list[tuple[str, str]]:
    """``(heading, key)`` columns of a :func:`domain_table` for a report."""
    return [(by, by), ("domain", "domain")] + list(DOMAIN_COLUMNS) + [("n cases", "cases")]


def domain_cells(table: list[dict[str, Any]], by: str = "model") -> list[dict[str, Any]]:
    """A :func:`domain_table` with its numbers formatted for a report."""
    return [{**r, **{k: _domain_cell(r.get(k)) for _, k in DOMAIN_COLUMNS}, "cases": str(r["cases"])} for r in table]


def domain_markdown(table: list[dict[str, Any]], by: str = "model") -> str:
    """The :func:`domain_table` as a Markdown section (empty text for an empty table)."""
    if not table:
        return ""
    cols = domain_columns(by)
    lines = [f"## {DOMAIN_HEADING}", "", DOMAIN_NOTE, "", "| " + " | ".join(h for h, _ in cols) + " |",
             "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[k]) for _, k in cols) + " |" for r in domain_cells(table, by)]
    return "\n".join(lines) + "\n"


def domain_report_tables(table: list[dict[str, Any]], by: str = "model") -> list[tuple[str, str, list[dict], list]]:
    """The ``tables`` argument of :func:`~pdeseg.viz.report.render_report` for a domain table
    (none when it is empty)."""
    return [(DOMAIN_HEADING, DOMAIN_NOTE, domain_cells(table, by), domain_columns(by))] if table else []


def table_columns(class_names: list[str], regions: dict[str, list[int]], objects: bool = False) -> list[tuple[str, str]]:
    """Metric columns of the comparison table: mean Dice / IoU over the foreground classes on
    validation and test, then test Dice per region (BraTS WT/TC/ET) or, for data sets without
    regions and with several foreground classes, per class (Hippocampus: Anterior, Posterior),
    and for object data (``objects``) the :data:`OBJECT_COLUMNS`."""
    cols = [("val Dice", "val_dice_mean"), ("val IoU", "val_iou_mean"), ("test Dice", "test_dice_mean"),
            ("test IoU", "test_iou_mean")]
    detail = list(regions) if regions else (list(class_names[1:]) if len(class_names) > 2 else [])
    cols += [(f"test {n}", f"test_dice_{n}") for n in detail]
    return cols + (list(OBJECT_COLUMNS) if objects else [])


def environment() -> dict[str, Any]:
    """Versions and device, saved with every comparison."""
    import monai

    return {
        "pdeseg": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "monai": monai.__version__, "numpy": np.__version__, "platform": platform.platform(),
        "processor": platform.processor(), "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def score_run(checkpoint: Path, cases: list[CachedCase], scope: str, precision: str = "auto", device: str = "auto"):
    """Per-case rows of a checkpoint on cached cases, and inference seconds per slice (or case)."""
    result = score(Predictor.from_checkpoint(checkpoint, InferenceOptions(device=device, precision=precision)), cases, scope)
    return result.rows, result.seconds / max(result.units, 1)


def run_compare(
    cfg: ExperimentConfig,
    out_dir: str | Path,
    seeds: list[int],
    scope: str | None = None,
    baseline: str | None = None,
    progress: bool = True,
) -> CompareResult:
    """Train and score every model of ``cfg`` for each seed; aggregate and compare.

    ``scope`` None: :func:`default_scope` of the config's mode.

    Interrupted comparisons continue where they stopped: finished runs are reused,
    unfinished ones resumed from ``last.pt``.
    """
    exp = resolve(cfg)
    cfg = exp.cfg
    out = Path(out_dir)
    names = [m.name for m in cfg.models]
    baseline = baseline or names[0]
    if baseline not in names:
        raise ConfigError(f"baseline {baseline!r} is not among the config's models {names}")
    data = prepare_data(cfg.data, exp.spec, out / "split.json", progress=progress)  # before any file is written
    make_folders(out, "comparison folder")
    save_config(cfg, out / "config.yaml")
    (out / "environment.json").write_text(json.dumps(environment(), indent=1))
    save_split(data.split, out / "split.json")
    scope = scope or default_scope(exp.spec)
    result = CompareResult(out, data=data, columns=table_columns(exp.spec.class_names, exp.spec.regions, exp.fmt.object_metrics),
                           unit="slice" if scope == "slices" else "case")
    for seed in seeds:
        for m in cfg.models:
            run_cfg = copy.deepcopy(cfg)
            run_cfg.train.seed = seed
            run_dir = out / "runs" / m.name / f"seed{seed}"
            last = train_or_resume(run_cfg, m, run_dir, data, progress, Experiment(run_cfg, exp.fmt, exp.info, exp.spec))
            write_curves(run_dir, last, f"{cfg.name}: {m.name}, seed {seed}")
            history = last["training"]["history"]
            run = {"model": m.name, "seed": seed, "best_epoch": last["training"]["best_epoch"],
                   "parameters": last["parameters"], "train_time_s": sum(r["train_time_s"] for r in history)}
            for split in ("val", "test"):
                if not data.split[split]:
                    continue
                rows, sec = score_run(run_dir / "best.pt", data.cases(split), scope, run_cfg.train.precision)
                run[f"{split}_ms_per_unit"] = 1000 * sec
                result.rows += [{"model": m.name, "seed": seed, "split": split, **r} for r in rows]
            result.runs.append(run)
            log.info("%s seed %d: best epoch %d", m.name, seed, run["best_epoch"])
    result.table = summary_table(result.rows, result.runs, names, [k for _, k in result.columns])
    result.paired = [
        paired_comparison(*paired_grids(result.rows, name, baseline, "dice_mean"), model=name, baseline=baseline, metric="Dice")
        for name in names if name != baseline and data.split["test"]
    ]
    write_outputs(result, scope)
    write_report(result, make_figures(result, cfg, scope), cfg, scope, seeds)
    return result


def _per_seed(rows, model: str, split: str, key: str) -> list[float]:
    """Mean over cases of ``key`` for each seed of ``model``."""
    seeds = sorted({r["seed"] for r in rows if r["model"] == model})
    return [float(np.mean([r.get(key, np.nan) for r in rows if r["model"] == model and r["seed"] == s and r["split"] == split]))
            for s in seeds]


def paired_grids(rows, model: str, baseline: str, key: str, by: str = "model") -> tuple[np.ndarray, np.ndarray]:
    """``(n_seeds, n_cases)`` test scores of ``model`` and ``baseline`` (values of the rows'
    ``by`` field) on matching cases and seeds, for :func:`~pdeseg.experiments.stats.paired_comparison`."""
    test = [r for r in rows if r["split"] == "test"]
    seeds = sorted({r["seed"] for r in test if r[by] == model} & {r["seed"] for r in test if r[by] == baseline})
    cases = sorted({r["case"] for r in test})
    look = {(r[by], r["seed"], r["case"]): r[key] for r in test}
    grid = lambda name: np.array([[look[(name, s, c)] for c in cases] for s in seeds])  # noqa: E731
    return grid(model), grid(baseline)


def summary_table(rows, runs, names: list[str], columns: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per model: metrics as mean/sd/CI over seeds, parameters and times.

    Args:
        columns: ``<split>_<metric>`` keys to aggregate (default: mean Dice and IoU on
            validation and test).
    """
    table = []
    wanted = columns or [f"{split}_{k}" for split in ("val", "test") for k in PRIMARY]
    for name in names:
        row: dict[str, Any] = {"model": name}
        for column in wanted:
            split, key = column.split("_", 1)
            vals = _per_seed(rows, name, split, key)
            if vals and not np.isnan(vals).any():
                row[column] = mean_ci(vals)
        mine = [r for r in runs if r["model"] == name]
        row["parameters"] = mine[0]["parameters"]
        row["seeds"] = len(mine)
        row["train_time_s"] = float(np.mean([r["train_time_s"] for r in mine]))
        row["test_ms_per_unit"] = float(np.mean([r.get("test_ms_per_unit", np.nan) for r in mine]))
        row["best_epochs"] = [r["best_epoch"] for r in mine]
        table.append(row)
    return table


def _fmt(ci: dict[str, float] | None) -> str:
    return format_mean_ci(ci)


def write_curves(run_dir: Path, last: dict, title: str) -> None:
    """``curves.png`` of a run (loss, accuracy, mean IoU, Dice per epoch), unless already drawn."""
    from pdeseg.viz.figures import plot_epoch_metrics

    path = Path(run_dir) / "curves.png"
    history = last["training"]["history"]
    if history and (not path.is_file() or path.stat().st_mtime < (Path(run_dir) / "last.pt").stat().st_mtime):
        plot_epoch_metrics(history, path, title=title)


def _metric_note(result: CompareResult) -> str:
    """What the Dice columns mean, in words (from the table's columns)."""
    names = [h[len("test "):] for h, k in result.columns if k.startswith("test_dice_") and k != "test_dice_mean"]
    return "Dice/IoU average the foreground classes" + (f"; {', '.join(names)}: test Dice per region or class." if names else ".")


def table_markdown(result: CompareResult, scope: str) -> str:
    columns = result.columns
    head = ("| model | " + " | ".join(c for c, _ in columns)
            + f" | parameters | train time (s) | inference (ms/{result.unit}) | best epochs |")
    lines = [
        f"Mean ± sd over seeds [95% t-interval]; each seed's value is the mean over cases. Scope: **{scope}**. "
        + _metric_note(result),
        "",
        head,
        "|" + "---|" * (len(columns) + 5),
    ]
    for r in result.table:
        cells = " | ".join(_fmt(r.get(k)) for _, k in columns)
        lines.append(f"| {r['model']} | {cells} | {r['parameters']:,} | {r['train_time_s']:.0f} | "
                     f"{r['test_ms_per_unit']:.1f} | {', '.join(map(str, r['best_epochs']))} |")
    return "\n".join(lines) + "\n"


def write_outputs(result: CompareResult, scope: str) -> None:
    out = result.out_dir
    write_csv(out / "per_case.csv", result.rows)
    write_csv(out / "runs.csv", result.runs)
    write_csv(out / "table.csv", flat_rows(result.table, ("mean", "sd", "lo", "hi")))
    domains = domain_markdown(domain_table(result.rows, "model", names=[r["model"] for r in result.table]))
    (out / "table.md").write_text(table_markdown(result, scope) + ("\n" + domains if domains else ""))
    (out / "comparison.md").write_text("\n".join(p.sentence() for p in result.paired) + "\n")


def flat_rows(table: list[dict[str, Any]], parts: tuple[str, ...]) -> list[dict[str, Any]]:
    """Table rows for a CSV: ``{key: {mean, sd, ...}}`` cells become ``key_mean``, ``key_sd``, ...;
    list cells are dropped."""
    flat = []
    for r in table:
        f = {k: v for k, v in r.items() if not isinstance(v, (dict, list))}
        for k, v in r.items():
            if isinstance(v, dict):
                f.update({f"{k}_{s}": v[s] for s in parts})
        flat.append(f)
    return flat


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def display_slice(case: CachedCase, cfg: ExperimentConfig, scope: str) -> int:
    """The slice shown for a case: the selected one (slices scope, first of the selection) or the largest tumour."""
    from pdeseg.data.sampling import select_slices

    if scope == "slices" and cfg.data.slices in ("middle", "tumour_middle"):
        return select_slices(case, cfg.data.slices)[0]
    return int(np.argmax((np.asarray(case.label) > 0).sum(axis=(1, 2))))


def slice_prediction(predictor: Predictor, case: CachedCase, z: int) -> np.ndarray:
    """Predicted classes of slice ``z`` of a cached case: a slice model sees that slice alone
    (a 2.5D one with its neighbours), a volumetric or triplanar one segments the whole volume
    and the slice is taken from it."""
    if predictor.spec.mode == "slices" and list(predictor.spec.slice_axes) == [2]:
        n, depth = predictor.spec.context_slices, case.image.shape[0]
        lo, hi = max(0, z - n), min(depth, z + n + 1)  # beyond these the edges repeat, as for the whole volume
        image = np.asarray(case.image[lo:hi], dtype=np.float32).transpose(1, 2, 3, 0)  # (C, X, Y, hi - lo)
        return predictor.predict_volume(image)[..., z - lo]
    image, _ = case_volume(case)
    return predictor.predict_volume(image)[..., z]


def _class_names(predictors: dict[str, Predictor]) -> list[str]:
    """The class names of the compared models (one data set, so the same for all)."""
    return list(next(iter(predictors.values())).spec.class_names)


def pde_layer_figures(result: CompareResult, cfg: ExperimentConfig, scope: str, name: str, predictor: Predictor,
                      case: CachedCase | None, seed0: int) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """What the PDE layers of model ``name`` (a PDE3D-UNet) learned, for the first seed: the
    stencils and moments of each layer, and its features before and after it on ``case``
    (the first shown test case; a training-patch-sized crop centred on the tumour in its
    display slice, or that slice for a slice model).

    Returns:
        ``(figures as (relative path, caption), {seed: pde_layer_summary})`` over every seed
        the model was trained with.
    """
    from pdeseg.checkpoint import model_from_checkpoint
    from pdeseg.viz.pde_effect import (file_part, foreground_centre, layer_input, pde_layer_summary, pde_layers,
                                       plot_pde_features, plot_pde_kernels)

    out = result.out_dir
    figures = []
    model = predictor.model
    layers = pde_layers(model)
    for position, layer in layers.items():
        rel = f"figures/pde_kernels_{file_part(name)}_{file_part(position)}.png"
        plot_pde_kernels(layer, out / rel, title=f"{name} (seed {seed0}), PDE layer at {position}")
        figures.append((rel, f"Learned stencils of the PDE layer of {name} at position {position} (seed {seed0}): each "
                             "kernel (grid units; central slices through each axis pair in 3D) beside its moment matrix, "
                             "whose hatched entries the moment constraint fixes and whose coloured entries were trained; "
                             "title: the learned diffusion number lambda and coefficients k per axis."))
    if case is not None:
        z = display_slice(case, cfg, scope)
        image, label = case_volume(case)
        x = layer_input(image, predictor.spec, foreground_centre(label, z) or [s // 2 for s in image.shape[1:-1]] + [z])
        device = next(model.parameters()).device
        feats = model.features_around(x.to(device))
        rotate = get_format(cfg.data.format).display_rotate
        where = f"slice {z}" if predictor.spec.mode == "slices" else (
            f"a {'x'.join(map(str, x.shape[2:]))} crop centred, as far as the volume allows, on the tumour of slice {z}"
            if predictor.spec.mode == "patches"
            else "the whole volume")
        for position, (before, after) in feats.items():
            rel = f"figures/pde_features_{file_part(name)}_{file_part(position)}.png"
            plot_pde_features(before[0], after[0], out / rel, rotate=rotate,
                              title=f"{name} (seed {seed0}), PDE layer at {position}, on {case.case_id} ({where})")
            figures.append((rel, f"Features before and after the PDE layer of {name} at position {position} on {case.case_id} "
                                 f"({where}; seed {seed0}): the channels the layer changes most, before, after (one grey "
                                 "scale per channel) and the difference."))
    summaries = {str(r["seed"]): pde_layer_summary(model_from_checkpoint(out / "runs" / name / f"seed{r['seed']}" / "best.pt"))
                 for r in result.runs if r["model"] == name}
    return figures, summaries


def cell_figures(out: Path, predictors: dict[str, Predictor], case: CachedCase, seed: int) -> list[tuple[str, str]]:
    """One figure per model on one 2D object image (microscopy): boundary errors at 2 px and
    the PDE penalty maps of its foreground probability (:func:`pdeseg.inference.evaluate.write_cell_figure`)."""
    from pdeseg.inference.evaluate import write_cell_figure
    from pdeseg.viz.pde_effect import file_part

    figures = []
    for name, predictor in predictors.items():
        rel = f"figures/cells_{file_part(name)}.png"
        write_cell_figure(predictor, case, out / rel, title=f"{case.case_id}"
                          f"{f', {case.domain}' if case.domain else ''}: {name} (seed {seed})")
        figures.append((rel, f"{name} on {case.case_id} (seed {seed}): the image; boundary errors of the foreground at "
                             "2 px (green matched, red false, blue missed, yellow the predicted cells' outlines); the "
                             "foreground probability p = 1 - P(background); the phase-field energy density and the "
                             "reaction-diffusion residual of p (options of the run's loss terms, else the defaults)."))
    return figures


def make_figures(result: CompareResult, cfg: ExperimentConfig, scope: str) -> list[tuple[str, str]]:
    """Loss curves, segmentation panel, the cable block's effect and coefficients (PDE-UNet)
    and the PDE layers' stencils, moments and features (PDE3D-UNet); returns (relative path,
    caption)."""
    from pdeseg.viz.figures import plot_loss_curves, plot_segmentation_panel
    from pdeseg.viz.pde_effect import cable_block, pde_layers, plot_cable_coefficients, plot_cable_effect

    out = result.out_dir
    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    names = [m.name for m in cfg.models]
    seed0 = min(r["seed"] for r in result.runs)
    run = lambda name, seed=seed0: out / "runs" / name / f"seed{seed}"  # noqa: E731
    figures = []
    histories = {n: load_checkpoint(run(n) / "last.pt")["training"]["history"] for n in names}
    plot_loss_curves(histories, fig_dir / "loss_curves.png")
    figures.append(("figures/loss_curves.png", f"Training and validation loss per epoch (seed {seed0}); cf. paper 000 Fig. 4."))

    shown = result.data.cases("test")[:4] or result.data.cases("val")[:4]
    predictors = {n: Predictor.from_checkpoint(run(n) / "best.pt", InferenceOptions(precision=cfg.train.precision)) for n in names}
    rows = []
    mods = list(cfg.data.modalities)
    shown_channel = mods.index("flair") if "flair" in mods else 0
    for case in shown:
        z = display_slice(case, cfg, scope)
        image = np.asarray(case.image[z], dtype=np.float32)  # (C, X, Y)
        preds = {n: slice_prediction(p, case, z) for n, p in predictors.items()}
        rows.append({"case": f"{case.case_id} z={z}", "image": image[shown_channel], "channel": mods[shown_channel],
                     "truth": np.asarray(case.label[z]), "predictions": preds})
    if rows:
        fmt = get_format(cfg.data.format)
        plot_segmentation_panel(rows, fig_dir / "segmentations.png", _class_names(predictors), fmt.display_rotate)
        figures.append(("figures/segmentations.png", f"Test cases: {mods[shown_channel]}, ground truth and each model's prediction (seed {seed0}); cf. Fig. 5."))
    if shown and get_format(cfg.data.format).object_metrics:
        figures += cell_figures(out, predictors, shown[0], seed0)

    # dispatch on what the model's ``pde`` is: PDE-UNet's cable block, or PDE3D-UNet's PDE layers
    cable_models = [n for n, p in predictors.items() if cable_block(p.model) is not None]
    if cable_models and rows:
        name = cable_models[0]
        case = shown[0]
        z = display_slice(case, cfg, scope)
        plot_cable_effect(cable_block(predictors[name].model).cpu(), np.asarray(case.image[z], dtype=np.float32),
                          list(cfg.data.modalities), fig_dir / "cable_effect.png")
        figures.append(("figures/cable_effect.png", f"The trained cable block of {name} on {case.case_id}, slice {z}: input, output and difference per modality; cf. Fig. 6."))
        coeffs = {}
        for r in result.runs:
            if r["model"] == name:
                coeffs[r["seed"]] = cable_block(model_from_checkpoint(run(name, r["seed"]) / "best.pt")).physical()
        plot_cable_coefficients(coeffs, list(cfg.data.modalities), fig_dir / "cable_coefficients.png")
        figures.append(("figures/cable_coefficients.png", f"Learned Phi, Psi and tau of {name} per modality, one marker per seed."))
        (out / "cable_coefficients.json").write_text(json.dumps({str(k): v for k, v in coeffs.items()}, indent=1))
    summaries = {}
    for name, p in predictors.items():
        if pde_layers(p.model):
            more, summaries[name] = pde_layer_figures(result, cfg, scope, name, p, shown[0] if shown else None, seed0)
            figures += more
    if summaries:  # {model: {seed: {position: layer summary}}}
        (out / "pde_layers.json").write_text(json.dumps(summaries, indent=1))
    return figures


def _sampling(cfg: ExperimentConfig) -> str:
    d = cfg.data
    if d.mode == "slices":
        return f"slices: {d.slices}"
    if d.mode == "patches":
        return f"{d.samples_per_case} patches of {'x'.join(map(str, d.spatial_size))} per case and epoch"
    return "whole cases"


def write_report(result: CompareResult, figures: list[tuple[str, str]], cfg: ExperimentConfig, scope: str, seeds: list[int]) -> Path:
    from pdeseg.viz.report import render_report

    cols = [("model", "model")] + list(result.columns) + [
        ("parameters", "parameters"), ("train time (s)", "train_time_s"), (f"inference (ms/{result.unit})", "test_ms_per_unit"),
        ("best epochs", "best_epochs")]
    cells = []
    for r in result.table:
        c = {"model": r["model"], "parameters": f"{r['parameters']:,}", "train_time_s": f"{r['train_time_s']:.0f}",
             "test_ms_per_unit": f"{r['test_ms_per_unit']:.1f}", "best_epochs": ", ".join(map(str, r["best_epochs"]))}
        c.update({k: _fmt(r.get(k)) for _, k in result.columns})
        cells.append(c)
    split = json.loads((result.out_dir / "split.json").read_text())
    intro = (
        f"{', '.join(m.name for m in cfg.models)} trained on the same patient split "
        f"({len(split['train'])} train / {len(split['val'])} validation / {len(split['test'])} test cases of {cfg.data.root}) "
        f"with seeds {seeds}; {_sampling(cfg)}; {cfg.train.epochs} epochs, batch {cfg.train.batch_size}. "
        "Each run's checkpoint is the epoch with the best validation score; the test cases are used only for the "
        f"numbers below. Scope of scoring: {scope}. Values: mean ± sd over seeds [95% t-interval]; "
        + _metric_note(result)
    )
    env = json.loads((result.out_dir / "environment.json").read_text())
    verdicts = [p.sentence() for p in result.paired] or ["Only one model: nothing to compare."]
    domains = domain_table(result.rows, "model", names=[r["model"] for r in result.table])
    return render_report(result.out_dir / "report.html", f"pdeseg compare: {cfg.name}", intro, cells, cols, verdicts,
                         figures, {**env, "config": "config.yaml", "per-case metrics": "per_case.csv"},
                         tables=domain_report_tables(domains, "model"))
