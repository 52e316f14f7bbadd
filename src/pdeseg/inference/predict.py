"""Whole-volume prediction, slice by slice; NIfTI written in the input's geometry, or one
mask image per slice for 2D data sets (LGG TIFF slices).

Needs only the checkpoint (model name, kwargs, weights, preprocessing), the reader and
the preprocessing; no training code.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pdeseg.data.brats import LoadedCase, classes_to_labels
from pdeseg.data.formats import get_format, write_slice_masks
from pdeseg.data.preprocess import brain_mask, normalize
from pdeseg.data.slices import pad_to_multiple, unpad
from pdeseg.nn.output import class_probabilities
from pdeseg.training.checkpoint import load_checkpoint, model_from_checkpoint
from pdeseg.training.runtime import autocast, resolve_device

log = logging.getLogger(__name__)


class Predictor:
    """A trained model with the preprocessing it was trained with.

    Args:
        checkpoint: path to a pdeseg checkpoint (``best.pt``).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        precision: ``auto`` (bf16 autocast on GPUs and bf16-capable CPUs, else fp32),
            ``32`` or ``bf16-mixed``.
        batch_size: slices per forward pass.
    """

    def __init__(self, checkpoint: str | Path, device: str = "auto", precision: str = "auto", batch_size: int = 16):
        self.path = Path(checkpoint)
        ckpt = load_checkpoint(self.path)
        self.device = resolve_device(device)
        self.model = model_from_checkpoint(ckpt).to(self.device).to(memory_format=torch.channels_last)
        self.prep = ckpt["preprocessing"]
        self.model_name = ckpt["model"]["name"]
        self.config = ckpt["config"]
        self.precision, self.batch_size = precision, batch_size
        self.format = get_format(self.prep.get("format", "brats"))

    @property
    def modalities(self) -> list[str]:
        return list(self.prep["modalities"])

    def preprocess(self, loaded: LoadedCase) -> np.ndarray:
        """Normalised image ``(C, X, Y, Z)`` float32, as the training cache holds it."""
        return normalize(loaded.image, brain_mask(loaded.image), self.prep["normalization"])

    @torch.no_grad()
    def predict_volume(self, image: np.ndarray, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Segment a normalised volume slice by slice along the last axis.

        Args:
            image: ``(C, X, Y, Z)`` normalised float32.

        Returns:
            ``(classes (X, Y, Z) uint8, probabilities (K, X, Y, Z) float16)``.
        """
        c, h, w, depth = image.shape
        if c != len(self.modalities):
            raise ValueError(f"model expects {len(self.modalities)} modalities {self.modalities}, got {c} channels")
        size, resize = self.prep["spatial_size"], self.prep["resize"]
        probs = np.zeros((self.prep["num_classes"], h, w, depth), dtype=np.float16)
        starts = range(0, depth, self.batch_size)
        for z0 in tqdm(starts, desc="slices", unit="batch", disable=not progress, leave=False):
            z1 = min(z0 + self.batch_size, depth)
            x = torch.from_numpy(np.ascontiguousarray(image[..., z0:z1].transpose(3, 0, 1, 2))).float().to(self.device)
            if resize and size:
                x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
            x, pads = pad_to_multiple(x, self.prep["divisor"])
            with autocast(self.device, self.precision):
                logits = self.model(x.contiguous(memory_format=torch.channels_last))
            logits = unpad(logits.float(), pads)
            if resize and size:
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            probs[..., z0:z1] = class_probabilities(logits).permute(1, 2, 3, 0).cpu().numpy().astype(np.float16)
        return probs.argmax(axis=0).astype(np.uint8), probs

    def predict_case(self, case, progress: bool = False) -> tuple[LoadedCase, np.ndarray]:
        """Read, preprocess and segment one case (of the checkpoint's data format);
        returns ``(loaded case, classes (X, Y, Z))``."""
        loaded = case.load(self.modalities)
        classes, _ = self.predict_volume(self.preprocess(loaded), progress)
        return loaded, classes


def write_segmentation(classes: np.ndarray, loaded: LoadedCase, path: str | Path, convention: str | None = None) -> Path:
    """Write contiguous classes as a BraTS label volume with the input's affine and header.

    Args:
        classes: ``(X, Y, Z)`` classes 0..3.
        loaded: the input case (geometry and default label convention).
        convention: ``brats2020`` (ET = 4) or ``brats2023`` (ET = 3); default: the input's.
    """
    labels = classes_to_labels(classes, convention or loaded.convention)
    header = loaded.header.copy()
    header.set_data_dtype(np.uint8)
    img = nib.Nifti1Image(labels, loaded.affine, header)
    img.header.set_slope_inter(1, 0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def predict_folder(
    checkpoint: str | Path,
    input_dir: str | Path,
    output_dir: str | Path,
    device: str = "auto",
    precision: str = "auto",
    convention: str | None = None,
    batch_size: int = 16,
    progress: bool = True,
    mask_format: str = "png",
) -> list[Path]:
    """Segment one case folder or a folder of case folders.

    Volumetric formats (BraTS) write ``<output>/<case>_seg.nii.gz``; slice formats (LGG)
    write ``<output>/<case>/<case>_<n>_mask.<mask_format>`` (png or tif, 0/255 for binary).
    Returns the written NIfTI files or case folders.
    """
    predictor = Predictor(checkpoint, device, precision, batch_size)
    fmt = predictor.format
    cases = fmt.find_cases(input_dir, predictor.modalities, require_label=False)
    out = []
    for case in tqdm(cases, desc="predicting", unit="case", disable=not progress):
        loaded, classes = predictor.predict_case(case)
        if fmt.volumetric:
            path = write_segmentation(classes, loaded, Path(output_dir) / f"{case.case_id}_seg.nii.gz", convention)
        else:
            path = write_slice_masks(classes, case.case_id, output_dir, getattr(case, "numbers", None), mask_format, fmt.num_classes)[0].parent
        counts = np.bincount(classes.ravel(), minlength=fmt.num_classes)
        log.info("%s -> %s (%s)", case.case_id, path, ", ".join(f"{n}: {v}" for n, v in zip(fmt.class_names, counts)))
        out.append(path)
    return out
