"""``pdeseg ablate``: train a grid of model variants on one split, tabulate and plot them.

Paper 003 varies its U-Net (ReLU or PReLU, dropout layers and rate, with or without
normalisation) and reports loss, pixel accuracy, mean IoU and Dice on train, validation
and test. This runner does that for any grid of options::

    pdeseg ablate --config configs/unet_casestudy_brats2020.yaml \\
        --grid activation=relu,prelu dropout=0,0.1,0.3 norm=batch,none --seeds 2 --out DIR

A grid key without a dot is a keyword of the ablated model (``activation``, ``norm``,
``dropout``, ``dropout_blocks``, ``features``, ...); a dotted key is a config path
(``train.lr``, ``loss.dice_weight``). Every variant and seed trains on the same patient
split; each run's checkpoint is its best validation epoch; the best variant is the one
with the highest mean validation score (``train.monitor``), so the test set never
chooses. Differences are set against seed noise (:func:`~pdeseg.experiments.stats.seed_noise_comparison`).

``DIR`` holds ``results.md`` / ``results.csv`` (one row per variant), ``runs.csv`` (one
row per run and split), ``noise.md``, ``figures/`` and ``report.html``; rerunning the same
command continues an interrupted grid.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pdeseg.build import EPOCH_METRICS, Experiment, build_loss, resolve
from pdeseg.config import ExperimentConfig, ModelConfig, apply_overrides, config_from_dict
from pdeseg.errors import ConfigError
from pdeseg.data.pipeline.prepare import PreparedData
from pdeseg.experiments.stats import (
    PairedResult,
    SeedNoiseResult,
    format_mean_ci,
    mean_ci,
    paired_comparison,
    paired_grids,
    seed_noise_comparison,
)
from pdeseg.experiments.study import Run, Study
from pdeseg.experiments.tables import (OBJECT_COLUMNS, domain_markdown, domain_report_tables, domain_table, flat_rows,
                                       write_csv)
from pdeseg.inference.predict import Predictor
from pdeseg.inference.score import Scores, default_scope, score

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
#: Table columns per split: loss plus paper 003's metrics.
#: Object data (microscopy) add boundary F1 and the instance scores (see pdeseg.inference.score).
OBJECT_SCORES = ("dice_fg", "bf1_1", "bf1_2", "bf1_3", "dsb_score", "ap50", "mask_ap", "mask_ap50", "mask_ap75",
                 "n_split", "n_merged")
SCORES = ("loss",) + EPOCH_METRICS + ("hd95_mean",) + OBJECT_SCORES
#: Paired tests of each variant against the baseline on test cases: (row key, label).
PAIRED_METRICS = (("dice_mean", "Dice"), ("hd95_mean", "HD95 (mm)"), ("dice_fg", "cell Dice"), ("bf1_2", "boundary F1@2px"),
                  ("dsb_score", "DSB score"), ("mask_ap", "COCO mask AP"))


# --------------------------------------------------------------------------------------
# the grid
# --------------------------------------------------------------------------------------


def _split_values(raw: str) -> list[str]:
    """Split ``a,b,[c,d]`` on top-level commas (brackets keep list values whole)."""
    parts, depth, cur = [], 0, ""
    for ch in raw:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


def _value(raw: str) -> Any:
    """YAML value, with ``1e-3`` read as a number (YAML 1.1 reads it as a string)."""
    v = yaml.safe_load(raw.strip())
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _same(a: Any, b: Any) -> bool:
    """Whether two grid values give the same variant (``0`` and ``0.0`` do; ``1`` and ``true`` do not)."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def parse_grid(tokens: list[str]) -> list[tuple[str, list[Any]]]:
    """``["activation=relu,prelu", "dropout=0,0.1"]`` -> ``[("activation", ["relu", "prelu"]), ("dropout", [0, 0.1])]``.

    Values are parsed as YAML (numbers, booleans, ``[enc4,bottleneck]`` lists).

    Raises:
        ConfigError: a token without ``=``, an empty value, a key given twice, or a value
            given twice for one key.
    """
    axes: list[tuple[str, list[Any]]] = []
    for token in tokens:
        if "=" not in token:
            raise ConfigError(f"grid entry {token!r} must look like key=value1,value2")
        key, raw = (s.strip() for s in token.split("=", 1))
        values = [_value(v) for v in _split_values(raw)]
        if not key or any(v is None for v in values):
            raise ConfigError(f"grid entry {token!r} has an empty key or value")
        if key in [k for k, _ in axes]:
            raise ConfigError(f"grid key {key!r} given twice")
        repeated = [_show(v) for i, v in enumerate(values) if any(_same(v, w) for w in values[:i])]
        if repeated:
            raise ConfigError(f"grid entry {token!r} lists {', '.join(repeated)} twice: each value once (the same "
                              "variant would be trained twice)")
        axes.append((key, values))
    if not axes:
        raise ConfigError("the grid is empty: give at least one key=value1,value2")
    return axes


@dataclass
class Variant:
    """One point of the grid, or one named variant of a config's ``ablation`` section.

    ``settings``: ``model`` (a registered model), dotted config paths, or keywords of the
    variant's model; ``label``: the variant's name (default: its settings written out)."""

    settings: dict[str, Any]
    label: str | None = None

    @property
    def name(self) -> str:
        return self.label or " ".join(f"{k}={_show(v)}" for k, v in self.settings.items())

    @property
    def slug(self) -> str:
        text = self.label or "_".join(f"{k}={_show(v)}" for k, v in self.settings.items())
        return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text)


def _show(v: Any) -> str:
    return "[" + ",".join(map(str, v)) + "]" if isinstance(v, list) else str(v)


def grid_variants(axes: list[tuple[str, list[Any]]]) -> list[Variant]:
    """The Cartesian product of the axes, first axis slowest; the first variant is the baseline."""
    keys = [k for k, _ in axes]
    return [Variant(dict(zip(keys, combo))) for combo in itertools.product(*(v for _, v in axes))]


def config_variants(cfg: ExperimentConfig, only: list[str] | None = None) -> list[Variant]:
    """The named variants of the config's ``ablation`` section (the first is the baseline).

    Args:
        only: run just these variants, in this order (the first is then the baseline).

    Raises:
        ConfigError: the config has no ``ablation`` section, or ``only`` names a variant it
            does not have.
    """
    if cfg.ablation is None:
        raise ConfigError("no variants: give --grid key=v1,v2 or an ablation.variants section in the config")
    named = {spec["name"]: Variant({k: v for k, v in spec.items() if k != "name"}, label=spec["name"])
             for spec in cfg.ablation.variants}
    if only is None:
        return list(named.values())
    unknown = [n for n in only if n not in named]
    if unknown or len(set(only)) != len(only) or not only:
        raise ConfigError(f"--variants {','.join(only)}: choose distinct names among the config's variants "
                          f"({', '.join(named)}){'; unknown: ' + ', '.join(unknown) if unknown else ''}")
    return [named[n] for n in only]


def variant_config(cfg: ExperimentConfig, model_name: str, variant: Variant) -> tuple[Experiment, ModelConfig]:
    """The config and model entry of one variant: ``model`` (a registered model, with its
    kwargs from the config's ``models``; default ``model_name``), dotted config paths, and
    keywords of the model.

    Raises:
        ConfigError: an invalid config value, or a keyword the model does not take.
    """
    data = cfg.to_dict()
    data["ablation"] = None
    overrides = [f"{k}={json.dumps(v)}" for k, v in variant.settings.items() if "." in k]
    out = config_from_dict(apply_overrides(data, overrides))
    model_name = variant.settings.get("model", model_name)
    base = next((m for m in out.models if m.name == model_name), ModelConfig(model_name))
    keywords = {k: v for k, v in variant.settings.items() if "." not in k and k != "model"}
    model_cfg = ModelConfig(model_name, {**base.kwargs, **keywords})
    out.models = [model_cfg]
    try:
        exp = resolve(out)  # builds the variant's model once: a value it rejects fails here
    except ConfigError as exc:
        raise ConfigError(f"variant {variant.name}: {exc}") from None
    return exp, model_cfg


# --------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------


@dataclass
class AblationResult:
    out_dir: Path
    variants: list[Variant]
    runs: list[dict[str, Any]] = field(default_factory=list)  # one row per (variant, seed, split)
    table: list[dict[str, Any]] = field(default_factory=list)  # one row per variant
    best: str = ""
    noise: list[SeedNoiseResult] = field(default_factory=list)
    main_effects: list[SeedNoiseResult] = field(default_factory=list)
    cases: list[dict[str, Any]] = field(default_factory=list)  # one row per (variant, seed, test case)
    paired: list[PairedResult] = field(default_factory=list)  # each variant vs the first, on test cases


def scored_splits(spec) -> tuple[str, ...]:
    """Splits a run is scored on: all three for slice models (paper 003 reports train,
    validation and test); validation and test for volumetric ones, where segmenting every
    training volume costs minutes per run and the per-epoch training loss is in metrics.csv."""
    return SPLITS if default_scope(spec) == "slices" else ("val", "test")


def score_split(predictor: Predictor, run: Run, cases: list, split: str) -> Scores:
    """Loss (the run's loss, with the term weights of the last training epoch where terms
    have warm-up schedules) and per-case metrics of a checkpoint on the cases of ``split``.
    Volumetric models are scored on whole volumes, with HD95 on the test split (surface
    distances on every training case would cost more than they tell)."""
    cfg = run.exp.cfg
    volume = default_scope(predictor.spec) == "volume"
    loss_fn = build_loss(cfg.loss, predictor.head).to(predictor.device)
    loss_fn.set_epoch(cfg.train.epochs - 1)
    return score(predictor, cases, "volume" if volume else "slices", loss_fn, with_hd95=volume and split == "test",
                 batch_size=cfg.train.val_batch_size)


def run_ablation(
    cfg: ExperimentConfig,
    out_dir: str | Path,
    grid: list[str] | None,
    seeds: list[int],
    model: str | None = None,
    progress: bool = True,
    only: list[str] | None = None,
) -> AblationResult:
    """Train and score every variant for each seed, then tabulate, test, plot and report.

    Args:
        cfg: base config (its data, loss and training settings apply to every variant).
        grid: ``key=v1,v2`` tokens (see :func:`parse_grid`); ``None`` or empty: the named
            variants of the config's ``ablation`` section.
        seeds: training seeds.
        model: registered model to vary (default: the config's first).
        only: with the config's named variants, run just these (the first is the baseline).
    """
    out = Path(out_dir)
    if model is not None and model not in [m.name for m in cfg.models]:
        raise ConfigError(f"--model {model}: not in the config's models ({', '.join(m.name for m in cfg.models)}); "
                          "add it to models: (with its kwargs) to vary it")
    model = model or cfg.models[0].name
    if grid and only:
        raise ConfigError("--variants selects named variants of the config's ablation section; it cannot go with --grid")
    variants = grid_variants(parse_grid(grid)) if grid else config_variants(cfg, only)
    configs = [variant_config(cfg, model, v) for v in variants]  # fail on a bad variant before any training
    study = Study.open(cfg, out, "ablate", progress=progress)
    study.write_json("grid.json", {"model": model, "grid": grid, "seeds": seeds, "variants": [v.settings for v in variants]})
    cfg, data = study.cfg, study.data
    result = AblationResult(study.out, variants)
    # seed-major: an interrupted grid still has every variant at the same number of seeds
    runs = [study.run(variant.name, seed, Path("runs") / variant.slug / f"seed{seed}", exp=vexp, model_cfg=model_cfg)
            for seed in seeds for variant, (vexp, model_cfg) in zip(variants, configs)]
    study.train(runs, title=lambda run: f"{run.condition}, seed {run.seed}")
    for run in runs:
        scored = {s: study.scores(run, (s,), data.cases(s), lambda cases, s=s: score_split(study.predictor(run), run, cases, s),
                                  whole=True)
                  for s in scored_splits(run.exp.spec) if data.split[s]}
        for split, scores in scored.items():
            result.runs.append({"variant": run.condition, "seed": run.seed, "split": split, "best_epoch": run.best_epoch,
                                "parameters": run.parameters, "train_time_s": run.train_time_s,
                                "loss": scores.loss, **scores.means(), "cases": len(scores.rows)})
        test_rows = scored["test"].rows if "test" in scored else []
        result.cases += [{"variant": run.condition, "seed": run.seed, "split": "test", **r} for r in test_rows]
    summarise(result, cfg.train.monitor)
    write_outputs(result, cfg, data)
    return result


def _per_seed(result: AblationResult, variant: str, split: str, key: str) -> list[float]:
    return [r[key] for r in result.runs if r["variant"] == variant and r["split"] == split and r.get(key) is not None]


def summarise(result: AblationResult, monitor: str = "dice_mean") -> None:
    """Fill ``table`` (mean/sd/CI over seeds), ``best`` (by validation) and ``noise`` (each
    variant vs the first, on validation and test Dice)."""
    result.table = []
    keys = SCORES + (() if monitor in SCORES else (monitor,))  # the monitor picks the best variant
    for v in result.variants:
        row: dict[str, Any] = {"variant": v.name, **{k: _show(x) for k, x in v.settings.items()}}
        for split in SPLITS:
            for key in keys:
                vals = _per_seed(result, v.name, split, key)
                if vals:
                    row[f"{split}_{key}"] = mean_ci(vals)
        # one row per seed: the runs' rows of the first split they were scored on
        mine = next(([r for r in result.runs if r["variant"] == v.name and r["split"] == split] for split in SPLITS
                     if any(r["variant"] == v.name and r["split"] == split for r in result.runs)), [])
        row["parameters"] = mine[0]["parameters"] if mine else None
        row["best_epochs"] = [r["best_epoch"] for r in mine]
        if mine:
            row["train_time_s"] = mean_ci([r["train_time_s"] for r in mine])
        result.table.append(row)
    key = f"val_{monitor}" if any(f"val_{monitor}" in r for r in result.table) else f"train_{monitor}"
    scored = [r for r in result.table if key in r]
    result.best = max(scored, key=lambda r: r[key]["mean"])["variant"] if scored else ""
    for r in result.table:
        r["best"] = r["variant"] == result.best
    base = result.variants[0].name
    result.noise = []
    for split in ("val", "test"):
        for v in result.variants[1:]:
            a, b = _per_seed(result, v.name, split, "dice_mean"), _per_seed(result, base, split, "dice_mean")
            if len(a) >= 2 and len(b) >= 2:
                result.noise.append(seed_noise_comparison(a, b, v.name, base, f"{split} Dice"))
    result.main_effects = main_effects(result)
    result.paired = paired_tests(result)


def paired_tests(result: AblationResult) -> list[PairedResult]:
    """Each variant against the first on the same test cases and seeds (Dice, and HD95 where
    it was measured and is finite: an infinite HD95, one region empty, has no mean)."""
    out = []
    base = result.variants[0].name
    for v in result.variants[1:]:
        for key, label in PAIRED_METRICS:
            if not any(key in r for r in result.cases if r["variant"] == v.name):
                continue
            a, b = paired_grids(result.cases, v.name, base, key, by="variant")
            if a.size and np.isfinite(a).all() and np.isfinite(b).all():
                out.append(paired_comparison(a, b, model=v.name, baseline=base, metric=label))
    return out


def main_effects(result: AblationResult, split: str = "test", key: str = "dice_mean") -> list[SeedNoiseResult]:
    """Each grid value against the key's first value, pooling every run of the other keys
    (a factorial main effect: more runs per side than one variant pair, with the other
    keys' influence counted as noise)."""
    out = []
    settings = {v.name: v.settings for v in result.variants}
    rows = [r for r in result.runs if r["split"] == split and r.get(key) is not None]
    for k in result.variants[0].settings:
        values = list(dict.fromkeys(_show(v.settings[k]) for v in result.variants))
        runs = {val: [r[key] for r in rows if _show(settings[r["variant"]][k]) == val] for val in values}
        for val in values[1:]:
            if len(runs[val]) >= 2 and len(runs[values[0]]) >= 2:
                out.append(seed_noise_comparison(runs[val], runs[values[0]], f"{k}={val}", f"{k}={values[0]}",
                                                 f"{split} Dice (all runs)"))
    return out


# --------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------


def _cell(ci: dict[str, float] | None, digits: int = 3) -> str:
    return format_mean_ci(ci, digits, interval=False)


COLUMNS = [(f"{split} {name}", f"{split}_{key}") for split in SPLITS
           for name, key in (("loss", "loss"), ("acc", "accuracy"), ("mIoU", "iou_mean_all"), ("Dice", "dice_mean"))]


def table_columns(result: AblationResult) -> list[tuple[str, str]]:
    """Paper 003's columns that were scored (volumetric runs skip the training split), then
    test HD95 (volumetric runs) and the training time per run."""
    cols = [c for c in COLUMNS if any(c[1] in r for r in result.table)]
    if any("test_hd95_mean" in r for r in result.table):
        cols.append(("test HD95 (mm)", "test_hd95_mean"))
    cols += [c for c in OBJECT_COLUMNS if any(c[1] in r for r in result.table)]
    cols.append(("train time (s)", "train_time_s"))
    return cols


def results_markdown(result: AblationResult, cfg: ExperimentConfig) -> str:
    seeds = sorted({r["seed"] for r in result.runs})
    columns = table_columns(result)
    lines = [
        f"{_subject(result, cfg)}, seeds {seeds}: mean ± sd over seeds; each seed's value is the mean over "
        f"cases (loss: over {'slices' if cfg.data.mode == 'slices' else 'whole volumes'}). acc = pixel accuracy; mIoU = mean IoU over all classes incl. background "
        "(paper 003's mean IoU); Dice = mean over the foreground classes. "
        f"**Best** = highest validation {cfg.train.monitor} (the test set does not choose).",
        "",
        "| variant | " + " | ".join(h for h, _ in columns) + " | best epochs |",
        "|---|" + "---|" * (len(columns) + 1),
    ]
    for r in result.table:
        name = f"**{r['variant']}** (best)" if r["best"] else r["variant"]
        cells = " | ".join(_cell(r.get(k), _digits(k)) for _, k in columns)
        lines.append(f"| {name} | {cells} | {', '.join(map(str, r['best_epochs']))} |")
    domains = domain_markdown(variant_domains(result), "variant")
    return "\n".join(lines) + "\n" + ("\n" + domains if domains else "")


def variant_domains(result: AblationResult) -> list[dict[str, Any]]:
    """Test metrics per (variant, domain) of object data with domains
    (:func:`~pdeseg.experiments.compare.domain_table`); empty without domains."""
    return domain_table(result.cases, "variant", names=[v.name for v in result.variants])


def _subject(result: AblationResult, cfg: ExperimentConfig) -> str:
    """``Variants of `unet` `` for a grid; the named variants' models for an ablation section."""
    if any(v.label for v in result.variants):
        models = dict.fromkeys(v.settings.get("model", cfg.models[0].name) for v in result.variants)
        return f"Named variants ({', '.join(f'`{m}`' for m in models)})"
    return f"Variants of `{cfg.models[0].name}`"


def _digits(key: str) -> int:
    return 4 if key.endswith("accuracy") else 2 if key.endswith("hd95_mean") else 0 if key.endswith("time_s") else 3


def paired_markdown(result: AblationResult) -> str:
    """The paired tests against the baseline, one sentence each."""
    if not result.paired:
        return ""
    lines = [f"Paired tests against `{result.variants[0].name}` on the same test cases and seeds (difference "
             "variant - baseline, bootstrap interval over cases and seeds, sign-flip test over cases; for HD95 "
             "lower is better):", ""]
    return "\n".join(lines + [f"- {p.sentence()}" for p in result.paired]) + "\n\n"


def noise_markdown(result: AblationResult) -> str:
    if not result.noise:
        return ("Seed noise: run at least 2 seeds per variant (--seeds 2) to set the differences against the "
                "seed-to-seed spread.\n")
    lines = [f"Each variant against the baseline `{result.variants[0].name}` on validation and test Dice "
             "(difference of seed means, Welch interval over seeds):", ""]
    lines += [f"- {n.sentence()}" for n in result.noise]
    if result.main_effects:
        lines += ["", "Main effects: every run with a value against every run with the key's first value, "
                  "pooled over the other keys (Welch interval over runs):", ""]
        lines += [f"- {n.sentence()}" for n in result.main_effects]
    return "\n".join(lines) + "\n"


def write_outputs(result: AblationResult, cfg: ExperimentConfig, data: PreparedData) -> None:
    out = result.out_dir
    write_csv(out / "runs.csv", result.runs)
    write_csv(out / "results.csv", flat_rows(result.table, ("mean", "sd")))
    (out / "results.md").write_text(results_markdown(result, cfg))
    (out / "noise.md").write_text(paired_markdown(result) + noise_markdown(result))
    write_csv(out / "test_cases.csv", result.cases)
    figures = make_figures(result, cfg, data)
    write_report(result, cfg, figures)


def _histories(result: AblationResult) -> dict[str, list[list[dict[str, Any]]]]:
    from pdeseg.checkpoint import load_checkpoint

    out = {}
    for v in result.variants:
        seeds = sorted({r["seed"] for r in result.runs if r["variant"] == v.name})
        out[v.name] = [load_checkpoint(result.out_dir / "runs" / v.slug / f"seed{s}" / "last.pt")["training"]["history"] for s in seeds]
    return out


def make_figures(result: AblationResult, cfg: ExperimentConfig, data: PreparedData) -> list[tuple[str, str]]:
    """The figures of :func:`pdeseg.experiments.figures.ablation_figures` for the best variant."""
    from pdeseg.experiments.figures import ablation_figures

    best = next((v for v in result.variants if v.name == result.best), result.variants[0])
    seed0 = min(r["seed"] for r in result.runs)
    return ablation_figures(result.out_dir, cfg, _histories(result), best.name,
                            result.out_dir / "runs" / best.slug / f"seed{seed0}" / "best.pt",
                            data.cases("test") or data.cases("val"))


def write_report(result: AblationResult, cfg: ExperimentConfig, figures: list[tuple[str, str]]) -> Path:
    from pdeseg.viz.report import render_report

    columns = table_columns(result)
    cols = [("variant", "variant")] + columns + [("best epochs", "best_epochs")]
    cells = []
    for r in result.table:
        c = {"variant": ("★ " if r["best"] else "") + r["variant"], "best_epochs": ", ".join(map(str, r["best_epochs"]))}
        c.update({k: _cell(r.get(k), _digits(k)) for _, k in columns})
        cells.append(c)
    split = json.loads((result.out_dir / "split.json").read_text())
    seeds = sorted({r["seed"] for r in result.runs})
    intro = (
        f"{_subject(result, cfg)}: {len(result.variants)} x seeds {seeds} on one patient split "
        f"({len(split['train'])} train / {len(split['val'])} validation / {len(split['test'])} test cases of {cfg.data.root}); "
        f"modalities {', '.join(cfg.data.modalities or ['all'])}, {cfg.data.mode}"
        f"{f' ({cfg.data.slices} {cfg.data.slice_range or chr(32)})' if cfg.data.mode == 'slices' else ''}, "
        f"size {cfg.data.spatial_size}, {cfg.train.epochs} epochs. Values: mean ± sd over seeds. "
        f"★ = best validation {cfg.train.monitor}."
    )
    verdicts = [f"Best by validation: {result.best}."] + [p.sentence() for p in result.paired] \
        + [n.sentence() for n in result.main_effects + result.noise]
    env = json.loads((result.out_dir / "environment.json").read_text())
    return render_report(result.out_dir / "report.html", f"pdeseg ablate: {cfg.name}", intro, cells, cols, verdicts,
                         figures, {**env, "config": "config.yaml", "results": "results.csv", "runs": "runs.csv"},
                         tables=domain_report_tables(variant_domains(result), "variant"))
