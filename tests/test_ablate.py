"""pdeseg ablate: grid parsing, variant configs, seed-noise statistics and a tiny real grid."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import tiny_config_dict

from pdeseg.config import config_from_dict
from pdeseg.errors import ConfigError
from pdeseg.experiments.ablate import grid_variants, parse_grid, run_ablation, variant_config
from pdeseg.experiments.stats import seed_noise_comparison
from pdeseg.viz.report import referenced_files


def test_parse_grid_types_values_and_keeps_bracketed_lists_whole():
    axes = parse_grid(["activation=relu,prelu", "dropout=0,0.1,0.3", "dropout_blocks=[enc4],[enc4,bottleneck]", "train.lr=1e-3"])
    assert axes == [("activation", ["relu", "prelu"]), ("dropout", [0, 0.1, 0.3]),
                    ("dropout_blocks", [["enc4"], ["enc4", "bottleneck"]]), ("train.lr", [0.001])]
    for bad in (["activation"], ["=relu"], ["norm=batch,"], ["norm=batch", "norm=none"], []):
        with pytest.raises(ConfigError):
            parse_grid(bad)


def test_grid_is_the_full_product_with_the_first_values_as_baseline():
    variants = grid_variants(parse_grid(["activation=relu,prelu", "dropout=0,0.1,0.3", "norm=batch,none"]))
    assert len(variants) == 12 and len({v.name for v in variants}) == 12
    assert variants[0].settings == {"activation": "relu", "dropout": 0, "norm": "batch"}
    assert variants[-1].name == "activation=prelu dropout=0.3 norm=none"
    assert "/" not in variants[-1].slug and " " not in variants[-1].slug


def test_variant_config_sets_model_keywords_and_config_paths(phantom_root, tmp_path):
    cfg = config_from_dict(tiny_config_dict(phantom_root, tmp_path))
    v = grid_variants(parse_grid(["norm=none", "train.lr=0.01"]))[0]
    vexp, model_cfg = variant_config(cfg, "unet", v)
    assert model_cfg.kwargs["norm"] == "none" and model_cfg.kwargs["features"] == [8, 16, 32, 64, 128]
    assert vexp.cfg.train.lr == 0.01 and [m.name for m in vexp.cfg.models] == ["unet"]
    assert cfg.train.lr == 3e-3  # the base config is untouched
    with pytest.raises(ConfigError, match="rejects"):
        variant_config(cfg, "unet", grid_variants(parse_grid(["activation=swish"]))[0])
    with pytest.raises(ConfigError, match="variant activation=prelu.*monai_unet"):
        variant_config(cfg, "monai_unet", grid_variants(parse_grid(["activation=prelu"]))[0])


def test_seed_noise_interval_on_hand_made_numbers():
    # means 0.8 and 0.7, both sd 0.01 with 3 seeds: se = sqrt(2 * 1e-4 / 3), df = 4
    r = seed_noise_comparison([0.79, 0.80, 0.81], [0.69, 0.70, 0.71], "a", "b")
    half = 2.7764451 * np.sqrt(2e-4 / 3)
    assert r.diff == pytest.approx(0.1) and r.lo == pytest.approx(0.1 - half) and r.hi == pytest.approx(0.1 + half)
    assert r.beyond_noise and "larger than seed noise" in r.sentence()
    same = seed_noise_comparison([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert same.diff == 0 and not same.beyond_noise and "within seed noise" in same.sentence()
    noisy = seed_noise_comparison([0.6, 0.9], [0.55, 0.8])  # a gap smaller than the spread
    assert not noisy.beyond_noise
    with pytest.raises(ValueError, match=">= 2 seeds"):
        seed_noise_comparison([0.5], [0.4, 0.6])


@pytest.mark.slow
def test_tiny_ablation_end_to_end_chooses_by_validation_and_resumes(phantom_root, tmp_path):
    d = tiny_config_dict(phantom_root, tmp_path, epochs=1)
    d["models"] = d["models"][:1]
    d["loss"] = {"terms": [{"name": "ce", "weight": 1.0}]}
    cfg = config_from_dict(d)
    out = tmp_path / "abl"
    result = run_ablation(cfg, out, ["norm=batch,none", "dropout=0,0.2"], seeds=[0, 1], progress=False)
    assert len(result.variants) == 4 and len(result.runs) == 4 * 2 * 3  # variants x seeds x splits
    rows = list(csv.DictReader((out / "results.csv").open()))
    val = {r["variant"]: float(r["val_dice_mean_mean"]) for r in rows}
    assert result.best == max(val, key=val.get)  # chosen by validation, never by test
    assert [r["variant"] for r in rows if r["best"] == "True"] == [result.best]
    for split in ("train", "val", "test"):
        for key in ("loss", "accuracy", "iou_mean_all", "dice_mean"):
            assert f"{split}_{key}_mean" in rows[0]
    assert [n.metric for n in result.noise] == ["val Dice"] * 3 + ["test Dice"] * 3
    assert "seed noise" in (out / "noise.md").read_text()
    # main effects pool the other key: 4 runs (2 variants x 2 seeds) per side
    assert [(n.model, n.baseline, n.n_model, n.n_baseline) for n in result.main_effects] == [
        ("norm=none", "norm=batch", 4, 4), ("dropout=0.2", "dropout=0", 4, 4)]
    refs = referenced_files(out / "report.html")
    assert len(refs) == 3 and all(p.is_file() for p in refs)
    kept = [json.loads(line)["key"] for line in (out / "scores.jsonl").read_text().splitlines()]
    first = f"runs/{result.variants[0].slug}/seed0/best.pt|"
    assert {k.split("|")[3] for k in kept if k.startswith(first)} == {"train", "val", "test"}  # every split kept
    stamp = (out / "runs" / result.variants[0].slug / "seed0" / "last.pt").stat().st_mtime_ns
    again = run_ablation(cfg, out, ["norm=batch,none", "dropout=0,0.2"], seeds=[0, 1], progress=False)
    assert (out / "runs" / result.variants[0].slug / "seed0" / "last.pt").stat().st_mtime_ns == stamp  # not retrained
    assert len((out / "scores.jsonl").read_text().splitlines()) == len(kept)  # and not scored again
    assert [r["val_dice_mean"] for r in again.table] == [r["val_dice_mean"] for r in result.table]
    assert again.best == result.best
