"""``pdeseg compare``: every model of a config on one patient split and several seeds.

Each (model, seed) run picks its checkpoint by the validation score (``best.pt``; the
test cases never reach the trainer), is scored on the validation and test cases, and
the results are aggregated over seeds (mean, sd, t 95% CI) and compared with the
baseline model on the same test cases and seeds (bootstrap CI, permutation p-value).
Training, resuming and the kept scores are the study core's (:mod:`pdeseg.experiments.study`);
what is this runner's own is the conditions (the config's models) and the table.

Output folder::

    config.yaml, split.json, environment.json      what was run, on what
    study.json, scores.jsonl                        the study's kind and its per-case scores (reused on a rerun)
    runs/<model>/seed<k>/                          one training run each (resumable)
    per_case.csv                                   model, seed, split, case, metrics
    runs.csv                                       model, seed, best epoch, times, parameters
    table.md, table.csv, comparison.md             Table-1-style table and the paired verdicts
    figures/*.png, report.html                     curves, panels, cable block, PDE layers, one page
    cable_coefficients.json, pde_layers.json       learned PDE coefficients per seed (PDE-UNet, PDE3D-UNet)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pdeseg.config import ExperimentConfig
from pdeseg.data.pipeline.cache import CachedCase
from pdeseg.data.pipeline.prepare import PreparedData
from pdeseg.errors import ConfigError
from pdeseg.experiments.stats import PairedResult, format_mean_ci, paired_comparison, paired_grids
from pdeseg.experiments.study import Study
from pdeseg.experiments.tables import (OBJECT_COLUMNS, domain_markdown, domain_report_tables, domain_table, flat_rows,
                                       summary_table, write_csv)
from pdeseg.inference.options import InferenceOptions
from pdeseg.inference.predict import Predictor
from pdeseg.inference.score import default_scope, score

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


def table_columns(class_names: list[str], regions: dict[str, list[int]], objects: bool = False) -> list[tuple[str, str]]:
    """Metric columns of the comparison table: mean Dice / IoU over the foreground classes on
    validation and test, then test Dice per region (BraTS WT/TC/ET) or, for data sets without
    regions and with several foreground classes, per class (Hippocampus: Anterior, Posterior),
    and for object data (``objects``) the :data:`~pdeseg.experiments.tables.OBJECT_COLUMNS`."""
    cols = [("val Dice", "val_dice_mean"), ("val IoU", "val_iou_mean"), ("test Dice", "test_dice_mean"),
            ("test IoU", "test_iou_mean")]
    detail = list(regions) if regions else (list(class_names[1:]) if len(class_names) > 2 else [])
    cols += [(f"test {n}", f"test_dice_{n}") for n in detail]
    return cols + (list(OBJECT_COLUMNS) if objects else [])


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
    unfinished ones resumed from ``last.pt``, scores already computed read back.

    Raises:
        ConfigError: a baseline that is not among the config's models; see :meth:`Study.open`.
    """
    names = [m.name for m in cfg.models]
    baseline = baseline or names[0]
    if baseline not in names:
        raise ConfigError(f"baseline {baseline!r} is not among the config's models {names}")
    study = Study.open(cfg, out_dir, "compare", progress=progress)
    exp, data = study.exp, study.data
    scope = scope or default_scope(exp.spec)
    result = CompareResult(study.out, data=data, columns=table_columns(exp.spec.class_names, exp.spec.regions,
                                                                        exp.fmt.object_metrics),
                           unit="slice" if scope == "slices" else "case")
    runs = [study.run(m.name, seed, Path("runs") / m.name / f"seed{seed}", model_cfg=m) for seed in seeds for m in exp.cfg.models]
    study.train(runs)
    for run in runs:
        row = {"model": run.condition, "seed": run.seed, "best_epoch": run.best_epoch, "parameters": run.parameters,
               "train_time_s": run.train_time_s}
        for split in ("val", "test"):
            if not data.split[split]:
                continue
            scored = study.scores(run, (split, scope), data.cases(split),
                                  lambda cases: score(study.predictor(run), cases, scope))
            row[f"{split}_ms_per_unit"] = 1000 * scored.seconds / max(scored.units, 1)
            result.rows += [{"model": run.condition, "seed": run.seed, "split": split, **r} for r in scored.rows]
        result.runs.append(row)
        log.info("%s seed %d: best epoch %d", run.condition, run.seed, run.best_epoch)
    result.table = summary_table(result.rows, result.runs, names, [k for _, k in result.columns])
    result.paired = [
        paired_comparison(*paired_grids(result.rows, name, baseline, "dice_mean"), model=name, baseline=baseline, metric="Dice")
        for name in names if name != baseline and data.split["test"]
    ]
    write_outputs(result, scope)
    seed_runs = {name: {r.seed: r.run_dir for r in runs if r.condition == name} for name in names}
    shown = data.cases("test")[:4] or data.cases("val")[:4]
    from pdeseg.experiments.figures import compare_figures

    write_report(result, compare_figures(study.out, exp.cfg, scope, seed_runs, shown), exp.cfg, scope, seeds)
    return result


def _fmt(ci: dict[str, float] | None) -> str:
    return format_mean_ci(ci)


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
