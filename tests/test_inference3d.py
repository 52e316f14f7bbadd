"""Sliding-window, test-time-augmentation and stitching options of the Predictor (3D and 2D).

The reference for sliding windows is a whole-volume forward pass of the same network. Only
networks without global statistics (no normalisation layers) can match it: a window sees
its own neighbourhood, so a norm computed over a window differs from one computed over the
volume. Where windows overlap, only a pointwise (1x1x1) network matches exactly, since a
larger receptive field sees the window's zero padding near window borders.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from pdeseg.config import TaskSpec
from pdeseg.errors import ConfigError
from pdeseg.inference.options import InferenceOptions
from pdeseg.inference.predict import (
    AUTO_STITCH_SHARE,
    Predictor,
    flip_sets,
    stitch_bytes,
    window_count,
)
from pdeseg.nn.output import class_probabilities, logits_from_probabilities, predicted_classes
from pdeseg.progress import counter

MODALITIES = ["flair", "t1", "t1ce", "t2"]
CLASSES = ["background", "NCR", "ED", "ET"]
SHAPE = (13, 11, 9)  # odd sizes on purpose


def _spec(mode: str = "patches", dims: int = 3, size=(6, 5, 4), output: str = "softmax") -> TaskSpec:
    classes = ["background", "tumour"] if output == "sigmoid" else CLASSES
    regions = {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]} if output == "regions" else {}
    return TaskSpec(format="brats", modalities=MODALITIES, normalization="zscore", mode=mode, spatial_dims=dims,
                    spatial_size=list(size) if size is not None else None, num_classes=len(classes),
                    output=output, class_names=classes, regions=regions)


def _conv_net(dims: int = 3, kernel: int = 3, out: int = 4, symmetric: bool = False, seed: int = 0) -> nn.Module:
    """Two convolutions with a ReLU between, no normalisation; ``symmetric`` makes every
    kernel mirror-symmetric along each spatial axis, so the network commutes with flips."""
    torch.manual_seed(seed)
    conv = nn.Conv3d if dims == 3 else nn.Conv2d
    net = nn.Sequential(conv(4, 6, kernel, padding=kernel // 2), nn.ReLU(), conv(6, out, kernel, padding=kernel // 2))
    if symmetric:
        with torch.no_grad():
            for layer in (net[0], net[2]):
                w = layer.weight
                layer.weight.copy_(sum(w.flip(d) if d else w for d in flip_sets(dims)) / 2**dims)
    return net.eval()


def _image(shape=SHAPE, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(4, *shape)).astype(np.float32)


def _predictor(net: nn.Module, spec: TaskSpec, **options) -> Predictor:
    return Predictor(net, spec, torch.device("cpu"), InferenceOptions(precision="32", batch_size=options.pop("batch_size", 3), **options))


@torch.no_grad()
def _whole(net: nn.Module, image: np.ndarray) -> torch.Tensor:
    return net(torch.from_numpy(image)[None])[0]


# ----------------------------------------------------------------------------- sliding window


def test_one_window_covering_the_volume_equals_the_whole_forward_pass():
    net, image = _conv_net(kernel=3), _image()
    out = _predictor(net, _spec(size=SHAPE)).predict_logits(image)
    assert out.shape == (4, *SHAPE)
    torch.testing.assert_close(out, _whole(net, image), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.8])
def test_overlapping_windows_of_a_pointwise_net_equal_the_whole_forward_pass(overlap):
    net, image = _conv_net(kernel=1), _image()
    out = _predictor(net, _spec(size=(6, 5, 4)), overlap=overlap).predict_logits(image)
    assert out.shape == (4, *SHAPE)
    torch.testing.assert_close(out, _whole(net, image), rtol=1e-5, atol=1e-5)


def test_window_larger_than_the_volume_is_padded_and_cropped_back():
    net, image = _conv_net(kernel=1), _image((5, 4, 3))
    out = _predictor(net, _spec(size=(8, 8, 8))).predict_logits(image)
    assert out.shape == (4, 5, 4, 3)
    torch.testing.assert_close(out, _whole(net, image), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
def test_window_count_is_the_number_of_windows_monai_visits(overlap):
    seen = []
    net = _conv_net(kernel=1)

    class Counting(nn.Module):
        def forward(self, x):
            seen.append(x.shape[0])
            return net(x)

    _predictor(Counting(), _spec(size=(6, 5, 4)), overlap=overlap, batch_size=1).predict_logits(_image())
    assert sum(seen) == window_count(SHAPE, (6, 5, 4), overlap)


def test_sliding_window_progress_is_logged_through_our_progress_conventions(caplog, monkeypatch):
    """Not a terminal (pytest captures stderr): log lines, not tqdm frames."""
    import pdeseg.progress as progress

    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)
    with caplog.at_level(logging.INFO, logger="pdeseg.progress"):
        _predictor(_conv_net(kernel=1), _spec(size=(6, 5, 4)), batch_size=2).predict_logits(_image(), progress=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "pdeseg.progress"]
    total = window_count(SHAPE, (6, 5, 4), 0.5)
    assert lines and all(line.startswith("sliding window: ") for line in lines)
    assert any(f"{total}/{total} (100%)" in line for line in lines)
    caplog.clear()
    _predictor(_conv_net(kernel=1), _spec(size=(6, 5, 4))).predict_logits(_image(), progress=False)
    assert not [r for r in caplog.records if r.name == "pdeseg.progress"]


def test_counter_logs_at_most_once_per_interval(caplog):
    with caplog.at_level(logging.INFO, logger="pdeseg.progress"):
        with counter("windows", "window", total=100, terminal=False, interval=3600) as bar:
            for _ in range(100):
                bar.update()
    assert not caplog.records  # finished within the interval: nothing logged
    with caplog.at_level(logging.INFO, logger="pdeseg.progress"):
        with counter("windows", "window", total=4, terminal=False, interval=0) as bar:
            bar.update(2)
            bar.update(2)
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["windows: 2/4 (50%)", "windows: 4/4 (100%)",
                                                                        "windows: 4/4 (100%)"]


# ----------------------------------------------------------------------------- stitching


def test_stitch_cpu_and_device_agree_on_a_cpu_device():
    net, image = _conv_net(kernel=3), _image()
    results = {s: _predictor(net, _spec(), stitch=s).predict_logits(image) for s in ("device", "cpu", "auto")}
    torch.testing.assert_close(results["cpu"], results["device"], rtol=0, atol=0)
    torch.testing.assert_close(results["auto"], results["device"], rtol=0, atol=0)
    p = _predictor(net, _spec(), stitch="device")
    assert p.stitch_device(SHAPE, 4) == torch.device("cpu")  # on a CPU device everything is on the CPU


def test_auto_stitch_follows_free_gpu_memory(monkeypatch):
    """The decision only (no GPU needed): the compute device while the buffers fit, else the CPU."""
    gpu = torch.device("cuda", 0)
    shape = (240, 240, 155)
    need = stitch_bytes(shape, 4, 4)
    assert need == (4 + 1 + 4) * math.prod(shape) * 4
    p = Predictor(_conv_net(), _spec(), gpu, InferenceOptions(stitch="auto"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(need / AUTO_STITCH_SHARE) + 1, 80 * 2**30))
    assert p.stitch_device(shape, 4) == gpu
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (need, 80 * 2**30))
    assert p.stitch_device(shape, 4) == torch.device("cpu")
    assert Predictor(_conv_net(), _spec(), gpu, InferenceOptions(stitch="device")).stitch_device(shape, 4) == gpu
    assert Predictor(_conv_net(), _spec(), gpu, InferenceOptions(stitch="cpu")).stitch_device(shape, 4) == torch.device("cpu")


# ----------------------------------------------------------------------------- test-time augmentation


def test_flip_sets_are_every_combination_of_spatial_axes():
    assert flip_sets(2) == [(), (2,), (3,), (2, 3)]
    assert len(flip_sets(3)) == 8 and len(set(flip_sets(3))) == 8


@pytest.mark.parametrize("mode, size", [("whole", None), ("patches", (6, 5, 4)), ("patches", SHAPE)])
def test_tta_of_a_flip_equivariant_net_equals_no_tta_3d(mode, size):
    net, image = _conv_net(kernel=3, symmetric=True), _image()
    plain = _predictor(net, _spec(mode, size=size)).predict_logits(image)
    tta = _predictor(net, _spec(mode, size=size), tta=True).predict_logits(image)
    assert tta.shape == plain.shape == (4, *SHAPE)
    torch.testing.assert_close(class_probabilities(tta[None]), class_probabilities(plain[None]), rtol=1e-4, atol=1e-5)
    assert torch.equal(predicted_classes(tta[None]), predicted_classes(plain[None]))


def test_tta_of_a_flip_equivariant_net_equals_no_tta_in_slice_mode():
    net, image = _conv_net(dims=2, kernel=3, symmetric=True), _image()
    spec = _spec("slices", dims=2, size=None)
    plain = _predictor(net, spec).predict_logits(image)
    tta = _predictor(net, spec, tta=True).predict_logits(image)
    assert tta.shape == plain.shape == (4, *SHAPE)
    torch.testing.assert_close(class_probabilities(tta[None]), class_probabilities(plain[None]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("output", ["softmax", "sigmoid", "regions"])
def test_tta_averages_probabilities_over_the_mirrorings(output):
    """Whole mode, an asymmetric net: the result is the mean of the mirrored passes'
    probabilities, handed on as logits; it keeps the input's shape."""
    from pdeseg.nn.output import head_of

    k = {"softmax": 4, "sigmoid": 1, "regions": 3}[output]
    net, image = _conv_net(kernel=3, out=k), _image()
    spec = _spec("whole", size=None, output=output)
    head = head_of(spec)
    tta = _predictor(net, spec, tta=True).predict_logits(image)
    assert tta.shape == (k, *SHAPE)
    x = torch.from_numpy(image)[None]
    with torch.no_grad():
        ref = sum(class_probabilities(net(x.flip(d) if d else x), head).flip(d) if d else class_probabilities(net(x), head)
                  for d in flip_sets(3)) / 8
    torch.testing.assert_close(class_probabilities(tta[None], head), ref, rtol=1e-4, atol=1e-6)
    plain = _predictor(net, spec).predict_logits(image)
    assert not torch.allclose(tta, plain, atol=1e-3)  # an asymmetric net does change


def test_tta_result_commutes_with_mirroring_the_input():
    net, image = _conv_net(kernel=3, seed=5), _image()
    p = _predictor(net, _spec("whole", size=None), tta=True)
    out = p.predict_logits(image)
    mirrored = p.predict_logits(np.ascontiguousarray(image[:, ::-1, :, ::-1]))
    torch.testing.assert_close(mirrored, out.flip((1, 3)), rtol=1e-4, atol=1e-5)


def test_logits_from_probabilities_inverts_class_probabilities():
    z = torch.randn(2, 4, 3, 5)
    torch.testing.assert_close(class_probabilities(logits_from_probabilities(class_probabilities(z))), class_probabilities(z))
    s = torch.randn(2, 1, 3, 5)
    torch.testing.assert_close(logits_from_probabilities(class_probabilities(s), "sigmoid"), s, rtol=1e-4, atol=1e-4)
    assert torch.isfinite(logits_from_probabilities(torch.tensor([[1.0, 0.0]]).view(1, 2, 1), "sigmoid")).all()


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "0.5", True, None])
def test_bad_overlap_raises_config_error(bad):
    with pytest.raises(ConfigError, match="overlap"):
        _predictor(_conv_net(), _spec(), overlap=bad)


def test_bad_stitch_tta_or_batch_size_raise_config_error():
    with pytest.raises(ConfigError, match="stitch must be one of auto, device, cpu"):
        _predictor(_conv_net(), _spec(), stitch="gpu")
    with pytest.raises(ConfigError, match="tta"):
        _predictor(_conv_net(), _spec(), tta="yes")
    with pytest.raises(ConfigError, match="batch size"):
        _predictor(_conv_net(), _spec(), batch_size=0)


def test_from_checkpoint_checks_options_before_reading_and_keeps_them(tmp_path):
    from pdeseg.checkpoint import plain_state_dict, save_checkpoint
    from pdeseg.nn.models import build_model

    with pytest.raises(ConfigError, match="overlap"):  # the file does not even exist
        Predictor.from_checkpoint(tmp_path / "missing.pt", InferenceOptions(overlap=1.0))
    kwargs = {"spatial_dims": 3, "in_channels": 4, "out_channels": 4, "features": [4, 8, 8, 8, 8], "norm": "none"}
    model = build_model("unet", **kwargs)
    save_checkpoint({"model": {"name": "unet", "kwargs": kwargs}, "preprocessing": _spec(size=(8, 8, 8)).model_dump(mode="json"),
                     "state_dict": plain_state_dict(model)}, tmp_path / "m.pt")
    p = Predictor.from_checkpoint(tmp_path / "m.pt", InferenceOptions("cpu", "32", 2, overlap=0.25, tta=True, stitch="cpu"))
    assert (p.overlap, p.tta, p.stitch, p.batch_size) == (0.25, True, "cpu", 2)
    assert p.predict_volume(_image((9, 10, 8))).shape == (9, 10, 8)


def test_cli_passes_inference_options_and_rejects_bad_ones(monkeypatch, tmp_path, capsys):
    import pdeseg.inference.evaluate as evaluate
    import pdeseg.inference.folder as folder
    from pdeseg.cli import main

    seen = {}

    def fake_predict(checkpoint, input_dir, output_dir, options, **kwargs):
        seen["predict"] = vars(options)
        return folder.PredictionReport(written=[tmp_path / "a"])

    def fake_evaluate(checkpoint, out_dir, options, **kwargs):
        seen["evaluate"] = {**vars(options), **kwargs}
        return {"scope": "volume", "split": "test", "checkpoint": "c.pt", "cases": 0, "metrics": {}}

    monkeypatch.setattr(folder, "predict_folder", fake_predict)
    monkeypatch.setattr(evaluate, "evaluate_checkpoint", fake_evaluate)
    base = ["predict", "--checkpoint", "c.pt", "--input", "in", "--output", str(tmp_path / "out")]
    assert main(base) == 0
    assert (seen["predict"]["overlap"], seen["predict"]["tta"], seen["predict"]["stitch"]) == (0.5, False, "auto")
    assert main(base + ["--overlap", "0.25", "--tta", "--stitch", "cpu"]) == 0
    assert (seen["predict"]["overlap"], seen["predict"]["tta"], seen["predict"]["stitch"]) == (0.25, True, "cpu")
    ev = ["evaluate", "--checkpoint", "c.pt", "--out", str(tmp_path / "ev")]
    assert main(ev + ["--tta", "--overlap", "0", "--stitch", "device", "--surface-tolerance", "2"]) == 0
    e = seen["evaluate"]
    assert (e["overlap"], e["tta"], e["stitch"], e["surface_tolerance_mm"]) == (0.0, True, "device", 2.0)
    for bad in (["--overlap", "1"], ["--overlap", "half"], ["--stitch", "gpu"]):
        with pytest.raises(SystemExit) as exc:
            main(base + bad)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("pdeseg predict: error: argument --")
    with pytest.raises(SystemExit) as exc:
        main(ev + ["--surface-tolerance", "-1"])
    assert exc.value.code == 2


def test_cli_predict_and_evaluate_a_3d_patch_model_with_tta_on_files(tmp_path, capsys):
    """A tiny 3D patch checkpoint on phantom NIfTI cases: predict writes the input's geometry,
    evaluate reports precision/recall and the surface Dice, and records the options."""
    import json

    import nibabel as nib

    from pdeseg.checkpoint import plain_state_dict, save_checkpoint
    from pdeseg.cli import main
    from pdeseg.data.phantoms.brats import write_phantom_dataset
    from pdeseg.nn.models import build_model

    root = tmp_path / "data"
    write_phantom_dataset(root, n_cases=2, seed=1, shape=(20, 18, 16))
    kwargs = {"spatial_dims": 3, "in_channels": 4, "out_channels": 4, "features": [4, 8, 8, 8, 8], "norm": "none"}
    spec = TaskSpec(format="brats", modalities=MODALITIES, normalization="zscore", mode="patches", spatial_dims=3,
                    spatial_size=[16, 16, 8], num_classes=4, class_names=CLASSES,
                    regions={"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]})
    torch.manual_seed(0)
    save_checkpoint({"model": {"name": "unet", "kwargs": kwargs}, "preprocessing": spec.model_dump(mode="json"),
                     "state_dict": plain_state_dict(build_model("unet", **kwargs)),
                     "config": {"data": {"root": str(root), "cache_dir": str(tmp_path / "cache")}}}, tmp_path / "m.pt")
    out = tmp_path / "seg"
    assert main(["predict", "--checkpoint", str(tmp_path / "m.pt"), "--input", str(root), "--output", str(out),
                 "--device", "cpu", "--precision", "32", "--tta", "--overlap", "0.25", "--stitch", "cpu", "--no-progress"]) == 0
    written = sorted(out.glob("*_seg.nii.gz"))
    assert len(written) == 2 and nib.load(str(written[0])).shape == (20, 18, 16)
    ev = tmp_path / "ev"
    assert main(["evaluate", "--checkpoint", str(tmp_path / "m.pt"), "--split", "all", "--out", str(ev), "--device", "cpu",
                 "--precision", "32", "--tta", "--hd95", "--surface-tolerance", "2", "--no-progress"]) == 0
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["inference"] == {"tta": True, "overlap": 0.5, "stitch": "auto", "precision": "32", "surface_tolerance_mm": 2.0,
                                    "postprocess": "none", "models": summary["inference"]["models"]}
    for key in ("precision_mean", "recall_mean", "precision_WT", "recall_ET", "surface_dice_WT", "hd95_TC"):
        assert summary["metrics"][key]["n"] == 2, key
    printed = capsys.readouterr().out
    assert "| precision_mean |" in printed and "| recall_WT |" in printed and "test-time mirroring" in printed
