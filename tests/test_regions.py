"""Region-based output (``output: regions``): nested BraTS regions WT ⊃ TC ⊃ ET as one sigmoid
channel each, region losses, and the label map rebuilt from region probabilities."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import tiny_config_dict
from pdeseg.build import build_loss, resolve
from pdeseg.cli import main
from pdeseg.config import config_from_dict
from pdeseg.errors import ConfigError
from pdeseg.inference.options import InferenceOptions
from pdeseg.losses.segmentation import region_bce_loss, soft_dice_loss
from pdeseg.nn.output import (class_probabilities, logits_from_probabilities, make_head, predicted_classes,
                              region_probabilities, regions_from_class_probabilities)

BRATS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}


@pytest.fixture
def head():
    return make_head("regions", 4, BRATS)


def _logits_of(m: np.ndarray) -> torch.Tensor:
    """Region-head logits whose region probabilities are ``m (K, ...)`` (nested)."""
    m = torch.tensor(m, dtype=torch.float64)
    prev = torch.cat([torch.ones_like(m[:1]), m[:-1]])
    return (m / prev).logit()[None]


def test_brats_regions_make_a_chain_with_one_class_per_level(head):
    assert head.channels == 3 and head.region_names == ("WT", "TC", "ET")
    assert head.levels == (0, 2, 1, 3)  # background, WT less TC = ED, TC less ET = NCR, ET
    # the order the regions are listed in does not matter
    assert make_head("regions", 4, {"ET": [3], "WT": [1, 2, 3], "TC": [3, 1]}) == head


@pytest.mark.parametrize("regions, match", [
    ({}, "defines none"),
    ({"A": (1, 2), "B": (3,)}, "every class but background"),
    ({"WT": (1, 2, 3), "X": (1, 2), "Y": (3,)}, "nested"),
    ({"WT": (1, 2, 3), "TC": (1, 3)}, "innermost region of one class"),
])
def test_regions_that_are_not_a_chain_are_refused(regions, match):
    with pytest.raises(ValueError, match=match):
        make_head("regions", 4, regions)


def test_labels_are_rebuilt_region_by_region_on_a_hand_made_volume(head):
    # a 2 x 2 x 2 volume; m = (P(WT), P(TC), P(ET)) per voxel, and the label BraTS rules give
    m = np.zeros((3, 2, 2, 2))
    expected = np.zeros((2, 2, 2), dtype=int)
    cases = [((0.2, 0.1, 0.05), 0), ((0.9, 0.2, 0.1), 2), ((0.9, 0.8, 0.3), 1), ((0.95, 0.9, 0.85), 3),
             ((0.6, 0.35, 0.2), 2),  # WT only: ED, though background (0.4) is the likeliest class
             ((0.51, 0.49, 0.48), 2), ((0.4, 0.4, 0.4), 0), ((0.99, 0.51, 0.5), 1)]
    for idx, (probs, label) in zip(np.ndindex(2, 2, 2), cases):
        m[(slice(None), *idx)], expected[idx] = probs, label
    z = _logits_of(m)
    torch.testing.assert_close(region_probabilities(z)[0], torch.tensor(m))
    assert predicted_classes(z, head)[0].numpy().tolist() == expected.tolist()
    # the counter-example: the argmax of the class probabilities would say background
    p = class_probabilities(z, head)
    assert p[0, :, 1, 0, 0].argmax().item() == 0 and expected[1, 0, 0] == 2


def test_class_probabilities_are_a_distribution_whose_region_sums_are_the_region_probabilities(head):
    z = torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(0)) * 4
    p = class_probabilities(z, head)
    assert p.shape == (2, 4, 5, 4) and bool((p >= 0).all())
    torch.testing.assert_close(p.sum(1), torch.ones(2, 5, 4))
    torch.testing.assert_close(regions_from_class_probabilities(p, head), region_probabilities(z))
    # the way back: the head's logits of the probabilities give the probabilities (and labels) again
    back = logits_from_probabilities(p, head)
    torch.testing.assert_close(class_probabilities(back, head), p, atol=1e-5, rtol=1e-4)
    assert torch.equal(predicted_classes(back, head), predicted_classes(z, head))


def test_one_hot_labels_survive_the_round_trip(head):
    labels = torch.tensor([[[0, 1, 2], [3, 2, 0]]])
    onehot = F.one_hot(labels, 4).movedim(-1, 1).float()
    assert torch.equal(predicted_classes(logits_from_probabilities(onehot, head), head), labels)


def test_region_losses_are_bce_and_mean_dice_of_the_regions(head):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 3, 6, 6, generator=g)
    target = torch.randint(0, 4, (2, 6, 6), generator=g)
    m = region_probabilities(z)
    y = torch.stack([(target == 1) | (target == 2) | (target == 3), (target == 1) | (target == 3), target == 3], 1).float()
    torch.testing.assert_close(region_bce_loss(z, target, head), F.binary_cross_entropy(m, y))
    dice = [(2 * (m[:, k] * y[:, k]).sum() + 1) / ((m[:, k] ** 2).sum() + (y[:, k] ** 2).sum() + 1) for k in range(3)]
    torch.testing.assert_close(soft_dice_loss(z, target, head=head), 1 - torch.stack(dice).mean())
    # the registry's terms get the head from build_loss
    loss = build_loss(config_from_dict({"loss": {"terms": [{"name": "ce"}, {"name": "dice"}]}}).loss, head)
    torch.testing.assert_close(loss(z, target), region_bce_loss(z, target, head) + soft_dice_loss(z, target, head=head))
    # a confident, right prediction costs almost nothing; its log-space BCE stays finite
    sure = _logits_of(y[0].double().clamp(1e-6, 1 - 1e-6).numpy()).float() * 3
    assert float(region_bce_loss(sure, target[:1], head)) < 1e-3


def test_region_bce_leaves_ignored_pixels_out(head):
    z = torch.randn(1, 3, 4, 4)
    target = torch.randint(0, 4, (1, 4, 4))
    ignored = target.clone()
    ignored[0, :2] = 255
    kept = region_bce_loss(z[..., 2:, :], target[:, 2:], head)
    torch.testing.assert_close(region_bce_loss(z, ignored, head), kept)


def test_output_regions_needs_a_format_with_regions(tmp_path, phantom_root):
    cfg = tiny_config_dict(phantom_root, tmp_path)
    exp = resolve(config_from_dict({**cfg, "output": "regions"}))
    assert exp.head.kind == "regions" and exp.model_kwargs(exp.cfg.models[0])["out_channels"] == 3
    lgg = {**cfg, "output": "regions", "data": {**cfg["data"], "format": "lgg", "root": ""}}
    with pytest.raises(ConfigError, match="defines none"):
        resolve(config_from_dict(lgg))
    with pytest.raises(ValueError, match="regions weighs its regions equally"):
        build_loss(config_from_dict({"loss": {"terms": [{"name": "ce", "class_weights": [1, 2, 3, 4]}]}}).loss, exp.head)


def test_a_region_model_trains_scores_and_writes_brats_labels(phantom_root, tmp_path):
    cfg = tiny_config_dict(phantom_root, tmp_path, epochs=2)
    cfg["models"] = cfg["models"][:1]
    cfg["output"] = "regions"
    path = tmp_path / "regions.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path), "--no-progress"]) == 0
    ckpt = tmp_path / "tiny" / "unet" / "best.pt"
    rows = list(csv.DictReader((tmp_path / "tiny" / "unet" / "metrics.csv").open()))
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert all(k in rows[-1] for k in ("val_dice_WT", "val_dice_TC", "val_dice_ET"))
    out = tmp_path / "seg"
    assert main(["predict", "--checkpoint", str(ckpt), "--input", str(phantom_root), "--output", str(out), "--no-crop",
                 "--no-progress"]) == 0
    import nibabel as nib

    from pdeseg.inference.predict import Predictor

    predictor = Predictor.from_checkpoint(ckpt, InferenceOptions("cpu", crop=False))  # whole cases: logits of the same grid
    assert predictor.head.kind == "regions" and predictor.head.channels == 3
    case = predictor.format.find_cases(phantom_root, predictor.modalities, False)[0]
    loaded, seg = predictor.predict_case(case)
    classes = seg.classes
    logits = predictor.predict_logits(predictor.preprocess(loaded))[None]
    assert torch.equal(torch.from_numpy(classes.astype(np.int64)), predicted_classes(logits, predictor.head)[0])
    written = np.asarray(nib.load(next(out.glob(f"{case.case_id}*.nii.gz"))).dataobj)
    assert np.array_equal(written, np.array([0, 1, 2, 4])[classes])  # BraTS 2020 label values, not region channels


def test_region_bce_is_finite_with_finite_gradients_for_confident_logits(head):
    # confident logits either way (what a trained bf16 model emits): the loss and its gradient stay finite
    z = torch.tensor([40.0, -40.0, 30.0, -30.0, 0.0, 90.0]).view(1, 1, 6, 1).repeat(1, 3, 1, 1)
    z[0, 1] *= -1
    z.requires_grad_(True)
    target = torch.tensor([[[0], [1], [2], [3], [1], [0]]])
    loss = region_bce_loss(z, target, head)
    loss.backward()
    assert torch.isfinite(loss) and bool(torch.isfinite(z.grad).all())
    # against a float64 computation where float64 can still tell 1 - m from 0 (|z| <= 30)
    z = (torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(3)) - 0.5) * 60
    target = torch.randint(0, 4, (2, 5, 5), generator=torch.Generator().manual_seed(4))
    m = region_probabilities(z.double())
    y = torch.stack([(target > 0), (target == 1) | (target == 3), target == 3], 1).double()
    exact = -(y * m.log() + (1 - y) * (1 - m).log()).mean()
    assert abs(float(region_bce_loss(z, target, head)) - float(exact)) < 1e-4 * float(exact)
