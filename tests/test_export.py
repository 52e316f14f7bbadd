"""Model export (ONNX, TorchScript) and the onnxruntime prediction backend: the exported
networks give PyTorch's logits at odd sizes they were not traced at, ``pdeseg export`` writes
a manifest a deployment can use, and ``predict --backend onnxruntime`` writes the same labels."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from pdeseg.inference.export import Exportable, OnnxRuntimeModel, export_model, load_exported, onnx_session

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

TINY = [4, 8, 16, 32, 64]
MODELS = [("unet", 2), ("pde_unet", 2), ("unet3d", 3), ("pde3d_unet", 3)]


def _model(name: str, dims: int, in_ch: int = 2, out: int = 3):
    from pdeseg.nn.models import build_model

    torch.manual_seed(0)
    model = build_model(name, spatial_dims=dims, in_channels=in_ch, out_channels=out, features=TINY)
    with torch.no_grad():  # move BatchNorm statistics away from their initial values
        model.train()(torch.randn(2, in_ch, *([20] * dims)) * 3 + 1)
    return model.eval()


@pytest.mark.parametrize("name, dims", MODELS)
def test_onnx_and_torchscript_logits_equal_pytorch_at_odd_sizes(name, dims):
    model = _model(name, dims)
    sizes = [(37, 23), (21, 45)] if dims == 2 else [(23, 17, 29), (13, 27, 19)]
    graph, check = export_model(model, "onnx", 2, dims, [32] * dims)
    scripted, _ = export_model(model, "torchscript", 2, dims, [32] * dims)
    assert all(tuple(s) not in [tuple(c) for c in (check["traced_size"], *check["check_sizes"])] for s in sizes)
    ort_model = OnnxRuntimeModel(onnx_session(graph))
    for size in sizes:
        x = torch.randn(2, 2, *size)
        with torch.no_grad():
            ref = model(x)
            assert torch.equal(Exportable(model)(x), ref)  # the traceable padding is the network's own
            for out in (ort_model(x), scripted(x)):
                assert out.shape == ref.shape
                assert float((out - ref).abs().max()) < 1e-4


def _checkpoint(path, name="unet", dims=2):
    from pdeseg.checkpoint import plain_state_dict, save_checkpoint
    from pdeseg.config import TaskSpec

    model = _model(name, dims, in_ch=4, out=4)
    spec = TaskSpec(format="brats", modalities=["flair", "t1", "t1ce", "t2"], normalization="zscore", mode="slices",
                    spatial_dims=2, num_classes=4, class_names=["background", "NCR", "ED", "ET"],
                    regions={"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]})
    kwargs = {"spatial_dims": dims, "in_channels": 4, "out_channels": 4, "features": TINY}
    save_checkpoint({"model": {"name": name, "kwargs": kwargs}, "preprocessing": spec.model_dump(mode="json"),
                     "state_dict": plain_state_dict(model)}, path)
    return path


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_command_writes_the_network_and_what_prediction_needs(tmp_path, fmt):
    from pdeseg.cli import main
    from pdeseg.inference.options import InferenceOptions
    from pdeseg.inference.predict import Predictor

    ckpt = _checkpoint(tmp_path / "best.pt", "pde_unet")
    out = tmp_path / "export"
    assert main(["export", "--checkpoint", str(ckpt), "--format", fmt, "--out", str(out)]) == 0
    info = json.loads((out / "pdeseg_export.json").read_text())
    assert info["file"] == ("model.onnx" if fmt == "onnx" else "model.pt") and (out / info["file"]).is_file()
    assert info["input"]["channels"] == ["flair", "t1", "t1ce", "t2"] and info["preprocessing"]["normalization"] == "zscore"
    assert info["output"]["classes"] == ["background", "NCR", "ED", "ET"] and info["output"]["head"] == "softmax"
    assert info["sampling"]["mode"] == "slices" and info["sampling"]["overlap"] == 0.5
    assert info["check"]["max_relative_difference"] <= 1e-4
    network, _ = load_exported(out)
    predictor = Predictor.from_checkpoint(ckpt, InferenceOptions(device="cpu", precision="32"))
    x = torch.randn(3, 4, 41, 27)
    with torch.no_grad():
        assert float((network(x) - predictor.logits(x)).abs().max()) < 1e-4
    assert main(["export", "--checkpoint", str(ckpt), "--format", fmt, "--out", str(out)]) == 2  # exists: refused


def test_predict_backend_onnxruntime_writes_the_torch_labels(tmp_path, phantom_root):
    from pdeseg.cli import main

    ckpt = _checkpoint(tmp_path / "best.pt")
    case = sorted(p for p in phantom_root.iterdir() if p.is_dir())[0]
    common = ["predict", "--checkpoint", str(ckpt), "--input", str(case), "--device", "cpu", "--precision", "32",
              "--no-progress"]
    assert main([*common, "--output", str(tmp_path / "torch"), "--backend", "torch"]) == 0
    assert main([*common, "--output", str(tmp_path / "ort"), "--backend", "onnxruntime"]) == 0
    (a,) = (tmp_path / "torch").glob("*.nii.gz")
    b = tmp_path / "ort" / a.name
    labels = np.asanyarray(nib.load(a).dataobj)
    assert len(np.unique(labels)) > 1 and np.array_equal(labels, np.asanyarray(nib.load(b).dataobj))
    assert main([*common, "--output", str(tmp_path / "x"), "--backend", "onnxruntime", "--compile"]) == 2
