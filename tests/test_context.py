"""2.5D input (``data.context_slices``): neighbouring slices as extra channels, stacked the same
way in training and in inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from conftest import tiny_config_dict
from pdeseg.build import resolve
from pdeseg.cli import main
from pdeseg.config import config_from_dict
from pdeseg.errors import ConfigError
from pdeseg.data.pipeline.sampling import SliceDataset, context_indices
from pdeseg.inference.options import InferenceOptions


def test_context_indices_repeat_the_edge_slices():
    assert context_indices(0, 5, 2).tolist() == [0, 0, 0, 1, 2]
    assert context_indices(np.array([2, 4]), 5, 1).tolist() == [[1, 2, 3], [3, 4, 4]]
    assert context_indices(3, 5, 0).tolist() == [3]


class _Case:
    """A cached case in memory: ``image (Z, C, X, Y)``, ``label (Z, X, Y)``."""

    def __init__(self, image, label):
        self.image, self.label, self.valid, self.case_id = image, label, None, "c0"
        self.num_slices = image.shape[0]
        self.meta = {"shape": list(image.shape[2:]) + [image.shape[0]]}


def test_slices_carry_their_neighbours_as_channels():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(6, 2, 8, 8)).astype(np.float16)
    label = np.zeros((6, 8, 8), np.uint8)
    label[:, 3:5, 3:5] = 1
    ds = SliceDataset([_Case(image, label)], "all", context=1)
    first, middle = ds[0], ds[3]
    assert middle["image"].shape == (6, 8, 8)  # 2 modalities x 3 slices
    for k, z in enumerate((2, 3, 4)):  # neighbours first-to-last, the modalities within each
        assert torch.equal(middle["image"][2 * k:2 * k + 2], torch.from_numpy(image[z].astype(np.float32)))
    assert torch.equal(first["image"][0:2], first["image"][2:4])  # slice 0 repeats below the volume
    assert torch.equal(middle["label"], torch.from_numpy(label[3].astype(np.int64)))


def test_inference_stacks_the_neighbours_as_training_does(phantom_root, tmp_path):
    from test_crossval import _checkpoint

    from pdeseg.inference.predict import Predictor

    cfg = tiny_config_dict(phantom_root, tmp_path)
    cfg["data"]["context_slices"] = 2
    exp = resolve(config_from_dict(cfg))
    assert exp.model_kwargs(exp.cfg.models[0])["in_channels"] == 4 * 5
    predictor = Predictor.from_checkpoint(_checkpoint(cfg, tmp_path / "c.pt", seed=1), InferenceOptions("cpu", "32"))
    rng = np.random.default_rng(1)
    volume = rng.normal(size=(7, 4, 32, 32)).astype(np.float16)  # (Z, C, X, Y) as cached
    ds = SliceDataset([_Case(volume, np.zeros((7, 32, 32), np.uint8))], "all", context=2)
    image = volume.astype(np.float32).transpose(1, 2, 3, 0)  # (C, X, Y, Z) as predicted
    batch = predictor.slice_input(image, 0, 7)
    assert torch.equal(batch, torch.stack([ds[z]["image"] for z in range(7)]))
    logits = predictor.predict_logits(image)
    assert logits.shape == (4, 32, 32, 7)
    # slice 3's output depends on slice 5 (within its context) but not on slice 6 (beyond it)
    changed = image.copy()
    changed[..., 6] += 5
    assert torch.allclose(predictor.predict_logits(changed)[..., 3], logits[..., 3])
    changed[..., 5] += 5
    assert not torch.allclose(predictor.predict_logits(changed)[..., 3], logits[..., 3])


def test_context_is_for_slice_models(phantom_root, tmp_path):
    cfg = tiny_config_dict(phantom_root, tmp_path)
    cfg["data"].update(context_slices=1, mode="patches", spatial_size=[16, 16, 8])
    with pytest.raises(ConfigError, match="context_slices"):
        config_from_dict(cfg)


def test_a_2p5d_model_trains_and_segments(phantom_root, tmp_path):
    cfg = tiny_config_dict(phantom_root, tmp_path, epochs=1)
    cfg["models"] = cfg["models"][:1]
    cfg["data"]["context_slices"] = 1
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path), "--no-progress"]) == 0
    ckpt = tmp_path / "tiny" / "unet" / "best.pt"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--hd95", "--no-progress"]) == 0
    assert main(["evaluate", "--checkpoint", str(ckpt), "--scope", "slices", "--no-progress"]) == 0
    case = sorted(p for p in phantom_root.iterdir() if p.is_dir())[0]
    assert main(["predict", "--checkpoint", str(ckpt), "--input", str(case), "--output", str(tmp_path / "seg"),
                 "--no-progress"]) == 0
    assert list((tmp_path / "seg").glob("*_seg.nii.gz"))


def test_slices_along_each_axis_are_cut_from_the_volume_as_it_is():
    rng = np.random.default_rng(2)
    image = rng.normal(size=(5, 2, 6, 7)).astype(np.float16)  # (Z, C, X, Y) as cached
    label = rng.integers(0, 3, size=(5, 6, 7)).astype(np.uint8)
    volume = image.astype(np.float32).transpose(1, 2, 3, 0)  # (C, X, Y, Z)
    truth = label.transpose(1, 2, 0)  # (X, Y, Z)
    ds = SliceDataset([_Case(image, label)], "all", axes=(0, 1, 2), spatial_size=[8, 8])
    assert len(ds) == 6 + 7 + 5
    by_axis = {}
    for k in range(len(ds)):
        item = ds[k]
        by_axis.setdefault(item["axis"], []).append(item)
    sagittal, coronal = by_axis[0][3], by_axis[1][4]  # x = 3, y = 4, before fitting to 8 x 8 (zero padding)
    assert torch.equal(sagittal["image"][:, 0:7, 1:6], torch.from_numpy(volume[:, 3]))  # (C, Y, Z)
    assert torch.equal(coronal["image"][:, 1:7, 1:6], torch.from_numpy(volume[:, :, 4]))  # (C, X, Z)
    assert torch.equal(coronal["label"][1:7, 1:6], torch.from_numpy(truth[:, 4].astype(np.int64)))
    with pytest.raises(Exception, match="set data.spatial_size"):
        SliceDataset([_Case(image, label)], "all", axes=(0, 2))


def test_a_triplanar_model_averages_its_three_passes(phantom_root, tmp_path):
    from test_crossval import _checkpoint

    from pdeseg.inference.predict import Predictor
    from pdeseg.nn.output import class_probabilities, head_of

    cfg = tiny_config_dict(phantom_root, tmp_path)
    cfg["data"].update(slice_axes=[0, 1, 2], spatial_size=[32, 32])
    predictor = Predictor.from_checkpoint(_checkpoint(cfg, tmp_path / "t.pt", seed=1), InferenceOptions("cpu", "32"))
    image = np.random.default_rng(3).normal(size=(4, 12, 10, 8)).astype(np.float32)
    out = predictor.predict_logits(image)
    assert out.shape == (4, 12, 10, 8)
    head = head_of(predictor.spec)
    passes = []
    for axis in (0, 1, 2):
        predictor.spec.slice_axes = [axis]
        passes.append(class_probabilities(predictor.predict_logits(image)[None], head))
    torch.testing.assert_close(class_probabilities(out[None], head), sum(passes) / 3, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(passes[0], passes[2], atol=1e-3)  # the orientations really differ


def test_a_triplanar_model_trains_and_segments(phantom_root, tmp_path):
    cfg = tiny_config_dict(phantom_root, tmp_path, epochs=1)
    cfg["models"] = cfg["models"][:1]
    cfg["data"].update(slice_axes=[0, 1, 2], spatial_size=[32, 32])
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path), "--no-progress"]) == 0
    ckpt = tmp_path / "tiny" / "unet" / "best.pt"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--hd95", "--no-progress"]) == 0
    cfg["data"].update(slices="range", slice_range=[1, 3])
    with pytest.raises(ConfigError, match="range"):
        config_from_dict(cfg)
