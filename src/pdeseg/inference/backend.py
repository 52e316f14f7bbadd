"""Which engine runs a loaded network: PyTorch itself, or its checked ONNX export in an ONNX
Runtime session (``InferenceOptions.backend``: ``torch``, ``onnxruntime`` or ``auto``).

:func:`on_backend` is what :meth:`pdeseg.inference.predict.Predictor.from_checkpoint` calls on
every model it loads; :func:`torch_reason` says why ``auto`` keeps PyTorch on a machine.
"""

from __future__ import annotations

import logging
import time

import torch
from torch import nn

from pdeseg.config import TaskSpec
from pdeseg.errors import ConfigError
from pdeseg.inference.options import InferenceOptions

log = logging.getLogger(__name__)


def _first_line(text: str) -> str:
    return str(text).strip().splitlines()[0] if str(text).strip() else ""


def on_backend(model: nn.Module, spec: TaskSpec, options: InferenceOptions, device: torch.device) -> nn.Module:
    """``model`` itself, or its checked ONNX export in an ONNX Runtime session (CPU only) that
    stands in for it: with ``options.backend == "onnxruntime"``, and with ``auto`` wherever
    that can run (:func:`torch_reason` gives none) and the export reproduces PyTorch's logits
    on probe inputs (:func:`~pdeseg.inference.export.export_model`); otherwise ``auto`` keeps
    PyTorch and says why, once per process.

    Raises:
        ConfigError: onnxruntime with a non-CPU device.
        ExportError: (onnxruntime) onnx / onnxruntime missing, or the export does not reproduce the logits.
    """
    if options.backend == "torch":
        return model
    from pdeseg.inference.export import ExportError

    if options.backend == "auto":
        why = torch_reason(options, device)
        if why is None:
            try:
                return _onnx_runtime(model, spec)
            except ExportError as exc:
                why = f"its ONNX export is not usable ({_first_line(str(exc))})"
        _log_once(f"backend auto: PyTorch, since {why}")
        return model
    if device.type != "cpu":
        raise ConfigError(f"the onnxruntime backend runs on the CPU; pass --device cpu (got {device})")
    return _onnx_runtime(model, spec)


def torch_reason(options: InferenceOptions, device: torch.device) -> str | None:
    """Why ``backend: auto`` keeps PyTorch for these options on ``device``, or None when ONNX
    Runtime runs the network: on a CPU where PyTorch would run fp32 (ONNX Runtime's fp32 was
    measured 1.39x faster there, ``benchmarks/bench_onnx.py``). Where ``precision: auto`` gives
    bf16 autocast (a CPU with bf16 instructions), PyTorch stays: its bf16 forward was measured
    1.4-1.5x faster than ONNX Runtime's fp32 (``benchmarks/bench_predict.py``, issue 36)."""
    import importlib.util

    from pdeseg.runtime import resolve_precision

    if device.type != "cpu":
        return f"the device is {device} (ONNX Runtime runs on the CPU here)"
    if options.compile:
        return "--compile asks for torch.compile"
    if options.precision not in ("auto", "32"):
        return f"--precision {options.precision} is a PyTorch autocast"
    if options.precision == "auto" and resolve_precision("auto", device) == "bf16-mixed":
        return ("this CPU has bf16 instructions, where PyTorch's bf16 autocast was measured faster than ONNX Runtime's "
                "fp32 (--backend onnxruntime or --precision 32 to run ONNX Runtime)")
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        return f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed (pip install 'pdeseg[deploy]')"
    return None


def _onnx_runtime(model: nn.Module, spec: TaskSpec) -> nn.Module:
    """The checked ONNX export of ``model`` in an ONNX Runtime session with torch's thread count."""
    from pdeseg.inference.export import OnnxRuntimeModel, export_model, onnx_session

    in_channels = len(spec.modalities) * (2 * spec.context_slices + 1)
    t0 = time.perf_counter()
    graph, check = export_model(model, "onnx", in_channels, spec.spatial_dims, spec.spatial_size)
    log.info("onnxruntime backend: exported %s in %.1f s, logits within %.2g of PyTorch's (relative) on probe inputs",
             type(model).__name__, time.perf_counter() - t0, check["max_relative_difference"])
    return OnnxRuntimeModel(onnx_session(graph, threads=torch.get_num_threads()))


_LOGGED: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _LOGGED:
        _LOGGED.add(message)
        log.info("%s", message)


def is_torch(model: nn.Module) -> bool:
    from pdeseg.inference.export import OnnxRuntimeModel

    return not isinstance(model, OnnxRuntimeModel)


