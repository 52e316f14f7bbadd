"""Whole-case prediction with the preprocessing a model was trained with: the
:class:`Predictor` engine (folders of cases are segmented and written by
:mod:`pdeseg.inference.folder`, ensembles are made in :mod:`pdeseg.inference.ensemble`, the
ONNX Runtime backend chosen in :mod:`pdeseg.inference.backend`).

Needs only the checkpoint (model name, kwargs, weights, preprocessing spec), the reader and
the preprocessing; no training code. How a case is segmented follows the spec's mode:

* ``slices``: slice by slice along the last axis, in batches (resized as in training when
  the spec says so); with the spec's ``tile_inference``, a slice larger than the training
  size is segmented by Gaussian-weighted overlapping windows of that size, one slice at a
  time, at its own resolution (large microscopy images);
* ``patches``: MONAI sliding-window inference with the training patch size, Gaussian-weighted
  overlapping windows (``overlap``), stitched on the compute device or on the CPU
  (``stitch``);
* ``whole``: the whole case in one forward pass.

With the spec's ``crop_nonzero`` (the model was trained on cases cropped to their non-zero
box, :mod:`pdeseg.data.pipeline.preprocess`) a case is cropped the same way before the network
and its classes (and probabilities, cells) are pasted back into the input's grid, background
outside the box; ``options.crop`` can turn that off (or on) for one call.

Test-time augmentation (``tta``) wraps the forward pass itself, so it works the same in the
three modes: each batch (of slices, of windows, or the whole case) is segmented as is and
mirrored along every combination of its spatial axes (4 passes for 2D slices, 8 for 3D), the
outputs are mirrored back, and their class *probabilities* are averaged. Probabilities, not
logits: the average of probabilities is the usual ensemble (each pass counts by its stated
confidence, on a common scale), whereas an average of logits is a geometric mean whose
result one over-confident pass can dominate. The mean is handed on as logits again (log p
for softmax, log(p / (1 - p)) for a sigmoid head), so that every caller (argmax, losses,
stitching) keeps receiving logits. Averaging over the whole group of mirrorings makes the
result exactly mirror-equivariant, which identity plus one flip per axis would not.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pdeseg.checkpoint import checkpoint_config, load_checkpoint, model_from_checkpoint, preprocessing_spec
from pdeseg.config import ExperimentConfig, TaskSpec
from pdeseg.data.case import LoadedCase
from pdeseg.data.formats import DataFormat, get_format
from pdeseg.data.pipeline.preprocess import Box, Preprocessing
from pdeseg.errors import CheckpointError, ConfigError, DataError
from pdeseg.data.pipeline.representations import Representation
from pdeseg.inference.backend import is_torch, on_backend
from pdeseg.inference.decode import Segmentation, decode
from pdeseg.inference.decode import cells as decode_cells
from pdeseg.inference.ensemble import EnsembleModel, ensemble_members, object_diameter, postprocess_rules
from pdeseg.inference.options import InferenceOptions
from pdeseg.nn.output import OutputHead, background_logits, head_of, mean_output
from pdeseg.nn.postprocess import PostProcessing
from pdeseg.progress import counter, track
from pdeseg.runtime import autocast, compile_model, resolve_device

log = logging.getLogger(__name__)

#: ``stitch="auto"`` stitches on the GPU only when the stitching buffers take at most this
#: share of its free memory (the rest is left for the windows' forward passes).
AUTO_STITCH_SHARE = 0.8


def window_count(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> int:
    """Windows MONAI's sliding-window inference visits for one image (its rule: a step of
    ``int(roi * (1 - overlap))`` voxels, at least 1, the last window flush with the end; one
    window along an axis no longer than the window)."""
    n = 1
    for size, roi in zip(image_size, roi_size):
        if size <= roi:
            continue
        step = max(int(roi * (1 - overlap)), 1)
        n *= math.ceil((size - roi) / step) + 1
    return n


def stitch_bytes(spatial_shape: Sequence[int], out_channels: int, in_channels: int) -> int:
    """Bytes that stitching a case on a device holds there: the float32 output
    (``out_channels``), its weight map (1 channel) and the input (``in_channels``)."""
    return (out_channels + 1 + in_channels) * math.prod(int(s) for s in spatial_shape) * 4


def _with_crop(spec: TaskSpec, options: InferenceOptions) -> TaskSpec:
    """``spec`` with the crop this call asks for (``options.crop``), else as trained or as its
    format's rule says."""
    crop = options.crop if options.crop is not None else (spec.crop_nonzero or get_format(spec.format).crop_at_inference)
    return spec if crop == spec.crop_nonzero else spec.model_copy(update={"crop_nonzero": crop})


def flip_sets(spatial_dims: int) -> list[tuple[int, ...]]:
    """Every combination of the spatial axes of a ``(B, C, *spatial)`` batch (``2 ** spatial_dims``
    sets, the empty one first): the mirrorings that test-time augmentation averages over."""
    axes = range(2, 2 + spatial_dims)
    return [dims for r in range(spatial_dims + 1) for dims in itertools.combinations(axes, r)]


class Predictor:
    """A model with the preprocessing and sampling it was trained with.

    Args:
        model: a network returning logits ``(B, K, *spatial)``.
        spec: its preprocessing and sampling spec.
        device: where to run (``torch.device``; ``options.device`` is what
            :meth:`from_checkpoint` resolves it from).
        options: precision, batch size, window overlap, test-time augmentation, stitching
            and post-processing (:class:`~pdeseg.inference.options.InferenceOptions`, checked
            when made). Stitching: ``device`` adds the windows' outputs up on the compute
            device (fastest); ``cpu`` in main memory (for volumes whose output does not fit
            on the GPU); ``auto`` on the compute device when :func:`stitch_bytes` is at most
            :data:`AUTO_STITCH_SHARE` of its free memory, else the CPU. On a CPU device
            everything is on the CPU.
        name: for messages.

    Attributes:
        config: the validated config the checkpoint was trained with (``None`` for a
            predictor made from a bare model, or a checkpoint that carries none).
        postprocessing: the rules applied to whole cases (off unless made from a checkpoint
            whose config has some and ``options.postprocess`` is on).
    """

    def __init__(self, model: nn.Module, spec: TaskSpec, device: torch.device,
                 options: InferenceOptions | None = None, name: str = "model"):
        self.options = options or InferenceOptions()
        self.trained_spec = spec  # as the checkpoint states it (spec: with this call's crop)
        spec = _with_crop(spec, self.options)
        self.model, self.spec, self.device, self.name = model, spec, device, name
        self.preprocessing = Preprocessing.of(spec)  # the cache's, crop included (options.crop: this call's)
        self._boxes: dict[int, tuple[np.ndarray, Box]] = {}  # id(raw image) -> (image, its crop box), see preprocess
        self._boxes_lock = threading.Lock()
        self.network = compile_model(model, device) if self.options.compile else model  # what runs the batches
        self.compile_seconds: float | None = None  # the first (compiling) call, with options.compile
        self.channels_last = spec.spatial_dims == 2
        self.format: DataFormat = get_format(spec.format)
        self.head: OutputHead = head_of(spec)
        self.representation = Representation.of(spec, self.format.object_metrics)  # cell models: how output becomes cells
        self.postprocessing = PostProcessing()  # off; from_checkpoint takes the checkpoint's
        self.config: ExperimentConfig | None = None
        self.object_diameter: float | None = None  # cell models: training object size in px (checkpoint's)
        self.last_diameter: float | None = None  # the object size used for the last segmented case (px)

    precision = property(lambda self: self.options.precision)
    batch_size = property(lambda self: self.options.batch_size)
    overlap = property(lambda self: self.options.overlap)
    tta = property(lambda self: self.options.tta)
    stitch = property(lambda self: self.options.stitch)

    #: Options that change how the model itself is loaded or compiled: :meth:`with_options` refuses them.
    RELOAD_OPTIONS = ("device", "backend", "compile")

    def with_options(self, **changes) -> Predictor:
        """A predictor sharing this one's model (weights, device, backend) with ``changes`` made
        to its :class:`~pdeseg.inference.options.InferenceOptions` (precision, batch size,
        overlap, tta, stitching, post-processing, skip_empty, diameter, crop); this one is left
        as it is.

        Raises:
            ConfigError: a bad value, or a change of ``device``, ``backend`` or ``compile`` (they
                need the model loaded again: :meth:`from_checkpoints` with those options).
        """
        options = self.options.replace(**changes)
        reload = [k for k in self.RELOAD_OPTIONS if getattr(options, k) != getattr(self.options, k)]
        if reload:
            raise ConfigError(f"with_options cannot change {', '.join(reload)}: load the model again with them "
                              "(Predictor.from_checkpoints(checkpoint, options))")
        other = copy.copy(self)
        other.options = options
        other.spec = _with_crop(self.trained_spec, options)
        other.preprocessing = Preprocessing.of(other.spec)
        other._boxes, other._boxes_lock = {}, threading.Lock()
        if options.postprocess != self.options.postprocess:
            other.postprocessing = PostProcessing()
            other._take_config(self.config)
        return other

    def _take_config(self, config: ExperimentConfig | None) -> Predictor:
        """Keep the checkpoint's validated config, and its post-processing when asked for."""
        self.config = config
        if self.options.postprocess and config is not None:
            self.postprocessing = PostProcessing.from_config(config.postprocess.model_dump())
        return self

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, options: InferenceOptions | None = None) -> Predictor:
        """Load a checkpoint (model, weights, spec and validated config) onto ``options.device``.

        Raises:
            CheckpointError: unreadable, or not a usable pdeseg checkpoint (its config included).
            DeviceError: ``options.device`` is not available.
        """
        options = options or InferenceOptions()
        path = Path(checkpoint)
        ckpt = load_checkpoint(path)
        spec, config = preprocessing_spec(ckpt, path), checkpoint_config(ckpt, path)
        dev = resolve_device(options.device)
        model = on_backend(model_from_checkpoint(ckpt, where=path).to(dev), spec, options, dev)
        if spec.spatial_dims == 2 and is_torch(model):
            model = model.to(memory_format=torch.channels_last)
        predictor = cls(model, spec, dev, options, ckpt["model"]["name"])._take_config(config)
        predictor.object_diameter = object_diameter(ckpt, path)
        return predictor

    @classmethod
    def from_checkpoints(cls, checkpoints: Sequence[str | Path] | str | Path,
                         options: InferenceOptions | None = None) -> Predictor:
        """One checkpoint, or an ensemble of several (:class:`EnsembleModel`: their class
        probabilities averaged). A folder stands for every ``best.pt`` below it (the folds of
        ``pdeseg train --folds K``, or the seeds of a comparison). With ``options.postprocess``
        the members' configs must name the same post-processing.

        Raises:
            CheckpointError: a folder without ``best.pt``, or checkpoints whose preprocessing,
                classes, output or (with ``postprocess``) post-processing rules differ (the
                message names the field and both files).
        """
        options = options or InferenceOptions()
        paths = ensemble_members(checkpoints)
        if len(paths) == 1:
            return cls.from_checkpoint(paths[0], options)
        dev = resolve_device(options.device)
        ckpts = [load_checkpoint(p) for p in paths]
        specs = [preprocessing_spec(c, p) for c, p in zip(ckpts, paths)]
        configs = [checkpoint_config(c, p) for c, p in zip(ckpts, paths)]
        first = specs[0].model_dump()
        for spec, path in zip(specs[1:], paths[1:]):
            differs = [k for k, v in spec.model_dump().items() if first.get(k) != v]
            if differs:
                raise CheckpointError(f"{path}: its {differs[0]} ({spec.model_dump()[differs[0]]!r}) differs from "
                                      f"{paths[0]}'s ({first[differs[0]]!r}); an ensemble needs one preprocessing and output")
        if options.postprocess:  # the rules change the output as much as the preprocessing does
            rules = [postprocess_rules(c) for c in configs]
            for rule, path in zip(rules[1:], paths[1:]):
                differs = sorted(k for k in {*rules[0], *rule} if rules[0].get(k) != rule.get(k))
                if differs:
                    raise CheckpointError(f"{path}: its postprocess.{differs[0]} ({rule.get(differs[0])!r}) differs from "
                                          f"{paths[0]}'s ({rules[0].get(differs[0])!r}); an ensemble needs one "
                                          "post-processing: pass --no-postprocess, or use members trained with the same rules")
        members = [on_backend(model_from_checkpoint(c, where=p).to(dev), specs[0], options, dev) for c, p in zip(ckpts, paths)]
        if specs[0].spatial_dims == 2 and all(is_torch(m) for m in members):
            members = [m.to(memory_format=torch.channels_last) for m in members]
        names = sorted({c["model"]["name"] for c in ckpts})
        predictor = cls(EnsembleModel(members, head_of(specs[0])), specs[0], dev, options,
                        f"ensemble of {len(members)} ({', '.join(names)})")
        predictor.object_diameter = object_diameter(ckpts[0], paths[0])
        return predictor._take_config(configs[0])

    @property
    def modalities(self) -> list[str]:
        return list(self.spec.modalities)

    def preprocess(self, loaded: LoadedCase) -> np.ndarray:
        """Normalised image ``(C, *grid)`` float32, exactly as the training cache holds it
        (same :class:`~pdeseg.data.pipeline.preprocess.Preprocessing`, cropped to the non-zero box
        with the spec's ``crop_nonzero``, resampled to the spec's ``target_spacing`` if it has one,
        float16 storage), so that predict and evaluate agree. The crop box is remembered for
        :meth:`segment` of the same ``loaded`` case."""
        prepared = self.preprocessing.prepare(loaded.image, loaded.spacing)
        if prepared.box is not None:
            with self._boxes_lock:  # read-ahead prepares the next case in another thread
                self._boxes[id(loaded.image)] = (loaded.image, prepared.box)
                while len(self._boxes) > 8:
                    self._boxes.pop(next(iter(self._boxes)))
        return prepared.image.astype(np.float16).astype(np.float32)

    def crop_box(self, loaded: LoadedCase, image: np.ndarray) -> Box | None:
        """The box of ``loaded`` that ``image`` (its normalised image) was cropped to, or None when
        it covers the whole case (no crop, a box as large as the case, or an image a caller
        prepared without the crop)."""
        if not self.preprocessing.crop_nonzero:
            return None
        with self._boxes_lock:
            kept = self._boxes.pop(id(loaded.image), None)
        box = kept[1] if kept is not None and kept[0] is loaded.image else self.preprocessing.box(loaded.image)
        shape = tuple(loaded.image.shape[1:])
        inner = tuple(b - a for a, b in box)
        if inner == shape or tuple(image.shape[1:]) != self.preprocessing.grid(inner, loaded.spacing)[0]:
            return None
        return box

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Raw model output for a batch ``(B, C, *spatial)`` (fp32 logits, same spatial size)."""
        self.model.eval()
        x = x.to(self.device)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        first = self.options.compile and self.compile_seconds is None
        t0 = time.perf_counter()
        with autocast(self.device, self.precision):
            out = self.network(x)
        if first:
            self.compile_seconds = time.perf_counter() - t0
            log.info("%s: compiled in %.1f s (torch.compile, first batch %s)", self.name, self.compile_seconds, tuple(x.shape))
        return out.float()

    @torch.no_grad()
    def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch ``(B, C, *spatial)`` (on the device, fp32): the model's own, or
        with ``tta`` the logits of the probabilities averaged over every mirroring of the
        spatial axes (see the module docstring)."""
        if not self.tta:
            return self.logits(x)
        outputs = []
        for dims in flip_sets(x.dim() - 2):
            out = self.logits(x.flip(dims) if dims else x)
            outputs.append((out.flip(dims) if dims else out, dims))
        return mean_output(outputs, self.head)

    @torch.no_grad()
    def predict_logits(self, image: np.ndarray, progress: bool = False) -> torch.Tensor:
        """Logits ``(K, *spatial)`` (CPU, fp32) for a normalised case ``(C, *spatial)``
        (with ``tta``: the logits of the mean probabilities, see :meth:`predict_batch`).

        Args:
            image: ``(C, *spatial)`` normalised float32.
            progress: show progress over slice batches or windows.

        Raises:
            DataError: the channel count differs from the model's modalities.
        """
        if image.shape[0] != len(self.modalities):
            raise DataError(f"{self.name} expects {len(self.modalities)} channels {self.modalities}, got {image.shape[0]}")
        if self.spec.mode == "slices":
            return self._by_slices(image, progress)
        x = torch.from_numpy(np.ascontiguousarray(image))[None].float()
        if self.spec.mode == "whole":
            return self.predict_batch(x)[0].cpu()
        return self._by_windows(x, progress)

    def stitch_device(self, spatial_shape: Sequence[int], in_channels: int) -> torch.device:
        """Where the windows of a case of this size are stitched under this predictor's ``stitch``."""
        cpu = torch.device("cpu")
        if self.device.type == "cpu" or self.stitch == "cpu":
            return cpu
        if self.stitch == "device" or self.device.type != "cuda":
            return self.device
        need = stitch_bytes(spatial_shape, self._logit_channels(), in_channels)
        free, _ = torch.cuda.mem_get_info(self.device)
        if need <= AUTO_STITCH_SHARE * free:
            return self.device
        log.info("stitching windows on the CPU: the output of a %s case needs %.1f GiB, %.1f GiB free on %s",
                 "x".join(map(str, spatial_shape)), need / 2**30, free / 2**30, self.device)
        return cpu

    def _by_windows(self, x: torch.Tensor, progress: bool) -> torch.Tensor:
        """MONAI sliding window over ``x (1, C, *spatial)``: windows run on the compute device,
        Gaussian-weighted outputs are added up on :meth:`stitch_device`. With
        ``options.skip_empty``, a window whose every input value is 0 is not run through the
        network: it adds :func:`~pdeseg.nn.output.background_logits`. Every voxel with a
        non-zero input lies only in windows that are run, so its logits are exactly those of
        the full sliding window; only voxels of all-zero input can differ (towards background)."""
        from monai.inferers import sliding_window_inference

        spatial, roi = tuple(x.shape[2:]), tuple(self.spec.spatial_size)
        where = self.stitch_device(spatial, x.shape[1])
        total = window_count(spatial, roi, self.overlap)
        with counter("sliding window", "window", total, enabled=progress) as bar:

            def run(windows: torch.Tensor) -> torch.Tensor:
                bar.update(windows.shape[0])
                if not self.options.skip_empty:
                    return self.predict_batch(windows)
                filled = windows.flatten(1).ne(0).any(1)
                if bool(filled.all()):
                    return self.predict_batch(windows)
                out = background_logits(self.head, self._logit_channels(), windows.shape[2:]).to(windows.device)
                out = out.expand(windows.shape[0], *out.shape).clone()
                if bool(filled.any()):
                    out[filled] = self.predict_batch(windows[filled]).to(out.device)
                return out

            out = sliding_window_inference(x.to(where), roi, self.batch_size, run, overlap=self.overlap, mode="gaussian",
                                           sw_device=self.device, device=where)
        return (out.as_tensor() if hasattr(out, "as_tensor") else out)[0].float().cpu()

    def slice_input(self, image: np.ndarray, z0: int, z1: int, axis: int = 2) -> torch.Tensor:
        """Slices ``z0 .. z1 - 1`` along ``axis`` of a normalised case ``(C, X, Y, Z)`` as a batch
        ``(B, C', A, B')``: ``C' = C`` or, with the spec's ``context_slices = n`` (2.5D),
        ``C (2n + 1)``, cut as in training (:func:`~pdeseg.data.pipeline.sampling.slice_stack`)."""
        return self._rows(np.moveaxis(image, 1 + axis, 0), np.arange(z0, z1))

    def _rows(self, front: np.ndarray, indices) -> torch.Tensor:
        """The batch of slices ``indices`` of a case whose slicing axis is first, ``(D, C, A, B')``,
        with the spec's 2.5D context (:func:`~pdeseg.data.pipeline.sampling.stack_rows`)."""
        from pdeseg.data.pipeline.sampling import stack_rows

        return torch.from_numpy(stack_rows(front, indices, self.spec.context_slices))

    def _by_slices(self, image: np.ndarray, progress: bool) -> torch.Tensor:
        """Logits ``(K, X, Y, Z)`` of a slice model: along the spec's one slice axis, or (triplanar,
        several axes) the logits of the mean of the class probabilities of the passes along each."""
        axes = list(self.spec.slice_axes)
        if len(axes) == 1:
            return self._along(image, axes[0], progress)
        return mean_output([(self._along(image, axis, progress)[None], ()) for axis in axes], self.head)[0]

    def _along(self, image: np.ndarray, axis: int, progress: bool) -> torch.Tensor:
        """Logits ``(K, X, Y, Z)`` of the slices along ``axis``; with ``options.skip_empty`` the
        slices whose every channel is 0 get :func:`~pdeseg.nn.output.background_logits` and
        are not segmented (a 2.5D slice's neighbours still come from the whole volume)."""
        depth = image.shape[1 + axis]
        front = np.ascontiguousarray(np.moveaxis(image, 1 + axis, 0))  # (depth, C, A, B'): batches are row reads
        size, resize = self.spec.spatial_size, self.spec.resize
        out = torch.empty((self._logit_channels(), *image.shape[1:]), dtype=torch.float32)
        view = out.movedim(1 + axis, 1)  # (K, depth, A, B'): writing into it writes into out
        h, w = view.shape[2:]
        wanted = np.arange(depth)
        if self.options.skip_empty:
            filled = front.reshape(depth, -1).any(axis=1)
            if not filled.all():
                view[:, torch.from_numpy(~filled)] = background_logits(self.head, self._logit_channels(), (h, w))[:, None]
                wanted = wanted[filled]
        if self.spec.tile_inference and size and (h > size[0] or w > size[1]):
            for z in track(wanted, "slices", "slice", enabled=progress):
                view[:, z] = self._by_windows(self._rows(front, [z]), progress=False)
            return out
        for start in track(range(0, len(wanted), self.batch_size), "slices", "batch", enabled=progress):
            batch = wanted[start:start + self.batch_size]
            x = self._rows(front, batch)
            if resize and size:
                x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
            logits = self.predict_batch(x)
            if resize and size:
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            view[:, torch.from_numpy(batch)] = logits.transpose(0, 1).cpu()
        return out

    def _logit_channels(self) -> int:
        return self.head.channels

    def predict_volume(self, image: np.ndarray, progress: bool = False) -> np.ndarray:
        """Segment a normalised case.

        Args:
            image: ``(C, *spatial)`` normalised float32.

        Returns:
            classes ``(*spatial)`` uint8, post-processed (use :meth:`predict_logits` for the scores).
        """
        return self.decode(self.predict_logits(image, progress), with_cells=False).classes

    def decode(self, logits: torch.Tensor, **kwargs) -> Segmentation:
        """:func:`~pdeseg.inference.decode.decode` of one case's ``logits (K + M, *spatial)`` with
        this predictor's head, post-processing, data-set regions and cell representation
        (``kwargs``: the output grid, crop box, what to return; see there)."""
        return decode(logits, self.head, regions=self.spec.regions, postprocessing=self.postprocessing,
                      representation=self.representation, **kwargs)

    def read(self, case) -> tuple[LoadedCase, np.ndarray]:
        """Read one case (images only) and preprocess it: ``(loaded case, normalised image
        (C, *grid))``. Raises DataError for unreadable or inconsistent files."""
        loaded = case.load(self.modalities, with_label=False)
        return loaded, self.preprocess(loaded)

    def predict_case(self, case, progress: bool = False, with_probabilities: bool = False,
                     prepared: tuple[LoadedCase, np.ndarray] | None = None) -> tuple[LoadedCase, Segmentation]:
        """Read (images only: labels are not needed, so a broken label file cannot stop a
        prediction), preprocess and segment one case (of the spec's data format, or any format
        whose cases give the model's channels, such as DICOM series).

        Args:
            with_probabilities: also return the class probabilities ``(K, *spatial)`` float32
                on the input's grid (before post-processing), e.g. for a fractional DICOM-SEG.
            prepared: ``case`` already read and preprocessed (:meth:`read`, e.g. in a
                background thread while the case before it was segmented).

        Returns:
            ``(loaded case without label, its Segmentation)``.

        Raises:
            DataError: a file of the case is unreadable or inconsistent, or its channels do
                not match the model's.
        """
        loaded, image = prepared if prepared is not None else self.read(case)
        return loaded, self.segment(loaded, image, progress, with_probabilities)

    def segment(self, loaded: LoadedCase, image: np.ndarray, progress: bool = False,
                with_probabilities: bool = False, with_cells: bool = True) -> Segmentation:
        """The segmentation of a read case on its own grid, from its normalised ``image``
        (:meth:`read`): the post-processed classes, with ``with_cells`` the cells of a cell
        model (:meth:`cells`), and with ``with_probabilities`` the class probabilities ``(K,
        *spatial)`` float32 before post-processing. A model trained at a ``target_spacing``
        has its logits resampled back to the input's grid first; a case cropped to its non-zero
        box (:meth:`crop_box`) has its results pasted back into the input's grid, background
        outside the box.

        A cell model segments at its training object size when the options' ``diameter`` (or
        its default, see :class:`~pdeseg.inference.options.InferenceOptions`) asks for it: the
        image is rescaled, and the logits mapped back before the cells are found
        (:mod:`pdeseg.inference.size`); :attr:`last_diameter` is the size used."""
        from pdeseg.inference import size

        diameter = self._diameter()
        self.last_diameter = None
        if diameter == "off":
            return self._segment_at(loaded, image, 1.0, progress, with_probabilities, with_cells)
        if diameter == "auto":
            first = self._segment_at(loaded, image, 1.0, progress, with_probabilities, True)
            estimate = size.median_diameter(first.instances)
            if estimate is None:
                log.warning("%s: no object found to estimate the object size from; segmented at the image's own scale "
                            "(give --diameter PX to rescale)", loaded.case.case_id)
                return first
            self.last_diameter = estimate
            factor = size.scale_for(self.object_diameter, estimate)
            log.info("%s: objects about %.1f px across (median of %d found), trained at %.1f px: %s",
                     loaded.case.case_id, estimate, size.equivalent_diameters(first.instances).size, self.object_diameter,
                     "kept" if max(factor, 1 / factor) < size.KEEP_WITHIN else f"segmented again at x{factor:.2f}")
            if max(factor, 1 / factor) < size.KEEP_WITHIN:
                return first
        else:
            self.last_diameter = float(diameter)
            factor = size.scale_for(self.object_diameter, float(diameter))
        return self._segment_at(loaded, image, factor, progress, with_probabilities, with_cells)

    def _diameter(self) -> float | str:
        """``off``, ``auto`` or a size in px, from the options and what the checkpoint states.

        Raises:
            ConfigError: a size (or auto) asked of a model that cannot use it.
        """
        asked = self.options.diameter
        if asked is None:
            return "auto" if self.representation is not None and self.object_diameter else "off"
        if asked == "off":
            return asked
        if self.representation is None or self.spec.spatial_dims != 2:
            raise ConfigError(f"diameter {asked}: {self.name} is not a 2D cell model; object size applies to cell models")
        if not self.object_diameter:
            raise ConfigError(f"diameter {asked}: {self.name}'s checkpoint does not state the object size it was trained at "
                              "(object_diameter; scripts/make_pretrained.py writes it); leave diameter out")
        return asked

    def _segment_at(self, loaded: LoadedCase, image: np.ndarray, factor: float, progress: bool,
                    with_probabilities: bool, with_cells: bool) -> Segmentation:
        """:meth:`segment` with the image's planes resized by ``factor`` for the network."""
        from pdeseg.inference.size import rescale_planes

        box = self.crop_box(loaded, image)
        logits = self.predict_logits(rescale_planes(image, factor) if factor != 1 else image, progress)
        full = tuple(loaded.image.shape[1:])
        shape = tuple(b - a for a, b in box) if box is not None else full
        min_size = None
        if factor != 1 and self.representation is not None:  # the decoder's smallest cell, in the input's pixels
            from pdeseg.data.pipeline.label_geometry import MIN_OBJECT_PIXELS

            base = MIN_OBJECT_PIXELS if self.representation.min_size is None else self.representation.min_size
            min_size = max(1, round(base / factor ** 2))
        # logits back to the input's grid (target_spacing, object size); post-processing and cells on the box,
        # then pasted back into the input's grid (outside it is background, which neither changes)
        return self.decode(logits, out_shape=shape, box=box, full_shape=full, with_probabilities=with_probabilities,
                           with_cells=with_cells, min_size=min_size)

    def cells(self, logits: torch.Tensor, classes: np.ndarray, min_size: int | None = None) -> np.ndarray | None:
        """The instances ``(X, Y, Z)`` int32 of a cell model's output, slice by slice, by its
        representation (:func:`pdeseg.inference.decode.cells`; ids restart at 1 in each
        slice); None for a model of a format without objects.

        Args:
            logits: ``(K + M, X, Y, Z)`` the whole case's output on the classes' grid.
            classes: ``(X, Y, Z)`` its post-processed class map.
            min_size: drop cells under this many pixels (None: the representation's rule).
        """
        return decode_cells(logits, classes, self.head, self.representation, min_size)

    def finish(self, classes: np.ndarray) -> np.ndarray:
        """A whole case's label map after the predictor's post-processing (unchanged when off)."""
        if not self.postprocessing.enabled:
            return classes
        return self.postprocessing.apply(classes, self.spec.num_classes, self.spec.regions)


def read_ahead(read, items: Sequence) -> Iterator[Future]:
    """Futures of ``read(item)`` in order, each started in a background thread while the
    caller works on the item before it (one item ahead: reading and decompressing the next
    case overlaps with segmenting this one; NumPy, zlib and PyTorch release the GIL).
    ``future.result()`` returns the value or raises what ``read`` raised."""
    if not items:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pdeseg-read") as pool:
        ahead = pool.submit(read, items[0])
        for item in items[1:]:
            current, ahead = ahead, pool.submit(read, item)
            yield current
        yield ahead


