"""Tables and report of a robustness study: from per-case score rows to cells, CSV and Markdown tables, HTML.

:func:`cell_table` turns the rows of one study (``noise``: model x kind x level; ``fraction``: model x fraction) into
one cell per model and condition: per metric of :data:`METRICS` the per-seed case means, their mean with a t 95%
CI over seeds, the change from the clean image (noise study) and the paired comparison with the baseline model.
:func:`write_outputs` writes ``runs.csv`` and each study's ``.csv`` / ``.md`` table, :func:`write_report` the HTML
report. Nothing here trains or scores: :mod:`pdeseg.experiments.robustness` runs the study and calls these.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pdeseg.config import ExperimentConfig
from pdeseg.experiments.stats import PairedResult, format_mean_ci, mean_ci, paired_comparison, paired_grids
from pdeseg.experiments.tables import write_csv

if TYPE_CHECKING:
    from pdeseg.experiments.robustness import RobustnessResult

#: The metrics of the tables: (row key, heading, range of values).
METRICS = (("dice_mean", "Dice", (0.0, 1.0)), ("hd95_mean", "HD95 (mm)", (0.0, math.inf)))


def _seed_means(rows: list[dict], key: str) -> dict[int, float]:
    """Case mean of ``key`` per seed."""
    seeds = sorted({r["seed"] for r in rows})
    return {s: float(np.mean([r[key] for r in rows if r["seed"] == s])) for s in seeds}


def cell_table(
    rows: list[dict], study: str, condition: tuple[str, ...], names: list[str], baseline: str
) -> tuple[list[dict[str, Any]], list[PairedResult]]:
    """One row per (model, condition) of ``study``: per-metric ``{mean, sd, lo, hi, n}`` over
    seeds (``dice_mean``, ``hd95_mean``), per-seed values, the change from the clean image
    (noise study, when level 0 was scored: ``<metric>_change``) and the paired comparison with
    ``baseline`` (``<metric>_vs_baseline``: diff, lo, hi, p).

    Returns:
        ``(table rows, paired results)``.
    """
    mine = [r for r in rows if r["study"] == study]
    conditions = list(dict.fromkeys(tuple(r[c] for c in condition) for r in mine))  # in the order they were scored
    table, paired, said = [], [], set()
    for cond in conditions:
        here = [r for r in mine if tuple(r[c] for c in condition) == cond]
        label = ", ".join(f"{c} {v:g}" if isinstance(v, float) else str(v) for c, v in zip(condition, cond))
        if study == "noise" and cond[1] == 0:
            label = "clean image"  # the same scores under every kind: one sentence
        for name in names:
            cell = [r for r in here if r["model"] == name]
            if not cell:
                continue
            out: dict[str, Any] = {
                "model": name,
                **dict(zip(condition, cond)),
                "n_train": cell[0]["n_train"],
                "seeds": len({r["seed"] for r in cell}),
                "cases": len({r["case"] for r in cell}),
            }
            for key, heading, _ in METRICS:
                per_seed = _seed_means(cell, key)
                out[key] = mean_ci(list(per_seed.values()))
                out[f"{key}_per_seed"] = per_seed
                if study == "noise" and cond[1] != 0:
                    clean = [r for r in mine if r["model"] == name and r["kind"] == cond[0] and r["level"] == 0]
                    if clean:
                        before = _seed_means(clean, key)
                        common = [s for s in per_seed if s in before]
                        out[f"{key}_change"] = mean_ci([per_seed[s] - before[s] for s in common])
                if name != baseline and any(r["model"] == baseline for r in here):
                    pr = paired_comparison(
                        *paired_grids(here, name, baseline, key),
                        model=name,
                        baseline=baseline,
                        metric=f"{heading.split()[0]} ({study}: {label})",
                    )
                    if (name, pr.metric) not in said:
                        paired.append(pr)
                        said.add((name, pr.metric))
                    out[f"{key}_vs_baseline"] = {"diff": pr.diff, "lo": pr.lo, "hi": pr.hi, "p": pr.p_value}
            table.append(out)
    return table, paired


def _fmt_paired(d: dict[str, float] | None, digits: int = 3) -> str:
    if not d:
        return "-"
    return f"{d['diff']:+.{digits}f} [{d['lo']:+.{digits}f}, {d['hi']:+.{digits}f}], p = {d['p']:.3g}"


def _digits(key: str) -> int:
    return 3 if key == "dice_mean" else 2


def _columns(study: str, baseline: str) -> list[tuple[str, str]]:
    """(heading, key) of a study's table."""
    cond = [("kind", "kind"), ("level", "level")] if study == "noise" else [("fraction", "fraction"), ("training cases", "n_train")]
    cols = [("model", "model")] + cond
    for key, heading, _ in METRICS:
        cols.append((heading, key))
        if study == "noise":
            cols.append((f"{heading.split()[0]} change from clean", f"{key}_change"))
        cols.append((f"{heading.split()[0]} vs {baseline}", f"{key}_vs_baseline"))
    return cols


def _cells(table: list[dict], study: str, baseline: str) -> list[dict[str, str]]:
    """Table rows with every cell formatted as text."""
    out = []
    for r in table:
        c = {
            "model": r["model"],
            "kind": r.get("kind", ""),
            "level": f"{r['level']:g}" if "level" in r else "",
            "fraction": f"{r['fraction']:g}" if "fraction" in r else "",
            "n_train": str(r["n_train"]),
        }
        for key, _, _ in METRICS:
            c[key] = format_mean_ci(r.get(key), _digits(key))
            c[f"{key}_change"] = format_mean_ci(r.get(f"{key}_change"), _digits(key)) if f"{key}_change" in r else "-"
            c[f"{key}_vs_baseline"] = _fmt_paired(r.get(f"{key}_vs_baseline"), _digits(key))
        out.append(c)
    return out


def _flat(table: list[dict]) -> list[dict[str, Any]]:
    """CSV rows: ``{mean, sd, lo, hi, n}`` cells become ``<key>_mean`` ..., paired cells
    ``<key>_vs_baseline_diff`` ..., per-seed values ``<key>_seed<k>``."""
    flat = []
    for r in table:
        f: dict[str, Any] = {}
        for k, v in r.items():
            if isinstance(v, dict) and k.endswith("_per_seed"):
                f.update({f"{k[: -len('_per_seed')]}_seed{s}": x for s, x in v.items()})
            elif isinstance(v, dict):
                f.update({f"{k}_{part}": x for part, x in v.items()})
            else:
                f[k] = v
        flat.append(f)
    return flat


NOTE = (
    "Mean ± sd over seeds [95% t-interval]; each seed's value is the mean over the test cases. Dice: mean over "
    "the foreground classes; HD95 (mm): mean over the regions or foreground classes (one-sided empty region: the "
    "data format's value, else the field-of-view diagonal). 'vs' columns: paired difference with the baseline on "
    "the same seeds and test cases [two-level bootstrap 95% CI], sign-flip permutation p-value."
)


def table_markdown(table: list[dict], study: str, baseline: str) -> str:
    cols = _columns(study, baseline)
    lines = [
        NOTE + (" 'change from clean': per seed, the value minus the same model's value at level 0." if study == "noise" else ""),
        "",
        "| " + " | ".join(h for h, _ in cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for c in _cells(table, study, baseline):
        lines.append("| " + " | ".join(c.get(k, "-") for _, k in cols) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(result: RobustnessResult, noise: bool, fraction: bool) -> None:
    out = result.out_dir
    write_csv(out / "runs.csv", result.rows)
    for name, on, table in (("noise", noise, result.noise_table), ("fraction", fraction, result.fraction_table)):
        if on:
            write_csv(out / f"{name}.csv", _flat(table))
            (out / f"{name}.md").write_text(
                table_markdown(table, name, result.baseline)
                + "\n"
                + "\n".join(p.sentence() for p in result.paired if f"({name}:" in p.metric)
                + "\n"
            )


def write_report(
    result: RobustnessResult,
    cfg: ExperimentConfig,
    seeds: list[int],
    names: list[str],
    kinds: list[str],
    levels: list[float],
    fractions: list[float],
    counts: dict[float, int],
    noise_seed: int,
    n_train: int,
) -> Path:
    from pdeseg.viz.report import render_report

    split = json.loads((result.out_dir / "split.json").read_text())
    parts = [
        f"{', '.join(names)} trained with seeds {seeds} on one patient split ({len(split['train'])} train / "
        f"{len(split['val'])} validation / {len(split['test'])} test cases of {cfg.data.root}); {cfg.train.epochs} "
        f"epochs; each run's checkpoint is its best validation epoch. Test cases scored as whole volumes."
    ]
    if kinds:
        parts.append(
            f"Noise study: {', '.join(kinds)} perturbations of the raw test images at levels "
            f"{', '.join(f'{v:g}' for v in levels)} (noise sd = level x the 99th percentile of |intensity| over "
            "the non-zero voxels per channel; bias: level = sd of the log of a random smooth polynomial field "
            "of degree <= 3), then each model's own preprocessing; every model and seed sees the same noisy "
            f"image (noise seed {noise_seed})."
        )
    if fractions:
        parts.append(
            "Label-fraction study: training on "
            + ", ".join(f"{f:g} ({counts[f]} of {n_train} cases)" for f in fractions)
            + " with validation and test cases unchanged; smaller fractions are subsets of larger ones."
        )
    parts.append(f"Baseline for the paired comparisons: {result.baseline}. " + NOTE)
    cols = [("study", "study"), ("condition", "condition")] + [
        c for c in _columns("noise", result.baseline) if c[1] not in ("kind", "level")
    ]
    cells = []
    for study, table in (("noise", result.noise_table), ("fraction", result.fraction_table)):
        for r, c in zip(table, _cells(table, study, result.baseline)):
            condition = f"{r['kind']} {r['level']:g}" if study == "noise" else f"{r['fraction']:g} ({r['n_train']} cases)"
            cells.append({**c, "study": study, "condition": condition})
    verdicts = [p.sentence() for p in result.paired] or ["Only one model: nothing to compare."]
    env = json.loads((result.out_dir / "environment.json").read_text())
    return render_report(
        result.out_dir / "report.html",
        f"pdeseg robustness: {cfg.name}",
        " ".join(parts),
        cells,
        cols,
        verdicts,
        result.figures,
        {**env, "config": "config.yaml", "per-case scores": "runs.csv"},
    )
