"""The Python front door: load a trained model and segment arrays or files, build a
registered network by name, train from a config.

::

    import pdeseg

    seg = pdeseg.load("runs/brats/unet/best.pt")     # a checkpoint, or a folder of them (ensemble)
    labels = seg.predict(image)                      # image: raw intensities (C, X, Y, Z) or (C, X, Y)
    labels, probs = seg.predict(image, probabilities=True)
    labels = seg.predict("data/BraTS20_Training_001")  # a case folder (or file) the checkpoint's format reads

    net = pdeseg.create_model("unet", in_channels=4, out_channels=4)
    result = pdeseg.train("config.yaml", "runs/mine")

Arrays are channels first, in the order of :attr:`Segmenter.modalities`, with the raw
intensities a reader of the checkpoint's data format would give (the model's normalisation
is applied here, exactly as in training and ``pdeseg predict``). Importing this module
imports neither torch nor matplotlib; each function imports what it needs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pdeseg.errors import ConfigError, DataError, PdesegError

if TYPE_CHECKING:
    import torch

    from pdeseg.config import ExperimentConfig, TaskSpec
    from pdeseg.data.case import LoadedCase
    from pdeseg.inference.predict import Predictor
    from pdeseg.training.trainer import TrainResult

__all__ = ["Segmenter", "create_model", "export", "list_models", "load", "read_dicom", "train"]

PathLike = str | os.PathLike


def load(
    checkpoint: PathLike | Sequence[PathLike],
    *,
    device: str = "auto",
    precision: str = "auto",
    tta: bool = False,
    overlap: float = 0.5,
    postprocess: bool = True,
    backend: str = "torch",
    diameter: float | str | None = None,
) -> Segmenter:
    """Load a trained pdeseg model for prediction.

    Args:
        checkpoint: a shipped model's name (``"nuclei"``, ``"hippocampus"``; ``pdeseg models``
            lists them; a local path of the same name is written ``"./nuclei"``), a model
            folder (``weights.pt`` + ``card.yaml``), a pdeseg checkpoint (``best.pt`` or
            ``last.pt`` of a run folder); a list of them, or a folder (every ``best.pt`` below
            it, e.g. the folds of ``pdeseg train --folds``): an ensemble whose class
            probabilities are averaged.
        device: ``auto`` (the GPU when there is one, else the CPU), ``cpu``, ``cuda`` or
            ``cuda:N``.
        precision: ``auto`` (bf16 autocast on GPUs and bf16-capable CPUs, else fp32),
            ``32`` or ``bf16-mixed``.
        tta: test-time augmentation: average the class probabilities over every mirroring
            of the spatial axes (4 passes for a 2D model, 8 for a 3D one).
        overlap: patch models: share of a sliding window that overlaps its neighbour along
            each axis, ``0 <= overlap < 1``.
        postprocess: apply the post-processing rules of the checkpoint's config (its
            ``postprocess`` section) to every label map.
        backend: ``torch``, or ``onnxruntime`` (the network exported to ONNX and run by
            ONNX Runtime on the CPU, fp32).
        diameter: cell models: the objects' size in pixels, so that each image is rescaled
            to the object size the model was trained at and the cells mapped back; ``"auto"``
            estimates it in each image; ``"off"`` segments at the image's own scale. None:
            ``auto`` for a model that states its training object size (the shipped ones),
            else ``off`` (see :mod:`pdeseg.inference.size`).

    Returns:
        A :class:`Segmenter`.

    Raises:
        CheckpointError: unreadable, not a pdeseg checkpoint, a folder without ``best.pt``,
            ensemble members that do not agree (preprocessing, classes, output), or a shipped
            model whose weights are not installed.
        DeviceError: ``device`` is not available here.
        ConfigError: a bad ``overlap``, ``tta`` or ``diameter``, or an unknown model name.
    """
    from pdeseg.inference.options import InferenceOptions
    from pdeseg.inference.predict import Predictor

    from pdeseg.pretrained import resolve

    options = InferenceOptions(device=device, precision=precision, overlap=overlap, tta=tta, postprocess=postprocess,
                               backend=backend, diameter=diameter)
    named = [checkpoint] if isinstance(checkpoint, (str, os.PathLike)) else list(checkpoint)
    return Segmenter(Predictor.from_checkpoints([resolve(c) for c in named], options))


@dataclass
class _ArrayCase:
    """Stands for the reader's case object of an array given in memory."""

    case_id: str = "array"
    folder: Path | None = None

    def source_files(self, modalities: Sequence[str] = ()) -> list[Path]:
        return []


class Segmenter:
    """A trained model with the preprocessing it was trained with (see :func:`load`).

    Wraps a :class:`pdeseg.inference.predict.Predictor`: the same normalisation, slicing,
    sliding windows, test-time augmentation and post-processing as ``pdeseg predict``.

    Args:
        predictor: the predictor to use.
    """

    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    # --- what the model is -----------------------------------------------------------

    @property
    def classes(self) -> list[str]:
        """Class names; label ``k`` of a prediction is ``classes[k]``."""
        return list(self.predictor.spec.class_names)

    @property
    def modalities(self) -> list[str]:
        """The input channels, in the order an array's first axis must hold them."""
        return list(self.predictor.spec.modalities)

    @property
    def spatial_dims(self) -> int:
        """2: a slice model (takes a 2D image ``(C, X, Y)`` or a volume, segmented slice by
        slice); 3: a volume model (takes ``(C, X, Y, Z)``)."""
        return int(self.predictor.spec.spatial_dims)

    @property
    def model(self) -> torch.nn.Module:
        """The network (logits out), on :attr:`device`, in eval mode once used."""
        return self.predictor.model

    @property
    def spec(self) -> TaskSpec:
        """The preprocessing and sampling spec stored in the checkpoint."""
        return self.predictor.spec

    @property
    def device(self) -> torch.device:
        return self.predictor.device

    def __repr__(self) -> str:
        return (f"Segmenter({self.predictor.name}: {self.spatial_dims}D {self.spec.mode}, "
                f"modalities={self.modalities}, classes={self.classes}, device={self.device})")

    # --- reading ---------------------------------------------------------------------

    def read(self, path: PathLike) -> LoadedCase:
        """Read one case with the checkpoint's data format reader (images only).

        Args:
            path: a case folder (BraTS ``<case>/``, an LGG patient folder, ...), a folder
                holding exactly one case, or one file of a case (a BraTS modality file, an
                MSD ``<case>_0000.nii.gz``, a microscopy image); a DICOM series folder; or an
                OME-TIFF file / OME-Zarr folder (2D models: read whole, at the pyramid level
                of the model's training resolution; ``pdeseg predict`` segments large ones tile
                by tile). :func:`pdeseg.data.detect.route_input` decides which.

        Returns:
            The case: ``image`` ``(C, *spatial)`` float32 raw intensities in the order of
            :attr:`modalities` (3D for every format; 2D images as one slice ``(C, X, Y, 1)``)
            and its geometry (``spacing``, ``affine``, ``header``).

        Raises:
            DataError: nothing readable there, several cases, or an unreadable file.
        """
        path = Path(path).expanduser()
        if not path.exists():
            raise DataError(f"{path}: no such file or folder")
        from pdeseg.data.detect import route_input
        from pdeseg.data.formats import get_format

        fmt, modalities = self.predictor.format, self.modalities
        route = route_input(path, fmt.name)  # the one front door: OME, DICOM (any model's channels), or the model's own
        if route.format == "ome":
            return self._read_ome(path, route.kind)
        fmt = get_format(route.format)
        try:
            cases = fmt.find_cases(path, modalities, require_label=False)
        except PdesegError as exc:
            if not path.is_file():
                raise
            cases = [c for c in self._cases_beside(path, exc) if path.resolve() in
                     {f.resolve() for f in c.source_files(modalities)}]
            if not cases:
                raise DataError(f"{path}: not a file of a {fmt.name} case this model can read ({exc})") from None
        if len(cases) != 1:
            raise DataError(f"{path} holds {len(cases)} {fmt.name} cases; give one case folder or file "
                            f"(pdeseg.inference.folder.predict_folder segments a folder of cases)")
        return cases[0].load(modalities, with_label=False)

    def _read_ome(self, path: Path, kind: str) -> LoadedCase:
        """An OME image as a one-slice case ``(C, Y, X, 1)`` of the model's channels (by name, or
        a one-channel image's intensity), at the level of the model's training pixel size when
        it was trained resampled (else level 0), with that level's pixel size as spacing."""
        from pdeseg.data.readers.ome import find_ome_images, open_ome, plane_shape

        if kind != "image":
            n = len(find_ome_images(path))
            raise DataError(f"{path} holds {n} OME image(s); give one image (pdeseg predict segments a folder of them)")
        if self.spatial_dims != 2:
            raise DataError(f"{path}: OME images are read as 2D planes; this is a 3D model")
        ome = open_ome(path)
        target = self.spec.target_spacing
        level = ome.choose_level(None, tuple(target[:2]) if target is not None else None)
        plane_shape(ome, level)  # one 2D plane (a Z stack or time series is refused, named)
        pixels = np.asarray(ome.read(level, ome.channel_indices(self.modalities)), dtype=np.float32)
        size = ome.level(level).pixel_size
        spacing = (*(float(v) for v in size), 1.0) if size and len(size) == 2 else (1.0, 1.0, 1.0)
        loaded = self._as_loaded(np.ascontiguousarray(pixels[..., None]), spacing)
        loaded.case.case_id = path.name
        return loaded

    def _cases_beside(self, path: Path, error: Exception) -> list:
        """The cases of the folder holding ``path`` (a file the reader does not take alone)."""
        try:
            return self.predictor.format.find_cases(path.parent, self.modalities, require_label=False, skipped={})
        except PdesegError:
            raise DataError(f"{path}: not readable as a {self.predictor.format.name} case ({error})") from None

    # --- predicting ------------------------------------------------------------------

    def predict(self, x: np.ndarray | PathLike, *, spacing: Sequence[float] | None = None,
                probabilities: bool = False, cells: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Segment one image or volume.

        Args:
            x: raw intensities (not normalised), channels first in the order of
                :attr:`modalities`: ``(C, X, Y, Z)``, or for a slice model
                (``spatial_dims == 2``) also a single image ``(C, X, Y)``; any real dtype.
                Or the path of a case folder or file the checkpoint's data format reads
                (see :meth:`read`).
            spacing: voxel size in mm per spatial axis (``(sx, sy)`` for a 2D image), for an
                array. Needed only when the model was trained resampled to a
                ``target_spacing``; otherwise 1 per axis. Ignored for a path (the files say).
            probabilities: also return the class probabilities.
            cells: a cell model: return its cells (int32, 0 background, ids 1..N per slice,
                found by the model's instance representation, as ``pdeseg predict`` writes
                them) in place of the class map.

        Returns:
            labels: uint8 class map with the input's spatial shape (a path: the shape of
            the case as read, e.g. ``(X, Y, Z)``, or ``(X, Y, 1)`` for a 2D image), values
            ``0 .. len(classes) - 1``, post-processed as :func:`load` asked.
            With ``probabilities=True``, ``(labels, probs)``: ``probs`` float32
            ``(len(classes), *spatial)``, summing to 1 over the class axis (the model's
            output, before post-processing; with ``tta`` or an ensemble, the average).

        Raises:
            DataError: the wrong number of channels or dimensions, non-finite values, a
                bad ``spacing``, or (a path) nothing this format reads.
            ValueError: ``cells`` for a model whose data have no objects.
        """
        if cells and self.predictor.representation is None:
            raise ValueError(f"cells=True: this model segments {self.predictor.format.name} classes, which have no "
                             "objects; cell models are trained on a microscopy format")
        if isinstance(x, (str, os.PathLike)):
            loaded = self.read(x)
            return self._segment(loaded, probabilities, cells)
        image, spacing, squeeze = self._check_array(x, spacing)
        out = self._segment(self._as_loaded(image, spacing), probabilities, cells)
        if squeeze:
            out = tuple(a[..., 0] for a in out) if probabilities else out[..., 0]
        return out

    def _segment(self, loaded: LoadedCase, probabilities: bool, cells: bool = False):
        """Labels or cells (and probabilities) of a case on its own grid (:meth:`Predictor.segment`)."""
        p = self.predictor
        seg = p.segment(loaded, p.preprocess(loaded), with_probabilities=probabilities, with_cells=cells)
        first = seg.instances if cells else seg.classes
        return (first, seg.probabilities) if probabilities else first

    def _check_array(self, x: Any, spacing: Sequence[float] | None) -> tuple[np.ndarray, tuple[float, ...], bool]:
        """``(image (C, X, Y, Z) float32, spacing (3 values), whether a slice axis was added)``."""
        image = np.asarray(x)
        if image.dtype == object or not (np.issubdtype(image.dtype, np.number) or image.dtype == bool) \
                or np.iscomplexobj(image):
            raise DataError(f"expected a real-valued array of raw intensities, got dtype {image.dtype}")
        mods = self.modalities
        expect = ("(C, X, Y) for one 2D image or (C, X, Y, Z) for a volume (segmented slice by slice)"
                  if self.spatial_dims == 2 else "(C, X, Y, Z)")
        channels = f"C = {len(mods)} channels ({', '.join(mods)}, in that order)"
        if image.ndim not in ((3, 4) if self.spatial_dims == 2 else (4,)):
            raise DataError(f"this {self.spatial_dims}D model expects an array shaped {expect} with {channels}; "
                            f"got shape {tuple(image.shape)}")
        if image.shape[0] != len(mods):
            raise DataError(f"this model reads {channels}, channels first: {expect}; got an array with "
                            f"{image.shape[0]} channel(s), shape {tuple(image.shape)}")
        if min(image.shape[1:]) < 1:
            raise DataError(f"the array has an empty spatial axis: shape {tuple(image.shape)}")
        image = image.astype(np.float32, copy=False)
        if not np.isfinite(image).all():
            raise DataError("the array holds NaN or infinite values; give finite raw intensities")
        squeeze = image.ndim == 3
        if squeeze and len(self.spec.slice_axes) > 1:
            raise DataError(f"this model averages slices along axes {list(self.spec.slice_axes)} (triplanar); it needs a "
                            "volume (C, X, Y, Z), not a single 2D image")
        spatial = image.ndim - 1
        if spacing is None:
            if self.spec.target_spacing is not None:
                raise DataError(f"this model was trained resampled to {list(self.spec.target_spacing)} mm; pass the "
                                f"array's voxel size, spacing=({', '.join(['s'] * spatial)}) in mm")
            spacing = (1.0,) * spatial
        try:
            spacing = tuple(float(s) for s in spacing)
        except (TypeError, ValueError):
            raise DataError(f"spacing must be {spatial} numbers (mm per spatial axis), got {spacing!r}") from None
        if len(spacing) != spatial or not all(math.isfinite(s) and s > 0 for s in spacing):
            raise DataError(f"spacing must be {spatial} positive numbers (mm per spatial axis of an array shaped "
                            f"{tuple(image.shape)}), got {spacing!r}")
        if squeeze:
            image, spacing = image[..., None], (*spacing, 1.0)
        return np.ascontiguousarray(image), spacing, squeeze

    def _as_loaded(self, image: np.ndarray, spacing: tuple[float, ...]) -> LoadedCase:
        """An in-memory array as a reader's case, so that ``Predictor.preprocess`` treats it
        exactly as it treats a file."""
        import nibabel as nib

        from pdeseg.data.case import LoadedCase

        header = nib.Nifti1Header()
        header.set_data_shape(image.shape[1:])
        header.set_zooms(spacing)
        return LoadedCase(case=_ArrayCase(), image=image, label=None, affine=np.diag([*spacing, 1.0]), header=header,
                          convention="", modalities=tuple(self.modalities))


def read_dicom(path: PathLike, channels: Sequence[str] = ("image",), *, series: Any = None,
               gantry_tilt: str = "refuse") -> list[LoadedCase]:
    """Read the DICOM series below ``path`` as volumes (see :mod:`pdeseg.data.readers.dicom`
    for the geometry convention: voxel order (column, row, slice), nibabel RAS+ affine).

    Args:
        channels: one name: every image series is a case; several: per study, the series
            whose ``SeriesDescription`` matches each channel's ``series`` patterns (default
            rules for the BraTS channels ``flair``, ``t1``, ``t1ce``, ``t2``).
        series: ``{"channel": ["*pattern*", ...]}`` or ``["channel=pattern,pattern", ...]``.
        gantry_tilt: ``refuse``, or ``resample`` a tilted stack onto an orthogonal grid.

    Returns:
        one :class:`~pdeseg.data.case.LoadedCase` per case (image ``(C, X, Y, Z)`` float32).

    Raises:
        DataError: a series that is not one volume (the message names it and what is wrong).
    """
    from pdeseg.data.readers.dicom import find_dicom_cases

    return [case.load() for case in find_dicom_cases(path, list(channels), False, None, series, gantry_tilt)]


def export(checkpoint: PathLike, format: str, out: PathLike, *, overwrite: bool = False) -> list[Path]:
    """Export a checkpoint's network (``onnx`` or ``torchscript``) with ``pdeseg_export.json``
    into ``out`` (see :mod:`pdeseg.inference.export`); returns the two files."""
    from pdeseg.inference.export import export_checkpoint

    return export_checkpoint(checkpoint, format, out, overwrite=overwrite)


def list_models() -> list[str]:
    """Names of the registered models (``pdeseg models`` describes them), sorted."""
    from pdeseg.nn.models import MODELS

    return sorted(MODELS)


def create_model(name: str, **kwargs: Any) -> torch.nn.Module:
    """Build a registered network, untrained (like ``timm.create_model``).

    Args:
        name: a registered name (:func:`list_models`), e.g. ``unet``, ``pde_unet``,
            ``unet3d``, ``monai_dynunet``.
        **kwargs: its constructor's keyword arguments, e.g. ``spatial_dims`` (2 or 3),
            ``in_channels``, ``out_channels`` and the width (``features``, or
            ``feature_size`` / ``init_filters`` for the MONAI transformers / SegResNet).

    Returns:
        The network: ``(B, in_channels, *spatial) -> logits (B, out_channels, *spatial)``
        (``unet3d`` / ``pde3d_unet`` / ``monai_dynunet`` with deep supervision return a list
        in training mode).

    Raises:
        ConfigError: an unknown name (the message lists the registered ones), a
            ``spatial_dims`` the model does not support, a keyword its constructor does not
            take, or a value it rejects.
    """
    import inspect

    from pdeseg.nn.models import MODELS, build_model, check_model

    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(sorted(MODELS))}")
    entry = MODELS[name]
    default = inspect.signature(entry.build).parameters.get("spatial_dims")
    dims = kwargs.get("spatial_dims", default.default if default is not None and default.default is not
                      inspect.Parameter.empty else entry.dims[0])
    try:
        check_model(name, dims, kwargs)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for key in ("in_channels", "out_channels"):
        value = kwargs.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"model {name!r}: {key} must be a whole number >= 1, got {value!r}")
    try:
        return build_model(name, **kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:  # torch refuses impossible sizes with RuntimeError
        raise ConfigError(f"model {name!r} cannot be built with {kwargs}: {str(exc).splitlines()[0]}") from exc


def train(
    config: ExperimentConfig | Mapping[str, Any] | PathLike,
    out: PathLike | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult | dict[str, TrainResult]:
    """Train the model(s) of a config, as ``pdeseg train --config [--out]`` does, into the same
    run folders: ``<out>/<config name>/<model name>/``.

    Args:
        config: an :class:`~pdeseg.config.ExperimentConfig`, a dict of the same sections
            (``name``, ``data``, ``models``, ``loss``, ``train``, ...; see the README's
            config reference), or the path of a YAML config file. Relative paths in it are
            taken from the current directory.
        out: the output folder (the config's ``output_dir`` when None), as ``--out``.
        resume: continue the run(s) from ``last.pt``.
        progress: show progress bars (log lines when not on a terminal).

    Returns:
        The :class:`~pdeseg.training.trainer.TrainResult` (``run_dir``, ``best_score``,
        ``best_epoch``, ``history``); with several models, ``{model name: TrainResult}``.
        Each run folder holds ``best.pt`` (load it with :func:`load`), ``last.pt``,
        ``config.yaml``, ``split.json``, ``metrics.csv`` and ``curves.png``.

    Raises:
        ConfigError: an invalid config (unknown key, bad value, missing file), or two
            models of one name.
        RunFolderError: a run folder already holds a run (and not ``resume``), or cannot be used.
        DataError: the data cannot be read.
    """
    from pdeseg.config import ExperimentConfig, config_from_dict, load_config

    if isinstance(config, ExperimentConfig):
        cfg = config
    elif isinstance(config, Mapping):
        cfg = config_from_dict(dict(config))
    elif isinstance(config, (str, os.PathLike)):
        cfg = load_config(config)
    else:
        raise ConfigError(f"config must be an ExperimentConfig, a dict or a YAML path, got {type(config).__name__}")
    if out is not None:
        cfg = cfg.model_copy(update={"output_dir": str(Path(out).expanduser())})

    from pdeseg.training.run import train_models

    runs = train_models(cfg, resume=resume, progress=progress)
    results = {name: result for name, (_, result) in runs.items()}
    return next(iter(results.values())) if len(results) == 1 else results
