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
from pdeseg.config import ConfigError, config_from_dict
from pdeseg.data.sampling import SliceDataset, context_indices


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
    predictor = Predictor.from_checkpoint(_checkpoint(cfg, tmp_path / "c.pt", seed=1), "cpu", "32")
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
