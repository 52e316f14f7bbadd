"""Patient-level k-fold cross-validation: ``pdeseg train --folds K``.

With few patients (16 BraTS cases, 12 LGG patients) one held-out test split says little;
k-fold gives every case one out-of-fold prediction. For each model of the config:

* the cases are cut into ``K`` folds by :func:`pdeseg.data.pipeline.splits.kfold_splits` (seeded by
  ``data.split.seed``; validation share ``data.split.fractions[1]`` of all cases, drawn from
  the training folds), saved as ``folds.json`` and reused when the run continues;
* fold ``i`` trains in ``<out>/fold<i>/`` (a normal run folder: ``best.pt`` chosen on the
  fold's validation cases, never on its test cases; an interrupted fold resumes);
* each fold's ``best.pt`` segments its own test cases whole (volume scope, HD95 on), so every
  case is scored exactly once, by a model that never saw it.

Outputs in ``<out>``: ``folds.json``, ``oof_cases.csv`` (one row per case: fold and metrics),
``summary.md`` (mean ± sd over cases with a t 95 % interval, and each fold's mean Dice) and
``predictions/<case>.npz`` (each case's out-of-fold label map, before any post-processing).

:func:`rescore_crossval` (``pdeseg crossval DIR``) then measures inference-time choices on the
same out-of-fold cases without training again: test-time augmentation (the fold models run
again), the post-processing rules of :mod:`pdeseg.nn.postprocess` (on the saved label
maps), and a paired comparison with another out-of-fold table (``--against``). The small-ET
threshold can be chosen per fold on the *other* folds' cases (``auto``), so no case takes part
in choosing the rule applied to it.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pdeseg.build import Experiment, resolve
from pdeseg.config import ExperimentConfig, ModelConfig
from pdeseg.errors import ConfigError
from pdeseg.data.pipeline.prepare import PreparedData, prepare_data
from pdeseg.data.pipeline.splits import kfold_splits
from pdeseg.experiments.study import Study
from pdeseg.experiments.tables import write_csv
from pdeseg.experiments.stats import format_mean_ci, mean_ci
from pdeseg.inference.options import InferenceOptions
from pdeseg.inference.predict import Predictor
from pdeseg.inference.score import score

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

    The folds are runs of a :class:`~pdeseg.experiments.study.Study`: an interrupted
    cross-validation continues, and the cases already scored are read back from its
    ``scores.jsonl``.

    Raises:
        ConfigError: see :func:`check_crossval_config`; more folds than cases; a ``folds.json``
            in ``out_dir`` made for other cases or another number of folds.
    """
    val_fraction = check_crossval_config(cfg, folds)
    exp = exp or resolve(cfg)
    out = Path(out_dir)
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
    if exp.cfg.train.monitor != "train_loss" and any(not f["val"] for f in splits):
        raise ConfigError(f"train.monitor {exp.cfg.train.monitor!r} needs validation cases: set data.split.fractions[1] > 0")
    # the folder is made once every check has passed: a refused run leaves no cv<K>/
    study = Study.open(exp, out, "crossval", progress=progress, data=everything, write_split=False, extra={"folds": folds})
    if not folds_path.is_file():
        folds_path.write_text(json.dumps(splits, indent=1))
    runs = [study.run(model_cfg.name, exp.cfg.train.seed, Path(f"fold{i}"), model_cfg=model_cfg,
                      data=PreparedData(split, everything.cached), fold=i) for i, split in enumerate(splits)]
    study.train(runs, title=lambda r: f"{exp.cfg.name}: {model_cfg.name}, fold {r.fields['fold']}")
    result = CrossValResult(out, splits)
    t = exp.cfg.train
    options = InferenceOptions(device=t.device, precision=t.precision, postprocess=False)
    for run in runs:
        i = run.fields["fold"]
        log.info("fold %d/%d: %d train, %d val, %d test cases", i + 1, folds, *(len(run.data.split[k]) for k in ("train", "val", "test")))
        scored = study.scores(run, ("test", "volume"), run.data.cases("test"), lambda cases, r=run: score(
            study.predictor(r, options), cases, "volume", with_hd95=True, progress=progress,
            each_case=lambda case, classes, cells: save_labels(out / PREDICTIONS / f"{case.case_id}.npz", classes)))
        result.rows += [{"case": r["case"], "fold": i, **{k: v for k, v in r.items() if k != "case"}} for r in scored.rows]
    result.rows.sort(key=lambda r: r["case"])
    shutil.rmtree(out / PREDICTIONS_TTA, ignore_errors=True)  # maps of earlier fold models, if any, are stale now
    write_csv(out / "oof_cases.csv", result.rows)
    (out / "summary.md").write_text(summary_markdown(result, model_cfg.name))
    post = exp.cfg.postprocess
    if post.min_component_fraction is not None or post.min_innermost_voxels is not None:
        rescore_crossval(out, "postprocessed", min_component_fraction=post.min_component_fraction,
                         min_innermost_voxels=post.min_innermost_voxels, progress=progress)
    return result


def save_labels(path: Path, classes: np.ndarray) -> None:
    """A label map as a compressed ``.npz`` (key ``classes``), written through a temporary name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, classes=np.asarray(classes, dtype=np.uint8))
    tmp.replace(path)


def load_labels(path: Path) -> np.ndarray:
    with np.load(path) as f:
        return f["classes"]


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


# --------------------------------------------------------------------------------------
# inference-time choices measured out of fold
# --------------------------------------------------------------------------------------

PREDICTIONS = "predictions"
PREDICTIONS_TTA = "predictions_tta"  # the out-of-fold maps with test-time mirroring, kept for the next rescoring
#: Metrics compared by :func:`rescore_crossval` when present (per-region Dice and HD95 first).
COMPARED = ("dice_WT", "dice_TC", "dice_ET", "hd95_WT", "hd95_TC", "hd95_ET", "dice_mean", "hd95_mean")


@dataclass
class Rescored:
    """What :func:`rescore_crossval` measured: per-case rows, the paired comparisons with the
    reference table, and the small-innermost thresholds used per fold."""

    out_dir: Path
    rows: list[dict[str, Any]]
    comparisons: list[Any]
    thresholds: list[int | None]
    against: str


def _fold_predictor(cv_dir: Path, i: int, tta: bool) -> Predictor:
    ckpt = cv_dir / f"fold{i}" / "best.pt"
    if not ckpt.is_file():
        raise ConfigError(f"{ckpt} not found: run the cross-validation to the end first (pdeseg train --folds K)")
    return Predictor.from_checkpoint(ckpt, InferenceOptions(tta=tta, postprocess=False))


def _read_rows(path: Path) -> dict[str, dict[str, Any]]:
    import csv

    try:
        with path.open() as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{path}: cannot read it as a csv table ({exc})") from None
    if "case" not in (reader.fieldnames or []):
        raise ConfigError(f"{path}: no 'case' column; give the oof_cases.csv of a cross-validation")
    out = {}
    for r in rows:
        out[r["case"]] = {k: _number(v) if k not in ("case", "domain") and v not in ("", None) else v for k, v in r.items()}
    return out


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def reference_table(path: str | Path) -> Path:
    """The ``oof_cases.csv`` meant by ``path``: the file itself, or the one in a folder."""
    p = Path(path)
    table = p / "oof_cases.csv" if p.is_dir() else p
    if not table.is_file():
        raise ConfigError(f"{path}: no oof_cases.csv there (give a cross-validation folder, a rescored folder or the csv)")
    return table


def rescore_crossval(cv_dir: str | Path, name: str, tta: bool = False, min_component_fraction: float | None = None,
                     min_innermost_voxels: int | str | None = None, against: str | Path | None = None,
                     data_root: str | None = None, progress: bool = True) -> Rescored:
    """Score the out-of-fold cases of a finished cross-validation again with inference-time
    choices, into ``<cv_dir>/<name>/`` (``oof_cases.csv``, ``summary.md``).

    Args:
        cv_dir: the ``cv<K>`` folder of ``pdeseg train --folds K``.
        name: the sub-folder for this variant.
        tta: mirror test-time augmentation: each fold's model segments its cases again, and
            the maps are kept in ``predictions_tta/`` for later calls; otherwise the saved
            ``predictions/`` are used (where a case has none, its fold's model segments it
            again, and the map is kept).
        min_component_fraction: see :class:`~pdeseg.nn.postprocess.PostProcessing`.
        min_innermost_voxels: a whole number, or ``"auto"``: for fold ``i`` the threshold that
            maximises the innermost region's mean Dice over the other folds' cases
            (:func:`~pdeseg.nn.postprocess.choose_min_innermost_voxels`).
        against: the reference table for the paired comparisons (a folder with
            ``oof_cases.csv`` or the csv); default the cross-validation's own.
        data_root: the data folder, if not the one the runs were trained on.

    Raises:
        ConfigError: no finished cross-validation at ``cv_dir``, a bad option, a reference
            table without these cases or without any of the compared metrics (checked
            before any case is segmented).
    """
    from pdeseg.data.pipeline.sampling import case_volume
    from pdeseg.inference.evaluate import cases_of
    from pdeseg.experiments.stats import paired_comparison
    from pdeseg.nn.postprocess import PostProcessing, choose_min_innermost_voxels, region_chain
    from pdeseg.inference.score import score_label_maps
    from pdeseg.progress import track

    cv = Path(cv_dir)
    if not (cv / "folds.json").is_file():
        raise ConfigError(f"{cv}: not a cross-validation folder (no folds.json); give the cv<K> folder of pdeseg train --folds K")
    if not name or "/" in name or name in (PREDICTIONS, PREDICTIONS_TTA, ".", "..") or name.startswith("fold"):
        raise ConfigError(f"--name {name!r}: give a plain folder name other than {PREDICTIONS}, {PREDICTIONS_TTA} and fold*")
    auto = min_innermost_voxels == "auto"
    if not auto and min_innermost_voxels is not None and (isinstance(min_innermost_voxels, (bool, str))
                                                          or int(min_innermost_voxels) < 1):
        raise ConfigError(f"--min-innermost-voxels must be a whole number >= 1 or auto, got {min_innermost_voxels!r}")
    fixed = PostProcessing(min_component_fraction, None if auto else min_innermost_voxels)
    folds = json.loads((cv / "folds.json").read_text())
    ref_path = reference_table(against if against is not None else cv)
    reference = _read_rows(ref_path)
    shared = [k for k in COMPARED if reference and all(isinstance(r.get(k), float) for r in reference.values())]
    if not shared:  # refused before any case is segmented: an empty comparison is no result
        raise ConfigError(f"--against {ref_path}: holds none of the compared metrics ({', '.join(COMPARED)}) for every "
                          "case; give the oof_cases.csv of a cross-validation of the same task")

    cases: dict[str, tuple[int, Any, np.ndarray]] = {}  # case -> (fold, cached case, classes after the fixed rules)
    spec = None
    for i, fold in enumerate(folds):
        predictor = _fold_predictor(cv, i, tta)
        spec = predictor.spec
        if spec.maps:  # kept label maps lose the maps these cells are found from
            raise ConfigError(f"{cv}: rescoring kept label maps does not apply to cell models trained with "
                              f"targets {spec.instance_targets} (their cells come from the maps {', '.join(spec.maps)}); "
                              "score each fold with pdeseg evaluate instead")
        root = data_root or (predictor.config.data.root if predictor.config is not None else None)
        if not root:
            raise ConfigError("no data folder: pass --data (the runs' config names none)")
        entries = cases_of(predictor, root, list(fold["test"]), progress)
        for _, entry in track(entries, f"fold {i}", "case", enabled=progress):
            saved = cv / (PREDICTIONS_TTA if tta else PREDICTIONS) / f"{entry.case_id}.npz"
            if saved.is_file():
                classes = load_labels(saved)
            else:  # the fold's model segments again (with tta, or for a cross-validation that kept no maps)
                image, _ = case_volume(entry)
                classes = predictor.decode(predictor.predict_logits(image), with_cells=False).classes  # rules off
                save_labels(saved, classes)
            cases[entry.case_id] = (i, entry, fixed.apply(classes, spec.num_classes, spec.regions))
    missing = sorted(set(cases) - set(reference))
    if missing:
        raise ConfigError(f"{ref_path} has no rows for cases {missing[:3]}{'...' if len(missing) > 3 else ''}")

    def scored(ids: list[str], rule: PostProcessing | None = None) -> dict[str, dict[str, Any]]:
        """Rows of the kept maps of ``ids`` (after ``rule``), through the one scoring path."""
        def label_map(entry) -> np.ndarray:
            classes = cases[entry.case_id][2]
            return classes if rule is None else rule.apply(classes, spec.num_classes, spec.regions)

        result = score_label_maps(spec, [cases[c][1] for c in ids], label_map, with_hd95=True)
        return {r["case"]: {"case": r["case"], "fold": cases[r["case"]][0], **r} for r in result.rows}

    rows = scored(sorted(cases))
    thresholds: list[int | None] = [fixed.min_innermost_voxels] * len(folds)
    if auto:
        chain = region_chain(spec.num_classes, spec.regions)  # the innermost region and its name
        inner, key = chain.levels[-1], f"dice_{chain.region_names[-1]}"
        stats = {c: (int((cl == inner).sum()), not bool((np.asarray(e.label) == inner).any()), rows[c][key])
                 for c, (f, e, cl) in cases.items()}
        for i in range(len(folds)):
            others = [stats[c] for c, (f, _, _) in cases.items() if f != i]
            thresholds[i], _ = choose_min_innermost_voxels(*zip(*others))
            if thresholds[i] is not None:
                rows.update(scored([c for c, (f, _, _) in cases.items() if f == i], PostProcessing(None, thresholds[i])))
    ordered = [rows[c] for c in sorted(rows)]
    comparisons = []
    for key in COMPARED:
        if key in ordered[0] and all(isinstance(reference[r["case"]].get(key), float) for r in ordered):
            a = [r[key] for r in ordered]
            b = [reference[r["case"]][key] for r in ordered]
            if np.all(np.isfinite(a)) and np.all(np.isfinite(b)):
                comparisons.append(paired_comparison(a, b, name, ref_path.parent.name, key))
    out = cv / name
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "oof_cases.csv", ordered)
    options = {"tta": tta, "postprocess": PostProcessing(min_component_fraction, None).describe(),
               "min_innermost_voxels": min_innermost_voxels}
    result = Rescored(out, ordered, comparisons, thresholds, str(ref_path))
    (out / "summary.md").write_text(rescored_markdown(result, options))
    return result


def rescored_markdown(result: Rescored, options: dict[str, Any]) -> str:
    """Mean ± sd over cases [95 % interval] of the compared metrics and the paired tests."""
    lines = [f"Out-of-fold cases scored again: tta {options['tta']}; components: {options['postprocess']}; "
             f"small innermost region: {options['min_innermost_voxels'] or 'off'}"
             + (f" (per fold: {', '.join(str(t) for t in result.thresholds)})" if options["min_innermost_voxels"] == "auto" else ""),
             "", "| metric | mean ± sd over cases [95% interval] |", "|---|---|"]
    for key in COMPARED:
        vals = [r[key] for r in result.rows if key in r and np.isfinite(r[key])]
        if vals:
            lines.append(f"| {key} | {format_mean_ci(mean_ci(vals), unit='case')} |")
    lines += ["", f"Paired against `{result.against}` (same cases):", ""]
    lines += [f"* {c.sentence()}" for c in result.comparisons]
    return "\n".join(lines) + "\n"
