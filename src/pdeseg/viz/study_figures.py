"""The figures of the studies (``compare``, ``ablate``, ``robustness``) drawn from arrays and
tables: the displayed slice of a case, and curves against a condition. The figures that need
a model's predictions are made in :mod:`pdeseg.experiments.figures`, which predicts and hands
the arrays to :mod:`pdeseg.viz` (drawing never runs a model).

Every function returns ``(relative path, caption)`` pairs for the report; none of them trains
or scores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pdeseg.config import ExperimentConfig
from pdeseg.data.pipeline.cache import CachedCase
from pdeseg.data.pipeline.sampling import select_slices

Figures = list[tuple[str, str]]


def display_slice(case: CachedCase, cfg: ExperimentConfig, scope: str) -> int:
    """The slice shown for a case: the selected one (slices scope, first of the selection) or the largest tumour."""
    if scope == "slices" and cfg.data.slices in ("middle", "tumour_middle"):
        return select_slices(case, cfg.data.slices)[0]
    return int(np.argmax((np.asarray(case.label) > 0).sum(axis=(1, 2))))


def condition_curves(table: list[dict], names: list[str], x_key: str, key: str, bounds: tuple[float, float], **where
                     ) -> dict[str, tuple]:
    """``{model: (xs, means, los, his)}`` of ``key`` against ``x_key`` for the rows matching
    ``where``; the interval clipped to the metric's ``bounds`` (a t-interval over 2 seeds can
    reach far outside them)."""
    curves = {}
    for name in names:
        mine = sorted((r for r in table if r["model"] == name and all(r.get(k) == v for k, v in where.items())),
                      key=lambda r: r[x_key])
        if mine:
            xs, means, los, his = (np.array(vals, dtype=float) for vals in zip(
                *[(r[x_key], r[key]["mean"], r[key]["lo"], r[key]["hi"]) for r in mine]))
            curves[name] = (xs, means, np.clip(los, *bounds), np.clip(his, *bounds))
    return curves


def robustness_figures(out: Path, metrics: tuple, noise_table: list[dict], fraction_table: list[dict], names: list[str],
                       kinds: list[str], fraction: bool) -> Figures:
    """``figures/noise_<kind>.png`` and ``figures/fraction.png``.

    Args:
        metrics: ``(row key, heading, (low, high))`` per panel.
    """
    from pdeseg.viz.figures import plot_against

    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    figures = []
    for kind in kinds:
        panels = [(heading, condition_curves(noise_table, names, "level", key, bounds, kind=kind))
                  for key, heading, bounds in metrics]
        plot_against(panels, "level", fig_dir / f"noise_{kind}.png", title=f"{kind} perturbation")
        figures.append((f"figures/noise_{kind}.png", f"Test Dice and HD95 against the {kind} level, one line per model "
                        "(mean over seeds; band: 95% t-interval, clipped to the metric's range)."))
    if fraction:
        panels = [(heading, condition_curves(fraction_table, names, "fraction", key, bounds)) for key, heading, bounds in metrics]
        plot_against(panels, "fraction of the training cases", fig_dir / "fraction.png", title="label fraction", log_x=True)
        figures.append(("figures/fraction.png", "Test Dice and HD95 against the fraction of training cases, one line per "
                        "model (mean over seeds; band: 95% t-interval, clipped to the metric's range)."))
    return figures
