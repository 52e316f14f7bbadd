"""Statistics for comparing models over seeds and test cases.

* :func:`mean_ci`: mean, sample sd and a t-based 95% confidence interval (over seeds).
* :func:`paired_comparison`: the difference between a model and the baseline on the
  same test cases and seeds. ``diff[s, c] = model[s, c] - baseline[s, c]``. The point
  estimate is the mean over seeds and cases; the confidence interval is a two-level
  percentile bootstrap (resample test cases, then seeds, with replacement); the p-value
  is an exact (or Monte-Carlo, for many cases) sign-flip permutation test on the
  per-case differences averaged over seeds, i.e. the test case is the unit of analysis.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps


def mean_ci(values, confidence: float = 0.95) -> dict[str, float]:
    """Mean, sd (ddof 1), and t confidence interval of ``values`` (e.g. one score per seed).

    With a single value the spread is unknown: sd and the interval are NaN (shown as
    "n/a (1 seed)" by :func:`format_mean_ci`, never as a degenerate interval).
    """
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        raise ValueError("mean_ci: no values")
    mean = float(a.mean())
    if a.size == 1:
        return {"mean": mean, "sd": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 1}
    sd = float(a.std(ddof=1))
    half = float(sps.t.ppf(0.5 + confidence / 2, a.size - 1)) * sd / np.sqrt(a.size)
    return {"mean": mean, "sd": sd, "lo": mean - half, "hi": mean + half, "n": int(a.size)}


def format_mean_ci(ci: dict[str, float] | None, digits: int = 3, interval: bool = True, unit: str = "seed") -> str:
    """``mean ± sd [lo, hi]`` (or without the interval); ``mean (n/a: 1 seed)`` for one value; ``-`` for none."""
    if not ci:
        return "-"
    if ci.get("n", 2) < 2:
        return f"{ci['mean']:.{digits}f} (n/a: 1 {unit})"
    text = f"{ci['mean']:.{digits}f} ± {ci['sd']:.{digits}f}"
    return text + (f" [{ci['lo']:.{digits}f}, {ci['hi']:.{digits}f}]" if interval else "")


@dataclass
class PairedResult:
    """Outcome of :func:`paired_comparison` (differences are model minus baseline)."""

    model: str
    baseline: str
    metric: str
    diff: float
    lo: float
    hi: float
    p_value: float
    n_cases: int
    n_seeds: int
    confidence: float = 0.95

    @property
    def seed_consistent(self) -> bool:
        """The interval, which resamples seeds as well as cases, excludes 0."""
        return self.lo > 0 or self.hi < 0

    @property
    def significant(self) -> bool:
        """p below 1 - confidence *and* an interval that excludes 0. The sign-flip test works
        on the seed-averaged difference per case, so it holds the seeds fixed; the bootstrap
        interval also resamples seeds. A difference that every case shows for these seeds but
        that another draw of seeds could reverse is not called significant (the sentence says
        so). With n test cases the sign-flip test cannot go below 2 / 2^n, so fewer than 6
        cases can never be significant at 0.05."""
        return self.p_value < 1 - self.confidence and self.seed_consistent

    def sentence(self) -> str:
        """One plain sentence, e.g. ``PDE-UNet vs UNet: +0.012 Dice, 95% CI [-0.010, 0.034], not significant``."""
        if self.significant:
            verdict = f"significant (p = {self.p_value:.3g})"
        elif self.p_value < 1 - self.confidence:
            verdict = (f"not significant: consistent over cases for these seeds (p = {self.p_value:.3g}), but the "
                       "interval over seeds and cases includes 0")
        else:
            verdict = f"not significant (p = {self.p_value:.3g})"
        pct = int(round(self.confidence * 100))
        seeds = f"{self.n_seeds} seed{'s' if self.n_seeds != 1 else ''}"
        caveat = " Too few test cases for a reliable interval or test." if self.n_cases < 6 else ""
        return (
            f"{self.model} vs {self.baseline}: {self.diff:+.3f} {self.metric}, {pct}% CI [{self.lo:+.3f}, {self.hi:+.3f}], "
            f"{verdict}; {self.n_cases} test cases x {seeds}.{caveat}"
        )


def paired_comparison(
    model_scores,
    baseline_scores,
    model: str = "model",
    baseline: str = "baseline",
    metric: str = "Dice",
    confidence: float = 0.95,
    n_boot: int = 10_000,
    seed: int = 0,
    max_exact_cases: int = 16,
) -> PairedResult:
    """Compare two models scored on the same ``(seed, case)`` grid.

    Args:
        model_scores, baseline_scores: ``(n_seeds, n_cases)`` arrays, the same cases and
            seeds in the same order (a 1D array is one seed).
        n_boot: bootstrap resamples.
        seed: RNG seed of the bootstrap and of a Monte-Carlo permutation test.
        max_exact_cases: enumerate all ``2^n`` sign flips up to this many cases.

    Returns:
        :class:`PairedResult`.

    Raises:
        ValueError: shapes differ, or there are no cases.
    """
    a = np.atleast_2d(np.asarray(model_scores, dtype=np.float64))
    b = np.atleast_2d(np.asarray(baseline_scores, dtype=np.float64))
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired_comparison: score grids must have the same non-empty shape, got {a.shape} and {b.shape}")
    diff = a - b
    n_seeds, n_cases = diff.shape
    rng = np.random.default_rng(seed)
    cases = rng.integers(0, n_cases, size=(n_boot, n_cases))
    seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    boot = diff[seeds[:, :, None], cases[:, None, :]].mean(axis=(1, 2))
    alpha = 1 - confidence
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    per_case = diff.mean(axis=0)
    return PairedResult(model, baseline, metric, float(diff.mean()), float(lo), float(hi),
                        sign_flip_p_value(per_case, max_exact_cases, rng), n_cases, n_seeds, confidence)


def sign_flip_p_value(d, max_exact: int = 16, rng: np.random.Generator | None = None, n_perm: int = 100_000) -> float:
    """Two-sided paired permutation test of mean(d) = 0 by flipping the signs of ``d``.

    Exact enumeration for up to ``max_exact`` values, else ``n_perm`` random flips, counting
    the observed labelling itself (``(k + 1) / (n_perm + 1)``, so a Monte-Carlo p-value is
    never 0). Returns 1.0 when every difference is zero (identical models).
    """
    d = np.asarray(d, dtype=np.float64)
    observed = abs(d.mean())
    if np.allclose(d, 0.0):
        return 1.0
    exact = d.size <= max_exact
    if exact:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
    else:
        signs = (rng or np.random.default_rng(0)).choice((1.0, -1.0), size=(n_perm, d.size))
    extreme = int(np.sum(np.abs((signs * d).mean(axis=1)) >= observed - 1e-12))
    return extreme / len(signs) if exact else (extreme + 1) / (len(signs) + 1)


@dataclass
class SeedNoiseResult:
    """Difference of two variants' seed means against the seed-to-seed spread (Welch)."""

    model: str
    baseline: str
    metric: str
    diff: float
    lo: float
    hi: float
    n_model: int
    n_baseline: int
    confidence: float = 0.95

    @property
    def beyond_noise(self) -> bool:
        """The interval excludes 0: the difference is larger than seed noise explains."""
        return self.lo > 0 or self.hi < 0

    def sentence(self) -> str:
        pct = int(round(self.confidence * 100))
        verdict = "larger than seed noise" if self.beyond_noise else "within seed noise"
        return (f"{self.model} vs {self.baseline}: {self.diff:+.3f} {self.metric}, {pct}% CI [{self.lo:+.3f}, {self.hi:+.3f}] "
                f"over seeds ({self.n_model} vs {self.n_baseline}), {verdict}.")


def seed_noise_comparison(
    model_seeds, baseline_seeds, model: str = "model", baseline: str = "baseline", metric: str = "Dice", confidence: float = 0.95
) -> SeedNoiseResult:
    """Is the gap between two variants larger than their seed-to-seed variation?

    Each input holds one score per seed (e.g. test Dice averaged over the test cases). The
    difference of means gets a Welch t-interval,
    ``diff +- t_{df, (1+c)/2} sqrt(s_a^2/n_a + s_b^2/n_b)``, with Welch-Satterthwaite ``df``.

    Raises:
        ValueError: fewer than 2 seeds on either side (no spread to compare with).
    """
    a = np.asarray(model_seeds, dtype=np.float64).ravel()
    b = np.asarray(baseline_seeds, dtype=np.float64).ravel()
    if a.size < 2 or b.size < 2:
        raise ValueError(f"seed_noise_comparison needs >= 2 seeds per side, got {a.size} and {b.size}")
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    diff = float(a.mean() - b.mean())
    se = float(np.sqrt(va + vb))
    if se == 0:
        lo = hi = diff
    else:
        df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1)) if va + vb > 0 else a.size + b.size - 2
        half = float(sps.t.ppf((1 + confidence) / 2, df)) * se
        lo, hi = diff - half, diff + half
    return SeedNoiseResult(model, baseline, metric, diff, lo, hi, a.size, b.size, confidence)


# --------------------------------------------------------------------------------------
# per-case score rows -> per-seed values and paired grids (every study's rows: one per
# (condition, seed, split, case), the condition named by the field ``by``)
# --------------------------------------------------------------------------------------


def seed_means(rows: list[dict], by: str, name: str, split: str, key: str) -> list[float]:
    """Mean over cases of ``key`` for each seed of ``name`` (the value of the rows' ``by``
    field) on ``split``, seeds in increasing order; NaN for a seed whose rows lack ``key``."""
    seeds = sorted({r["seed"] for r in rows if r[by] == name})
    return [float(np.mean([r.get(key, np.nan) for r in rows if r[by] == name and r["seed"] == s and r["split"] == split]))
            for s in seeds]


def paired_grids(rows: list[dict], model: str, baseline: str, key: str, by: str = "model") -> tuple[np.ndarray, np.ndarray]:
    """``(n_seeds, n_cases)`` test scores of ``model`` and ``baseline`` (values of the rows'
    ``by`` field) on matching cases and seeds, for :func:`paired_comparison`."""
    test = [r for r in rows if r["split"] == "test"]
    seeds = sorted({r["seed"] for r in test if r[by] == model} & {r["seed"] for r in test if r[by] == baseline})
    cases = sorted({r["case"] for r in test})
    look = {(r[by], r["seed"], r["case"]): r[key] for r in test}
    grid = lambda name: np.array([[look[(name, s, c)] for c in cases] for s in seeds])  # noqa: E731
    return grid(model), grid(baseline)
