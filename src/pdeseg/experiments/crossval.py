"""Patient-level k-fold cross-validation: ``pdeseg train --folds K``.

With few patients (16 BraTS cases, 12 LGG patients) one held-out test split says little;
k-fold gives every case one out-of-fold prediction. For each model of the config:

* the cases are cut into ``K`` folds by :func:`pdeseg.data.splits.kfold_splits` (seeded by
  ``data.split.seed``; validation share ``data.split.fractions[1]`` of all cases, drawn from
  the training folds), saved as ``folds.json`` and reused when the run continues;
* fold ``i`` trains in ``<out>/fold<i>/`` (a normal run folder: ``best.pt`` chosen on the
  fold's validation cases, never on its test cases; an interrupted fold resumes);
* each fold's ``best.pt`` segments its own test cases whole (volume scope, HD95 on), so every
  case is scored exactly once, by a model that never saw it.

Outputs in ``<out>``: ``folds.json``, ``oof_cases.csv`` (one row per case: fold and metrics)
and ``summary.md`` (mean ± sd over cases with a t 95 % interval, and each fold's mean Dice).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pdeseg.build import Experiment, resolve
from pdeseg.config import ConfigError, ExperimentConfig, ModelConfig
from pdeseg.data.setup import PreparedData, prepare_data
from pdeseg.data.splits import kfold_splits
from pdeseg.experiments.compare import write_csv
from pdeseg.experiments.stats import format_mean_ci, mean_ci
from pdeseg.inference.predict import Predictor
from pdeseg.inference.score import score
from pdeseg.training.run import train_or_resume

log = logging.getLogger(__name__)


@dataclass
class CrossValResult:
    out_dir: Path
    folds: list[dict[str, list[str]]]
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per case, out of fold

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean, sd and t interval over cases of every numeric metric (finite values)."""
        keys = [k for k in self.rows[0] if k not in ("case", "fold")] if self.rows else []
        out = {}
        for k in keys:
            vals = [r[k] for r in self.rows if isinstance(r.get(k), (int, float)) and np.isfinite(r[k])]
            if vals:
                out[k] = mean_ci(vals)
        return out


def check_crossval_config(cfg: ExperimentConfig, folds: int) -> float:
    """The validation share of a k-fold run. Raises ConfigError for settings that do not
    combine with it (a domain split, a training subsample, split counts)."""
    s = cfg.data.split
    if s.domains is not None:
        raise ConfigError("--folds: data.split.domains fixes the test domain; k-fold needs a patient-level split")
    if cfg.data.train_cases is not None:
        raise ConfigError("--folds: data.train_cases subsamples one fixed training side; leave it out for k-fold")
    if s.fractions is None:
        raise ConfigError("--folds: give data.split.fractions (its validation share is used in every fold), not counts")
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"--folds must be a whole number >= 2, got {folds!r}")
    return float(s.fractions[1])


def run_crossval(cfg: ExperimentConfig, model_cfg: ModelConfig, out_dir: str | Path, folds: int, progress: bool = True,
                 exp: Experiment | None = None) -> CrossValResult:
    """Train ``model_cfg`` on every fold and score each case out of fold (see the module docstring).

    Raises:
        ConfigError: see :func:`check_crossval_config`; more folds than cases; a ``folds.json``
            in ``out_dir`` made for other cases or another number of folds.
    """
    val_fraction = check_crossval_config(cfg, folds)
    exp = exp or resolve(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    everything = prepare_data(exp.cfg.data.model_copy(update={"split": exp.cfg.data.split.model_copy(
        update={"fractions": [1.0, 0.0, 0.0]})}), exp.spec, None, progress=progress)
    ids = sorted(everything.cached)
    folds_path = out / "folds.json"
    if folds_path.is_file():
        splits = json.loads(folds_path.read_text())
        seen = sorted(c for f in splits for c in f["test"])
        if len(splits) != folds or seen != ids:
            raise ConfigError(f"{folds_path} holds {len(splits)} folds over {len(seen)} cases, but this run asks for "
                              f"{folds} folds over {len(ids)} cases; use another output folder")
    else:
        try:
            splits = kfold_splits(ids, folds, exp.cfg.data.split.seed, val_fraction)
        except ValueError as exc:
            raise ConfigError(f"--folds: {exc}") from None
        folds_path.write_text(json.dumps(splits, indent=1))
    if exp.cfg.train.monitor != "train_loss" and any(not f["val"] for f in splits):
        raise ConfigError(f"train.monitor {exp.cfg.train.monitor!r} needs validation cases: set data.split.fractions[1] > 0")
    result = CrossValResult(out, splits)
    for i, split in enumerate(splits):
        log.info("fold %d/%d: %d train, %d val, %d test cases", i + 1, folds, *(len(split[k]) for k in ("train", "val", "test")))
        data = PreparedData(split, everything.cached)
        run_dir = out / f"fold{i}"
        train_or_resume(exp.cfg, model_cfg, run_dir, data, progress, exp)
        predictor = Predictor.from_checkpoint(run_dir / "best.pt", precision=exp.cfg.train.precision)
        scored = score(predictor, data.cases("test"), "volume", with_hd95=True, progress=progress)
        result.rows += [{"case": r["case"], "fold": i, **{k: v for k, v in r.items() if k != "case"}} for r in scored.rows]
    result.rows.sort(key=lambda r: r["case"])
    write_csv(out / "oof_cases.csv", result.rows)
    (out / "summary.md").write_text(summary_markdown(result, model_cfg.name))
    return result


def summary_markdown(result: CrossValResult, model: str) -> str:
    """The out-of-fold table: every metric's mean ± sd over cases [t 95 % interval], and each
    fold's mean Dice."""
    k = len(result.folds)
    lines = [f"{model}: {k}-fold cross-validation, {len(result.rows)} cases, each scored once by the fold that did not "
             "train or validate on it (whole cases, HD95 in the data's units).", "",
             "| metric | mean ± sd over cases [95% interval] |", "|---|---|"]
    for key, ci in result.summary().items():
        if key.startswith(("dice", "iou", "hd95", "bf1", "dsb", "ap50", "surface")) or key in ("accuracy",):
            lines.append(f"| {key} | {format_mean_ci(ci, unit='case')} |")
    per_fold = [np.mean([r["dice_mean"] for r in result.rows if r["fold"] == i]) for i in range(k)]
    lines += ["", "Mean Dice per fold: " + ", ".join(f"fold {i} {d:.3f}" for i, d in enumerate(per_fold))]
    return "\n".join(lines) + "\n"
