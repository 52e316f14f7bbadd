"""Whole-case prediction with the preprocessing a model was trained with, and writing the
result in the input's own format and geometry (the data format decides how).

Needs only the checkpoint (model name, kwargs, weights, preprocessing spec), the reader and
the preprocessing; no training code. How a case is segmented follows the spec's mode:

* ``slices``: slice by slice along the last axis, in batches (resized as in training when
  the spec says so);
* ``patches``: MONAI sliding-window inference with the training patch size, Gaussian-weighted
  overlapping windows;
* ``whole``: the whole case in one forward pass.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pdeseg.checkpoint import load_checkpoint, model_from_checkpoint, preprocessing_spec
from pdeseg.config import ConfigError, PreprocessSpec
from pdeseg.data.case import LoadedCase
from pdeseg.data.formats import DataFormat, get_format
from pdeseg.data.preprocess import normalize
from pdeseg.errors import DataError
from pdeseg.nn.output import class_probabilities, predicted_classes
from pdeseg.progress import track
from pdeseg.runtime import autocast, resolve_device

log = logging.getLogger(__name__)

#: Overlap of neighbouring windows in sliding-window inference (patches mode).
WINDOW_OVERLAP = 0.5


class Predictor:
    """A model with the preprocessing and sampling it was trained with.

    Args:
        model: a network returning logits ``(B, K, *spatial)``.
        spec: its preprocessing and sampling spec.
        device: where to run (``torch.device``).
        precision: ``auto`` (bf16 autocast on GPUs and bf16-capable CPUs, else fp32), ``32``
            or ``bf16-mixed``.
        batch_size: slices (or windows) per forward pass.
        name: for messages.
    """

    def __init__(self, model: nn.Module, spec: PreprocessSpec, device: torch.device, precision: str = "auto",
                 batch_size: int = 16, name: str = "model"):
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        self.model, self.spec, self.device = model, spec, device
        self.precision, self.batch_size, self.name = precision, int(batch_size), name
        self.channels_last = spec.spatial_dims == 2
        self.format: DataFormat = get_format(spec.format)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, device: str = "auto", precision: str = "auto", batch_size: int = 16) -> Predictor:
        """Load a checkpoint (model, weights and spec) onto ``device``.

        Raises:
            CheckpointError: unreadable, or not a usable pdeseg checkpoint.
            DeviceError: ``device`` is not available.
        """
        path = Path(checkpoint)
        ckpt = load_checkpoint(path)
        spec = preprocessing_spec(ckpt, path)
        dev = resolve_device(device)
        model = model_from_checkpoint(ckpt).to(dev)
        if spec.spatial_dims == 2:
            model = model.to(memory_format=torch.channels_last)
        predictor = cls(model, spec, dev, precision, batch_size, ckpt["model"]["name"])
        predictor.checkpoint, predictor.config = ckpt, ckpt.get("config", {})
        return predictor

    @property
    def modalities(self) -> list[str]:
        return list(self.spec.modalities)

    def preprocess(self, loaded: LoadedCase) -> np.ndarray:
        """Normalised image ``(C, *spatial)`` float32, exactly as the training cache holds it
        (including its float16 storage), so that predict and evaluate agree."""
        image = normalize(loaded.image, self.spec.normalization, self.spec.ct_window)
        return image.astype(np.float16).astype(np.float32)

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Raw model output for a batch ``(B, C, *spatial)`` (fp32 logits, same spatial size)."""
        self.model.eval()
        x = x.to(self.device)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.precision):
            out = self.model(x)
        return out.float()

    @torch.no_grad()
    def predict_logits(self, image: np.ndarray, progress: bool = False) -> torch.Tensor:
        """Logits ``(K, *spatial)`` (CPU, fp32) for a normalised case ``(C, *spatial)``.

        Raises:
            DataError: the channel count differs from the model's modalities.
        """
        if image.shape[0] != len(self.modalities):
            raise DataError(f"{self.name} expects {len(self.modalities)} channels {self.modalities}, got {image.shape[0]}")
        if self.spec.mode == "slices":
            return self._by_slices(image, progress)
        x = torch.from_numpy(np.ascontiguousarray(image))[None].float()
        if self.spec.mode == "whole":
            return self.logits(x)[0].cpu()
        from monai.inferers import sliding_window_inference

        with autocast(self.device, self.precision):
            out = sliding_window_inference(x.to(self.device), tuple(self.spec.spatial_size), self.batch_size,
                                           lambda w: self.logits(w), overlap=WINDOW_OVERLAP, mode="gaussian", progress=progress)
        return (out.as_tensor() if hasattr(out, "as_tensor") else out)[0].float().cpu()

    def _by_slices(self, image: np.ndarray, progress: bool) -> torch.Tensor:
        _, h, w, depth = image.shape
        size, resize = self.spec.spatial_size, self.spec.resize
        out = torch.empty((self._channels(), h, w, depth), dtype=torch.float32)
        for z0 in track(range(0, depth, self.batch_size), "slices", "batch", enabled=progress):
            z1 = min(z0 + self.batch_size, depth)
            x = torch.from_numpy(np.ascontiguousarray(image[..., z0:z1].transpose(3, 0, 1, 2))).float()
            if resize and size:
                x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
            logits = self.logits(x)
            if resize and size:
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            out[..., z0:z1] = logits.permute(1, 2, 3, 0).cpu()
        return out

    def _channels(self) -> int:
        return 1 if self.spec.output == "sigmoid" else self.spec.num_classes

    def predict_volume(self, image: np.ndarray, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Segment a normalised case.

        Args:
            image: ``(C, *spatial)`` normalised float32.

        Returns:
            ``(classes (*spatial) uint8, probabilities (num_classes, *spatial) float16)``.
        """
        logits = self.predict_logits(image, progress)[None]
        probs = class_probabilities(logits)[0].numpy().astype(np.float16)
        return predicted_classes(logits)[0].numpy().astype(np.uint8), probs

    def predict_case(self, case, progress: bool = False) -> tuple[LoadedCase, np.ndarray]:
        """Read, preprocess and segment one case of the spec's data format;
        returns ``(loaded case, classes (*spatial))``."""
        loaded = case.load(self.modalities)
        classes, _ = self.predict_volume(self.preprocess(loaded), progress)
        return loaded, classes


def predict_folder(
    checkpoint: str | Path,
    input_dir: str | Path,
    output_dir: str | Path,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 16,
    progress: bool = True,
    **write_options,
) -> list[Path]:
    """Segment one case folder or a folder of cases, writing each in the input's own format
    (BraTS: ``<output>/<case>_seg.nii.gz`` with the input's affine, header and label values;
    LGG: ``<output>/<case>/<case>_<n>_mask.<png|tif>``).

    Args:
        write_options: the data format's output options (``convention`` for BraTS,
            ``mask_format`` for LGG); None values mean the default.

    Returns:
        the written files or case folders.
    """
    predictor = Predictor.from_checkpoint(checkpoint, device, precision, batch_size)
    fmt = predictor.format
    cases = fmt.find_cases(input_dir, predictor.modalities, require_label=False)
    out = []
    for case in track(cases, "predicting", "case", enabled=progress):
        loaded, classes = predictor.predict_case(case)
        path = fmt.write_prediction(classes, loaded, output_dir, **write_options)
        counts = np.bincount(classes.ravel(), minlength=fmt.num_classes)
        log.info("%s -> %s (%s)", case.case_id, path, ", ".join(f"{n}: {v}" for n, v in zip(fmt.class_names, counts)))
        out.append(path)
    return out
