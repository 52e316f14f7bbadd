"""Export any data set pdeseg reads as an nnU-Net v2 raw data set, so that nnU-Net can be run
on the very same cases, with the very same split, as a pdeseg experiment.

The export is read with the data set's own format (the reader training uses, with the same
channels and ``data.format_options``), so nnU-Net sees exactly the arrays pdeseg trains on:
raw intensities and contiguous classes ``0..K-1``. It writes::

    <out_dir>/                        named DatasetNNN_Name (NNN: three digits), as nnU-Net wants
        dataset.json                  nnU-Net v2: channel_names, labels (name -> value,
                                      background 0), numTraining, file_ending ".nii.gz",
                                      and a "pdeseg" entry (source format, root, options,
                                      pdeseg's channel and class names, renamed cases)
        imagesTr/<case>_0000.nii.gz   one file per channel, raw intensities: the smallest
                 <case>_0001.nii.gz   integer type that holds them exactly when they are whole
                 ...                  numbers, else float32
        labelsTr/<case>.nii.gz        uint8 classes 0..K-1
        splits_final.json             with a split: [{"train": [...], "val": [...]}] (one fold)
        pdeseg_split.json             with a split: {"train", "val", "test"} (pdeseg's split file)

Every labelled case goes into ``imagesTr``/``labelsTr``, test cases included: they are in
neither list of ``splits_final.json``, so nnU-Net's fold 0 neither trains nor validates on
them, and ``pdeseg_split.json`` names them for scoring.

nnU-Net reads ``splits_final.json`` from its *preprocessed* folder, not from the raw one:
copy it to ``$nnUNet_preprocessed/DatasetNNN_Name/splits_final.json`` (after
``nnUNetv2_plan_and_preprocess``, before ``nnUNetv2_train DatasetNNN_Name <config> 0``);
without it nnU-Net draws its own 5-fold split. The benchmark does this copy.

Geometry: each file carries the case's affine and the reader's header (NIfTI sources keep
their voxel size and orientation; PNG/TIFF sources have none, and their reader gives an
identity affine with 1 mm pixels). 2D images (microscopy, LGG slices) are read by pdeseg as
stacks ``(H, W, Z)`` and written as such: a single image is an ``(H, W, 1)`` volume, which
nnU-Net treats as 2D data.

Case names: nnU-Net tells a case from its channel by the last ``_NNNN`` before the file
ending, and some of its tools and file systems do not cope with spaces, dots or other
characters in names. A case id made only of ``A-Z a-z 0-9 _ -`` (starting with a letter or
digit) is kept as it is; any other is mapped to a safe name (disallowed characters become
``_``, a number is appended when two names would collide, also when they differ only in
case), and ``dataset.json`` records ``pdeseg.renamed_cases`` (nnU-Net name -> source id).
The split files use the nnU-Net names.

pdeseg's own ``msd`` format reads an export back (``--format msd --data <out_dir>``): same
image arrays (as float32), same labels, same class names (class 0 is always called
``background`` there, as nnU-Net requires; ``pdeseg.class_names`` keeps the source's name).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from pdeseg.data.files import TMP_MARKER, write_atomically
from pdeseg.data.formats import get_format
from pdeseg.errors import ConfigError, DataError, RunFolderError
from pdeseg.progress import track

log = logging.getLogger(__name__)

#: The file ending of every image and label file an export writes.
FILE_ENDING = ".nii.gz"
#: A folder name nnU-Net v2 accepts: ``Dataset`` + three-digit id + ``_`` + name.
DATASET_FOLDER = re.compile(r"^Dataset(?P<id>\d{3})_(?P<name>[A-Za-z0-9][A-Za-z0-9_-]*)$")
#: Case ids kept as they are; any other is mapped to a safe name.
SAFE_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
#: The files an export writes at the top of its folder.
SPLITS_FILE = "splits_final.json"
PDESEG_SPLIT_FILE = "pdeseg_split.json"
DATASET_JSON = "dataset.json"
_SPLIT_PARTS = ("train", "val", "test")
#: Label names nnU-Net gives a meaning: ``background`` must be 0, ``ignore`` is left out of the loss.
_RESERVED_LABELS = ("background", "ignore")
#: Integer types tried, smallest first, for whole-number intensities.
_INTEGER_TYPES = (np.uint8, np.int16, np.uint16, np.int32)


@dataclass
class ExportReport:
    """What :func:`export_nnunet` wrote.

    Attributes:
        out_dir: the ``DatasetNNN_Name`` folder.
        dataset_id: ``NNN`` as a number.
        cases: source case id -> nnU-Net case name, in export order.
        renamed: the cases whose names had to change (nnU-Net name -> source id).
        channel_names: ``dataset.json`` ``channel_names`` values, in file order.
        labels: ``dataset.json`` ``labels`` names in value order (0 is ``background``).
        split: the split in nnU-Net names (``train``, ``val``, ``test``), or None.
        unassigned: exported cases in no part of the split (nnU-Net names).
        removed: stale files of an earlier export removed from the folder (``overwrite``).
    """

    out_dir: Path
    dataset_id: int
    cases: dict[str, str]
    renamed: dict[str, str]
    channel_names: tuple[str, ...]
    labels: tuple[str, ...]
    split: dict[str, list[str]] | None = None
    unassigned: list[str] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)

    @property
    def num_cases(self) -> int:
        return len(self.cases)

    @property
    def dataset_json(self) -> Path:
        return self.out_dir / DATASET_JSON

    @property
    def splits_file(self) -> Path | None:
        """``splits_final.json``, or None when no split was given."""
        return self.out_dir / SPLITS_FILE if self.split is not None else None


def parse_dataset_folder(out_dir: str | Path) -> tuple[int, str]:
    """``(id, name)`` of an nnU-Net raw folder name ``DatasetNNN_Name``.

    Raises:
        ConfigError: the folder's name is not of that form.
    """
    path = Path(out_dir)
    m = DATASET_FOLDER.match(path.name)
    if not m:
        raise ConfigError(f"{path}: an nnU-Net data set folder must be named DatasetNNN_Name (three-digit id, a name "
                          "of letters, digits, _ or -), e.g. nnUNet_raw/Dataset501_Brats; choose such a folder")
    return int(m["id"]), m["name"]


def nnunet_case_names(case_ids: Sequence[str]) -> dict[str, str]:
    """Source case id -> a name that is safe for nnU-Net files (see the module docstring).

    Ids that are already safe keep their names; the others become ``A-Z a-z 0-9 _ -`` only,
    made unique (ignoring case) by a ``_2``, ``_3``, ... suffix. Deterministic: the same ids
    give the same names.

    Raises:
        DataError: duplicate case ids.
    """
    ids = list(case_ids)
    if len(set(ids)) != len(ids):
        dups = sorted({i for i in ids if ids.count(i) > 1})
        raise DataError(f"the data set has duplicate case ids {dups[:5]}; case ids must be unique")
    names: dict[str, str] = {}
    used: set[str] = set()
    for cid in ids:  # safe ids first: they keep their names unless they collide ignoring case
        if SAFE_CASE_ID.match(cid) and cid.lower() not in used:
            names[cid] = cid
            used.add(cid.lower())
    for cid in sorted(i for i in ids if i not in names):
        base = re.sub(r"[^A-Za-z0-9_-]+", "_", cid).lstrip("_-") or "case"
        name, k = base, 2
        while name.lower() in used:
            name, k = f"{base}_{k}", k + 1
        names[cid] = name
        used.add(name.lower())
    return {cid: names[cid] for cid in ids}


def nnunet_label_names(class_names: Sequence[str]) -> list[str]:
    """Label names for ``dataset.json``, in value order: class 0 is ``background`` (nnU-Net
    requires it), a later class called ``background`` or ``ignore`` (a name nnU-Net treats as
    unlabelled pixels) becomes ``<name>_class``, and repeated names get ``_<value>``."""
    out: list[str] = []
    for value, name in enumerate(class_names):
        name = "background" if value == 0 else (str(name).strip() or f"class{value}")
        if value > 0 and name.lower() in _RESERVED_LABELS:
            name = f"{name}_class"
        if name in out:
            name = f"{name}_{value}"
        out.append(name)
    return out


def storage_dtype(values: np.ndarray) -> np.dtype:
    """The type a channel is written with: the smallest of uint8, int16, uint16, int32 that
    holds every value exactly when all are whole numbers, else float32."""
    if values.size == 0:
        return np.dtype(np.uint8)
    if not np.array_equal(values, np.rint(values)):  # fractional (NaN too: NaN != NaN)
        return np.dtype(np.float32)
    lo, hi = float(values.min()), float(values.max())
    for dtype in _INTEGER_TYPES:
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.float32)


def _check_split(split: Mapping[str, Sequence[str]], ids: Sequence[str]) -> dict[str, list[str]]:
    odd = [k for k in split if k not in _SPLIT_PARTS]
    if odd:
        raise ConfigError(f"split: unknown part(s) {odd}; a split has train, val and test")
    parts = {k: [str(c) for c in split.get(k) or []] for k in _SPLIT_PARTS}
    known = set(ids)
    missing = sorted({c for part in parts.values() for c in part} - known)
    if missing:
        raise DataError(f"the split names {len(missing)} case(s) that are not among the exported cases: {missing[:5]}; "
                        "use the split of this data set (and these format options / case ids)")
    seen: dict[str, str] = {}
    for part, members in parts.items():
        for c in members:
            if c in seen and seen[c] != part:
                raise ConfigError(f"split: case {c} is in both {seen[c]} and {part}; a case belongs to one part")
            seen[c] = part
    for part in ("train", "val"):
        if not parts[part]:
            raise ConfigError(f"split: no {part} case; nnU-Net's fold needs training and validation cases "
                              "(or export without a split and nnU-Net draws its own 5 folds)")
    return {k: list(dict.fromkeys(v)) for k, v in parts.items()}


def _check_out_dir(out_dir: Path, root: Path, overwrite: bool) -> tuple[int, bool]:
    """``(dataset id, whether the folder holds an earlier export to replace)``."""
    dataset_id, _ = parse_dataset_folder(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise RunFolderError(f"{out_dir}: exists and is not a folder; choose another DatasetNNN_Name folder")
    try:
        src = root.resolve()
        dst = out_dir.resolve()
    except OSError:  # pragma: no cover - resolution of odd paths
        src, dst = root.absolute(), out_dir.absolute()
    if src == dst or dst in src.parents:
        raise ConfigError(f"{out_dir}: the export folder would contain the source data {root}; "
                          "choose a folder outside it")
    if out_dir.parent.is_dir():  # nnU-Net refuses one id with two names in nnUNet_raw
        prefix = f"Dataset{dataset_id:03d}_"
        others = sorted(p.name for p in out_dir.parent.iterdir()
                        if p.is_dir() and p.name.startswith(prefix) and p.name != out_dir.name)
        if others:
            raise ConfigError(f"{out_dir}: {out_dir.parent} already holds {others[0]} with the id {dataset_id:03d}; "
                              "nnU-Net needs one name per id, choose another id")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return dataset_id, False
    if not overwrite:
        raise RunFolderError(f"{out_dir}: folder exists and is not empty; pass overwrite (--overwrite) to replace an "
                             "earlier export, or choose another DatasetNNN_Name folder")
    meta = out_dir / DATASET_JSON
    if meta.is_file():
        try:
            ours = "pdeseg" in json.loads(meta.read_text())
        except (OSError, ValueError, TypeError):
            ours = False
        if not ours:
            raise RunFolderError(f"{meta}: this folder holds a data set pdeseg did not export; overwrite only replaces "
                                 "pdeseg exports: remove it yourself or choose another DatasetNNN_Name folder")
    return dataset_id, True


def _channel_names(fmt_name: str, root: Path, modalities: Sequence[str]) -> list[str]:
    """``channel_names`` values: pdeseg's channel names, except for an MSD / nnU-Net source,
    whose own entries (``CT``, ``MRI``, ...) are kept, since nnU-Net picks its intensity
    normalisation from them (``CT``: clipping and global statistics)."""
    if fmt_name != "msd":
        return list(modalities)
    from pdeseg.data.readers.msd import read_dataset_json

    ds = read_dataset_json(root)
    kind = dict(zip(ds.channels, ds.channel_kinds))
    return [str(kind.get(m, m)) for m in modalities]


def _nifti(array: np.ndarray, dtype: np.dtype, affine: np.ndarray, header: nib.Nifti1Header) -> nib.Nifti1Image:
    hdr = nib.Nifti1Header.from_header(header)
    hdr.set_data_dtype(dtype)  # a header's own type would win over the array's (and rescale it)
    img = nib.Nifti1Image(np.ascontiguousarray(array, dtype=dtype), affine, hdr)
    img.header.set_slope_inter(1, 0)
    return img


def _save(img: nib.Nifti1Image, path: Path) -> Path:
    return write_atomically(path, lambda tmp: nib.save(img, str(tmp)))


def _write_json(path: Path, data: Any) -> Path:
    text = json.dumps(data, indent=1) + "\n"
    return write_atomically(path, lambda tmp: tmp.write_text(text))


def _export_case(case: Any, name: str, modalities: Sequence[str], num_classes: int, images_dir: Path,
                 labels_dir: Path) -> list[Path]:
    cid = case.case_id
    try:
        loaded = case.load(modalities)
    except DataError as exc:
        raise DataError(f"case {cid}: {exc}") from exc
    image, label = loaded.image, loaded.label
    if label is None:
        raise DataError(f"case {cid}: has no label; an nnU-Net training set holds labelled cases only")
    if image.shape[1:] != label.shape:
        raise DataError(f"case {cid}: image grid {image.shape[1:]} and label grid {label.shape} differ")
    if image.shape[0] != len(modalities):
        raise DataError(f"case {cid}: {image.shape[0]} channel(s) read for {len(modalities)} requested")
    if not np.isfinite(image).all():
        raise DataError(f"case {cid}: {int((~np.isfinite(image)).sum())} NaN/inf intensities (nnU-Net refuses them); "
                        "fix or leave out this case")
    if label.size and int(label.max()) >= num_classes:
        raise DataError(f"case {cid}: label value {int(label.max())} beyond the {num_classes} classes of the data set")
    written = []
    try:
        for c in range(image.shape[0]):
            channel = image[c]
            img = _nifti(channel, storage_dtype(channel), loaded.affine, loaded.header)
            written.append(_save(img, images_dir / f"{name}_{c:04d}{FILE_ENDING}"))
        written.append(_save(_nifti(label, np.dtype(np.uint8), loaded.affine, loaded.header),
                             labels_dir / f"{name}{FILE_ENDING}"))
    except OSError as exc:
        where = exc.filename or images_dir.parent
        raise RunFolderError(f"case {cid}: cannot write {where} ({exc.strerror or exc})") from exc
    return written


def _remove_stale(out_dir: Path, keep: set[Path], split_written: bool) -> list[Path]:
    """Files of an earlier export that this one did not write (they would count as cases for
    nnU-Net, which, unlike pdeseg, also lists hidden files)."""
    removed = []
    for sub in ("imagesTr", "labelsTr"):
        for path in sorted((out_dir / sub).iterdir()):
            ours = path.name.endswith((".nii.gz", ".nii")) or TMP_MARKER in path.name
            if path.is_file() and path not in keep and ours:
                path.unlink()
                removed.append(path)
    if not split_written:
        for name in (SPLITS_FILE, PDESEG_SPLIT_FILE):
            if (out_dir / name).is_file():
                (out_dir / name).unlink()
                removed.append(out_dir / name)
    return removed


def export_nnunet(
    fmt_name: str,
    root: str | Path,
    out_dir: str | Path,
    split: Mapping[str, Sequence[str]] | None = None,
    modalities: Sequence[str] | None = None,
    format_options: Mapping[str, Any] | None = None,
    dataset_name: str | None = None,
    progress: bool = True,
    *,
    overwrite: bool = False,
    case_ids: Sequence[str] | None = None,
) -> ExportReport:
    """Write the labelled cases of a data set as an nnU-Net v2 raw data set (layout, case
    names and geometry in the module docstring).

    The cases are found and read as training reads them:
    ``get_format(fmt_name).find_cases(root, modalities, True, **format_options)`` and
    ``case.load(modalities)``; a case that cannot be read stops the export with its name.
    ``dataset.json`` is written last, so a folder with one is a complete export.

    With a ``split``, ``splits_final.json`` holds one fold ``[{"train": ..., "val": ...}]``
    and ``pdeseg_split.json`` the three parts, in nnU-Net case names. nnU-Net reads
    ``splits_final.json`` from ``$nnUNet_preprocessed/DatasetNNN_Name/``, not from the raw
    folder: the benchmark copies it there after ``nnUNetv2_plan_and_preprocess``; train
    fold 0 to use it.

    Args:
        fmt_name: a registered data format (``pdeseg.data.formats.FORMATS``).
        root: the data set (``data.root``).
        out_dir: ``.../nnUNet_raw/DatasetNNN_Name`` (created if missing).
        split: ``{"train", "val", "test"}`` lists of source case ids (a pdeseg split file),
            or None (nnU-Net then draws its own folds). Train and val must not be empty.
        modalities: channels in file order; default as a config without
            ``data.modalities``: the format's default channels, else all of the data set's.
        format_options: ``data.format_options`` (e.g. ``{"targets": "boundary"}``).
        dataset_name: ``dataset.json`` ``name`` (default: the folder name's ``Name``).
        progress: show progress (a bar on a terminal, log lines otherwise).
        overwrite: replace an earlier pdeseg export in ``out_dir``; its files that this
            export does not write again (cases left out now, a split file) are removed.
        case_ids: export only these cases (source ids); default all.

    Returns:
        what was written (:class:`ExportReport`).

    Raises:
        ConfigError: ``out_dir`` not named ``DatasetNNN_Name``, another folder with the same
            id beside it, ``out_dir`` containing ``root``, an unknown format or format
            option, unknown ``case_ids``, a split with an unknown part, a case in two parts,
            or no train or val case.
        RunFolderError: ``out_dir`` is a file, is not empty (without ``overwrite``), holds a
            data set pdeseg did not export, or cannot be written (the case is named).
        DataError: unreadable or inconsistent data (see the format's reader; the case is
            named), a case without label, or a split naming cases not exported.
    """
    fmt = get_format(fmt_name)
    options = dict(format_options or {})
    fmt.check_read_options(options)
    root = Path(root).expanduser()
    out_dir = Path(out_dir).expanduser()
    dataset_id, replacing = _check_out_dir(out_dir, root, overwrite)
    info = fmt.dataset_info(root, options)
    if isinstance(modalities, str):
        modalities = [modalities]
    modalities = fmt.channels(info, modalities)
    if not modalities:
        raise ConfigError(f"{fmt_name}: no channels to export; name them (data.modalities)")
    cases = fmt.find_cases(root, modalities, True, **options)
    if case_ids is not None:
        wanted = [str(c) for c in case_ids]
        by_id = {c.case_id: c for c in cases}
        unknown = [c for c in wanted if c not in by_id]
        if unknown:
            raise ConfigError(f"case ids {unknown[:5]} are not among the {len(cases)} cases of {root}")
        cases = [by_id[c] for c in dict.fromkeys(wanted)]
    if not cases:
        raise DataError(f"{root}: no labelled cases to export")
    names = nnunet_case_names([c.case_id for c in cases])
    renamed = {n: cid for cid, n in names.items() if n != cid}
    parts = None
    if split is not None:
        parts = {k: [names[c] for c in v] for k, v in _check_split(split, list(names)).items()}
    labels = nnunet_label_names(info.class_names)
    channel_names = _channel_names(fmt.name, root, modalities)

    images_dir, labels_dir = out_dir / "imagesTr", out_dir / "labelsTr"
    try:
        if replacing:  # until this export is complete, the folder must not pass for one
            (out_dir / DATASET_JSON).unlink(missing_ok=True)
        images_dir.mkdir(parents=True, exist_ok=True)
        labels_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunFolderError(f"{out_dir}: cannot prepare the export folder ({exc.strerror or exc})") from exc
    log.info("exporting %d %s case(s) from %s to %s (%d channel(s): %s; %d classes)", len(cases), fmt.name, root,
             out_dir, len(modalities), ", ".join(modalities), len(labels))
    if renamed:
        log.info("%d case id(s) renamed for nnU-Net (recorded in dataset.json pdeseg.renamed_cases), e.g. %r -> %r",
                 len(renamed), *next((cid, n) for n, cid in renamed.items()))
    written: set[Path] = set()
    bar = track(cases, "exporting to nnU-Net", unit="case", enabled=progress)
    for case in bar:
        written.update(_export_case(case, names[case.case_id], modalities, len(labels), images_dir, labels_dir))

    report = ExportReport(out_dir, dataset_id, names, renamed, tuple(channel_names), tuple(labels))
    if replacing:
        report.removed = _remove_stale(out_dir, written, parts is not None)
        if report.removed:
            log.info("removed %d file(s) of the earlier export that this one does not write", len(report.removed))
    if parts is not None:
        report.split = parts
        in_split = {c for part in parts.values() for c in part}
        report.unassigned = [n for n in names.values() if n not in in_split]
        if report.unassigned:
            log.warning("%d exported case(s) are in no part of the split (in imagesTr, used by neither nnU-Net nor "
                        "pdeseg_split.json): %s", len(report.unassigned), report.unassigned[:5])
        _write_json(out_dir / SPLITS_FILE, [{"train": parts["train"], "val": parts["val"]}])
        _write_json(out_dir / PDESEG_SPLIT_FILE, parts)
    try:
        source_root = str(root.resolve())
    except OSError:  # pragma: no cover
        source_root = str(root)
    from pdeseg import __version__

    meta = {
        "name": dataset_name or parse_dataset_folder(out_dir)[1],
        "description": f"exported by pdeseg {__version__} from the {fmt.name} data set at {source_root}",
        "channel_names": {str(i): n for i, n in enumerate(channel_names)},
        "labels": {n: v for v, n in enumerate(labels)},
        "numTraining": len(cases),
        "file_ending": FILE_ENDING,
        "pdeseg": {
            "version": __version__,
            "source_format": fmt.name,
            "source_root": source_root,
            "format_options": options,
            "modalities": list(modalities),
            "class_names": list(info.class_names),
            "regions": {k: list(v) for k, v in info.regions.items()},
            "renamed_cases": renamed,
            "split": {"splits_final": SPLITS_FILE, "pdeseg": PDESEG_SPLIT_FILE,
                      "unassigned": report.unassigned} if parts is not None else None,
        },
    }
    _write_json(out_dir / DATASET_JSON, meta)
    log.info("wrote nnU-Net data set %s: %d case(s)%s", out_dir.name, len(cases),
             f"; copy {SPLITS_FILE} to $nnUNet_preprocessed/{out_dir.name}/ and train fold 0 to use the split"
             if parts is not None else "")
    return report


__all__ = ["ExportReport", "export_nnunet", "nnunet_case_names", "nnunet_label_names",
           "parse_dataset_folder", "storage_dtype"]
