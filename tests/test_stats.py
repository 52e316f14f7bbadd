import numpy as np
import pytest

from pdeseg.experiments.stats import format_mean_ci, mean_ci, paired_comparison, sign_flip_p_value


def test_mean_ci_known_values():
    r = mean_ci([1.0, 2.0, 3.0])
    # t(0.975, 2) = 4.302653, sd = 1, half width = 4.302653 / sqrt(3)
    assert r["mean"] == 2.0 and r["sd"] == pytest.approx(1.0)
    assert r["hi"] - 2.0 == pytest.approx(4.302653 / np.sqrt(3), rel=1e-5)
    one = mean_ci([0.7])
    assert one["mean"] == 0.7 and one["n"] == 1 and all(np.isnan(one[k]) for k in ("sd", "lo", "hi"))
    assert format_mean_ci(one) == "0.700 (n/a: 1 seed)"  # never a degenerate interval like 0.700 ± 0.000 [0.700, 0.700]
    assert format_mean_ci(r) == "2.000 ± 1.000 [-0.484, 4.484]"


def test_identical_models_give_no_difference():
    scores = np.random.default_rng(0).uniform(0.3, 0.9, (3, 10))
    r = paired_comparison(scores, scores.copy(), "A", "B")
    assert r.diff == 0.0 and r.lo == 0.0 and r.hi == 0.0 and r.p_value == 1.0 and not r.significant
    assert "not significant" in r.sentence()


def test_exact_sign_flip_p_values():
    # all 5 differences positive: only the all-positive and all-negative flips are as extreme
    assert sign_flip_p_value([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(2 / 32)
    # two cases: the smallest possible p is 2/4
    assert sign_flip_p_value([0.3, 0.1]) == pytest.approx(0.5)


def test_clear_improvement_is_significant_with_ci_excluding_zero():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.4, 0.6, (3, 12))
    better = base + 0.05 + rng.normal(0, 0.005, base.shape)
    r = paired_comparison(better, base, "PDE-UNet", "UNet")
    assert r.diff == pytest.approx(0.05, abs=0.005)
    assert r.lo > 0 and r.significant and r.p_value == pytest.approx(2 / 2**12)
    assert r.sentence().startswith("PDE-UNet vs UNet: +0.04") and "significant (p = 0.000488)" in r.sentence()


def test_shape_mismatch_rejected():
    with pytest.raises(ValueError):
        paired_comparison(np.zeros((2, 3)), np.zeros((3, 2)))


def test_monte_carlo_sign_flip_p_value_is_never_zero():
    from pdeseg.experiments.stats import sign_flip_p_value

    d = np.full(40, 0.05) + np.linspace(-0.001, 0.001, 40)  # 40 cases: Monte-Carlo, every flip is less extreme
    p = sign_flip_p_value(d, max_exact=16, n_perm=1000)
    assert p == pytest.approx(1 / 1001)


def test_a_case_consistent_difference_that_seeds_could_reverse_is_not_significant():
    """Every case improves by the same small amount under two seeds, but a third seed loses
    much more on every case: the sign-flip test over seed-averaged cases is extreme, the
    interval that resamples seeds includes 0, and the verdict says which."""
    base = np.zeros((3, 12))
    model = np.stack([np.full(12, 0.05), np.full(12, 0.05), np.full(12, -0.09)]) + np.linspace(0, 0.001, 12)
    r = paired_comparison(model, base, "A", "B")
    assert r.p_value == pytest.approx(2 / 2**12) and r.lo < 0 < r.hi
    assert not r.significant and "interval over seeds and cases includes 0" in r.sentence()
