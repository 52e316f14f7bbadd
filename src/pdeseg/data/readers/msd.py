"""Reader for Medical Segmentation Decathlon (MSD) and nnU-Net raw data sets.

A task folder holds ``dataset.json``, ``imagesTr/``, ``labelsTr/`` and optionally
``imagesTs/``. Two conventions exist, told apart by ``dataset.json``:

* **MSD (nnU-Net v1)**: ``"modality": {"0": "T2", "1": "ADC"}`` and
  ``"labels": {"0": "background", "1": "PZ"}`` (value -> name). One image file per case,
  ``imagesTr/<case>.nii.gz``, 3D for one channel and 4D with the channels on the **last**
  axis for several (BrainTumour: 240x240x155x4).
* **nnU-Net v2**: ``"channel_names": {"0": "T2", "1": "ADC"}``, ``"labels": {"background": 0,
  "PZ": 1}`` (name -> value) and ``"file_ending": ".nii.gz"``. One file per channel,
  ``imagesTr/<case>_0000.nii.gz``, ``<case>_0001.nii.gz``, ...

Labels are ``labelsTr/<case><ending>`` in both. The label values must be the whole
numbers ``0..K-1`` (both conventions require it), so classes are the label values and a
prediction is written back with the same values. Region-based nnU-Net labels (lists of
values) are refused with a clear message.

What a reader must absorb in real data: files of one set stored with different dtypes
(the MSD Hippocampus images and labels are uint8 in some cases and float32 in others);
macOS resource-fork files (``._hippocampus_001.nii.gz``) shipped inside the MSD archives;
``imagesTs`` folders without labels. What it refuses, naming the file: a missing channel or
label, shape or affine mismatch within a case, label values not listed in ``dataset.json``,
fractional or NaN labels, NaN/inf intensities, unreadable files.

Prediction input can also be a bare folder of images (an ``imagesTs`` folder, say): the
``dataset.json`` of its parent is used when there is one, else the layout is told from the
file names (``_0000`` suffixes: nnU-Net v2).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pdeseg.data.case import LoadedCase
from pdeseg.data.readers.nifti import check_finite, check_same_grid, integer_labels, read_volume, spatial_header
from pdeseg.errors import ConfigError, DataError

LAYOUTS = ("msd", "nnunet")
_ENDINGS = (".nii.gz", ".nii")
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")

log = logging.getLogger(__name__)


class MsdDataError(DataError):
    """An MSD / nnU-Net data set that cannot be read as it is."""


@dataclass(frozen=True)
class MsdDataset:
    """What a task's ``dataset.json`` says.

    Attributes:
        root: the task folder.
        layout: ``msd`` (v1: ``modality``, 4D images) or ``nnunet`` (v2: ``channel_names``,
            one file per channel).
        name: the task name (``dataset.json`` ``name``, else the folder name).
        channels: channel names in file order, made unique (the config's ``data.modalities``).
        channel_kinds: the raw ``dataset.json`` entries (``CT``, ``MRI``, ``T2``, ...).
        class_names: class names of label values ``0..K-1``.
        file_ending: ``.nii.gz`` or ``.nii``.
    """

    root: Path
    layout: str
    name: str
    channels: tuple[str, ...]
    channel_kinds: tuple[str, ...]
    class_names: tuple[str, ...]
    file_ending: str = ".nii.gz"
    training: tuple[str, ...] | None = None  # case ids of the ``training`` list (MSD), None when there is none
    num_training: int | None = None  # ``numTraining``, None when absent

    @property
    def is_ct(self) -> bool:
        """True when every channel is CT (Hounsfield units)."""
        return all(k.strip().upper() == "CT" for k in self.channel_kinds)


def _unique_names(kinds: Sequence[str]) -> tuple[str, ...]:
    names = [str(k).strip() or f"channel{i}" for i, k in enumerate(kinds)]
    return tuple(n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names))


def _indexed(mapping: object, key: str, path: Path) -> list[str]:
    """Entries of a ``{"0": a, "1": b}`` mapping in index order, checking the indices are 0..N-1."""
    if not isinstance(mapping, dict) or not mapping:
        raise MsdDataError(f"{path}: {key!r} must be a non-empty mapping index -> name, got {mapping!r}")
    try:
        by_index = {int(k): v for k, v in mapping.items()}
    except (TypeError, ValueError):
        raise MsdDataError(f"{path}: the keys of {key!r} must be indices 0, 1, ..., got {sorted(mapping)}") from None
    if sorted(by_index) != list(range(len(by_index))):
        raise MsdDataError(f"{path}: the indices of {key!r} must be 0..{len(by_index) - 1}, got {sorted(by_index)}")
    return [str(by_index[i]) for i in range(len(by_index))]


def _labels_v2(labels: object, path: Path) -> list[str]:
    if not isinstance(labels, dict) or not labels:
        raise MsdDataError(f"{path}: 'labels' must be a non-empty mapping name -> value, got {labels!r}")
    by_value: dict[int, str] = {}
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            raise MsdDataError(f"{path}: label {name!r} is region-based ({value}); region-based nnU-Net labels are not "
                               "supported, give each class one value")
        if isinstance(value, bool) or not isinstance(value, int):
            raise MsdDataError(f"{path}: label {name!r} must have an integer value, got {value!r}")
        if value in by_value:
            raise MsdDataError(f"{path}: labels {by_value[value]!r} and {name!r} share the value {value}")
        by_value[value] = str(name)
    if sorted(by_value) != list(range(len(by_value))):
        raise MsdDataError(f"{path}: label values must be 0..{len(by_value) - 1} (0 = background), got {sorted(by_value)}")
    return [by_value[v] for v in range(len(by_value))]


def read_dataset_json(root: str | Path) -> MsdDataset:
    """Parse ``<root>/dataset.json`` in either convention.

    Raises:
        MsdDataError: no or unreadable ``dataset.json``, a missing key, channel or label
            entries that are not indexed 0..N-1, region-based labels, or no background.
    """
    root = Path(root).expanduser()
    path = root / "dataset.json"
    if not path.is_file():
        raise MsdDataError(f"{root}: no dataset.json; an MSD / nnU-Net task folder holds dataset.json, imagesTr/ and labelsTr/")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise MsdDataError(f"{path}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise MsdDataError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(meta, dict):
        raise MsdDataError(f"{path}: expected a JSON object")
    if "channel_names" in meta:
        layout, kinds = "nnunet", _indexed(meta["channel_names"], "channel_names", path)
        if "labels" not in meta:
            raise MsdDataError(f"{path}: no 'labels' entry")
        classes = _labels_v2(meta["labels"], path)
        ending = str(meta.get("file_ending", ".nii.gz"))
        if ending not in _ENDINGS:
            raise MsdDataError(f"{path}: file_ending {ending!r} is not supported; use one of {', '.join(_ENDINGS)}")
    elif "modality" in meta:
        layout, kinds = "msd", _indexed(meta["modality"], "modality", path)
        if "labels" not in meta:
            raise MsdDataError(f"{path}: no 'labels' entry")
        classes, ending = _indexed(meta["labels"], "labels", path), ".nii.gz"
    else:
        raise MsdDataError(f"{path}: neither 'modality' (MSD) nor 'channel_names' (nnU-Net v2); is this a task's dataset.json?")
    if len(classes) < 2:
        raise MsdDataError(f"{path}: 'labels' lists {len(classes)} class; a segmentation task needs background and at least one more")
    num = meta.get("numTraining")
    if num is not None and (isinstance(num, bool) or not isinstance(num, int) or num < 0):
        raise MsdDataError(f"{path}: numTraining must be a whole number >= 0, got {num!r}")
    return MsdDataset(root, layout, str(meta.get("name") or root.name), _unique_names(kinds), tuple(kinds), tuple(classes),
                      ending, _training_ids(meta.get("training"), path), num)


def _training_ids(training: object, path: Path) -> tuple[str, ...] | None:
    """Case ids of a ``training`` list of ``{"image": "./imagesTr/<case>.nii.gz", "label": ...}``
    entries (None without one).

    Raises:
        MsdDataError: a list that is not of that form, or a case listed twice.
    """
    if training is None:
        return None
    if not isinstance(training, list):
        raise MsdDataError(f"{path}: 'training' must be a list of {{image, label}} entries, got a {type(training).__name__}")
    ids: list[str] = []
    for i, entry in enumerate(training):
        image = entry.get("image") if isinstance(entry, dict) else None
        parts = _strip_ending(Path(image).name) if isinstance(image, str) else None
        if parts is None:
            raise MsdDataError(f"{path}: training[{i}] must be an entry with an 'image' NIfTI path "
                               f"(./imagesTr/<case>.nii.gz), got {entry!r}")
        if parts[0] in ids:
            raise MsdDataError(f"{path}: training[{i}] lists case {parts[0]} a second time")
        ids.append(parts[0])
    return tuple(ids)


@dataclass
class MsdCase:
    """Paths of one case.

    Attributes:
        images: MSD: one file (all channels); nnU-Net v2: one file per channel, in order.
        label: the label file, or None for unlabelled cases.
        channels: channel names of the files, in order.
        layout: ``msd`` or ``nnunet``.
    """

    case_id: str
    folder: Path
    images: tuple[Path, ...]
    label: Path | None
    channels: tuple[str, ...]
    layout: str
    convention: str = "msd"
    num_classes: int | None = None  # label values must be < this (None: not checked)
    class_names: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ending(self) -> str:
        """``.nii`` when the case's images are uncompressed, else ``.nii.gz``."""
        return ".nii" if self.images[0].name.endswith(".nii") else ".nii.gz"

    def _indices(self, modalities: Sequence[str]) -> list[int]:
        missing = [m for m in modalities if m not in self.channels]
        if missing:
            raise MsdDataError(f"case {self.case_id}: no channel {missing} (its channels are {', '.join(self.channels)})")
        return [self.channels.index(m) for m in modalities]

    def source_files(self, modalities: Sequence[str]) -> list[Path]:
        """The files a cache entry of these channels depends on."""
        files = list(self.images) if self.layout == "msd" else [self.images[i] for i in self._indices(modalities)]
        return files + ([self.label] if self.label else [])

    def load(self, modalities: Sequence[str], with_label: bool = True) -> LoadedCase:
        """Read and check the case: ``image (C, X, Y, Z)`` float32 in the order of
        ``modalities``, ``label (X, Y, Z)`` uint8 classes.

        Raises:
            MsdDataError: see the module docstring.
        """
        modalities = tuple(modalities)
        indices = self._indices(modalities)
        if self.layout == "msd":
            ref_path = self.images[0]
            ref_img, data = read_volume(ref_path, MsdDataError, ndim=(3, 4))
            found = 1 if data.ndim == 3 else data.shape[3]
            if found != len(self.channels):
                raise MsdDataError(f"{ref_path}: holds {found} channel(s) but dataset.json lists {len(self.channels)} "
                                   f"({', '.join(self.channels)}); MSD stores the channels on the last axis")
            volumes = [data if data.ndim == 3 else data[..., i] for i in indices]
        else:
            volumes, ref_img, ref_path = [], None, None
            for i in indices:
                path = self.images[i]
                img, data = read_volume(path, MsdDataError)
                check_finite(data, path, MsdDataError)
                if ref_img is None:
                    ref_img, ref_path = img, path
                else:
                    check_same_grid(ref_img, ref_path, img, path, data.shape, MsdDataError)
                volumes.append(data)
        image = np.stack(volumes).astype(np.float32, copy=False)
        if self.layout == "msd":  # one file holds every channel: check the channels read
            check_finite(image, ref_path, MsdDataError)
        label = None
        if with_label and self.label is not None:
            img, raw = read_volume(self.label, MsdDataError)
            check_same_grid(ref_img, ref_path, img, self.label, raw.shape, MsdDataError)
            values = integer_labels(raw, self.label, MsdDataError)
            if self.num_classes is not None:
                bad = sorted(set(np.unique(values).tolist()) - set(range(self.num_classes)))
                if bad:
                    named = ", ".join(f"{v} {n}" for v, n in enumerate(self.class_names)) or f"0..{self.num_classes - 1}"
                    raise MsdDataError(f"{self.label}: label values {bad[:10]} are not in dataset.json (labels: {named})")
            label = values.astype(np.uint8)
        return LoadedCase(self, image, label, ref_img.affine.copy(), spatial_header(ref_img), self.convention, modalities)


def _strip_ending(name: str) -> tuple[str, str] | None:
    for ending in _ENDINGS:
        if name.endswith(ending):
            return name[: -len(ending)], ending
    return None


def _image_files(folder: Path) -> list[tuple[str, str, Path]]:
    """``(stem, ending, path)`` of the NIfTI files in ``folder``, hidden files (``._x``) left out."""
    found = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        parts = _strip_ending(path.name)
        if parts:
            found.append((parts[0], parts[1], path))
    return found


def _group_channels(folder: Path, files: list[tuple[str, str, Path]], n_channels: int | None,
                    skipped: dict | None) -> dict[str, tuple[Path, ...]]:
    """nnU-Net v2: ``<case>_<NNNN>`` files grouped per case, every channel 0..n-1 present."""
    by_case: dict[str, dict[int, Path]] = {}
    for stem, _, path in files:
        m = _CHANNEL_SUFFIX.match(stem)
        if not m:
            raise MsdDataError(f"{path}: nnU-Net v2 images are named <case>_<NNNN>.nii.gz (channel number); this one is not")
        by_case.setdefault(m["case"], {})[int(m["channel"])] = path
    n = n_channels if n_channels is not None else max(len(c) for c in by_case.values()) if by_case else 0
    cases = {}
    for case_id, channels in sorted(by_case.items()):
        missing = [f"{case_id}_{i:04d}" for i in range(n) if i not in channels]
        extra = sorted(i for i in channels if i >= n)
        problem = (f"{folder}: case {case_id} has no channel file(s) {', '.join(missing)}" if missing else
                   f"{channels[extra[0]]}: channel {extra[0]} is beyond the {n} channels dataset.json lists" if extra else None)
        if problem:
            if skipped is None:
                raise MsdDataError(problem)
            skipped[case_id] = problem
            continue
        cases[case_id] = tuple(channels[i] for i in range(n))
    return cases


def _dataset_for(root: Path) -> MsdDataset | None:
    """``root``'s dataset.json, or its parent's when ``root`` is an images folder inside a task."""
    if (root / "dataset.json").is_file():
        return read_dataset_json(root)
    if (root.parent / "dataset.json").is_file() and root.name.startswith("images"):
        return read_dataset_json(root.parent)
    return None


def find_msd_cases(root: str | Path, modalities: Sequence[str] | None = None, require_label: bool = True,
                   skipped: dict | None = None, declared: str | None = "strict") -> list[MsdCase]:
    """Cases of an MSD / nnU-Net task folder: ``imagesTr`` with ``labelsTr``, or, when
    ``require_label`` is False (prediction), ``imagesTs`` if the task has one (else
    ``imagesTr``). ``root`` may also be an images folder itself (``imagesTr``, ``imagesTs``,
    or any folder of NIfTI images).

    Args:
        modalities: the channels that will be read (checked to exist).
        require_label: every case must have its label file.
        skipped: when given, cases with a missing channel or label are recorded here
            (case id -> reason) and left out instead of raising.
        declared: reading a task's training set (``imagesTr`` with labels), how what
            ``dataset.json`` declares is reconciled with the files (:func:`reconcile`):
            ``strict`` (default) refuses every mismatch naming the file; ``on_disk`` reads
            the cases on disk and logs each declared entry or file it leaves out.

    Raises:
        MsdDataError: no such folder, no cases, a bad ``dataset.json``, a missing channel
            or label file (without ``skipped``), unknown channels, or (``strict``) a case
            that ``dataset.json`` lists without its image, an image it does not list, a
            label without an image, or a ``numTraining`` that is not the number of cases.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MsdDataError(f"{root}: no such folder")
    dataset = _dataset_for(root)
    if dataset is not None and dataset.root == root:
        images_dir = root / "imagesTr"
        if not require_label and (root / "imagesTs").is_dir():  # prediction: the task's test images
            images_dir = root / "imagesTs"
        labels_dir: Path | None = root / "labelsTr" if images_dir.name == "imagesTr" else None
    else:
        images_dir = root
        sibling = root.parent / root.name.replace("images", "labels", 1) if root.name.startswith("images") else None
        labels_dir = sibling if sibling is not None and sibling.is_dir() else None
    if not images_dir.is_dir():
        raise MsdDataError(f"{images_dir}: no such folder (an MSD / nnU-Net task keeps its training images in imagesTr/)")
    files = _image_files(images_dir)
    if not files:
        raise MsdDataError(f"{images_dir}: no NIfTI images (.nii.gz / .nii)")
    if dataset is not None:
        layout, channels = dataset.layout, dataset.channels
    else:  # a bare folder: the layout from the names, the channels from the caller
        layout = "nnunet" if all(_CHANNEL_SUFFIX.match(stem) for stem, _, _ in files) else "msd"
        channels = tuple(modalities) if modalities else ("image",)
    if layout == "nnunet":
        grouped = _group_channels(images_dir, files, len(channels), skipped)
    else:
        grouped = {stem: (path,) for stem, _, path in files}
    if require_label and dataset is not None and images_dir == dataset.root / "imagesTr":
        on_disk = {(m["case"] if layout == "nnunet" and (m := _CHANNEL_SUFFIX.match(stem)) else stem) for stem, _, _ in files}
        reconcile(dataset, on_disk, labels_dir, declared)
    ending_of = {stem: ending for stem, ending, _ in files}
    cases = []
    for case_id, paths in grouped.items():
        label = None
        if labels_dir is not None and labels_dir.is_dir():
            ending = dataset.file_ending if dataset else ending_of.get(case_id) or ending_of.get(f"{case_id}_0000", ".nii.gz")
            candidates = [labels_dir / f"{case_id}{e}" for e in dict.fromkeys((ending, *_ENDINGS))]
            label = next((p for p in candidates if p.is_file()), None)
        if require_label and label is None:
            problem = (f"case {case_id}: no label file {candidates[0]}" if labels_dir is not None and labels_dir.is_dir()
                       else f"{images_dir}: no labels folder beside it (labelsTr/) for case {case_id}")
            if skipped is None:
                raise MsdDataError(problem)
            skipped[case_id] = problem
            continue
        cases.append(MsdCase(case_id, images_dir, paths, label, channels, layout,
                             num_classes=len(dataset.class_names) if dataset else None,
                             class_names=dataset.class_names if dataset else ()))
    if not cases:
        raise MsdDataError(f"{images_dir}: no usable cases" + (f" ({len(skipped)} skipped)" if skipped else ""))
    if modalities:
        cases[0]._indices(modalities)  # unknown channel names: one clear error before any file is read
    return cases


DECLARED_RULES = ("strict", "on_disk")


def reconcile(dataset: MsdDataset, on_disk: set[str], labels_dir: Path | None, declared: str | None = "strict") -> None:
    """Account for every case ``dataset.json`` declares and every file of ``imagesTr`` and
    ``labelsTr``: a case in the ``training`` list without an image, an image not in the list, a
    label file without an image, and a ``numTraining`` other than the number of cases are
    mismatches.

    Args:
        on_disk: the case ids of the images in ``imagesTr``.
        declared: ``strict`` refuses the first mismatch (naming the file and the count of the
            others); ``on_disk`` logs each, and the cases on disk are read (declared cases
            without files and labels without images are left out, images the list omits read).

    Raises:
        MsdDataError: ``strict`` and a mismatch; or an unknown ``declared`` value.
    """
    declared = declared or "strict"
    if declared not in DECLARED_RULES:
        raise MsdDataError(f"data.format_options.declared must be one of {', '.join(DECLARED_RULES)}, got {declared!r}")
    path, images = dataset.root / "dataset.json", dataset.root / "imagesTr"
    problems = []
    if dataset.training is not None:
        problems += [f"{path}: training lists case {c} but {images / (c + dataset.file_ending)} does not exist"
                     for c in dataset.training if c not in on_disk]
        problems += [f"{images}: case {c} is not in the training list of {path}" for c in sorted(on_disk - set(dataset.training))]
    if labels_dir is not None and labels_dir.is_dir():
        problems += [f"{p}: a label file with no image in {images} (case {stem})"
                     for stem, _, p in _image_files(labels_dir) if stem not in on_disk]
    if dataset.num_training is not None and dataset.num_training != len(on_disk):
        problems.append(f"{path}: numTraining is {dataset.num_training} but {images} holds {len(on_disk)} case(s)")
    if not problems:
        return
    if declared == "strict":
        more = f" (and {len(problems) - 1} more mismatch(es))" if len(problems) > 1 else ""
        raise MsdDataError(f"{problems[0]}{more}; restore the files or correct dataset.json, or set "
                           "data.format_options.declared: on_disk to read the cases on disk (each mismatch is logged)")
    for problem in problems:
        log.warning("data.format_options.declared on_disk: %s", problem)


def output_path(case_id: str, out_dir: Path, ending: str = ".nii.gz") -> Path:
    """Where a prediction of ``case_id`` goes: ``<out_dir>/<case_id><ending>`` (the label
    file name the task itself uses)."""
    return out_dir / f"{case_id}{ending}"


def check_root(root: str | Path | None) -> MsdDataset:
    """The data set at ``root``, for resolving a config.

    Raises:
        ConfigError: no root given.
        MsdDataError: see :func:`read_dataset_json`.
    """
    if not root:
        raise ConfigError("data.root is not set: the msd format reads its channels and classes from <root>/dataset.json "
                          "(--data DIR or --set data.root=DIR)")
    return read_dataset_json(root)
