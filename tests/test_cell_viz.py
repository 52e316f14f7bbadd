"""Figures of 2D object images (pdeseg.viz.cells): boundary errors with boundary_f1's rule,
PDE penalty maps from the loss module's densities, the per-case figure, its hooks in
evaluate and compare, and the per-domain tables of compare and ablate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pdeseg.config import config_from_dict
from pdeseg.inference.options import InferenceOptions

from pdeseg.losses.pde import phase_field_energy, reaction_diffusion_residual, total_variation
from pdeseg.metrics.instances import boundary_f1, boundary_targets
from pdeseg.viz.cells import (
    boundary_error_overlay,
    boundary_errors,
    boundary_pixels,
    penalty_integrals,
    penalty_maps,
    penalty_options_from_config,
    plot_cell_case,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _square(shape=(40, 40), top=10, left=10, size=20) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[top:top + size, left:left + size] = True
    return m


# --------------------------------------------------------------------------------------
# boundary errors
# --------------------------------------------------------------------------------------


def test_identical_masks_have_only_matched_boundary():
    m = _square()
    matched, false, missed = boundary_errors(m, m, tolerance=2)
    assert not false.any() and not missed.any()
    assert np.array_equal(matched, boundary_pixels(m)) and matched.sum() == 4 * 20 - 4


def test_a_square_shifted_by_3px_at_tolerance_2():
    truth, pred = _square(), _square(top=13)  # rows 10..29 vs 13..32, same columns
    matched, false, missed = boundary_errors(truth, pred, tolerance=2)
    expect_false = np.zeros_like(truth)
    expect_false[32, 10:30] = True  # the new bottom edge, 3 px below the true one
    expect_false[13, 13:27] = True  # the new top edge, except within 2 px of the true sides
    expect_missed = np.zeros_like(truth)
    expect_missed[10, 10:30] = True  # the true top edge, 3 px above the predicted one
    expect_missed[29, 13:27] = True
    assert np.array_equal(false, expect_false) and np.array_equal(missed, expect_missed)
    assert np.array_equal(matched | false, boundary_pixels(pred))
    assert not (matched & false).any() and not (matched & missed).any()
    # the maps are the pixels boundary_f1 counts
    score = boundary_f1(pred, truth, 2)
    assert matched.sum() / (matched | false).sum() == pytest.approx(score["precision"])
    assert 1 - missed.sum() / boundary_pixels(truth).sum() == pytest.approx(score["recall"])
    # at tolerance 3 the shift is forgiven
    _, false3, missed3 = boundary_errors(truth, pred, tolerance=3)
    assert not false3.any() and not missed3.any()


def test_boundary_errors_agree_with_boundary_f1_on_random_shapes():
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    for _ in range(5):
        t = ndi.gaussian_filter(rng.random((36, 44)), 2.5) > 0.5
        p = ndi.gaussian_filter(rng.random((36, 44)), 2.5) > 0.5
        for tol in (0, 1, math.sqrt(2), 2):
            matched, false, missed = boundary_errors(t, p, tol)
            score = boundary_f1(p, t, tol)
            assert matched.sum() / (matched | false).sum() == pytest.approx(score["precision"])
            assert 1 - missed.sum() / boundary_pixels(t).sum() == pytest.approx(score["recall"])


def test_boundary_pixels_follow_the_metric_rule_and_one_empty_side():
    labels = np.zeros((8, 8), np.int32)
    labels[2:6, 1:4], labels[2:6, 4:7] = 1, 2  # two touching cells: the line between counts
    assert np.array_equal(boundary_pixels(labels), boundary_targets(labels) == 2)
    full = np.ones((6, 6), bool)  # the image frame is not a boundary
    assert not boundary_pixels(full).any()
    m = _square((20, 20), 5, 5, 8)
    empty = np.zeros_like(m)
    matched, false, missed = boundary_errors(empty, m)
    assert not matched.any() and np.array_equal(false, boundary_pixels(m)) and not missed.any()
    matched, false, missed = boundary_errors(m, empty)
    assert not matched.any() and not false.any() and np.array_equal(missed, boundary_pixels(m))
    with pytest.raises(ValueError, match="same shape"):
        boundary_errors(m, m[:-1])
    with pytest.raises(ValueError, match="tolerance"):
        boundary_errors(m, m, -1)


def test_overlay_colours_the_errors():
    truth, pred = _square(), _square(top=13)
    image = np.linspace(0, 1, 1600).reshape(40, 40)
    rgb = boundary_error_overlay(image, truth.astype(np.uint8), pred.astype(np.uint8) * 2, tolerance=2)
    assert rgb.shape == (40, 40, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[32, 20]) == (255, 30, 30) and tuple(rgb[10, 20]) == (40, 120, 255)
    assert tuple(rgb[20, 10]) == (0, 230, 0)
    assert rgb[0, 0, 0] == rgb[0, 0, 1] == rgb[0, 0, 2]  # grey elsewhere
    with pytest.raises(ValueError, match="differ"):
        boundary_error_overlay(image[:-1], truth, pred)


# --------------------------------------------------------------------------------------
# penalty maps
# --------------------------------------------------------------------------------------


def _tanh_disk(n=64, radius=20.0, eps=1.0):
    c = (n - 1) / 2
    y, x = np.mgrid[:n, :n]
    r = np.hypot(y - c, x - c)
    p = 0.5 * (1 + np.tanh((radius - r) / (math.sqrt(2) * eps)))  # the phase field's optimal profile
    return np.stack([1 - p, p]), r


def test_phase_field_energy_map_sits_on_the_interface():
    probs, r = _tanh_disk()
    maps = penalty_maps(probs, eps=1.0)
    energy = maps["phase_field"]
    assert energy.shape == (64, 64) and (energy >= 0).all()
    assert energy[np.abs(r - 20) <= 4].sum() > 0.95 * energy.sum()
    assert energy[np.abs(r - 20) > 8].sum() < 0.01 * energy.sum()
    p = torch.from_numpy(probs[1])[None, None]
    totals = penalty_integrals(maps)  # one formula: the maps add up to the loss functions
    assert totals["phase_field"] == pytest.approx(phase_field_energy(p, 1.0).item(), rel=1e-12)
    assert totals["total_variation"] == pytest.approx(total_variation(p, None, 0.01).item(), rel=1e-12)
    assert totals["phase_field"] == pytest.approx(math.sqrt(2) / 6 * 2 * math.pi * 20, rel=0.05)  # c_W x perimeter
    sharp = penalty_integrals(penalty_maps(probs, tv_eps=1e-9))["total_variation"]  # e = 0.01 shaves a little off
    assert sharp == pytest.approx(2 * math.pi * 20, rel=0.03) and totals["total_variation"] < sharp
    assert np.allclose(maps["foreground"], probs[1])


def test_allen_cahn_residual_map_vanishes_on_the_standing_front():
    d = 16.0
    x = np.arange(128, dtype=np.float64) - 63.5
    front = np.broadcast_to(0.5 * (1 + np.tanh(x / (2 * math.sqrt(2 * d)))), (48, 128))
    step = np.broadcast_to((x > 0).astype(np.float64), (48, 128))
    res_front = penalty_maps(np.stack([1 - front, front]), diffusion=d, a=0.5)["reaction_diffusion"]
    res_step = penalty_maps(np.stack([1 - step, step]), diffusion=d, a=0.5)["reaction_diffusion"]
    assert res_front.max() < 1e-3
    assert res_step.max() > 1e3 * res_front.max()
    p = torch.from_numpy(np.ascontiguousarray(front))[None, None]
    assert np.allclose(res_front, reaction_diffusion_residual(p, d, 0.5).abs()[0, 0].numpy())
    # a one-channel input is the foreground probability itself; a slice axis of size 1 is dropped
    assert np.allclose(penalty_maps(front[None, ..., None], diffusion=d)["reaction_diffusion"], res_front)
    with pytest.raises(ValueError, match="diffusion"):
        penalty_maps(np.stack([1 - front, front]), diffusion=0)
    with pytest.raises(ValueError, match="unknown reaction"):
        penalty_maps(np.stack([1 - front, front]), kind="gray_scott")


def test_penalty_options_come_from_the_run_loss_terms():
    cfg = {"loss": {"terms": [{"name": "ce", "weight": 1}, {"name": "phase_field", "weight": 0.1, "eps": 2.0},
                              {"name": "reaction_diffusion", "diffusion": 3, "a": 0.3, "reaction": "fisher_kpp"},
                              {"name": "tv", "eps": 0.05}]}}
    assert penalty_options_from_config(cfg) == {"eps": 2.0, "diffusion": 3.0, "a": 0.3, "kind": "fisher_kpp",
                                                "tv_eps": 0.05}
    assert penalty_options_from_config({})["eps"] == 1.0


# --------------------------------------------------------------------------------------
# the figure
# --------------------------------------------------------------------------------------


def test_plot_cell_case_writes_a_png(tmp_path):
    probs, _ = _tanh_disk(48, 14.0)
    truth = boundary_targets(_square((48, 48), 10, 10, 28).astype(np.int32))
    pred = (probs[1] > 0.5).astype(np.uint8)
    rgb = np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    for image in (probs[1] * 1000, rgb):
        path = plot_cell_case(image, truth, pred, probs, tmp_path / "sub" / "case.png", title="case",
                              penalty_options={"eps": 1.5})
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 10_000
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["case.png"]  # no temporary file left
    with pytest.raises(ValueError, match="size"):
        plot_cell_case(rgb, truth[:-1], pred[:-1], probs, tmp_path / "bad.png")


@pytest.fixture
def cell_case(tmp_path):
    """A cached 64x64 'cell' image with two touching cells, a field of view and a domain,
    and a tiny untrained 3-class (boundary targets) UNet predictor for it."""
    from PIL import Image

    from pdeseg.config import TaskSpec
    from pdeseg.data.pipeline.cache import cache_case
    from pdeseg.data.readers.cells import ImageCase, label_image_reader
    from pdeseg.inference.predict import Predictor
    from pdeseg.nn.unet import UNet

    labels = np.zeros((64, 64), np.uint8)
    labels[12:40, 10:30], labels[12:40, 30:52] = 1, 2
    image = (40 + 150 * (labels > 0) + np.random.default_rng(0).integers(0, 30, (64, 64))).astype(np.uint8)
    fov = np.zeros((64, 64), np.uint8)
    fov[4:60, 4:60] = 255
    for name, arr in (("img.png", image), ("lab.png", labels), ("fov.png", fov)):
        Image.fromarray(arr).save(tmp_path / name)
    case = ImageCase("c1", tmp_path, tmp_path / "img.png", domain="nuclei", targets="boundary",
                     objects=label_image_reader(tmp_path / "lab.png", "instances"), label_files=(tmp_path / "lab.png",),
                     fov=tmp_path / "fov.png")
    spec = TaskSpec(format="cell_folder", modalities=["grey"], normalization="zscore", mode="slices",
                    spatial_dims=2, spatial_size=[64, 64], num_classes=3,
                    class_names=["background", "interior", "boundary"])
    cached = cache_case(case, tmp_path / "cache", spec)
    torch.manual_seed(0)
    model = UNet(2, 1, 3, features=(4, 8, 8, 8, 8)).eval()
    predictor = Predictor(model, spec, torch.device("cpu"), InferenceOptions(precision="32"), name="tiny")
    predictor.config = config_from_dict({"data": {"root": str(tmp_path), "format": "cell_folder"},
                                         "loss": {"terms": [{"name": "phase_field", "eps": 2.0}]}})
    return case, cached, predictor


def test_evaluate_figures_of_an_object_format_draw_the_cell_figure(cell_case, tmp_path, monkeypatch):
    from pdeseg.inference import evaluate

    case, cached, predictor = cell_case
    monkeypatch.setattr(evaluate.Predictor, "from_checkpoint", classmethod(lambda cls, *a, **k: predictor))
    monkeypatch.setattr(evaluate, "load_cached_cases", lambda *a, **k: [(case, cached)])
    monkeypatch.setattr(evaluate, "input_cases", lambda *a, **k: [case])
    tables = {}
    for grid in ("cache", "input"):  # nothing resampled or cropped: the two grids are one
        out = tmp_path / f"eval_{grid}"
        summary = evaluate.evaluate_checkpoint(tmp_path / "none.pt", out, split="all", figures=1, progress=False,
                                               grid=grid)
        assert summary["cases"] == 1 and "bf1_2" in summary["metrics"] and summary["grid"] == grid
        figure = out / "figures" / "cells" / "c1.png"
        assert figure.read_bytes()[:8] == PNG
        tables[grid] = (out / "per_case.csv").read_text()
        assert "nuclei" in tables[grid]
    assert tables["cache"] == tables["input"]


def test_compare_cell_figures_one_per_model(cell_case, tmp_path):
    from pdeseg.experiments.figures import cell_figures

    _, cached, predictor = cell_case
    figures = cell_figures(tmp_path, {"tiny unet": predictor, "other": predictor}, cached, seed=0)
    assert [f for f, _ in figures] == ["figures/cells_tiny_unet.png", "figures/cells_other.png"]
    assert all((tmp_path / f).read_bytes()[:8] == PNG for f, _ in figures)


# --------------------------------------------------------------------------------------
# per-domain tables
# --------------------------------------------------------------------------------------


def _rows():
    rows = []
    for model, offset in (("unet", 0.0), ("pde", 0.1)):
        for seed in (0, 1):
            for case, domain, dice in (("a", "nuclei", 0.5), ("b", "nuclei", 0.7), ("c", "em", 0.2)):
                row = {"model": model, "seed": seed, "split": "test", "case": case, "domain": domain,
                       "dice_fg": dice + offset + 0.1 * seed, "bf1_2": 0.4 + seed * 0.2}
                if domain == "nuclei":
                    row.update(dsb_score=0.3 * (seed + 1), ap50=0.6, mask_ap=0.3 + 0.2 * seed)
                rows.append(row)
            rows.append({"model": model, "seed": seed, "split": "val", "case": "v", "domain": "nuclei", "dice_fg": 0.0})
    return rows


def test_domain_table_means_over_seeds_of_case_means():
    from pdeseg.experiments.tables import domain_markdown, domain_table

    table = domain_table(_rows(), "model")
    assert [(r["model"], r["domain"]) for r in table] == [("unet", "em"), ("unet", "nuclei"), ("pde", "em"),
                                                          ("pde", "nuclei")]
    em, nuclei = table[0], table[1]
    assert nuclei["cases"] == 2 and nuclei["seeds"] == 2 and em["cases"] == 1
    assert nuclei["dice_fg"] == pytest.approx(0.65)  # seeds 0.6 and 0.7; the val case is left out
    assert em["dice_fg"] == pytest.approx(0.25) and table[2]["dice_fg"] == pytest.approx(0.35)
    assert nuclei["bf1_2"] == pytest.approx(0.5) and nuclei["dsb_score"] == pytest.approx(0.45)
    assert nuclei["ap50"] == pytest.approx(0.6) and nuclei["mask_ap"] == pytest.approx(0.4)
    assert em["dsb_score"] is None and em["ap50"] is None  # no objects: no instance metrics
    assert domain_table(_rows(), "model", names=["pde", "unet"])[0]["model"] == "pde"
    text = domain_markdown(table)
    assert "Test metrics per domain" in text and "| unet | nuclei | 0.650 | 0.500 | 0.450 | 0.600 | 0.400 | 2 |" in text
    assert "| unet | em | 0.250 | 0.500 | - | - | - | 1 |" in text
    plain = [{k: v for k, v in r.items() if k != "domain"} for r in _rows()]
    assert domain_table(plain) == [] and domain_markdown([]) == ""
    blank = [{**r, "domain": ""} for r in _rows()]
    assert domain_table(blank) == []


def test_ablation_results_and_reports_show_the_domain_table(tmp_path):
    from pdeseg.experiments.ablate import AblationResult, Variant, variant_domains
    from pdeseg.experiments.tables import domain_report_tables
    from pdeseg.viz.report import render_report

    cases = [{**r, "variant": r.pop("model")} for r in _rows() if r["split"] == "test"]
    result = AblationResult(tmp_path, [Variant({"x": 1}, "pde"), Variant({"x": 2}, "unet")], cases=cases)
    table = variant_domains(result)
    assert [r["variant"] for r in table] == ["pde", "pde", "unet", "unet"]
    page = render_report(tmp_path / "report.html", "t", "intro", [], [("variant", "variant")], [], [], {},
                         tables=domain_report_tables(table, "variant"))
    html = page.read_text()
    assert "Test metrics per domain" in html and "<td>nuclei</td>" in html and "<th>BF1@2px</th>" in html
    render_report(tmp_path / "plain.html", "t", "intro", [], [], [], [], {}, tables=domain_report_tables([], "variant"))
    assert "per domain" not in (tmp_path / "plain.html").read_text()
