"""Data formats: one entry per kind of data set, the only place that knows how a set's
cases are found, what its classes and regions mean, how it is scored when a region is
empty, and how predictions are written back in the input's own format and geometry.

A format's cases all offer ``case_id``, ``folder``, ``source_files(modalities)`` and
``load(modalities, with_label=True) -> LoadedCase`` (image ``(C, *spatial)``, classes
``(*spatial)``), so the cache, the datasets, training, scoring and prediction are shared.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pdeseg.data.case import LoadedCase
from pdeseg.data.files import write_atomically
from pdeseg.data.outputs import png_marker, tiff_marker
from pdeseg.errors import ConfigError

#: ``read_options`` value for an option that takes any integer >= 1 (e.g. a boundary width).
POSITIVE_INT = "an integer >= 1"


@dataclass(frozen=True)
class DatasetInfo:
    """What a data set says about itself: its classes, regions and channels."""

    class_names: tuple[str, ...]
    regions: Mapping[str, tuple[int, ...]]
    modalities: tuple[str, ...]
    spatial_dims: int

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class DataFormat:
    """How one kind of data set is read, scored and written.

    Attributes:
        name: the ``data.format`` value.
        description: one line for ``pdeseg formats`` and ``--help``.
        modalities: the channels its cases can offer (the default selection is all).
        class_names: internal classes ``0..C-1``.
        find_cases: ``(root, modalities, require_label, skipped=None) -> cases``; with a
            ``skipped`` dict, inconsistent case folders are recorded there and left out.
        write: ``(classes, loaded, out_dir, **options) -> written path``: a prediction in
            the input's own format, geometry and label values, each file written atomically.
        outputs: ``(case, out_dir, **options) -> paths``: every file ``write`` would write
            for ``case`` (known before the case is read); ``write`` uses the same names.
        write_options: option name -> allowed values (offered by ``pdeseg predict``).
        read_options: option name -> allowed values of ``data.format_options`` (passed to
            ``find_cases``), or :data:`POSITIVE_INT`, or None (any string or list).
        regions: evaluation regions as unions of classes (BraTS WT/TC/ET), or empty.
        hd95_one_empty: HD95 when a region is empty in exactly one of truth and prediction.
        spatial_dims: dimensionality of a case (3: volumes; slice sets are stacked).
        display_rotate: figures show ``rot90`` of a slice (NIfTI x-major storage).
        info: ``(root, read_options) -> DatasetInfo`` for formats whose data sets name their
            own classes and channels (MSD's ``dataset.json``) or whose classes follow a read
            option (microscopy ``targets``); None: the fixed fields above.
        default_modalities: the channels used when the config names none (empty: all).
        object_metrics: 2D images of objects (microscopy): scoring adds boundary F1 at 1, 2
            and 3 px and, for cases with objects, the instance metrics (DSB score, AP50,
            split and merged cells); a case's field of view limits every metric.
        has_cells: its images hold separate objects (cells, nuclei) that a model of it segments one by
            one: prediction writes their instance labels, tiled prediction joins them across seams,
            napari shows them (DRIVE's vessels are one connected tree: scored as objects, no cells).
        crop_at_inference: its images are exactly zero outside the object (skull-stripped MRI),
            so prediction crops each case to its non-zero box before the network and pastes the
            result back, unless asked not to (``--no-crop``): measured to keep Dice on held-out
            BraTS cases at about 2.4x the speed (docs: Fast prediction on a CPU).

    A read option whose allowed values are None takes any string (a file name, a list).
    """

    name: str
    description: str
    modalities: tuple[str, ...]
    class_names: tuple[str, ...]
    find_cases: Callable[..., list]
    write: Callable[..., Path]
    outputs: Callable[..., list[Path]]
    write_options: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    read_options: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    regions: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    hd95_one_empty: float = math.inf
    spatial_dims: int = 3
    display_rotate: bool = True
    info: Callable[[Path | None, Mapping[str, Any]], DatasetInfo] | None = None
    default_modalities: tuple[str, ...] = ()
    object_metrics: bool = False
    has_cells: bool = False
    crop_at_inference: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def dataset_info(self, root: str | Path | None = None, options: Mapping[str, Any] | None = None) -> DatasetInfo:
        """Classes, regions and channels of the data set at ``root`` read with ``options``
        (fixed for most formats; formats whose data sets define their own classes read them
        from ``root``).

        Raises:
            ConfigError, DataError: such a format without a readable ``root``.
        """
        if self.info is not None:
            return self.info(Path(root).expanduser() if root else None, dict(options or {}))
        return DatasetInfo(self.class_names, dict(self.regions), self.modalities, self.spatial_dims)

    def channels(self, info: DatasetInfo, requested: Sequence[str] | None = None) -> list[str]:
        """The channels to read: ``requested``, else the format's defaults, else every channel
        of the data set (``info``). One rule for training, fingerprints and exports.

        Raises:
            ConfigError: a channel the data set does not have, or one named twice.
        """
        chosen = list(requested) if requested else list(self.default_modalities or info.modalities)
        odd = [m for m in chosen if m not in info.modalities]
        if odd:
            raise ConfigError(f"data.modalities {odd} are not {self.name} channels; choose from {', '.join(info.modalities)}")
        if len(set(chosen)) != len(chosen):
            raise ConfigError(f"data.modalities lists a channel twice: {chosen}")
        return chosen

    def check_read_options(self, options: Mapping[str, Any]) -> None:
        """Raises ConfigError for a ``data.format_options`` key or value this format does not take."""
        for key, value in options.items():
            if key not in self.read_options:
                raise ConfigError(f"data.format_options: {self.name} takes no option {key!r}"
                                  + (f"; it takes {', '.join(self.read_options)}" if self.read_options else ""))
            allowed = self.read_options[key]
            if allowed is POSITIVE_INT:
                if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                    raise ConfigError(f"data.format_options.{key} must be an integer >= 1, got {value!r}")
                continue
            if allowed is None:
                if value is not None and not isinstance(value, (str, list)):
                    raise ConfigError(f"data.format_options.{key} must be a string or a list, got {value!r}")
                continue
            if value is not None and value not in allowed:
                raise ConfigError(f"data.format_options.{key} must be one of {', '.join(self.read_options[key])}, got {value!r}")

    def check_options(self, **options: Any) -> dict[str, Any]:
        """The output options that are set (None values mean the default).

        Raises:
            ConfigError: an option this format does not take, or a value it does not allow.
        """
        for key, value in options.items():
            if value is None:
                continue
            if key not in self.write_options:
                raise ConfigError(f"data format {self.name} takes no output option {key!r}")
            if value not in self.write_options[key]:
                raise ConfigError(f"{key} must be one of {', '.join(self.write_options[key])} for {self.name}, got {value!r}")
        return {k: v for k, v in options.items() if v is not None}

    def write_prediction(self, classes: np.ndarray, loaded: LoadedCase, out_dir: str | Path,
                         objects: np.ndarray | None = None, **options: Any) -> Path:
        """Write ``classes`` for ``loaded`` under ``out_dir``, each file through a temporary
        name (see :mod:`pdeseg.data.files`).

        Args:
            objects: a cell format's instances ``(H, W, 1)`` int32 as the model found them
                (None: found from ``classes``).

        Returns:
            the file or case folder written.

        Raises:
            ConfigError: an option this format does not take, or a value it does not allow.
        """
        checked = self.check_options(**options)
        if objects is not None:
            if not self.object_metrics:
                raise ConfigError(f"data format {self.name} has no objects to write")
            checked["objects"] = objects
        return self.write(classes, loaded, Path(out_dir), **checked)

    def output_paths(self, case: Any, out_dir: str | Path, **options: Any) -> list[Path]:
        """Every file :meth:`write_prediction` would write for ``case`` (a case object of this
        format, not yet read) under ``out_dir`` with these options.

        Raises:
            ConfigError: an option this format does not take, or a value it does not allow.
        """
        return self.outputs(case, Path(out_dir), **self.check_options(**options))


def _find_brats(root, modalities, require_label=True, label_convention=None, skipped=None):
    from pdeseg.data.readers.brats import find_cases

    return find_cases(root, modalities, require_label, label_convention, skipped)


def _brats_outputs(case, out_dir: Path, convention: str | None = None) -> list[Path]:
    return [out_dir / f"{case.case_id}_seg.nii.gz"]


def _write_brats(classes, loaded, out_dir: Path, convention: str | None = None) -> Path:
    from pdeseg.data.readers.brats import write_segmentation

    return write_segmentation(classes, loaded, _brats_outputs(loaded.case, out_dir)[0], convention)


def _find_lgg(root, modalities, require_label=True, skipped=None):
    from pdeseg.data.readers.lgg import find_lgg_cases

    return find_lgg_cases(root, modalities, require_label, skipped)


def _lgg_outputs(case, out_dir: Path, mask_format: str = "png") -> list[Path]:
    return slice_mask_paths(case.case_id, out_dir, case.numbers or range(1, len(case.images) + 1), mask_format)


def _write_lgg(classes, loaded, out_dir: Path, mask_format: str = "png") -> Path:
    case = loaded.case
    return write_slice_masks(classes, case.case_id, out_dir, getattr(case, "numbers", None), mask_format, 2)[0].parent


def _brats() -> DataFormat:
    from pdeseg.data.readers import brats

    return DataFormat(
        name="brats", description="BraTS 2018-2023 NIfTI case folders; classes NCR, ED, ET; regions WT, TC, ET",
        modalities=brats.MODALITIES, class_names=brats.CLASS_NAMES, find_cases=_find_brats, write=_write_brats,
        outputs=_brats_outputs, write_options={"convention": tuple(brats.CONVENTIONS)},
        read_options={"label_convention": tuple(brats.CONVENTIONS)}, regions=dict(brats.REGIONS),
        hd95_one_empty=brats.HD95_ONE_EMPTY_MM, crop_at_inference=True,
    )


def _lgg() -> DataFormat:
    from pdeseg.data.readers import lgg

    return DataFormat(
        name="lgg", description="Kaggle LGG kaggle_3m: RGB TIFF slices and 0/255 masks per patient; binary",
        modalities=lgg.MODALITIES, class_names=("background", "tumour"), find_cases=_find_lgg, write=_write_lgg,
        outputs=_lgg_outputs,        write_options={"mask_format": ("png", "tif")}, display_rotate=False,
    )


def _find_msd(root, modalities, require_label=True, skipped=None, declared=None):
    from pdeseg.data.readers.msd import find_msd_cases

    return find_msd_cases(root, modalities, require_label, skipped, declared)


def _msd_outputs(case, out_dir: Path) -> list[Path]:
    from pdeseg.data.readers.msd import output_path

    return [output_path(case.case_id, out_dir, case.ending)]


def _write_msd(classes, loaded, out_dir: Path) -> Path:
    from pdeseg.data.readers.nifti import write_label_volume

    return write_label_volume(classes, loaded, _msd_outputs(loaded.case, out_dir)[0])


def _msd_info(root: Path | None, options: Mapping[str, Any]) -> DatasetInfo:
    from pdeseg.data.readers.msd import check_root

    ds = check_root(root)
    return DatasetInfo(ds.class_names, {}, ds.channels, 3)


def _msd() -> DataFormat:
    return DataFormat(
        name="msd", description="Medical Segmentation Decathlon / nnU-Net raw task (dataset.json, imagesTr, labelsTr); "
        "classes and channels from dataset.json", modalities=(), class_names=(), find_cases=_find_msd, write=_write_msd,
        outputs=_msd_outputs, info=_msd_info, read_options={"declared": ("strict", "on_disk")},
    )


def _cells_info(options: Mapping[str, Any], modalities: tuple[str, ...]) -> DatasetInfo:
    from pdeseg.data.readers.cells import CLASS_NAMES, REGIONS, check_targets

    targets = check_targets(options.get("targets") or "semantic")
    return DatasetInfo(CLASS_NAMES[targets], dict(REGIONS[targets]), modalities, 3)


def _cells_outputs(case, out_dir: Path) -> list[Path]:
    from pdeseg.data.readers.cells import output_paths

    return output_paths(case.case_id, out_dir, not getattr(case, "semantic_only", False))


def _write_cells(classes, loaded, out_dir: Path, objects=None) -> Path:
    from pdeseg.data.readers.cells import write_prediction

    return write_prediction(classes, loaded, out_dir, not getattr(loaded.case, "semantic_only", False), objects)


def _cells_format(name: str, description: str, finder: str, read_options: Mapping[str, Any] | None = None,
                  default_modalities: tuple[str, ...] = ("grey",), has_cells: bool = True) -> DataFormat:
    """A 2D microscopy format (see :mod:`pdeseg.data.readers.cells`): one image per case, read as a
    stack of one slice; classes from the ``targets`` read option; predictions written as a
    0/255 mask and an instance label image at the image's own size."""
    from pdeseg.data.readers.cells import CHANNELS, TARGETS

    module, _, function = finder.rpartition(".")

    def find(root, modalities, require_label=True, skipped=None, boundary_width=None, **options):
        import importlib

        cases = getattr(importlib.import_module(module), function)(root, modalities, require_label, skipped, **options)
        for case in cases:  # one place for every microscopy reader
            case.boundary_width = int(boundary_width or 1)
        return cases

    return DataFormat(
        name=name, description=description, modalities=CHANNELS, class_names=("background", "cell"), find_cases=find,
        write=_write_cells, outputs=_cells_outputs,
        read_options={"targets": TARGETS, "boundary_width": POSITIVE_INT, **(read_options or {})},
        hd95_one_empty=math.inf, display_rotate=False, default_modalities=default_modalities, object_metrics=True,
        has_cells=has_cells,
        info=lambda root, options: _cells_info(options, CHANNELS),
    )


def _microscopy() -> list[DataFormat]:
    return [
        _cells_format("dsb2018", "Data Science Bowl 2018 nuclei: stage1_train/<id>/images + one mask PNG per nucleus; "
                      "domain from domains.tsv", "pdeseg.data.readers.dsb.find_dsb_cases", {"domains": None}),
        _cells_format("isbi_em", "ISBI 2012 EM stack: images/NN.png + labels/NN.png (255 cell interior, 0 membrane)",
                      "pdeseg.data.readers.image_sets.find_isbi_cases"),
        _cells_format("drive", "DRIVE retinal vessels: images/*.tif, 1st_manual/*.gif, mask/*.gif (field of view)",
                      "pdeseg.data.readers.image_sets.find_drive_cases", default_modalities=("red", "green", "blue"),
                      has_cells=False),
        _cells_format("cell_folder", "generic image folder: images/ + masks/ with matching names (PNG/TIFF; binary "
                      "masks or label images), optional domains.tsv",
                      "pdeseg.data.readers.image_sets.find_folder_cases",
                      {"label_kind": ("auto", "binary", "instances"), "domains": None}),
        _cells_format("livecell", "LIVECell-style COCO: images/ + COCO json (polygons or RLE) per split or cell type",
                      "pdeseg.data.readers.livecell.find_livecell_cases",
                      {"annotations": None, "overlap": ("first", "smallest"), "empty_annotations": ("error", "skip")}),
    ]


def _find_dicom(root, modalities, require_label=False, skipped=None, **options):
    from pdeseg.data.readers.dicom import find_dicom_cases

    return find_dicom_cases(root, modalities, require_label, skipped, **options)


def _dicom_outputs(case, out_dir: Path, output_format: str = "dicom-seg", seg_type: str | None = None) -> list[Path]:
    from pdeseg.data.readers.dicom_seg import output_paths

    return output_paths(case, out_dir, output_format)


def _write_dicom(classes, loaded, out_dir: Path, output_format: str = "dicom-seg", seg_type: str = "binary") -> Path:
    from pdeseg.data.readers.dicom_seg import write_prediction

    return write_prediction(classes, loaded, out_dir, output_format, seg_type)


def _dicom() -> DataFormat:
    from pdeseg.data.readers.dicom import TILT_MODES
    from pdeseg.data.readers.dicom_seg import OUTPUT_FORMATS, SEG_TYPES

    return DataFormat(
        name="dicom", description="DICOM image series (one case per series, or per study with series rules for several "
        "channels); predictions as DICOM-SEG and/or NIfTI; prediction input only", modalities=(), class_names=(),
        find_cases=_find_dicom, write=_write_dicom, outputs=_dicom_outputs,
        write_options={"output_format": OUTPUT_FORMATS, "seg_type": SEG_TYPES},
        read_options={"series": None, "gantry_tilt": TILT_MODES},
    )


FORMATS: dict[str, DataFormat] = {f.name: f for f in (_brats(), _lgg(), _msd(), *_microscopy(), _dicom())}


def get_format(name: str) -> DataFormat:
    """The registered format ``name``.

    Raises:
        ConfigError: unknown name (the message lists the registered ones).
    """
    if name not in FORMATS:
        raise ConfigError(f"data.format {name!r} is not a registered data format; choose one of {', '.join(FORMATS)}")
    return FORMATS[name]


def slice_mask_values(classes: np.ndarray, num_classes: int) -> np.ndarray:
    """8-bit mask pixel values: binary tasks write 0/255 (the LGG masks' convention),
    others their class ids."""
    return (classes.astype(np.uint8) * 255) if num_classes == 2 else classes.astype(np.uint8)


def slice_mask_paths(case_id: str, out_dir: str | Path, numbers: Sequence[int], ext: str = "png") -> list[Path]:
    """The files :func:`write_slice_masks` writes: ``<out_dir>/<case_id>/<case_id>_<n>_mask.<ext>``
    for each slice number ``n``.

    Raises:
        ConfigError: ``ext`` is not ``png`` or ``tif``.
    """
    if ext not in ("png", "tif"):
        raise ConfigError(f"mask format must be png or tif, got {ext!r}")
    folder = Path(out_dir) / case_id
    return [folder / f"{case_id}_{n}_mask.{ext}" for n in numbers]


def _write_mask(mask: np.ndarray, path: Path, ext: str) -> None:
    if ext == "png":
        from PIL import Image

        Image.fromarray(mask).save(path, format="PNG", pnginfo=png_marker(mask))
    else:
        import tifffile

        tifffile.imwrite(path, mask, **tiff_marker(mask))


def write_slice_masks(
    classes: np.ndarray, case_id: str, out_dir: str | Path, numbers: Sequence[int] | None = None, ext: str = "png", num_classes: int = 2
) -> list[Path]:
    """Write a ``(H, W, Z)`` segmentation as one mask image per slice:
    ``<out_dir>/<case_id>/<case_id>_<n>_mask.<ext>`` (``n`` from ``numbers``, default 1..Z),
    each through a temporary name in that folder and then renamed.

    Args:
        ext: ``png`` or ``tif``.

    Returns:
        the mask files, in slice order.

    Raises:
        ConfigError: ``ext`` is not ``png`` or ``tif``.
        ValueError: ``numbers`` does not have one entry per slice.
    """
    numbers = list(numbers) if numbers else list(range(1, classes.shape[-1] + 1))
    if len(numbers) != classes.shape[-1]:
        raise ValueError(f"{case_id}: {len(numbers)} slice numbers for {classes.shape[-1]} slices")
    paths = slice_mask_paths(case_id, out_dir, numbers, ext)
    (Path(out_dir) / case_id).mkdir(parents=True, exist_ok=True)
    values = slice_mask_values(classes, num_classes)
    for z, path in enumerate(paths):
        mask = np.ascontiguousarray(values[..., z])
        write_atomically(path, lambda tmp, mask=mask: _write_mask(mask, tmp, ext))
    return paths
