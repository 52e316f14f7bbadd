"""pdeseg compare on phantom data: selection by validation, aggregation, report."""

import csv

import pytest

from conftest import tiny_config_dict
from pdeseg.build import resolve
from pdeseg.checkpoint import load_checkpoint
from pdeseg.config import config_from_dict
from pdeseg.data.pipeline.prepare import PreparedData, prepare_data
from pdeseg.experiments.compare import run_compare
from pdeseg.training.run import train_model
from pdeseg.viz.report import referenced_files


def test_compare_two_seeds_writes_table_stats_and_report(phantom_root, tmp_path):
    cfg = config_from_dict(tiny_config_dict(phantom_root, tmp_path / "runs", epochs=2))
    out = tmp_path / "cmp"
    result = run_compare(cfg, out, seeds=[0, 1], scope="slices", progress=False)
    assert [r["model"] for r in result.table] == ["unet", "pde_unet"]
    row = result.table[1]
    assert row["seeds"] == 2 and row["test_dice_mean"]["n"] == 2
    assert row["test_dice_mean"]["lo"] <= row["test_dice_mean"]["mean"] <= row["test_dice_mean"]["hi"]
    (paired,) = result.paired
    assert paired.model == "pde_unet" and paired.baseline == "unet" and paired.n_seeds == 2 and paired.n_cases == 2
    assert "pde_unet vs unet:" in (out / "comparison.md").read_text()
    with (out / "per_case.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 2 * 2 * 2  # models x seeds x splits (val, test) x 2 cases each
    for name in ("config.yaml", "split.json", "environment.json", "table.md", "table.csv", "runs.csv", "report.html"):
        assert (out / name).is_file(), name
    refs = referenced_files(out / "report.html")
    assert len(refs) >= 4 and all(p.is_file() for p in refs)

    # each run's best.pt is the epoch with the best validation score
    for r in result.runs:
        hist = load_checkpoint(out / "runs" / r["model"] / f"seed{r['seed']}" / "last.pt")["training"]["history"]
        best = max(hist, key=lambda h: h["score"])
        assert r["best_epoch"] == best["epoch"]

    # rerunning continues: nothing is retrained, the numbers are identical
    again = run_compare(cfg, out, seeds=[0, 1], scope="slices", progress=False)
    assert again.table[1]["test_dice_mean"] == row["test_dice_mean"]


def test_trainer_never_touches_test_cases(phantom_root, tmp_path):
    cfg = config_from_dict(tiny_config_dict(phantom_root, tmp_path, epochs=1))
    exp = resolve(cfg)
    data = prepare_data(exp.cfg.data, exp.spec, progress=False)
    hidden = PreparedData({**data.split, "test": ["not-a-cached-case"]}, data.cached)
    with pytest.raises(KeyError):
        hidden.cases("test")  # the guard works: reading the test split would fail ...
    train_model(cfg, cfg.models[0], tmp_path / "run", data=hidden, progress=False)  # ... and training never does


def test_report_renders_in_headless_chromium(tmp_path):
    import shutil
    import subprocess
    from pathlib import Path

    from pdeseg.viz.report import render_report

    if not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    import matplotlib.pyplot as plt

    (tmp_path / "figures").mkdir()
    fig = plt.figure(figsize=(2, 2))
    plt.plot([0, 1], [1, 0])
    fig.savefig(tmp_path / "figures" / "f.png")
    plt.close(fig)
    render_report(tmp_path / "report.html", "t", "intro", [{"model": "unet", "d": "0.5"}], [("model", "model"), ("Dice", "d")],
                  ["A vs B: +0.000 Dice"], [("figures/f.png", "a figure")], {"torch": "x"})
    script = Path(__file__).resolve().parents[1] / "scripts" / "screenshot_report.sh"
    png = tmp_path / "shot.png"
    subprocess.run([str(script), str(tmp_path / "report.html"), str(png)], check=True, timeout=120)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    with pytest.raises(FileNotFoundError, match="missing.png"):
        render_report(tmp_path / "r2.html", "t", "", [], [], [], [("figures/missing.png", "x")], {})


def test_table_columns_follow_the_data_set_not_brats():
    from pdeseg.experiments.compare import default_scope, table_columns
    from pdeseg.experiments.tables import summary_table

    brats = table_columns(["background", "NCR", "ED", "ET"], {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]})
    assert [k for _, k in brats][4:] == ["test_dice_WT", "test_dice_TC", "test_dice_ET"]
    hippo = table_columns(["background", "Anterior", "Posterior"], {})
    assert [h for h, _ in hippo][4:] == ["test Anterior", "test Posterior"]
    assert len(table_columns(["background", "tumour"], {})) == 4  # binary: the mean is the class
    from pdeseg.config import TaskSpec

    def spec(fmt, mode):
        return TaskSpec(format=fmt, modalities=["grey"], normalization="zscore_all", mode=mode, spatial_dims=2,
                        num_classes=2, class_names=["background", "cell"])

    assert default_scope(spec("brats", "patches")) == "volume" and default_scope(spec("brats", "slices")) == "slices"
    assert default_scope(spec("dsb2018", "slices")) == "volume"  # microscopy: whole images with object metrics
    assert [k for _, k in table_columns(["background", "cell"], {}, objects=True)][4:] == [
        "test_dice_fg", "test_bf1_2", "test_dsb_score", "test_ap50", "test_mask_ap"]
    rows = [{"model": "m", "seed": s, "split": sp, "case": c, "dice_mean": 0.5 + 0.1 * s, "iou_mean": 0.4,
             "dice_Anterior": 0.6 + 0.1 * s, "dice_Posterior": 0.7}
            for s in (0, 1) for sp in ("val", "test") for c in ("a", "b")]
    runs = [{"model": "m", "seed": s, "parameters": 10, "train_time_s": 1.0, "best_epoch": 1, "test_ms_per_unit": 2.0} for s in (0, 1)]
    row = summary_table(rows, runs, ["m"], [k for _, k in hippo])[0]
    assert row["test_dice_Anterior"]["mean"] == pytest.approx(0.65) and row["test_dice_Posterior"]["sd"] == pytest.approx(0.0)
    assert "test_dice_WT" not in row
