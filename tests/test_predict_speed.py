"""The faster prediction path: empty slices not segmented, the next case read while this one
is segmented, and torch.compile as an option (checked, refused clearly where it cannot work)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pdeseg.config import TaskSpec
from pdeseg.errors import DeviceError
from pdeseg.inference.options import InferenceOptions
from pdeseg.inference.predict import Predictor, read_ahead
from pdeseg.nn.models import build_model

SPEC = TaskSpec(format="brats", modalities=["flair", "t1", "t1ce", "t2"], normalization="zscore", mode="slices",
                spatial_dims=2, num_classes=4, class_names=["background", "NCR", "ED", "ET"])


def _volume(seed: int = 0) -> np.ndarray:
    """``(4, 48, 40, 12)``: noise with 3 empty slices at the bottom, 2 at the top, an empty
    channel (t1) and foreground touching the in-plane border."""
    image = np.random.default_rng(seed).normal(size=(4, 48, 40, 12)).astype(np.float32)
    image[..., :3] = 0
    image[..., -2:] = 0
    image[1] = 0
    return image


@pytest.mark.parametrize("output,context", [("softmax", 0), ("regions", 1)])
def test_empty_slices_are_background_and_the_others_unchanged(output, context):
    torch.manual_seed(0)
    regions = {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]} if output == "regions" else {}
    spec = SPEC.model_copy(update={"output": output, "regions": regions, "context_slices": context})
    k = 3 if output == "regions" else 4
    net = build_model("unet", in_channels=4 * (2 * context + 1), out_channels=k, features=[8, 16, 32, 64, 128]).eval()
    image = _volume()
    new = Predictor(net, spec, torch.device("cpu"), InferenceOptions(precision="32", batch_size=4))
    old = Predictor(net, spec, torch.device("cpu"), InferenceOptions(precision="32", batch_size=4, skip_empty=False))
    a, b = new.predict_logits(image), old.predict_logits(image)
    inside = slice(3, -2)
    assert torch.allclose(a[..., inside], b[..., inside], atol=1e-5)  # batches differ: float rounding only
    classes_new, classes_old = new.predict_volume(image), old.predict_volume(image)
    assert np.array_equal(classes_new[..., inside], classes_old[..., inside])
    assert (classes_new[..., :3] == 0).all() and (classes_new[..., -2:] == 0).all()
    if output == "softmax":  # this untrained network finds "tumour" in empty slices: there, skipping matters
        assert (classes_old[..., :3] != 0).any()
    from pdeseg.nn.output import class_probabilities

    background = class_probabilities(a[None], new.head)[0, 0]
    assert float(background[..., :3].min()) > 1 - 1e-6 and float(background[..., -2:].min()) > 1 - 1e-6


def test_a_volume_with_no_empty_slice_is_segmented_exactly_as_before():
    torch.manual_seed(0)
    net = build_model("unet", in_channels=4, out_channels=4, features=[8, 16, 32, 64, 128]).eval()
    image = np.random.default_rng(1).normal(size=(4, 32, 32, 5)).astype(np.float32)
    image[1] = 0  # an empty channel alone empties no slice
    a = Predictor(net, SPEC, torch.device("cpu"), InferenceOptions(precision="32")).predict_logits(image)
    b = Predictor(net, SPEC, torch.device("cpu"), InferenceOptions(precision="32", skip_empty=False)).predict_logits(image)
    assert torch.equal(a, b)


def test_read_ahead_keeps_the_order_and_each_item_its_own_error():
    def read(i):
        if i == 2:
            raise ValueError("case 2 is broken")
        return i * 10

    results = []
    for item, future in zip(range(5), read_ahead(read, list(range(5)))):
        try:
            results.append((item, future.result()))
        except ValueError as exc:
            results.append((item, str(exc)))
    assert results == [(0, 0), (1, 10), (2, "case 2 is broken"), (3, 30), (4, 40)]
    assert list(read_ahead(read, [])) == []


def test_compile_is_refused_in_one_line_without_a_cpp_compiler(monkeypatch, tmp_path, caplog):
    import shutil

    from pdeseg.cli import main

    monkeypatch.setattr(shutil, "which", lambda name: None)
    net = build_model("unet", in_channels=4, out_channels=4, features=[8, 16, 32, 64, 128])
    with pytest.raises(DeviceError, match="--compile: torch.compile on the CPU writes C\\+\\+ kernels"):
        Predictor(net, SPEC, torch.device("cpu"), InferenceOptions(precision="32", compile=True))
    from pdeseg.checkpoint import plain_state_dict, save_checkpoint

    save_checkpoint({"model": {"name": "unet", "kwargs": {"in_channels": 4, "out_channels": 4, "features": [8, 16, 32, 64, 128]}},
                     "preprocessing": SPEC.model_dump(mode="json"), "state_dict": plain_state_dict(net)}, tmp_path / "m.pt")
    code = main(["predict", "--checkpoint", str(tmp_path / "m.pt"), "--input", str(tmp_path), "--output",
                 str(tmp_path / "out"), "--compile", "--device", "cpu"])
    assert code == 2 and "needs a C++ compiler" in caplog.text and "Traceback" not in caplog.text


@pytest.mark.slow
def test_compiled_and_eager_prediction_agree():
    """torch.compile (Inductor C++ kernels here) against eager: logits within 1e-4."""
    from pdeseg.runtime import check_compile

    try:
        check_compile(torch.device("cpu"))
    except DeviceError as exc:
        pytest.skip(str(exc))
    torch.manual_seed(0)
    net = build_model("unet", in_channels=4, out_channels=4, features=[8, 16, 32, 64, 128]).eval()
    image = _volume()[..., :6]
    image[..., :3] = np.random.default_rng(2).normal(size=(4, 48, 40, 3))
    eager = Predictor(net, SPEC, torch.device("cpu"), InferenceOptions(precision="32", batch_size=6))
    compiled = Predictor(net, SPEC, torch.device("cpu"), InferenceOptions(precision="32", batch_size=6, compile=True))
    a, b = eager.predict_logits(image), compiled.predict_logits(image)
    assert compiled.compile_seconds is not None and compiled.compile_seconds > 0
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_all_zero_windows_are_not_run_and_every_nonzero_voxel_keeps_its_logits():
    """A 3D patch model's sliding window: windows of all-zero input add background logits; a
    voxel with a non-zero input lies only in windows that run, so its logits are the full
    sliding window's (the foreground here touches the volume's border)."""
    torch.manual_seed(0)
    spec = TaskSpec(format="msd", modalities=["MRI"], normalization="zscore", mode="patches", spatial_dims=3,
                    spatial_size=[16, 16, 16], num_classes=3, class_names=["background", "a", "b"])
    net = build_model("unet3d", spatial_dims=3, in_channels=1, out_channels=3, features=[4, 8, 8, 8]).eval()
    image = np.zeros((1, 40, 36, 32), np.float32)
    image[0, :14, :20, 5:21] = np.random.default_rng(3).normal(size=(14, 20, 16))
    calls = []
    real = net.forward
    net.forward = lambda x: calls.append(x.shape[0]) or real(x)
    new = Predictor(net, spec, torch.device("cpu"), InferenceOptions(precision="32", batch_size=4))
    a = new.predict_logits(image)
    run_new = sum(calls)
    calls.clear()
    b = Predictor(net, spec, torch.device("cpu"), InferenceOptions(precision="32", batch_size=4, skip_empty=False)).predict_logits(image)
    assert run_new < sum(calls)  # fewer windows went through the network
    inside = torch.from_numpy(image[0] != 0)
    assert torch.allclose(a[:, inside], b[:, inside], atol=1e-5)
    far = (slice(None), slice(30, None), slice(28, None), slice(None))  # a corner no window with input reaches
    assert (a[far].argmax(0) == 0).all()
