"""``pdeseg robustness``: how the models of a config hold up under noisy scans and few labels.

Two studies (paper 001's robustness plan), either or both in one call:

* **noise**: every model of the config is trained for each seed (as ``compare`` does, into
  ``runs/<model>/seed<k>/``), and each run's best checkpoint is scored on the fixed test cases
  after a perturbation of their *raw* intensities at several levels, followed by the model's
  own preprocessing (:class:`~pdeseg.data.pipeline.preprocess.Preprocessing`, as the cache and the
  predictor apply it). The network sees what it would see from a noisier scanner.
* **fraction**: every model is trained on fractions of the training cases
  (``data.train_cases``, :func:`~pdeseg.data.pipeline.prepare.subsample_training`) into
  ``runs/<model>/frac<f>/seed<k>/``, with the validation and test cases unchanged, and scored
  on the clean test cases. Fraction 1 is the noise study's runs (trained once).

Perturbations (:func:`perturb`) of an image ``x`` of shape ``(C, *spatial)``, channel ``c``,
with ``s_c`` its :func:`intensity_scale` and ``n, n1, n2`` independent standard normal fields:

* ``gaussian``: ``x + level * s_c * n``;
* ``rician``: ``sqrt((x + level * s_c * n1)^2 + (level * s_c * n2)^2)`` (the magnitude of a
  complex MR signal with Gaussian noise on the real and imaginary channels);
* ``bias``: ``x * exp(level * f_c)`` with ``f_c`` a random smooth field: a polynomial of degree
  <= 3 in normalised coordinates ``u_i = (2 k_i + 1) / n_i - 1`` (voxel centres in ``(-1, 1)``),
  ``P(u) = sum_{1 <= |a| <= 3} g_a prod_i u_i^{a_i}`` with ``g_a ~ N(0, 1)``, standardised over
  the grid, ``f_c = (P - mean P) / sd P``. So ``level`` is the standard deviation of the log
  bias field over the image (0.2: the field mostly within ``exp(+-0.4)`` = 0.67 .. 1.49).

``s_c`` is the 99th percentile of ``|x_c|`` over the channel's non-zero voxels, so a level means
the same on MRI, CT (Hounsfield units) and 8-bit images. With the normalisations that treat
exact zeros as "outside the body" (``zscore``, ``minmax``: skull-stripped MRI), voxels where
every channel is 0 are left at 0 (and are not counted in ``s_c``), so the background the model
was trained with stays background. Level 0 is the identity: those scores equal the plain ones.

Every random draw of a case depends only on ``(noise_seed, case id, kind)`` (:func:`perturbation_rng`):
every model and seed sees the same noisy image (paired comparisons), and the levels of one
kind scale one and the same standard-normal draw (common random numbers), so a change between
levels comes from the level and not from a new noise realisation.

Scoring: whole volumes (``volume`` scope of :func:`~pdeseg.inference.score.score`) with HD95.
``dice_mean`` is the mean Dice over the foreground classes; ``hd95_mean`` (added here) is the
mean over the regions (BraTS WT/TC/ET) or foreground classes of their HD95 (mm), where a region
empty in exactly one of truth and prediction counts as the data format says (373.13 mm for
BraTS) or, for formats that give no finite value, as the diagonal of the case's field of view
(the BraTS value is exactly that diagonal for a 240 x 240 x 155 mm volume). Per cell (model x
kind x level, or model x fraction): the per-seed case means, their mean with a t 95% CI over
seeds, the change from the clean image (noise study, per seed), and a paired comparison with
the baseline model on the same (seed, test case) grid (:func:`~pdeseg.experiments.stats.paired_comparison`)
for Dice and for HD95.

The cells, tables and report are made by :mod:`pdeseg.experiments.robustness_tables`. Output folder::

    config.yaml, split.json, environment.json   what was run, on what
    runs/<model>/seed<k>/, runs/<model>/frac<f>/seed<k>/   training runs (resumable)
    scores.jsonl                                 per-case scores already computed (rerunning reuses them)
    runs.csv                                     per run and test case: condition and metrics
    noise.md, noise.csv                          rows model x kind x level
    fraction.md, fraction.csv                    rows model x fraction
    figures/noise_<kind>.png, figures/fraction.png, report.html

Rerunning the same command continues an interrupted study: finished runs are reused,
unfinished ones resumed, scores already computed are read back from ``scores.jsonl``.

Known limit: with ``normalization: ct`` and no ``ct_window``, the CT window and statistics
come from the foreground of all training cases, also for the runs on a fraction of them.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pdeseg.build import resolve
from pdeseg.config import ExperimentConfig
from pdeseg.errors import ConfigError
from pdeseg.data.pipeline.cache import CachedCase
from pdeseg.data.formats import get_format
from pdeseg.data.pipeline.perturb import KINDS, check_kind, check_level, perturb, perturbation_region
from pdeseg.data.pipeline.preprocess import Preprocessing
from pdeseg.data.pipeline.prepare import PreparedData, subsample_training
from pdeseg.experiments.robustness_tables import METRICS, cell_table, write_outputs, write_report
from pdeseg.experiments.stats import PairedResult
from pdeseg.experiments.study import Run, Study
from pdeseg.inference.predict import Predictor
from pdeseg.inference.score import score

log = logging.getLogger(__name__)

STUDIES = ("noise", "fraction", "both")
DEFAULT_LEVELS = (0.0, 0.05, 0.1, 0.2)
DEFAULT_FRACTIONS = (0.1, 0.25, 0.5, 1.0)


# --------------------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------------------


def parse_list(text: str | None, option: str) -> list[str]:
    """``a,b,c`` -> ``["a", "b", "c"]`` (None -> []); empty items raise ConfigError."""
    if text is None:
        return []
    items = [t.strip() for t in str(text).split(",")]
    if not all(items):
        raise ConfigError(f"{option}: expected comma-separated values, got {text!r}")
    return items


def parse_numbers(text: str | None, option: str) -> list[float] | None:
    """``0,0.05,0.1`` -> floats (None -> None); a non-number raises ConfigError naming ``option``."""
    if text is None:
        return None
    out = []
    for item in parse_list(text, option):
        try:
            out.append(float(item))
        except ValueError:
            raise ConfigError(f"{option}: {item!r} is not a number (in {text!r})") from None
    return out


def check_fraction(f: float) -> float:
    """Raises ConfigError for a training fraction outside ``(0, 1]``."""
    if isinstance(f, bool) or not isinstance(f, (int, float, np.integer, np.floating)) or not math.isfinite(f) \
            or not 0 < f <= 1:
        raise ConfigError(f"--fractions: a training fraction must lie in (0, 1], got {f!r}")
    return float(f)


def fraction_counts(fractions: Sequence[float], n_train: int) -> dict[float, int]:
    """Training cases each fraction keeps (as :func:`~pdeseg.data.pipeline.prepare.subsample_training`
    rounds them); 1 keeps all.

    Raises:
        ConfigError: a fraction that keeps no training case.
    """
    counts = {}
    for f in fractions:
        n = n_train if f == 1 else int(round(f * n_train))
        if n < 1:
            raise ConfigError(f"--fractions: {f:g} of the {n_train} training cases is {f * n_train:.2f}, which rounds "
                              f"to 0 cases; use a fraction >= {0.5 / max(n_train, 1):.3g}")
        counts[f] = n
    same = [f for f in counts if list(counts.values()).count(counts[f]) > 1]
    if same:
        log.warning("--fractions %s keep the same number of the %d training cases (%s): their runs differ only in name",
                    ", ".join(f"{f:g}" for f in same), n_train, ", ".join(str(counts[f]) for f in same))
    return counts


def fraction_data(data: PreparedData, fraction: float, seed: int) -> PreparedData:
    """The prepared data of a run on ``fraction`` of the training cases: the training side
    subsampled with ``seed`` (the split seed, so every model and training seed gets the same
    cases, and smaller fractions are subsets of larger ones); validation and test unchanged."""
    if fraction == 1:
        return data
    train = subsample_training(data.split["train"], fraction, seed)
    return PreparedData({**data.split, "train": train}, data.cached)


def frac_name(fraction: float) -> str:
    """Run folder name of a fraction: ``frac0.25``."""
    return f"frac{fraction:g}"


# --------------------------------------------------------------------------------------
# the study
# --------------------------------------------------------------------------------------


@dataclass
class RobustnessResult:
    """What :func:`run_robustness` computed.

    Attributes:
        rows: one per (study, condition, model, seed, test case): metrics and ``hd95_mean``.
        noise_table, fraction_table: one row per cell (see
            :func:`~pdeseg.experiments.robustness_tables.cell_table`).
        paired: every paired comparison with the baseline (Dice and HD95 per cell).
    """

    out_dir: Path
    baseline: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    noise_table: list[dict[str, Any]] = field(default_factory=list)
    fraction_table: list[dict[str, Any]] = field(default_factory=list)
    paired: list[PairedResult] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)


def default_kinds(normalization: str) -> list[str]:
    """Every kind, except Rician noise for CT (it models magnitude MRI; on Hounsfield units it
    would fold negative intensities to positive ones)."""
    return [k for k in KINDS if not (k == "rician" and normalization == "ct")]


def run_robustness(
    cfg: ExperimentConfig,
    out_dir: str | Path,
    seeds: list[int],
    study: str = "both",
    kinds: Sequence[str] | None = None,
    levels: Sequence[float] | None = None,
    fractions: Sequence[float] | None = None,
    baseline: str | None = None,
    noise_seed: int = 0,
    progress: bool = True,
) -> RobustnessResult:
    """Run the noise and/or label-fraction study of the config's models (see the module docstring).

    Args:
        cfg: the experiment (its models, data and training settings).
        out_dir: the study folder (rerun with the same arguments to continue).
        seeds: training seeds.
        study: ``noise``, ``fraction`` or ``both``.
        kinds: perturbations (default :func:`default_kinds`).
        levels: perturbation levels (default :data:`DEFAULT_LEVELS`).
        fractions: training fractions in ``(0, 1]`` (default :data:`DEFAULT_FRACTIONS`).
        baseline: the model the others are compared with (default: the first).
        noise_seed: seeds every perturbation (with the case id and kind).

    Raises:
        ConfigError: an unknown study or kind, a negative level, a fraction outside ``(0, 1]``
            or one that leaves no training case, a baseline that is not among the models,
            Rician noise on CT, ``data.train_cases`` set for a fraction study, or no test cases.
    """
    kind_of_study = study
    if study not in STUDIES:
        raise ConfigError(f"--study must be one of {', '.join(STUDIES)}, got {study!r}")
    if not seeds:
        raise ConfigError("--seeds: at least one seed is needed")
    do_noise, do_fraction = study in ("noise", "both"), study in ("fraction", "both")
    levels = sorted({check_level(v) for v in (DEFAULT_LEVELS if levels is None else levels)})
    fractions = sorted({check_fraction(f) for f in (DEFAULT_FRACTIONS if fractions is None else fractions)})
    if kinds is not None:
        kinds = list(dict.fromkeys(check_kind(k) for k in kinds))
    if (do_noise and not levels) or (do_noise and kinds is not None and not kinds) or (do_fraction and not fractions):
        raise ConfigError("--noise, --levels and --fractions need at least one value each for the studies asked for")
    exp = resolve(cfg)
    cfg = exp.cfg
    names = [m.name for m in cfg.models]
    baseline = baseline or names[0]
    if baseline not in names:
        raise ConfigError(f"--baseline {baseline!r} is not among the config's models ({', '.join(names)})")
    if kinds is None:
        kinds = default_kinds(exp.spec.normalization)
    elif "rician" in kinds and exp.spec.normalization == "ct":
        raise ConfigError("--noise rician models magnitude MRI and would fold negative Hounsfield units; "
                          "use gaussian and bias for CT (normalization ct)")
    if do_fraction and cfg.data.train_cases is not None:
        raise ConfigError(f"data.train_cases is {cfg.data.train_cases:g} in the config, but the fraction study sets it "
                          "per run; remove it (--set data.train_cases=null)")

    def check(data: PreparedData) -> None:
        if not data.split["test"]:
            raise ConfigError("the split has no test cases: the robustness study scores the test cases (data.split)")
        if do_fraction:
            fraction_counts(fractions, len(data.split["train"]))

    study = Study.open(exp, out_dir, "robustness", progress=progress, check=check)
    data = study.data
    n_train = len(data.split["train"])
    counts = fraction_counts(fractions, n_train) if do_fraction else {}
    log.info("robustness study %s: models %s (baseline %s), seeds %s%s%s", kind_of_study, ", ".join(names), baseline, seeds,
             f"; noise {', '.join(kinds)} at levels {', '.join(f'{v:g}' for v in levels)}" if do_noise else "",
             f"; fractions {', '.join(f'{f:g} ({counts[f]} cases)' for f in fractions)}" if do_fraction else "")

    # training: the full runs (noise study and fraction 1), then the fraction runs
    wanted = ([1.0] if do_noise or 1.0 in fractions else []) + ([f for f in fractions if f < 1] if do_fraction else [])
    runs: list[Run] = []
    for fraction in wanted:
        run_data = fraction_data(data, fraction, cfg.data.split.seed)
        for seed in seeds:
            for m in cfg.models:
                folder = Path("runs") / m.name / (frac_name(fraction) if fraction < 1 else "") / f"seed{seed}"
                extra = {"train_cases": fraction} if fraction < 1 else {}
                runs.append(study.run(m.name, seed, folder, model_cfg=m, data=run_data, fraction=fraction,
                                      n_train=len(run_data.split["train"]), **extra))
    study.train(runs, title=lambda r: f"{cfg.name}: {r.condition}, seed {r.seed}, {r.fields['n_train']} training cases")

    result = RobustnessResult(study.out, baseline)
    test = data.cases("test")
    if do_noise:
        full = sorted((r for r in runs if r.fields["fraction"] == 1.0), key=lambda r: (names.index(r.condition), r.seed))
        result.rows += noise_rows(study, full, test, kinds, levels, noise_seed, n_train)
        result.noise_table, paired = cell_table(result.rows, "noise", ("kind", "level"), names, baseline)
        result.paired += paired
    if do_fraction:
        chosen = [r for r in runs if r.fields["fraction"] in fractions]
        result.rows += fraction_rows(study, chosen, test, counts)
        result.fraction_table, paired = cell_table(result.rows, "fraction", ("fraction",), names, baseline)
        result.paired += paired
    write_outputs(result, do_noise, do_fraction)
    from pdeseg.viz.study_figures import robustness_figures

    result.figures = robustness_figures(result.out_dir, METRICS, result.noise_table, result.fraction_table, names,
                                        kinds if do_noise else [], do_fraction)
    write_report(result, cfg, seeds, names, kinds if do_noise else [], levels if do_noise else [],
                 fractions if do_fraction else [], counts, noise_seed, n_train)
    return result


# --------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------


def hd95_mean(row: dict[str, Any], diagonal_mm: float) -> float:
    """Mean of a score row's ``hd95_<region>`` values, an infinite one (a region empty in exactly
    one of truth and prediction, for formats without a finite rule) counted as ``diagonal_mm``."""
    values = [float(v) for k, v in row.items() if k.startswith("hd95_") and k != "hd95_mean"]
    if not values:
        return float("nan")
    return float(np.mean([diagonal_mm if math.isinf(v) else v for v in values]))


def field_of_view_diagonal(case: CachedCase) -> float:
    """Diagonal (mm) of a cached case's grid: shape times spacing."""
    return float(np.linalg.norm(np.asarray(case.meta["shape"], float) * np.asarray(case.meta["spacing"], float)))


def _score_cases(predictor: Predictor, cases: list[CachedCase]):
    """The score rows of cases (whole volumes, HD95), each with ``hd95_mean``."""
    result = score(predictor, cases, "volume", with_hd95=True)
    diagonals = {c.case_id: field_of_view_diagonal(c) for c in cases}
    result.rows = [{**row, "hd95_mean": hd95_mean(row, diagonals[row["case"]])} for row in result.rows]
    return result


def preprocessed_case(template: CachedCase, raw: np.ndarray, spacing: Sequence[float], prep: Preprocessing) -> CachedCase:
    """``raw (C, X, Y, Z)`` intensities of ``template``'s case through ``prep`` (as the cache
    does it, cropped to the template's box when it was cropped), held in memory as the same
    cached case (:meth:`CachedCase.with_image`)."""
    box = template.meta.get("crop_box")
    image, _, _ = prep.apply(raw, spacing, box=tuple(tuple(b) for b in box) if box else None)
    return template.with_image(image)


def noise_rows(study: Study, runs: list[Run], test: list[CachedCase], kinds: list[str], levels: list[float],
               noise_seed: int, n_train: int) -> list[dict[str, Any]]:
    """Score rows of every run's best checkpoint on every test case under every (kind, level).

    Each test case is read once from its source files; the perturbed raw image goes through
    each model's :class:`~pdeseg.data.pipeline.preprocess.Preprocessing` (once per distinct one) into an
    in-memory case, never into the cache. Level 0 (the clean image, whatever the kind and noise
    seed) is scored once, shared with the fraction study, and reported under every kind."""
    cfg, spec = study.cfg, study.exp.spec
    conditions = [(kind, level, "clean" if level == 0 else kind) for kind, level in itertools.product(kinds, levels)]

    def what(effective: str, level: float) -> tuple:
        return ("clean",) if level == 0 else ("noise", effective, repr(float(level)), int(noise_seed))

    identities = {run.best: study.store.identity(run.best) for run in runs}  # each checkpoint stat-ed once

    def have(run: Run, effective: str, level: float, case: CachedCase) -> dict | None:
        return study.store.get(study.store.key(identities[run.best], *what(effective, level), case.case_id))

    sources: dict[str, Any] = {}
    for i, template in enumerate(test):
        todo = sorted({(effective, level, j) for j, run in enumerate(runs) for _, level, effective in conditions
                       if have(run, effective, level, template) is None})
        if not todo:
            continue
        if not sources:
            sources = {c.case_id: c for c in get_format(spec.format).find_cases(cfg.data.root, tuple(spec.modalities), True,
                                                                                **cfg.data.format_options)}
        log.info("noise study: test case %d/%d (%s), %d scores to compute", i + 1, len(test), template.case_id, len(todo))
        loaded = sources[template.case_id].load(tuple(spec.modalities), with_label=False)
        mask, scale = perturbation_region(loaded.image, spec.normalization)
        for (effective, level), group in itertools.groupby(todo, key=lambda t: (t[0], t[1])):
            raw = perturb(loaded.image, KINDS[0] if level == 0 else effective, level, seed=noise_seed,
                          case_id=template.case_id, scale=scale, mask=mask)
            prepared: dict[str, CachedCase] = {}
            for _, _, j in group:
                predictor = study.predictor(runs[j])
                prep = Preprocessing.of(predictor.spec)
                if prep.key() not in prepared:
                    prepared[prep.key()] = preprocessed_case(template, raw, loaded.spacing, prep)
                study.scores(runs[j], what(effective, level), [prepared[prep.key()]],
                             lambda cases, p=predictor: _score_cases(p, cases), summary=False)
    rows = []
    for kind, level, effective in conditions:
        for run in runs:
            for case in test:
                rows.append({"study": "noise", "model": run.condition, "seed": run.seed, "kind": kind, "level": level,
                             "fraction": 1.0, "n_train": n_train, "split": "test", "best_epoch": run.best_epoch,
                             **have(run, effective, level, case), "case": case.case_id})
    return rows


def fraction_rows(study: Study, runs: list[Run], test: list[CachedCase], counts: dict[float, int]) -> list[dict[str, Any]]:
    """Score rows of every fraction run's best checkpoint on the clean test cases."""
    rows = []
    for run in sorted(runs, key=lambda r: (r.condition, r.fields["fraction"], r.seed)):
        scored = study.scores(run, ("clean",), test, lambda cases, r=run: _score_cases(study.predictor(r), cases))
        for row in scored.rows:
            rows.append({"study": "fraction", "model": run.condition, "seed": run.seed, "fraction": run.fields["fraction"],
                         "n_train": counts[run.fields["fraction"]], "split": "test", "best_epoch": run.best_epoch, **row,
                         "case": row["case"]})
    return rows
