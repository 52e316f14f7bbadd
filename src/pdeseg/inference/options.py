"""The options of one inference call, as one checked record.

Every caller (``predict``, ``evaluate``, ``crossval``, the studies, the Python front door)
builds one :class:`InferenceOptions`; it is checked once, when it is made, and handed on by
name, so no function below it takes or re-checks seven loose arguments.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from pdeseg.config import PRECISIONS, STITCH_MODES
from pdeseg.errors import ConfigError

#: Default overlap of neighbouring windows in sliding-window inference (patches mode).
WINDOW_OVERLAP = 0.5
#: What runs the network: ``auto`` (ONNX Runtime where it can run and the export is verified, else
#: PyTorch), PyTorch, or its ONNX export in ONNX Runtime (CPU, fp32; measured faster on CPUs by
#: ``benchmarks/bench_onnx.py`` and ``benchmarks/bench_predict.py``).
BACKENDS = ("auto", "torch", "onnxruntime")


@dataclass(frozen=True)
class InferenceOptions:
    """How a trained model segments cases.

    Attributes:
        device: ``auto`` (a GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``auto`` (bf16 autocast on GPUs and bf16-capable CPUs, else fp32),
            ``32``, ``bf16-mixed`` or ``16-mixed`` (CUDA only).
        batch_size: slices (or windows) per forward pass, >= 1.
        overlap: patches mode: share of a window that overlaps its neighbour along each
            axis, ``0 <= overlap < 1`` (0.5: every voxel away from the borders is seen by 2
            windows per axis, 8 in 3D).
        tta: average the class probabilities over every mirroring of the spatial axes
            (``2 ** spatial_dims`` forward passes per batch).
        stitch: patches mode: where the windows' outputs are added up: ``auto``, ``device``
            or ``cpu`` (see :class:`~pdeseg.inference.predict.Predictor`).
        postprocess: apply the post-processing rules of the checkpoint's config to whole cases.
        skip_empty: slice models: slices whose every input channel is exactly 0 (outside the
            body of a skull-stripped or cropped scan) are not segmented and come out as
            background; the other slices are segmented exactly as without it.
        compile: run the network through ``torch.compile`` (compiled at the first batch of
            each new shape; see :func:`pdeseg.runtime.compile_model`).
        backend: ``torch``, or ``onnxruntime``: the network is exported to ONNX when loaded
            (:mod:`pdeseg.inference.export`, checked against PyTorch) and run by ONNX Runtime on
            the CPU in fp32; everything around it (preprocessing, windows, TTA, stitching) is
            the same. ``auto`` (the default of ``pdeseg predict`` and ``evaluate``): the
            faster one measured: ``onnxruntime`` on a CPU where PyTorch would run fp32 (no bf16
            instructions, or ``precision: 32``), onnx and onnxruntime are installed, there is no
            ``compile``, and the export reproduces PyTorch's logits; else ``torch`` (on a CPU
            with bf16 instructions PyTorch's bf16 autocast was measured faster than ONNX
            Runtime's fp32), the reason logged once. The default here stays ``torch``, so that
            studies and validation score with PyTorch's exact logits.
        diameter: cell models: the objects' diameter in pixels, ``"auto"`` (estimated in each
            image) or ``"off"``; the image is rescaled so that its objects have the size the
            model was trained at, and the cells are mapped back
            (:mod:`pdeseg.inference.size`). None: ``auto`` when the checkpoint states its
            training object size (``object_diameter``, the shipped models), else ``off``.
        crop: crop each case to its non-zero box before the network and paste the result back
            (:mod:`pdeseg.data.pipeline.preprocess`); None: cropped if the model was trained
            cropped (the spec's ``crop_nonzero``) or its data format is zero outside the object
            (``DataFormat.crop_at_inference``: BraTS), else whole; False: the whole case;
            True: crop any model.

    Raises:
        ConfigError: (when made) a value outside the ranges above, naming the option.
    """

    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 16
    overlap: float = WINDOW_OVERLAP
    tta: bool = False
    stitch: str = "auto"
    postprocess: bool = True
    skip_empty: bool = True
    compile: bool = False
    backend: str = "torch"
    diameter: float | str | None = None
    crop: bool | None = None

    def __post_init__(self) -> None:
        b = self.batch_size
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1:
            raise ConfigError(f"batch size must be a whole number >= 1, got {b!r}")
        o = self.overlap
        if isinstance(o, bool) or not isinstance(o, (int, float, np.integer, np.floating)) or not math.isfinite(o) \
                or not 0 <= o < 1:
            raise ConfigError(f"overlap must be a number with 0 <= overlap < 1 (share of a window shared with its "
                              f"neighbour), got {o!r}")
        if self.crop is not None and not isinstance(self.crop, (bool, np.bool_)):
            raise ConfigError(f"crop must be true, false or None (as trained), got {self.crop!r}")
        for name in ("tta", "postprocess", "skip_empty", "compile"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.backend == "onnxruntime" and (self.compile or self.precision not in ("auto", "32")):
            raise ConfigError("the onnxruntime backend runs the exported network in fp32 as it is: it takes no --compile "
                              "and no --precision other than auto or 32")
        if self.stitch not in STITCH_MODES:
            raise ConfigError(f"stitch must be one of {', '.join(STITCH_MODES)}, got {self.stitch!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        d = self.diameter
        if isinstance(d, str) and d not in ("auto", "off"):
            try:
                d = float(d)
            except ValueError:
                d = self.diameter
        if d is not None and d not in ("auto", "off") and (
                isinstance(d, (bool, str)) or not isinstance(d, (int, float, np.integer, np.floating))
                or not math.isfinite(d) or d <= 0):
            raise ConfigError(f"diameter must be the objects' size in pixels (> 0), auto or off, got {self.diameter!r}")
        object.__setattr__(self, "diameter", float(d) if d is not None and d not in ("auto", "off") else d)
        object.__setattr__(self, "batch_size", int(b))
        object.__setattr__(self, "overlap", float(o))
        object.__setattr__(self, "tta", bool(self.tta))
        object.__setattr__(self, "postprocess", bool(self.postprocess))
        object.__setattr__(self, "skip_empty", bool(self.skip_empty))
        object.__setattr__(self, "compile", bool(self.compile))

    def replace(self, **changes) -> InferenceOptions:
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> dict[str, object]:
        """The options as a plain mapping (for summaries and logs)."""
        return dataclasses.asdict(self)
