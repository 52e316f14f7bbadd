"""Tables every study writes: per-case CSVs, seed summaries, per-domain tables.

Study rows are plain dicts, one per (condition, seed, split, case), with the condition named
by a field (``model`` for ``compare``, ``variant`` for ``ablate``); the summaries here turn
them into one row per condition with ``{mean, sd, lo, hi, n}`` cells over seeds
(:func:`~pdeseg.experiments.stats.mean_ci`), and the writers put them into CSV and Markdown.
Each runner keeps only the choice of its columns and its sentences.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from pdeseg.experiments.stats import mean_ci, seed_means

#: Test columns of object data (microscopy): Dice of the cells (all foreground classes),
#: boundary F1 at 2 px, DSB score, AP50, COCO mask AP (each image's own; pdeseg.metrics.coco).
OBJECT_COLUMNS = (("test cell Dice", "test_dice_fg"), ("test BF1@2px", "test_bf1_2"), ("test DSB score", "test_dsb_score"),
                  ("test AP50", "test_ap50"), ("test mask AP", "test_mask_ap"))


#: Columns of :func:`domain_table`: (heading, per-case row key).
DOMAIN_COLUMNS = (("cell Dice", "dice_fg"), ("BF1@2px", "bf1_2"), ("DSB score", "dsb_score"), ("AP50", "ap50"),
                  ("mask AP", "mask_ap"))
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
               "domain's cases, averaged over seeds; BF1@2px = boundary F1 of the foreground at 2 px; DSB score, "
               "AP50 and COCO mask AP (IoU 0.50:0.95, each image's own) of the predicted cells (- where the cases "
               "have no objects).")


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


def summary_table(rows: list[dict], runs: list[dict], names: list[str], columns: list[str], by: str = "model"
                  ) -> list[dict[str, Any]]:
    """One row per condition: each ``<split>_<metric>`` column as mean/sd/CI over seeds of the
    seeds' case means, and from the runs the parameters, seeds, mean training time, mean test
    inference time and best epochs.

    Args:
        rows: per-case rows (``by``, ``seed``, ``split``, ``case``, metrics).
        runs: per-run rows (``by``, ``seed``, ``parameters``, ``train_time_s``, ``best_epoch``,
            optionally ``test_ms_per_unit``).
        names: the conditions, in order.
        columns: ``<split>_<metric>`` keys to aggregate.
    """
    table = []
    for name in names:
        row: dict[str, Any] = {by: name}
        for column in columns:
            split, key = column.split("_", 1)
            vals = seed_means(rows, by, name, split, key)
            if vals and not np.isnan(vals).any():
                row[column] = mean_ci(vals)
        mine = [r for r in runs if r[by] == name]
        row["parameters"] = mine[0]["parameters"]
        row["seeds"] = len(mine)
        row["train_time_s"] = float(np.mean([r["train_time_s"] for r in mine]))
        row["test_ms_per_unit"] = float(np.mean([r.get("test_ms_per_unit", np.nan) for r in mine]))
        row["best_epochs"] = [r["best_epoch"] for r in mine]
        table.append(row)
    return table


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


