"""``backend: auto`` (issue 36): ONNX Runtime where PyTorch would run fp32 on a CPU and the export
reproduces PyTorch's logits; PyTorch otherwise (bf16 autocast on CPUs with bf16 instructions,
measured faster), with the reason logged once."""

from __future__ import annotations

import logging

import pytest
import torch

from pdeseg.inference import backend as backend_module
from pdeseg.inference.options import InferenceOptions
from pdeseg.inference.backend import torch_reason
from pdeseg.inference.predict import Predictor

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture
def checkpoint(tmp_path):
    from test_export import _checkpoint

    return _checkpoint(tmp_path / "best.pt")


@pytest.fixture(autouse=True)
def _fresh_log_once(monkeypatch):
    monkeypatch.setattr(backend_module, "_LOGGED", set())


def _is_onnx(predictor: Predictor) -> bool:
    from pdeseg.inference.export import OnnxRuntimeModel

    return isinstance(predictor.model, OnnxRuntimeModel)


def test_auto_is_the_command_line_default_and_runs_the_verified_export_in_onnx_runtime(checkpoint):
    from pdeseg.cli import build_parser
    from pdeseg.cli.inference_options import _inference_options

    for command in ("predict", "evaluate"):
        args = build_parser().parse_args([command, "--checkpoint", str(checkpoint), "--input", "x", "--output", "y"]
                                         if command == "predict" else [command, "--checkpoint", str(checkpoint)])
        assert _inference_options(args).backend == "auto"
    auto = Predictor.from_checkpoint(checkpoint, InferenceOptions(device="cpu", precision="32", backend="auto"))
    plain = Predictor.from_checkpoint(checkpoint, InferenceOptions(device="cpu", precision="32", backend="torch"))
    assert _is_onnx(auto) and not _is_onnx(plain)
    x = torch.randn(2, 4, 37, 29)
    assert float((auto.logits(x) - plain.logits(x)).abs().max()) < 1e-4


@pytest.mark.parametrize("fast_bf16", [False, True])
def test_auto_takes_onnx_runtime_where_pytorch_would_run_fp32_and_pytorch_bf16_where_the_cpu_has_it(
        checkpoint, monkeypatch, fast_bf16):
    import pdeseg.runtime

    monkeypatch.setattr(pdeseg.runtime, "cpu_has_fast_bf16", lambda: fast_bf16)
    predictor = Predictor.from_checkpoint(checkpoint, InferenceOptions(device="cpu", backend="auto"))
    assert _is_onnx(predictor) is not fast_bf16
    why = torch_reason(InferenceOptions(backend="auto"), torch.device("cpu"))
    assert (why is None) is not fast_bf16 and (why is None or "bf16 instructions" in why)


@pytest.mark.parametrize("options, reason", [
    ({"precision": "bf16-mixed"}, "--precision bf16-mixed"),
    ({"compile": True}, "--compile"),
])
def test_auto_keeps_pytorch_where_onnx_runtime_cannot_do_what_was_asked(checkpoint, options, reason, caplog):
    with caplog.at_level(logging.INFO, logger="pdeseg.inference.backend"):
        for _ in range(2):
            predictor = Predictor.from_checkpoint(checkpoint, InferenceOptions(device="cpu", backend="auto", **options))
    assert not _is_onnx(predictor)
    said = [r.getMessage() for r in caplog.records if "backend auto" in r.getMessage()]
    assert len(said) == 1 and reason in said[0]  # once per process


def test_auto_keeps_pytorch_when_onnx_runtime_is_missing_or_the_export_differs(checkpoint, monkeypatch, caplog):
    import importlib.util

    from pdeseg.inference import export

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert "onnxruntime is not installed" in torch_reason(InferenceOptions(precision="32", backend="auto"),
                                                          torch.device("cpu"))
    monkeypatch.setattr(importlib.util, "find_spec", real)

    def differs(*args, **kwargs):
        raise export.ExportError("the exported onnx network's logits differ from PyTorch's by 0.3 (relative)")

    monkeypatch.setattr(export, "export_model", differs)
    with caplog.at_level(logging.INFO, logger="pdeseg.inference.backend"):
        predictor = Predictor.from_checkpoint(checkpoint, InferenceOptions(device="cpu", precision="32", backend="auto"))
    assert not _is_onnx(predictor)
    assert any("its ONNX export is not usable" in r.getMessage() and "differ" in r.getMessage() for r in caplog.records)
    with pytest.raises(export.ExportError):  # asked for by name, the fault is an error
        Predictor.from_checkpoint(checkpoint, InferenceOptions(device="cpu", backend="onnxruntime"))
