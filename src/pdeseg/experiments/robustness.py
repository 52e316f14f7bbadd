"""``pdeseg robustness``: how the models of a config hold up under noisy scans and few labels.

Two studies (paper 001's robustness plan), either or both in one call:

* **noise**: every model of the config is trained for each seed (as ``compare`` does, into
  ``runs/<model>/seed<k>/``), and each run's best checkpoint is scored on the fixed test cases
  after a perturbation of their *raw* intensities at several levels, followed by the model's
  own preprocessing (:class:`~pdeseg.data.preprocess.Preprocessing`, as the cache and the
  predictor apply it). The network sees what it would see from a noisier scanner.
* **fraction**: every model is trained on fractions of the training cases
  (``data.train_cases``, :func:`~pdeseg.data.setup.subsample_training`) into
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

Output folder::

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

import copy
import hashlib
import itertools
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pdeseg.build import Experiment, resolve
from pdeseg.config import ConfigError, ExperimentConfig, save_config
from pdeseg.data.cache import CachedCase
from pdeseg.data.files import make_folders
from pdeseg.data.formats import get_format
from pdeseg.data.preprocess import Preprocessing, nonzero_mask
from pdeseg.data.setup import PreparedData, prepare_data, subsample_training
from pdeseg.data.splits import save_split
from pdeseg.experiments.compare import environment, paired_grids, write_csv, write_curves
from pdeseg.experiments.stats import PairedResult, format_mean_ci, mean_ci, paired_comparison
from pdeseg.inference.options import InferenceOptions
from pdeseg.inference.predict import Predictor
from pdeseg.inference.score import score
from pdeseg.training.run import train_or_resume

log = logging.getLogger(__name__)

KINDS = ("gaussian", "rician", "bias")
STUDIES = ("noise", "fraction", "both")
DEFAULT_LEVELS = (0.0, 0.05, 0.1, 0.2)
DEFAULT_FRACTIONS = (0.1, 0.25, 0.5, 1.0)
#: Highest total degree of the bias field's polynomial.
BIAS_DEGREE = 3
#: Normalisations for which exact zeros mean "outside the body": the perturbation leaves them 0.
ZERO_IS_BACKGROUND = ("zscore", "minmax")
#: The metrics of the tables: (row key, heading, range of values).
METRICS = (("dice_mean", "Dice", (0.0, 1.0)), ("hd95_mean", "HD95 (mm)", (0.0, math.inf)))


# --------------------------------------------------------------------------------------
# perturbations
# --------------------------------------------------------------------------------------


def check_kind(kind: str) -> str:
    """Raises ConfigError for a perturbation kind that is not one of :data:`KINDS`."""
    if kind not in KINDS:
        raise ConfigError(f"--noise: unknown perturbation {kind!r}; use one or more of {', '.join(KINDS)}")
    return kind


def check_level(level: float) -> float:
    """Raises ConfigError for a level that is not a finite number >= 0."""
    if isinstance(level, bool) or not isinstance(level, (int, float, np.integer, np.floating)) \
            or not math.isfinite(level) or level < 0:
        raise ConfigError(f"--levels: a perturbation level must be a finite number >= 0 (a share of the image's "
                          f"intensity scale), got {level!r}")
    return float(level)


def intensity_scale(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Robust intensity scale of each channel: the 99th percentile of ``|x|`` over the channel's
    non-zero voxels (inside ``mask`` when given); 0 for a channel without any.

    Args:
        image: ``(C, *spatial)`` raw intensities; mask: bool ``(*spatial)`` or None.

    Returns:
        float64 ``(C,)``.
    """
    scales = np.zeros(image.shape[0])
    for c in range(image.shape[0]):
        values = np.abs(image[c][mask] if mask is not None else image[c]).astype(np.float64)
        values = values[values != 0]
        if values.size:
            scales[c] = float(np.percentile(values, 99))
    return scales


def perturbation_rng(seed: int, case_id: str, kind: str) -> np.random.Generator:
    """The random generator of one case's perturbation: a function of ``(seed, case id, kind)``
    only (stable across processes and machines), shared by every level of that kind."""
    digest = hashlib.sha256(f"pdeseg-robustness|{int(seed)}|{case_id}|{kind}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def bias_log_field(shape: Sequence[int], rng: np.random.Generator, degree: int = BIAS_DEGREE) -> np.ndarray:
    """A standardised random polynomial ``f`` of total degree ``1..degree`` on a grid of ``shape``
    (see the module docstring): mean 0 and sd 1 over the grid (all zeros where the grid has no
    spread, e.g. a single voxel).

    Returns:
        float64 ``shape``.
    """
    shape = tuple(int(n) for n in shape)
    axes = [(2 * np.arange(n) + 1) / n - 1 for n in shape]
    field_ = np.zeros(shape)
    for powers in itertools.product(range(degree + 1), repeat=len(shape)):
        if not 1 <= sum(powers) <= degree:
            continue
        term = np.ones(shape)
        for i, (u, p) in enumerate(zip(axes, powers)):
            if p:
                term = term * (u ** p).reshape([-1 if j == i else 1 for j in range(len(shape))])
        field_ += rng.standard_normal() * term
    sd = field_.std()
    return (field_ - field_.mean()) / sd if sd > 1e-12 else np.zeros(shape)


def perturb(image: np.ndarray, kind: str, level: float, *, seed: int = 0, case_id: str = "",
            scale: Sequence[float] | np.ndarray | None = None, mask: np.ndarray | None = None) -> np.ndarray:
    """Perturb raw intensities (formulas in the module docstring).

    Args:
        image: ``(C, *spatial)`` raw intensities.
        kind: ``gaussian``, ``rician`` or ``bias``.
        level: noise sd as a share of ``scale`` (``gaussian``, ``rician``), or sd of the log
            bias field (``bias``); 0 returns ``image`` itself.
        seed, case_id: select the random draw (:func:`perturbation_rng`); every level of one
            ``(seed, case_id, kind)`` scales the same draw.
        scale: intensity scale per channel (default :func:`intensity_scale` of ``image`` inside ``mask``).
        mask: bool ``(*spatial)``: perturb only these voxels (the others keep their values), or None.

    Returns:
        float32 ``(C, *spatial)`` (``image`` unchanged when ``level`` is 0).

    Raises:
        ConfigError: an unknown kind, or a level that is negative or not finite.
    """
    check_kind(kind)
    level = check_level(level)
    if level == 0:
        return image
    rng = perturbation_rng(seed, case_id, kind)
    x = np.asarray(image, dtype=np.float32)
    if kind == "bias":
        gain = np.stack([np.exp(level * bias_log_field(x.shape[1:], rng)) for _ in range(x.shape[0])]).astype(np.float32)
        out = x * gain
    else:
        s = np.asarray(intensity_scale(x, mask) if scale is None else scale, dtype=np.float64).reshape(-1)
        if s.size == 1:
            s = np.repeat(s, x.shape[0])
        sigma = (level * s).astype(np.float32).reshape((-1,) + (1,) * (x.ndim - 1))
        real = x + sigma * rng.standard_normal(x.shape, dtype=np.float32)
        if kind == "gaussian":
            out = real
        else:
            imag = sigma * rng.standard_normal(x.shape, dtype=np.float32)
            out = np.sqrt(real * real + imag * imag)
    if mask is not None:
        out = np.where(mask[None], out, x)
    return out.astype(np.float32, copy=False)


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
    """Training cases each fraction keeps (as :func:`~pdeseg.data.setup.subsample_training`
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
        noise_table, fraction_table: one row per cell (see :func:`cell_table`).
        paired: every paired comparison with the baseline (Dice and HD95 per cell).
    """

    out_dir: Path
    baseline: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    noise_table: list[dict[str, Any]] = field(default_factory=list)
    fraction_table: list[dict[str, Any]] = field(default_factory=list)
    paired: list[PairedResult] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)


class ScoreMemo:
    """Per-case scores already computed, in ``scores.jsonl`` (one JSON object a line), keyed by
    the condition, the case and the checkpoint file's size and time, so that a rerun reuses
    them and a retrained run is scored again."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[str, dict] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    item = json.loads(line)
                    self.rows[item["key"]] = item["row"]
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by an interruption

    @staticmethod
    def key(checkpoint: Path, *parts: Any) -> str:
        st = checkpoint.stat()
        return "|".join(map(str, (*parts, checkpoint.resolve(), st.st_size, st.st_mtime_ns)))

    def get(self, key: str) -> dict | None:
        return self.rows.get(key)

    def put(self, key: str, row: dict) -> None:
        self.rows[key] = row
        with self.path.open("a") as fh:
            fh.write(json.dumps({"key": key, "row": row}) + "\n")


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

    out = Path(out_dir)
    data = prepare_data(cfg.data, exp.spec, out / "split.json", progress=progress)
    if not data.split["test"]:
        raise ConfigError("the split has no test cases: the robustness study scores the test cases (data.split)")
    n_train = len(data.split["train"])
    counts = fraction_counts(fractions, n_train) if do_fraction else {}
    make_folders(out, "study folder")  # only once every check has passed: a refused study leaves nothing
    save_config(cfg, out / "config.yaml")
    (out / "environment.json").write_text(json.dumps(environment(), indent=1))
    save_split(data.split, out / "split.json")
    log.info("robustness study %s: models %s (baseline %s), seeds %s%s%s", study, ", ".join(names), baseline, seeds,
             f"; noise {', '.join(kinds)} at levels {', '.join(f'{v:g}' for v in levels)}" if do_noise else "",
             f"; fractions {', '.join(f'{f:g} ({counts[f]} cases)' for f in fractions)}" if do_fraction else "")

    # training: the full runs (noise study and fraction 1), then the fraction runs
    runs: dict[tuple[str, float, int], Path] = {}
    best_epochs: dict[Path, int] = {}
    wanted = ([1.0] if do_noise or 1.0 in fractions else []) + ([f for f in fractions if f < 1] if do_fraction else [])
    for fraction in wanted:
        run_data = fraction_data(data, fraction, cfg.data.split.seed)
        for seed in seeds:
            for m in cfg.models:
                run_cfg = copy.deepcopy(cfg)
                run_cfg.train.seed = seed
                run_dir = out / "runs" / m.name / f"seed{seed}"
                if fraction < 1:
                    run_cfg.data.train_cases = fraction
                    run_dir = out / "runs" / m.name / frac_name(fraction) / f"seed{seed}"
                log.info("training %s, seed %d, %d training cases (%s)", m.name, seed, len(run_data.split["train"]), run_dir)
                last = train_or_resume(run_cfg, m, run_dir, run_data, progress,
                                       Experiment(run_cfg, exp.fmt, exp.info, exp.spec))
                write_curves(run_dir, last, f"{cfg.name}: {m.name}, seed {seed}, {len(run_data.split['train'])} training cases")
                runs[(m.name, fraction, seed)] = run_dir
                best_epochs[run_dir] = int(last["training"]["best_epoch"])

    memo = ScoreMemo(out / "scores.jsonl")
    result = RobustnessResult(out, baseline)
    test = data.cases("test")
    device, precision = cfg.train.device, cfg.train.precision
    if do_noise:
        full = {(name, seed): runs[(name, 1.0, seed)] for name in names for seed in seeds}
        result.rows += noise_rows(full, test, cfg, exp.spec, kinds, levels, noise_seed, memo, device,
                                  precision, best_epochs, n_train)
        result.noise_table, paired = cell_table(result.rows, "noise", ("kind", "level"), names, baseline)
        result.paired += paired
    if do_fraction:
        chosen = {k: v for k, v in runs.items() if k[1] in fractions}
        result.rows += fraction_rows(chosen, test, counts, memo, device, precision, best_epochs)
        result.fraction_table, paired = cell_table(result.rows, "fraction", ("fraction",), names, baseline)
        result.paired += paired
    write_outputs(result, do_noise, do_fraction)
    result.figures = make_figures(result, names, kinds if do_noise else [], do_fraction)
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


def _score_one(predictor: Predictor, case: CachedCase) -> dict[str, Any]:
    """The score row of one case, with ``hd95_mean``."""
    (row,) = score(predictor, [case], "volume", with_hd95=True).rows
    return {**row, "hd95_mean": hd95_mean(row, field_of_view_diagonal(case))}


def in_memory_case(template: CachedCase, image: np.ndarray) -> CachedCase:
    """A cached case (same id, meta and label as ``template``) holding another normalised
    ``image (C, X, Y, Z)``, stored as the cache stores it (float16, slice-major); nothing is
    written to disk.

    Raises:
        ValueError: the image's grid differs from the template's (a preprocessing mismatch).
    """
    if list(image.shape[1:]) != list(template.meta["shape"]):
        raise ValueError(f"case {template.case_id}: preprocessed grid {image.shape[1:]} differs from the cached "
                         f"{tuple(template.meta['shape'])}")
    case = CachedCase(template.case_id, template.path, template.meta)
    case._image = np.ascontiguousarray(image.transpose(3, 0, 1, 2)).astype(np.float16)
    case._label = template.label
    return case


def perturbation_region(image: np.ndarray, normalization: str) -> tuple[np.ndarray | None, np.ndarray]:
    """``(mask, scale)`` of a raw case for :func:`perturb`: the voxels where any channel is
    non-zero for normalisations that treat zeros as background (:data:`ZERO_IS_BACKGROUND`),
    else None (every voxel); and the per-channel :func:`intensity_scale` inside that mask."""
    mask = nonzero_mask(image) if normalization in ZERO_IS_BACKGROUND else None
    return mask, intensity_scale(image, mask)


def preprocessed_case(template: CachedCase, raw: np.ndarray, spacing: Sequence[float], prep: Preprocessing) -> CachedCase:
    """``raw (C, X, Y, Z)`` intensities of ``template``'s case through ``prep`` (as the cache
    does it), held in memory as a cached case (:func:`in_memory_case`)."""
    image, _, _ = prep.apply(raw, spacing)
    return in_memory_case(template, image)


def condition_key(memo: ScoreMemo, checkpoint: Path, kind: str, level: float, noise_seed: int, case_id: str) -> str:
    """Memo key of a checkpoint's score on a case: the clean image (level 0, whatever the kind
    and noise seed; shared by the noise study's level 0 and the fraction study) or a perturbation."""
    if level == 0:
        return memo.key(checkpoint, "clean", case_id)
    return memo.key(checkpoint, "noise", kind, repr(float(level)), int(noise_seed), case_id)


def noise_rows(runs: dict[tuple[str, int], Path], test: list[CachedCase], cfg: ExperimentConfig, spec,
               kinds: list[str], levels: list[float], noise_seed: int, memo: ScoreMemo, device: str, precision: str,
               best_epochs: dict[Path, int], n_train: int) -> list[dict[str, Any]]:
    """Score rows of every run's best checkpoint on every test case under every (kind, level).

    Each test case is read once from its source files (``spec``: the experiment's
    :class:`~pdeseg.config.PreprocessSpec`, for the format and channels); the perturbed raw
    image goes through each model's :class:`~pdeseg.data.preprocess.Preprocessing` (once per
    distinct one) into an in-memory case, never into the cache. Level 0 is scored once and
    reported under every kind."""
    conditions = [(kind, level, "clean" if level == 0 else kind) for kind, level in itertools.product(kinds, levels)]
    keys = {(name, seed, effective, level, case.case_id): condition_key(memo, run_dir / "best.pt", effective, level,
                                                                        noise_seed, case.case_id)
            for (name, seed), run_dir in runs.items() for _, level, effective in conditions for case in test}
    predictors: dict[tuple[str, int], Predictor] = {}
    sources: dict[str, Any] = {}
    for i, template in enumerate(test):
        todo = sorted({(effective, level, name, seed) for (name, seed) in runs for _, level, effective in conditions
                       if memo.get(keys[(name, seed, effective, level, template.case_id)]) is None})
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
            for _, _, name, seed in group:
                if (name, seed) not in predictors:
                    predictors[(name, seed)] = Predictor.from_checkpoint(runs[(name, seed)] / "best.pt", InferenceOptions(device=device, precision=precision))
                predictor = predictors[(name, seed)]
                prep = Preprocessing.of(predictor.spec)
                if prep.key() not in prepared:
                    prepared[prep.key()] = preprocessed_case(template, raw, loaded.spacing, prep)
                memo.put(keys[(name, seed, effective, level, template.case_id)], _score_one(predictor, prepared[prep.key()]))
    rows = []
    for kind, level, effective in conditions:
        for (name, seed), run_dir in runs.items():
            for case in test:
                rows.append(_noise_row(memo.get(keys[(name, seed, effective, level, case.case_id)]), name, seed, kind, level,
                                       case, best_epochs[run_dir], n_train))
    return rows


def _noise_row(row: dict, name: str, seed: int, kind: str, level: float, case: CachedCase, best_epoch: int,
               n_train: int) -> dict[str, Any]:
    return {"study": "noise", "model": name, "seed": seed, "kind": kind, "level": level, "fraction": 1.0,
            "n_train": n_train, "split": "test", "best_epoch": best_epoch, **row, "case": case.case_id}


def fraction_rows(runs: dict[tuple[str, float, int], Path], test: list[CachedCase], counts: dict[float, int],
                  memo: ScoreMemo, device: str, precision: str, best_epochs: dict[Path, int]) -> list[dict[str, Any]]:
    """Score rows of every fraction run's best checkpoint on the clean test cases."""
    rows = []
    for (name, fraction, seed), run_dir in sorted(runs.items()):
        ckpt = run_dir / "best.pt"
        predictor = None
        for case in test:
            key = condition_key(memo, ckpt, "clean", 0.0, 0, case.case_id)
            row = memo.get(key)
            if row is None:
                if predictor is None:
                    log.info("fraction study: scoring %s", run_dir)
                    predictor = Predictor.from_checkpoint(ckpt, InferenceOptions(device=device, precision=precision))
                row = _score_one(predictor, case)
                memo.put(key, row)
            rows.append({"study": "fraction", "model": name, "seed": seed, "fraction": fraction, "n_train": counts[fraction],
                         "split": "test", "best_epoch": best_epochs[run_dir], **row, "case": case.case_id})
    return rows


# --------------------------------------------------------------------------------------
# aggregation
# --------------------------------------------------------------------------------------


def _seed_means(rows: list[dict], key: str) -> dict[int, float]:
    """Case mean of ``key`` per seed."""
    seeds = sorted({r["seed"] for r in rows})
    return {s: float(np.mean([r[key] for r in rows if r["seed"] == s])) for s in seeds}


def cell_table(rows: list[dict], study: str, condition: tuple[str, ...], names: list[str], baseline: str
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
            out: dict[str, Any] = {"model": name, **dict(zip(condition, cond)), "n_train": cell[0]["n_train"],
                                   "seeds": len({r["seed"] for r in cell}), "cases": len({r["case"] for r in cell})}
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
                    pr = paired_comparison(*paired_grids(here, name, baseline, key), model=name, baseline=baseline,
                                           metric=f"{heading.split()[0]} ({study}: {label})")
                    if (name, pr.metric) not in said:
                        paired.append(pr)
                        said.add((name, pr.metric))
                    out[f"{key}_vs_baseline"] = {"diff": pr.diff, "lo": pr.lo, "hi": pr.hi, "p": pr.p_value}
            table.append(out)
    return table, paired


# --------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------


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
        c = {"model": r["model"], "kind": r.get("kind", ""), "level": f"{r['level']:g}" if "level" in r else "",
             "fraction": f"{r['fraction']:g}" if "fraction" in r else "", "n_train": str(r["n_train"])}
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
                f.update({f"{k[:-len('_per_seed')]}_seed{s}": x for s, x in v.items()})
            elif isinstance(v, dict):
                f.update({f"{k}_{part}": x for part, x in v.items()})
            else:
                f[k] = v
        flat.append(f)
    return flat


NOTE = ("Mean ± sd over seeds [95% t-interval]; each seed's value is the mean over the test cases. Dice: mean over "
        "the foreground classes; HD95 (mm): mean over the regions or foreground classes (one-sided empty region: the "
        "data format's value, else the field-of-view diagonal). 'vs' columns: paired difference with the baseline on "
        "the same seeds and test cases [two-level bootstrap 95% CI], sign-flip permutation p-value.")


def table_markdown(table: list[dict], study: str, baseline: str) -> str:
    cols = _columns(study, baseline)
    lines = [NOTE + (" 'change from clean': per seed, the value minus the same model's value at level 0." if study == "noise" else ""),
             "", "| " + " | ".join(h for h, _ in cols) + " |", "|" + "---|" * len(cols)]
    for c in _cells(table, study, baseline):
        lines.append("| " + " | ".join(c.get(k, "-") for _, k in cols) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(result: RobustnessResult, noise: bool, fraction: bool) -> None:
    out = result.out_dir
    write_csv(out / "runs.csv", result.rows)
    for name, on, table in (("noise", noise, result.noise_table), ("fraction", fraction, result.fraction_table)):
        if on:
            write_csv(out / f"{name}.csv", _flat(table))
            (out / f"{name}.md").write_text(table_markdown(table, name, result.baseline) + "\n" + "\n".join(
                p.sentence() for p in result.paired if f"({name}:" in p.metric) + "\n")


def _curves(table: list[dict], names: list[str], x_key: str, key: str, bounds: tuple[float, float], **where
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


def make_figures(result: RobustnessResult, names: list[str], kinds: list[str], fraction: bool) -> list[tuple[str, str]]:
    """``figures/noise_<kind>.png`` and ``figures/fraction.png``; returns (relative path, caption)."""
    from pdeseg.viz.figures import plot_against

    fig_dir = result.out_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    figures = []
    for kind in kinds:
        panels = [(heading, _curves(result.noise_table, names, "level", key, bounds, kind=kind))
                  for key, heading, bounds in METRICS]
        plot_against(panels, "level", fig_dir / f"noise_{kind}.png", title=f"{kind} perturbation")
        figures.append((f"figures/noise_{kind}.png", f"Test Dice and HD95 against the {kind} level, one line per model "
                        "(mean over seeds; band: 95% t-interval, clipped to the metric's range)."))
    if fraction:
        panels = [(heading, _curves(result.fraction_table, names, "fraction", key, bounds)) for key, heading, bounds in METRICS]
        plot_against(panels, "fraction of the training cases", fig_dir / "fraction.png", title="label fraction", log_x=True)
        figures.append(("figures/fraction.png", "Test Dice and HD95 against the fraction of training cases, one line per "
                        "model (mean over seeds; band: 95% t-interval, clipped to the metric's range)."))
    return figures


def write_report(result: RobustnessResult, cfg: ExperimentConfig, seeds: list[int], names: list[str], kinds: list[str],
                 levels: list[float], fractions: list[float], counts: dict[float, int], noise_seed: int, n_train: int) -> Path:
    from pdeseg.viz.report import render_report

    split = json.loads((result.out_dir / "split.json").read_text())
    parts = [f"{', '.join(names)} trained with seeds {seeds} on one patient split ({len(split['train'])} train / "
             f"{len(split['val'])} validation / {len(split['test'])} test cases of {cfg.data.root}); {cfg.train.epochs} "
             f"epochs; each run's checkpoint is its best validation epoch. Test cases scored as whole volumes."]
    if kinds:
        parts.append(f"Noise study: {', '.join(kinds)} perturbations of the raw test images at levels "
                     f"{', '.join(f'{v:g}' for v in levels)} (noise sd = level x the 99th percentile of |intensity| over "
                     "the non-zero voxels per channel; bias: level = sd of the log of a random smooth polynomial field "
                     "of degree <= 3), then each model's own preprocessing; every model and seed sees the same noisy "
                     f"image (noise seed {noise_seed}).")
    if fractions:
        parts.append("Label-fraction study: training on " + ", ".join(f"{f:g} ({counts[f]} of {n_train} cases)" for f in fractions)
                     + " with validation and test cases unchanged; smaller fractions are subsets of larger ones.")
    parts.append(f"Baseline for the paired comparisons: {result.baseline}. " + NOTE)
    cols = [("study", "study"), ("condition", "condition")] + [c for c in _columns("noise", result.baseline)
                                                               if c[1] not in ("kind", "level")]
    cells = []
    for study, table in (("noise", result.noise_table), ("fraction", result.fraction_table)):
        for r, c in zip(table, _cells(table, study, result.baseline)):
            condition = f"{r['kind']} {r['level']:g}" if study == "noise" else f"{r['fraction']:g} ({r['n_train']} cases)"
            cells.append({**c, "study": study, "condition": condition})
    verdicts = [p.sentence() for p in result.paired] or ["Only one model: nothing to compare."]
    env = json.loads((result.out_dir / "environment.json").read_text())
    return render_report(result.out_dir / "report.html", f"pdeseg robustness: {cfg.name}", " ".join(parts), cells, cols,
                         verdicts, result.figures, {**env, "config": "config.yaml", "per-case scores": "runs.csv"})
