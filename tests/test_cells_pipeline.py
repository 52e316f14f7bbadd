"""The microscopy spine: split by domain, random training windows, tiled slice inference, the
cache's objects and field of view, object scoring, and the cells demo end to end (phantom ->
COCO -> unseen cell type -> watershed instances -> scores, report, predictions at native size)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pdeseg.config import TaskSpec, config_from_dict
from pdeseg.errors import ConfigError
from pdeseg.data.pipeline.splits import split_by_domain
from pdeseg.inference.options import InferenceOptions


def test_split_by_domain_puts_each_domain_on_its_side():
    domains = {f"f{i}": "fluo" for i in range(10)} | {f"h{i}": "histo" for i in range(10)} | {f"b{i}": "bright" for i in range(4)} \
        | {"x0": "other"}
    split = split_by_domain(domains, ["fluo", "histo"], ["bright"], None, [0.9, 0.1, 0.0], None, seed=0)
    assert split["test"] == sorted(f"b{i}" for i in range(4))
    assert len(split["val"]) == 2 and len(split["train"]) == 18  # 10 % of the 20 training-domain cases
    assert {domains[c] for c in split["train"] + split["val"]} == {"fluo", "histo"}
    assert "x0" not in sum(split.values(), [])  # a domain named nowhere is left out
    with_val = split_by_domain(domains, ["fluo"], ["bright"], ["histo"], [1.0, 0.0, 0.0], None)
    assert with_val["val"] == sorted(f"h{i}" for i in range(10)) and len(with_val["train"]) == 10
    with pytest.raises(ValueError, match="no case of domain 'brightfield'.*'bright'"):
        split_by_domain(domains, ["fluo"], ["brightfield"])


def test_domain_split_config_is_checked():
    cfg = config_from_dict({"data": {"split": {"fractions": [0.9, 0.1, 0.0], "domains": {"train": ["a", "b"], "test": ["c"]}}}})
    assert cfg.data.split.domains.test == ["c"]
    with pytest.raises(ConfigError, match="domain 'a' is in both train and test"):
        config_from_dict({"data": {"split": {"domains": {"train": ["a"], "test": ["a"]}}}})
    with pytest.raises(ConfigError, match="crop: random"):
        config_from_dict({"data": {"mode": "slices", "crop": "random"}})  # no spatial_size


def test_random_windows_cover_the_image_and_are_reproducible():
    from pdeseg.data.pipeline.sampling import random_window

    image, label = torch.arange(100 * 80, dtype=torch.float32).reshape(1, 100, 80), torch.zeros(100, 80, dtype=torch.long)
    starts = set()
    for seed in range(40):
        win, lab = random_window(image, label, (32, 32), np.random.default_rng(seed))
        assert win.shape == (1, 32, 32) and lab.shape == (32, 32)
        y0, x0 = divmod(int(win[0, 0, 0]), 80)
        assert 0 <= y0 <= 68 and 0 <= x0 <= 48 and torch.equal(win, image[:, y0:y0 + 32, x0:x0 + 32])
        starts.add((y0, x0))
    assert len(starts) > 30  # offsets vary
    again, _ = random_window(image, label, (32, 32), np.random.default_rng(7))
    assert torch.equal(again, random_window(image, label, (32, 32), np.random.default_rng(7))[0])
    small, _ = random_window(image[:, :20], label[:20], (32, 32), np.random.default_rng(0))
    assert small.shape == (1, 20, 32)  # a short axis stays whole (fit_spatial pads it)


def _spec(**kw) -> TaskSpec:
    base = dict(format="cell_folder", modalities=["grey"], normalization="zscore_all", mode="slices", spatial_dims=2,
                spatial_size=[32, 32], num_classes=2, class_names=["background", "cell"])
    return TaskSpec(**{**base, **kw})


def test_tiled_slice_inference_equals_one_pass_for_a_pointwise_model():
    """Gaussian-weighted windows average identical values for a model without spatial
    context, so tiled and whole-image inference agree; a larger image is really tiled."""
    from pdeseg.inference.predict import Predictor

    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 2, 1)
    image = np.random.default_rng(0).normal(size=(1, 80, 70, 2)).astype(np.float32)
    whole = Predictor(model, _spec(), torch.device("cpu"), InferenceOptions(precision="32")).predict_logits(image)
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape[2:])))
    tiled = Predictor(model, _spec(tile_inference=True), torch.device("cpu"), InferenceOptions(precision="32")).predict_logits(image)
    assert tiled.shape == whole.shape == (2, 80, 70, 2)
    assert torch.allclose(tiled, whole, atol=1e-5)
    assert calls and set(calls) == {(32, 32)}  # every forward pass saw training-size windows


def _cell_folder(root: Path, n: int = 3, size=(40, 48)) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        inst = np.zeros(size, np.uint16)
        inst[5:15, 5:15], inst[5:15, 15:25], inst[25:35, 30:44] = 1, 2, 3  # two touching cells, one apart
        img = (rng.normal(100, 5, size) + 80 * (inst > 0)).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"im{i}.png")
        Image.fromarray(inst).save(root / "masks" / f"im{i}.png")
    (root / "domains.tsv").write_text("image\tdomain\n" + "".join(f"im{i}\t{'a' if i else 'b'}\n" for i in range(n)))
    return root


def test_cache_keeps_objects_domain_and_scoring_adds_object_metrics(tmp_path):
    from pdeseg.data.formats import get_format
    from pdeseg.data.pipeline.cache import cache_case
    from pdeseg.inference.predict import Predictor
    from pdeseg.inference.score import score

    root = _cell_folder(tmp_path / "cells")
    cases = get_format("cell_folder").find_cases(root, ("grey",), True, targets="boundary", label_kind="instances")
    spec = _spec(num_classes=3, class_names=["background", "interior", "boundary"], regions={"cell": [1, 2]})
    cached = cache_case(cases[0], tmp_path / "cache", spec)
    assert cached.domain == "b" and cached.instances.shape == (1, 40, 48) and cached.instances.max() == 3
    assert set(np.unique(cached.label)) == {0, 1, 2}

    class Oracle(torch.nn.Module):  # predicts the cached classes exactly
        def forward(self, x):
            y = torch.from_numpy(np.asarray(cached.label[0], np.int64))
            return torch.nn.functional.one_hot(y, 3).permute(2, 0, 1)[None].float().expand(x.shape[0], -1, -1, -1) * 20

    rows = score(Predictor(Oracle(), spec, torch.device("cpu"), InferenceOptions(precision="32")), [cached], "volume").rows
    row = rows[0]
    assert row["domain"] == "b" and row["dice_cell"] == pytest.approx(1.0)
    assert row["bf1_1"] == row["bf1_2"] == pytest.approx(1.0)
    assert row["dsb_score"] == pytest.approx(1.0) and row["n_true"] == row["n_pred"] == 3  # touching cells split
    assert row["n_split"] == row["n_merged"] == 0


def test_field_of_view_limits_the_metrics(tmp_path):
    from pdeseg.data.pipeline.cache import cache_case
    from pdeseg.data.readers.cells import ImageCase, label_image_reader
    from pdeseg.inference.predict import Predictor
    from pdeseg.inference.score import score

    img, lab, fov = tmp_path / "i.png", tmp_path / "l.png", tmp_path / "f.png"
    label = np.zeros((32, 32), np.uint8)
    label[8:16, 8:16] = 255
    inside = np.zeros((32, 32), np.uint8)
    inside[:, :20] = 255
    Image.fromarray(label).save(img)
    Image.fromarray(label).save(lab)
    Image.fromarray(inside).save(fov)
    case = ImageCase("c", tmp_path, img, "fundus", "semantic", label_image_reader(lab, "binary"), (lab,), fov, True)
    spec = _spec(format="drive")
    cached = cache_case(case, tmp_path / "cache", spec)
    assert cached.valid.shape == (1, 32, 32) and cached.instances is None

    class RightHalfToo(torch.nn.Module):  # the true square plus a false block outside the field of view
        def forward(self, x):
            fg = torch.zeros(32, 32)
            fg[8:16, 8:16] = 1
            fg[:, 24:] = 1
            return torch.stack([1 - fg, fg])[None].expand(x.shape[0], -1, -1, -1) * 20

    row = score(Predictor(RightHalfToo(), spec, torch.device("cpu"), InferenceOptions(precision="32")), [cached], "volume").rows[0]
    assert row["dice_mean"] == pytest.approx(1.0) and row["bf1_2"] == pytest.approx(1.0)
    assert "dsb_score" not in row  # vessels: no instance metrics


def test_cells_demo_end_to_end_with_predictions_at_native_size(tmp_path):
    """The unseen-type protocol on the phantom through the real CLI: two cell types trained,
    the third scored with object metrics and per-domain tables, predictions written as a
    mask and an instance image of each image's own size."""
    out = tmp_path / "demo"
    run = subprocess.run([sys.executable, "-m", "pdeseg", "demo", "--cells", "--out", str(out), "--epochs", "2", "--no-progress"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    ablate = out / "ablate"
    assert (ablate / "report.html").is_file()
    results = (ablate / "results.md").read_text()
    assert "DSB score" in results and "BF1@2px" in results and "CLUSTERED" in results  # per-domain table
    split = json.loads((ablate / "split.json").read_text())
    assert split["test"] and all(c.startswith("CLUSTERED") for c in split["test"])
    assert not any(c.startswith("CLUSTERED") for c in split["train"] + split["val"])
    with (ablate / "test_cases.csv").open() as fh:
        cases = [r for r in csv.DictReader(fh) if r["variant"] == "plain"]
    assert cases and all(0 <= float(r["dsb_score"]) <= 1 and int(float(r["n_true"])) > 0 for r in cases)
    ckpt = ablate / "runs" / "plain" / "seed0" / "best.pt"
    pred = subprocess.run([sys.executable, "-m", "pdeseg", "predict", "--checkpoint", str(ckpt), "--input", str(out / "data"),
                           "--output", str(tmp_path / "pred"), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert pred.returncode == 0, pred.stderr[-3000:]
    import tifffile

    masks = sorted((tmp_path / "pred").glob("*_mask.png"))
    assert len(masks) == 30 and all(Image.open(m).size == (128, 128) for m in masks)
    inst = tifffile.imread(next((tmp_path / "pred").glob("*_instances.tif")))
    assert inst.shape == (128, 128) and inst.dtype in (np.uint16, np.uint32)


def test_bad_targets_option_is_a_clear_cli_error(tmp_path):
    root = _cell_folder(tmp_path / "cells")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {format: cell_folder, format_options: {targets: cells}, mode: slices}\n")
    run = subprocess.run([sys.executable, "-m", "pdeseg", "train", "--config", str(cfg), "--data", str(root), "--out",
                          str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "targets" in run.stderr and "Traceback" not in run.stderr


def test_pixels_outside_the_field_of_view_reach_no_loss(tmp_path):
    """DRIVE-style field of view: the dataset marks outside pixels IGNORE_LABEL, and CE / Dice
    (softmax and sigmoid heads) then equal the losses over the inside pixels alone."""
    from pdeseg.config import IGNORE_LABEL
    from pdeseg.data.pipeline.cache import cache_case
    from pdeseg.data.pipeline.sampling import SliceDataset
    from pdeseg.data.readers.cells import ImageCase, label_image_reader
    from pdeseg.losses.segmentation import CrossEntropyLoss, soft_dice_loss

    img, lab, fov = tmp_path / "i.png", tmp_path / "l.png", tmp_path / "f.png"
    label = np.zeros((32, 32), np.uint8)
    label[8:16, 8:16] = 255
    inside = np.zeros((32, 32), np.uint8)
    inside[:, :20] = 255
    for path, arr in ((img, label), (lab, label), (fov, inside)):
        Image.fromarray(arr).save(path)
    case = ImageCase("c", tmp_path, img, "fundus", "semantic", label_image_reader(lab, "binary"), (lab,), fov, True)
    cached = cache_case(case, tmp_path / "cache", _spec(format="drive"))
    item = SliceDataset([cached], "all")[0]
    assert (item["label"][:, 20:] == IGNORE_LABEL).all() and set(item["label"][:, :20].unique().tolist()) == {0, 1}

    torch.manual_seed(0)
    y = item["label"][None]
    for logits in (torch.randn(1, 2, 32, 32, requires_grad=True), torch.randn(1, 1, 32, 32, requires_grad=True)):
        ce = CrossEntropyLoss()(logits, y)
        inside_only = CrossEntropyLoss()(logits[..., :20], y[..., :20])
        assert torch.allclose(ce, inside_only, atol=1e-6)
        assert torch.allclose(soft_dice_loss(logits, y), soft_dice_loss(logits[..., :20], y[..., :20]), atol=1e-6)
        (ce + soft_dice_loss(logits, y)).backward()
        assert logits.grad[..., 20:].abs().max() == 0 and logits.grad[..., :20].abs().max() > 0


def test_contrast_inversion_negates_the_image_and_keeps_the_label():
    from pdeseg.config import AugmentConfig
    from pdeseg.data.pipeline.transforms import build_train_transform

    off = AugmentConfig(flip_prob=0, affine_prob=0, brightness=0, contrast=0, intensity_prob=0)
    image, label = torch.randn(1, 16, 16), torch.randint(0, 2, (1, 16, 16))
    out = build_train_transform(off.model_copy(update={"invert_prob": 1.0}), (16, 16), 2)({"image": image, "label": label})
    assert torch.allclose(torch.as_tensor(out["image"]), -image) and torch.equal(torch.as_tensor(out["label"]), label)
    same = build_train_transform(off, (16, 16), 2)({"image": image, "label": label})
    assert torch.allclose(torch.as_tensor(same["image"]), image)
