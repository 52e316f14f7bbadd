"""pdeseg robustness: perturbation formulas, label fractions, a tiny end-to-end study, CLI errors."""

import csv
import json
import logging

import numpy as np
import pytest
import yaml

from conftest import tiny_config_dict
from pdeseg.cli import main
from pdeseg.config import config_from_dict, load_config
from pdeseg.errors import ConfigError
from pdeseg.data.phantoms.brats import write_phantom_dataset
from pdeseg.data.pipeline.prepare import PreparedData
from pdeseg.data.pipeline.perturb import KINDS, bias_log_field, check_kind, check_level, intensity_scale, perturb, perturbation_rng
from pdeseg.experiments.robustness import check_fraction, fraction_counts, fraction_data, parse_numbers, run_robustness
from pdeseg.inference.options import InferenceOptions
from pdeseg.inference.predict import Predictor
from pdeseg.inference.score import score
from pdeseg.viz.report import referenced_files


def _image(shape=(2, 40, 36, 24), seed=0):
    """A positive two-channel image with different intensity scales and a zero background."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(50, 150, shape).astype(np.float32)
    x[1] *= 10
    x[:, :4] = 0
    return x


# ---------------------------------------------------------------------------- perturbations


@pytest.mark.parametrize("kind", KINDS)
def test_level_zero_is_the_identity(kind):
    x = _image()
    assert np.array_equal(perturb(x, kind, 0.0, case_id="a"), x)
    assert not np.array_equal(perturb(x, kind, 0.05, case_id="a"), x)


def test_intensity_scale_is_the_99th_percentile_of_the_nonzero_voxels():
    x = _image()
    s = intensity_scale(x)
    for c in range(2):
        assert s[c] == pytest.approx(np.percentile(x[c][x[c] != 0], 99))
    assert intensity_scale(np.zeros((1, 4, 4)))[0] == 0  # a blank channel: no noise
    mask = np.zeros(x.shape[1:], bool)
    mask[10:20] = True
    assert intensity_scale(x, mask)[1] == pytest.approx(np.percentile(x[1][mask], 99))


def test_gaussian_noise_sd_is_level_times_scale_per_channel():
    x = _image()
    scale = intensity_scale(x)
    for level in (0.05, 0.2):
        noise = perturb(x, "gaussian", level, case_id="c1").astype(np.float64) - x
        for c in range(2):
            assert noise[c].std() == pytest.approx(level * scale[c], rel=0.03)
            assert abs(noise[c].mean()) < 0.03 * level * scale[c]


def test_rician_noise_has_the_rayleigh_and_high_snr_means():
    sigma = 0.1
    zero = perturb(np.zeros((1, 64, 64, 16), np.float32), "rician", sigma, scale=[1.0], case_id="z")
    assert (zero >= 0).all()
    assert zero.mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.02)  # Rayleigh mean
    bright = np.full((1, 64, 64, 16), 2.0, np.float32)
    y = perturb(bright, "rician", sigma, scale=[1.0], case_id="b")
    assert y.mean() == pytest.approx(np.sqrt(2.0**2 + sigma**2), rel=0.01)
    assert y.std() == pytest.approx(sigma, rel=0.05)


def test_bias_field_is_positive_smooth_and_its_log_spread_is_the_level():
    x = np.full((2, 48, 40, 24), 100.0, np.float32)
    spreads = []
    for level in (0.05, 0.1, 0.3):
        y = perturb(x, "bias", level, case_id="c")
        assert (y > 0).all()
        log_field = np.log(y.astype(np.float64) / x)
        spreads.append(log_field.std(axis=(1, 2, 3)))
        for axis in (1, 2, 3):  # smooth: neighbours differ by a small share of the spread (white noise: ~1.1)
            assert np.abs(np.diff(log_field, axis=axis)).mean() < 0.2 * level
            assert np.abs(np.diff(log_field, n=2, axis=axis)).mean() < 0.05 * level
    spreads = np.array(spreads)
    assert np.allclose(spreads, np.array([[0.05], [0.1], [0.3]]), rtol=1e-3)
    assert not np.allclose(np.log(perturb(x, "bias", 0.1, case_id="c"))[0], np.log(perturb(x, "bias", 0.1, case_id="c"))[1])
    f = bias_log_field((30, 20), perturbation_rng(0, "a", "bias"))  # 2D grids too
    assert f.shape == (30, 20) and abs(f.mean()) < 1e-9 and f.std() == pytest.approx(1.0)


@pytest.mark.parametrize("kind", KINDS)
def test_perturbation_depends_only_on_seed_case_kind_and_level(kind):
    x = _image()
    a = perturb(x, kind, 0.1, seed=1, case_id="case-A")
    assert np.array_equal(a, perturb(x.copy(), kind, 0.1, seed=1, case_id="case-A"))
    assert not np.allclose(a, perturb(x, kind, 0.1, seed=1, case_id="case-B"))
    assert not np.allclose(a, perturb(x, kind, 0.1, seed=2, case_id="case-A"))


def test_levels_scale_one_draw_and_a_mask_keeps_the_background():
    x = _image()
    d1 = perturb(x, "gaussian", 0.1, case_id="k").astype(np.float64) - x
    d2 = perturb(x, "gaussian", 0.2, case_id="k").astype(np.float64) - x
    assert np.allclose(d2, 2 * d1, atol=1e-2)  # common random numbers across levels
    mask = (x != 0).any(axis=0)
    for kind in KINDS:
        y = perturb(x, kind, 0.2, case_id="k", mask=mask)
        assert (y[:, ~mask] == 0).all() and not np.array_equal(y[:, mask], x[:, mask])


def test_bad_options_raise_config_errors_naming_the_option():
    with pytest.raises(ConfigError, match="--noise.*speckle"):
        check_kind("speckle")
    with pytest.raises(ConfigError, match="--levels.*-0.1"):
        check_level(-0.1)
    with pytest.raises(ConfigError, match="--levels"):
        check_level(float("nan"))
    for f in (0.0, 1.5, -0.2):
        with pytest.raises(ConfigError, match="--fractions"):
            check_fraction(f)
    with pytest.raises(ConfigError, match="--levels.*'x'"):
        parse_numbers("0,x", "--levels")
    with pytest.raises(ConfigError, match="--fractions: 0.1 of the 4 training cases.*0 cases"):
        fraction_counts([0.1, 1.0], 4)
    assert fraction_counts([0.25, 0.5, 1.0], 8) == {0.25: 2, 0.5: 4, 1.0: 8}


def test_fractions_keep_validation_and_test_and_are_nested():
    ids = [f"c{i:02d}" for i in range(20)]
    full = PreparedData({"train": ids[:12], "val": ids[12:16], "test": ids[16:]}, {})
    parts = {f: fraction_data(full, f, seed=0) for f in (0.1, 0.25, 0.5, 1.0)}
    for f, d in parts.items():
        assert d.split["val"] == full.split["val"] and d.split["test"] == full.split["test"]
        assert len(d.split["train"]) == fraction_counts([f], 12)[f]
    assert parts[1.0] is full
    trains = [set(parts[f].split["train"]) for f in (0.1, 0.25, 0.5, 1.0)]
    assert all(a <= b for a, b in zip(trains, trains[1:]))  # smaller fractions are subsets of larger ones


# ---------------------------------------------------------------------------- end to end


SMALL = [4, 8, 16, 32, 64]


def _tiny_cfg(root, tmp):
    """Two small slice models, one epoch (the conftest's tiny config, narrower)."""
    d = tiny_config_dict(root, tmp / "runs", epochs=1)
    for m in d["models"]:
        m["kwargs"]["features"] = SMALL
    return d


@pytest.fixture(scope="module")
def small_phantom(tmp_path_factory):
    """6 BraTS-like cases of 24 x 24 x 16 voxels (split 2 / 2 / 2)."""
    root = tmp_path_factory.mktemp("small_phantom")
    write_phantom_dataset(root, n_cases=6, seed=3, shape=(24, 24, 16))
    return root


@pytest.fixture(scope="module")
def study(small_phantom, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("robust")
    cfg = config_from_dict(_tiny_cfg(small_phantom, tmp))
    out = tmp / "study"
    result = run_robustness(cfg, out, seeds=[0, 1], study="both", kinds=["gaussian", "bias"], levels=[0, 0.3],
                            fractions=[0.5, 1.0], progress=False)
    return cfg, out, result


def test_study_writes_tables_figures_and_report(study):
    _, out, result = study
    for name in ("config.yaml", "split.json", "environment.json", "noise.md", "noise.csv", "fraction.md", "fraction.csv",
                 "runs.csv", "report.html", "figures/noise_gaussian.png", "figures/noise_bias.png", "figures/fraction.png"):
        assert (out / name).is_file(), name
    refs = referenced_files(out / "report.html")
    assert len(refs) == 3 and all(p.is_file() for p in refs)
    assert len(result.noise_table) == 2 * 2 * 2 and len(result.fraction_table) == 2 * 2  # models x kinds x levels; x fractions
    row = next(r for r in result.noise_table if r["model"] == "pde_unet" and r["kind"] == "gaussian" and r["level"] == 0.3)
    assert row["seeds"] == 2 and row["dice_mean"]["n"] == 2 and set(row) >= {"dice_mean_change", "hd95_mean_vs_baseline"}
    assert np.isfinite(row["hd95_mean"]["mean"])
    # paired with the baseline for Dice and HD95 in every cell of the other model
    assert len(result.paired) == 2 * (1 + 2 + 2)  # Dice and HD95: clean image once, 2 kinds at 0.3, 2 fractions
    assert all(p.baseline == "unet" and p.n_seeds == 2 and p.n_cases == 2 for p in result.paired)
    text = (out / "noise.md").read_text()
    assert "| pde_unet | gaussian | 0.3 |" in text and "pde_unet vs unet:" in text
    with (out / "noise.csv").open() as fh:
        flat = list(csv.DictReader(fh))
    assert {"dice_mean_mean", "dice_mean_lo", "hd95_mean_hi", "dice_mean_vs_baseline_p", "dice_mean_seed1"} <= set(flat[0])
    with (out / "runs.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    # noise: models x seeds x kinds x levels x 2 test cases; fraction: models x seeds x fractions x 2 test cases
    assert len(rows) == 2 * 2 * 2 * 2 * 2 + 2 * 2 * 2 * 2


def test_level_zero_reproduces_the_plain_scores(study):
    cfg, out, result = study
    from pdeseg.build import resolve
    from pdeseg.data.pipeline.prepare import prepare_data

    exp = resolve(cfg)
    data = prepare_data(exp.cfg.data, exp.spec, out / "split.json", progress=False)
    for model in ("unet", "pde_unet"):
        for seed in (1,):
            plain = score(Predictor.from_checkpoint(out / "runs" / model / f"seed{seed}" / "best.pt", InferenceOptions("cpu", "32")),
                          data.cases("test"), "volume", with_hd95=True).rows
            for kind in ("gaussian", "bias"):
                zero = [r for r in result.rows if r["study"] == "noise" and r["model"] == model and r["seed"] == seed
                        and r["kind"] == kind and r["level"] == 0]
                assert [r["case"] for r in zero] == [r["case"] for r in plain]
                for got, want in zip(zero, plain):
                    assert {k: got[k] for k in want} == want  # exactly, every metric
            full = [r for r in result.rows if r["study"] == "fraction" and r["model"] == model and r["seed"] == seed
                    and r["fraction"] == 1.0]
            assert [r["dice_mean"] for r in full] == [r["dice_mean"] for r in plain]
    # the perturbed images were never written into the cache: one entry per case
    assert len([p for p in (out.parent / "runs" / "cache").iterdir() if p.is_dir()]) == 6


def test_fraction_runs_keep_test_and_validation_and_reuse_the_full_runs(study):
    _, out, _ = study
    for model in ("unet", "pde_unet"):
        assert sorted(p.name for p in (out / "runs" / model).iterdir()) == ["frac0.5", "seed0", "seed1"]  # no frac1
        for seed in (0, 1):
            full = json.loads((out / "runs" / model / f"seed{seed}" / "split.json").read_text())
            half = json.loads((out / "runs" / model / "frac0.5" / f"seed{seed}" / "split.json").read_text())
            assert half["val"] == full["val"] and half["test"] == full["test"]
            assert len(half["train"]) == 1 and set(half["train"]) < set(full["train"])
            saved = load_config(out / "runs" / model / "frac0.5" / f"seed{seed}" / "config.yaml")
            assert saved.data.train_cases == 0.5


def test_rerun_reuses_runs_and_scores(study):
    cfg, out, result = study
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("runs/**/last.pt")}
    lines = (out / "scores.jsonl").read_text().count("\n")
    again = run_robustness(cfg, out, seeds=[0, 1], study="both", kinds=["gaussian", "bias"], levels=[0, 0.3],
                           fractions=[0.5, 1.0], progress=False)
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/**/last.pt")} == mtimes
    assert (out / "scores.jsonl").read_text().count("\n") == lines
    assert [r["dice_mean"] for r in again.noise_table] == [r["dice_mean"] for r in result.noise_table]


# ---------------------------------------------------------------------------- command line


@pytest.mark.parametrize("extra, says", [
    (["--noise", "gaussian,speckle"], "--noise: unknown perturbation 'speckle'"),
    (["--levels", "0,-0.1"], "--levels"),
    (["--levels", "0,abc"], "--levels: 'abc' is not a number"),
    (["--fractions", "0.5,1.5"], "--fractions"),
    (["--fractions", "0.1,1"], "rounds to 0 cases"),
    (["--baseline", "vnet"], "--baseline 'vnet'"),
])
def test_cli_mistakes_exit_2_with_one_line(small_phantom, tmp_path, caplog, extra, says):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(_tiny_cfg(small_phantom, tmp_path)))
    with caplog.at_level(logging.ERROR):
        code = main(["robustness", "--config", str(path), "--out", str(tmp_path / "o"), "--seeds", "1", "--no-progress",
                     *extra])
    assert code == 2
    assert says in caplog.text
    assert not (tmp_path / "o" / "runs").exists()  # refused before any training


def test_perturbed_cases_are_the_cached_cases_at_level_zero(small_phantom, tmp_path):
    """Raw re-reading + perturbation + the model's preprocessing gives exactly the cached
    arrays at level 0 (the scores at level 0 are then the plain scores), and other arrays above."""
    from pdeseg.build import resolve
    from pdeseg.data.formats import get_format
    from pdeseg.data.pipeline.prepare import prepare_data
    from pdeseg.data.pipeline.preprocess import Preprocessing
    from pdeseg.data.pipeline.perturb import perturbation_region
    from pdeseg.experiments.robustness import preprocessed_case

    exp = resolve(config_from_dict(_tiny_cfg(small_phantom, tmp_path)))
    data = prepare_data(exp.cfg.data, exp.spec, progress=False)
    prep = Preprocessing.of(exp.spec)
    sources = {c.case_id: c for c in get_format(exp.spec.format).find_cases(small_phantom, exp.spec.modalities, True)}
    for template in data.cases("test"):
        loaded = sources[template.case_id].load(tuple(exp.spec.modalities), with_label=False)
        mask, scale = perturbation_region(loaded.image, exp.spec.normalization)
        assert mask is not None and not mask.all()  # zscore: the zero background stays out of the noise
        for kind in KINDS:
            clean = preprocessed_case(template, perturb(loaded.image, kind, 0, case_id=template.case_id, scale=scale,
                                                        mask=mask), loaded.spacing, prep)
            assert clean.image.dtype == template.image.dtype and np.array_equal(clean.image, template.image)
            assert np.array_equal(clean.label, template.label) and clean.meta == template.meta
            noisy = preprocessed_case(template, perturb(loaded.image, kind, 0.2, case_id=template.case_id, scale=scale,
                                                        mask=mask), loaded.spacing, prep)
            assert not np.array_equal(noisy.image, template.image)
            outside = ~mask.transpose(2, 0, 1)  # (Z, X, Y) like the cached (Z, C, X, Y) image
            assert (np.asarray(noisy.image).transpose(1, 0, 2, 3)[:, outside] == 0).all()
