"""Exporting a trained network for deployment: ONNX (for ONNX Runtime) or TorchScript.

``pdeseg export --checkpoint best.pt --format onnx|torchscript --out DIR`` writes

* ``DIR/model.onnx`` or ``DIR/model.pt`` (TorchScript): the network ``image (B, C, *S) ->
  logits (B, K, *S)`` in float32, with the batch and every spatial axis dynamic;
* ``DIR/pdeseg_export.json``: what a deployment needs to reproduce pdeseg's prediction: the
  task spec (channels in order, normalisation and its statistics, target spacing, sampling
  mode, slice axes and 2.5D context, patch size), the classes and regions, the output head
  (softmax / sigmoid / regions: how logits become labels, see :mod:`pdeseg.nn.output`), the
  sliding-window overlap, and the check the export passed.

Any spatial size: pdeseg's networks zero-pad their input to a multiple of their downsampling
factor and crop the logits back (:mod:`pdeseg.nn.padding`). A trace would freeze that
decision at the example's size, so the exported graph is :class:`Exportable`, which computes
the same padding from the input's (traced, hence dynamic) shape; the network inside then
never pads. For the PDE-UNet the cable block runs before the padding, as in the network.

Every export is checked before it is written: the exported graph (run by ONNX Runtime, or the
TorchScript module) must give PyTorch's logits to within :data:`TOLERANCE` at two odd sizes
other than the traced one; otherwise nothing is written and :class:`ExportError` says by how
much it differs.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pdeseg.checkpoint import load_checkpoint, model_from_checkpoint, preprocessing_spec
from pdeseg.data.files import write_atomically
from pdeseg.errors import CheckpointError, PdesegError, RunFolderError

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("onnx", "torchscript")
#: Files written in the output folder.
MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
MANIFEST = "pdeseg_export.json"
#: Largest accepted difference between exported and PyTorch logits, relative to max(1, max |logit|).
TOLERANCE = 1e-4
OPSET = 17


class ExportError(PdesegError, RuntimeError):
    """A network that cannot be exported faithfully, or a missing exporter."""


def padding_rule(model: nn.Module) -> tuple[nn.Module | None, nn.Module, tuple[int, ...] | int, int]:
    """``(prefix, body, size multiple, min_blocks)``: ``body`` pads its input as
    :func:`pdeseg.nn.padding.pad_to_multiple` ``(x, multiple, min_blocks)`` would; ``prefix``
    runs before the padding (the PDE-UNet's cable block) or is None."""
    from pdeseg.nn import unet as unet_module
    from pdeseg.nn.pde_unet import PDEUNet
    from pdeseg.nn.unet import UNet
    from pdeseg.nn.unet3d import MIN_BOTTLENECK_VOXELS, UNet3D

    if isinstance(model, PDEUNet):
        _, body, multiple, blocks = padding_rule(model.unet)
        return model.pde, body, multiple, blocks
    if isinstance(model, UNet):
        return None, model, unet_module.SIZE_MULTIPLE, 1
    if isinstance(model, UNet3D):
        return None, model, model.size_multiple(), MIN_BOTTLENECK_VOXELS
    if hasattr(model, "size_multiple"):  # the MONAI baselines (pdeseg.nn.baselines)
        from pdeseg.nn.baselines import MIN_BLOCKS

        return None, model, model.size_multiple(), MIN_BLOCKS
    raise ExportError(f"{type(model).__name__}: no known padding rule; pdeseg exports its registered networks")


def _ceil_div(a, b: int):
    return (a + b - 1) // b


class Exportable(nn.Module):
    """A network whose padding is computed from the input's shape with traceable arithmetic.

    For spatial size ``n_d`` and multiple ``m_d``: ``b_d = ceil(n_d / m_d)`` blocks, the last
    axis raised to ``ceil(min_blocks / prod(b_0..b_{D-2}))`` when fewer, padding
    ``t_d = b_d m_d - n_d`` split ``(t_d // 2, t_d - t_d // 2)``, and the logits cropped back,
    exactly as :func:`pdeseg.nn.padding.pad_to_multiple` and ``crop_to`` do.

    Shapes:
        ``(B, C, *S) -> (B, K, *S)``.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.prefix, self.body, multiple, self.min_blocks = padding_rule(model)
        self.dims = model.spatial_dims if hasattr(model, "spatial_dims") else 2
        self.multiples = (multiple,) * self.dims if isinstance(multiple, int) else tuple(multiple)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.prefix is not None:
            x = self.prefix(x)
        sizes = [x.shape[2 + d] for d in range(self.dims)]
        blocks = [_ceil_div(n, m) for n, m in zip(sizes, self.multiples)]
        if self.min_blocks > 1:
            others = blocks[0]
            for b in blocks[1:-1]:
                others = others * b
            need = _ceil_div(torch.as_tensor(self.min_blocks), torch.as_tensor(others)) if self.dims > 1 else self.min_blocks
            blocks[-1] = torch.maximum(torch.as_tensor(blocks[-1]), torch.as_tensor(need))
        totals = [b * m - n for b, m, n in zip(blocks, self.multiples, sizes)]
        before = [t // 2 for t in totals]
        flat = []
        for t, b in zip(reversed(totals), reversed(before)):
            flat += [b, t - b]
        if not torch.jit.is_tracing():  # eager: plain ints (a trace keeps the size arithmetic as graph ops)
            flat, before, sizes = [int(v) for v in flat], [int(v) for v in before], [int(v) for v in sizes]
        y = self.body(F.pad(x, flat))
        for d in range(self.dims):
            y = y.narrow(2 + d, before[d], sizes[d])
        return y


def _odd_sizes(spec_dims: int, spatial_size: list[int] | None) -> list[tuple[int, ...]]:
    """The traced size and two check sizes: odd, different on every axis, about a patch."""
    base = list(spatial_size or ([64] * spec_dims))[-spec_dims:]
    small = [max(9, int(s * 0.5)) | 1 for s in base]
    return [tuple(s + 2 for s in small), tuple(s + 12 + 2 * d for d, s in enumerate(small)), tuple(small)]


def _reference(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).float().numpy()


def _max_diff(out: np.ndarray, ref: np.ndarray) -> float:
    if out.shape != ref.shape:
        return math.inf
    return float(np.abs(out - ref).max() / max(1.0, float(np.abs(ref).max())))


def onnx_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """The ONNX graph of ``Exportable(model)`` (legacy TorchScript-based exporter, opset
    :data:`OPSET`), batch and spatial axes dynamic.

    Raises:
        ExportError: ``onnx`` is not installed.
    """
    import io
    import warnings

    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise ExportError("ONNX export needs the onnx package: pip install 'pdeseg[deploy]'") from None
    wrapped = Exportable(model).eval()
    axes = {0: "batch", **{2 + d: f"spatial_{d}" for d in range(example.dim() - 2)}}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about the size arithmetic, which the check below covers
        torch.onnx.export(wrapped, (example,), buf, dynamo=False, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": axes, "logits": axes}, opset_version=OPSET, do_constant_folding=True)
    return buf.getvalue()


def onnx_session(data: bytes | str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session of an exported graph.

    Raises:
        ExportError: ``onnxruntime`` is not installed.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("running ONNX models needs onnxruntime: pip install 'pdeseg[deploy]'") from None
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    source = data if isinstance(data, bytes) else str(data)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class OnnxRuntimeModel(nn.Module):
    """An ONNX Runtime session used where a PyTorch network is: ``(B, C, *S)`` float tensor in,
    float32 logits out (CPU)."""

    def __init__(self, session):
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


def torchscript_module(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` of ``Exportable(model)`` (sizes traced, so any spatial size runs)."""
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.jit.trace(Exportable(model).eval(), example, check_trace=False)


def export_model(model: nn.Module, fmt: str, in_channels: int, spatial_dims: int,
                 spatial_size: list[int] | None = None) -> tuple[Any, dict[str, Any]]:
    """Export and check a network.

    Returns:
        ``(bytes of the ONNX graph, or the TorchScript module; the check: sizes and max
        relative difference)``.

    Raises:
        ExportError: the exported logits differ from PyTorch's by more than :data:`TOLERANCE`
            at a check size, or an exporter is missing.
    """
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    model = model.eval().float()
    traced, *checks = _odd_sizes(spatial_dims, spatial_size)
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(1, in_channels, *traced, generator=gen)
    if fmt == "onnx":
        artefact = onnx_bytes(model, example)
        run = OnnxRuntimeModel(onnx_session(artefact))
    else:
        artefact = torchscript_module(model, example)
        run = artefact
    diffs = []
    for size in checks:
        x = torch.randn(2, in_channels, *size, generator=gen)
        with torch.no_grad():
            diffs.append(_max_diff(run(x).float().numpy(), _reference(model, x)))
    worst = max(diffs)
    if not worst <= TOLERANCE:
        raise ExportError(f"the exported {fmt} network's logits differ from PyTorch's by {worst:.3g} (relative) at sizes "
                          f"{checks}; not written")
    return artefact, {"traced_size": list(traced), "check_sizes": [list(s) for s in checks],
                      "max_relative_difference": worst, "tolerance": TOLERANCE}


def manifest(ckpt: dict[str, Any], spec, fmt: str, check: dict[str, Any], overlap: float) -> dict[str, Any]:
    """The JSON written beside the exported network (see the module docstring)."""
    from pdeseg import __version__

    plain = spec.model_dump(mode="json")
    return {
        "format": "pdeseg-export", "format_version": 1, "pdeseg_version": __version__, "torch_version": torch.__version__,
        "model_format": fmt, "file": MODEL_FILES[fmt], "opset": OPSET if fmt == "onnx" else None,
        "model": {"name": ckpt["model"]["name"], "kwargs": ckpt["model"]["kwargs"]},
        "input": {"name": "image", "layout": "(batch, channels, *spatial)", "dtype": "float32",
                  "channels": plain["modalities"] if plain["context_slices"] == 0 else
                  f"{len(plain['modalities'])} x {2 * plain['context_slices'] + 1} (2.5D: neighbours first-to-last, "
                  "modalities within each)", "spatial_dims": plain["spatial_dims"], "any_spatial_size": True},
        "output": {"name": "logits", "layout": "(batch, classes, *spatial)", "head": plain["output"],
                   "classes": plain["class_names"], "regions": plain["regions"]},
        "sampling": {"mode": plain["mode"], "patch_size": plain["spatial_size"], "overlap": overlap,
                     "window_weights": "gaussian" if plain["mode"] == "patches" else None, "slice_axes": plain["slice_axes"],
                     "context_slices": plain["context_slices"], "resize": plain["resize"]},
        "preprocessing": {k: plain[k] for k in ("modalities", "normalization", "ct_window", "ct_stats", "target_spacing")},
        "task": plain,
        "check": check,
    }


def export_checkpoint(checkpoint: str | Path, fmt: str, out_dir: str | Path, overwrite: bool = False,
                      overlap: float | None = None) -> list[Path]:
    """Export a checkpoint's network and write ``model.onnx`` / ``model.pt`` and
    ``pdeseg_export.json`` into ``out_dir``.

    Returns:
        the two files written.

    Args:
        checkpoint: a checkpoint file, or a run folder (its ``best.pt``).

    Raises:
        CheckpointError: not a usable pdeseg checkpoint, or a folder without ``best.pt``.
        ExportError: the export does not reproduce PyTorch's logits, or an exporter is missing.
        RunFolderError: the files exist (without ``overwrite``) or cannot be written.
    """
    from pdeseg.inference.options import WINDOW_OVERLAP

    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    path = Path(checkpoint).expanduser()
    if path.is_dir():  # a run folder, as predict takes it
        if not (path / "best.pt").is_file():
            raise CheckpointError(f"--checkpoint {path} is a folder without best.pt; give a run folder or a checkpoint file")
        path = path / "best.pt"
    ckpt = load_checkpoint(path)
    spec = preprocessing_spec(ckpt, path)
    out = Path(out_dir).expanduser()
    targets = [out / MODEL_FILES[fmt], out / MANIFEST]
    existing = [p for p in targets if p.exists()]
    if existing and not overwrite:
        raise RunFolderError(f"{existing[0]} already exists; pass --overwrite to replace it, or choose another --out")
    model = model_from_checkpoint(ckpt, where=path)
    in_channels = len(spec.modalities) * (2 * spec.context_slices + 1)
    artefact, check = export_model(model, fmt, in_channels, spec.spatial_dims, spec.spatial_size)
    log.info("%s: %s export reproduces PyTorch's logits to %.2g (relative) at sizes %s", path, fmt,
             check["max_relative_difference"], check["check_sizes"])
    info = manifest(ckpt, spec, fmt, check, WINDOW_OVERLAP if overlap is None else overlap)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if fmt == "onnx":
            write_atomically(targets[0], lambda tmp: tmp.write_bytes(artefact))
        else:
            write_atomically(targets[0], lambda tmp: artefact.save(str(tmp)))
        write_atomically(targets[1], lambda tmp: tmp.write_text(json.dumps(info, indent=1)))
    except OSError as exc:
        raise RunFolderError(f"--out {out}: cannot write ({exc.strerror or exc})") from None
    return targets


def load_exported(out_dir: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """An exported network (ONNX Runtime or TorchScript) as a module, with its manifest.

    Raises:
        CheckpointError: the folder holds no pdeseg export.
    """
    folder = Path(out_dir).expanduser()
    try:
        info = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder}: no readable {MANIFEST} ({exc})") from None
    file = folder / info["file"]
    if info["model_format"] == "onnx":
        return OnnxRuntimeModel(onnx_session(file)), info
    return torch.jit.load(str(file)).eval(), info
