"""Segmenting a folder of cases and writing each prediction in the input's own format and
geometry (the data format decides how): :func:`predict_folder`, the checks it makes before
any case is read (:func:`check_outputs`), and its :class:`PredictionReport`.

The forward pass, preprocessing and decoding are the :class:`~pdeseg.inference.predict.Predictor`'s;
this module only plans, reads ahead, writes and reports. :func:`predict_folder` never replaces
an input file, replaces existing outputs only when asked to (``overwrite``), checks both before
any case is read, writes every file through a temporary name, and skips (and reports) cases
that cannot be read or segmented.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pdeseg.data.case import LoadedCase
from pdeseg.data.files import blocking_path, describe_blocker, make_folders, remove_empty
from pdeseg.data.formats import DataFormat, get_format
from pdeseg.data.outputs import check_distinct, check_replaceable, check_still_ours
from pdeseg.errors import ConfigError, DataError, PdesegError, RunFolderError
from pdeseg.inference.decode import Segmentation
from pdeseg.inference.ensemble import EnsembleModel
from pdeseg.inference.options import InferenceOptions
from pdeseg.inference.predict import Predictor, flip_sets, read_ahead
from pdeseg.progress import track

log = logging.getLogger(__name__)


@dataclass
class PredictionReport:
    """What :func:`predict_folder` did.

    Attributes:
        written: for each segmented case, in order, the file or case folder written.
        skipped: case -> reason, for each case that could not be read or segmented, or was not
            written because a write failed (disk full) after earlier cases were written.
    """

    written: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: ``wrote N, skipped M: case A (reason), ...``."""
        line = f"wrote {len(self.written)}, skipped {len(self.skipped)}"
        if self.skipped:
            line += ": " + ", ".join(f"{case} ({_first_line(reason)})" for case, reason in self.skipped.items())
        return line


def _first_line(text: str) -> str:
    return str(text).strip().splitlines()[0] if str(text).strip() else ""


def _check_folders(out_dir: Path, outputs: Iterable[Path]) -> None:
    """Raises RunFolderError when ``out_dir`` or an output's folder lies below a file (or a
    link to nothing)."""
    for folder in dict.fromkeys([out_dir, *(p.parent for p in outputs)]):
        blocker = blocking_path(folder)
        if blocker is not None:
            raise RunFolderError(f"--output {out_dir}: {blocker} {describe_blocker(blocker)}, so {folder} cannot be "
                                 "created; choose another --output")


def _check_inputs_untouched(planned: dict[str, list[Path]], inputs: dict[Path, str]) -> None:
    """Raises RunFolderError when a planned output is one of the input cases' files."""
    for paths in planned.values():
        for path in paths:
            owner = inputs.get(path.resolve())
            if owner is not None:
                raise RunFolderError(f"{path} is an input file of case {owner}; the prediction would replace it "
                                     "(refused even with --overwrite): choose another --output")


def _check_existing(planned: dict[str, list[Path]], overwrite: bool) -> None:
    """Raises RunFolderError when planned outputs exist (and ``overwrite`` is off) or are folders."""
    paths = [p for ps in planned.values() for p in ps]
    folders = [p for p in paths if p.is_dir()]
    if folders:
        raise RunFolderError(f"{folders[0]} is a folder where a prediction file would go; move it or choose another --output")
    existing = [p for p in paths if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        raise RunFolderError(f"{existing[0]} already exists ({len(existing)} of the {len(paths)} output files exist); "
                             "pass --overwrite to replace them, or choose another --output")
    for path in existing:  # --overwrite replaces only pdeseg's own earlier outputs (their marker)
        check_replaceable(path, overwrite, "--output")


def check_outputs(fmt: DataFormat, cases: list, modalities: list[str], out_dir: str | Path, overwrite: bool = False,
                  **write_options) -> dict[str, list[Path]]:
    """Every file a prediction of ``cases`` would write, checked before any case is read.

    Args:
        fmt: the data format (it names the outputs).
        cases: the input cases (their files are never replaced).
        modalities: the channels the model reads (their files count as input files).
        out_dir: the output folder.
        overwrite: allow replacing existing output files (never input files).
        write_options: the format's output options.

    Returns:
        case id -> the files its prediction would write.

    Raises:
        RunFolderError: an output is one of the input cases' files (even with ``overwrite``),
            is planned for two cases, already exists (without ``overwrite``; with it, when it
            lacks pdeseg's marker, see :mod:`pdeseg.data.outputs`) or is a folder, or the
            output folder lies below a file.
        ConfigError: an output option the format does not take or allow.
    """
    out_dir = Path(out_dir).expanduser()
    planned = {case.case_id: fmt.output_paths(case, out_dir, **write_options) for case in cases}
    inputs = {f.resolve(): case.case_id for case in cases for f in case.source_files(modalities)}
    _check_folders(out_dir, [p for ps in planned.values() for p in ps])
    _check_inputs_untouched(planned, inputs)
    check_distinct(planned)
    _check_existing(planned, overwrite)
    return planned


def _skip(report: PredictionReport, case_id: str, reason: str) -> None:
    report.skipped[case_id] = reason
    log.warning("skipped case %s: %s", case_id, _first_line(reason))


def _input_format(predictor: Predictor, input_dir: str | Path, name: str | None) -> DataFormat:
    """The format the input is read with: ``name``, else where
    :func:`~pdeseg.data.detect.route_input` sends it (DICOM for DICOM files, else the
    checkpoint's). A DICOM case gives any model its channels; other formats must be the
    checkpoint's own (their classes and label values are the model's).

    Raises:
        DataError: nothing at ``input_dir``.
        ConfigError: another format named, or OME images (segmented tile by tile:
            :func:`pdeseg.inference.ome_predict.predict_ome`, which ``pdeseg predict`` routes them to).
    """
    from pdeseg.data.detect import route_input

    own = predictor.format.name
    cell_model = predictor.format.has_cells and predictor.spec.spatial_dims == 2
    if name is None:
        name = route_input(input_dir, own).format
        if name == "ome":
            raise ConfigError(f"{input_dir} holds OME-TIFF / OME-Zarr images: they are segmented tile by tile by "
                              "pdeseg.inference.ome_predict.predict_ome (pdeseg predict routes them there)")
        if name == own and cell_model:
            name = _cell_input(predictor, input_dir)
    if name in ("dicom", own) or (cell_model and _is_cell_format(name)):
        return get_format(name)
    also = ", any 2D cell image layout or a folder of images" if cell_model else ""
    raise ConfigError(f"input format {name!r}: this model reads {own} cases (or DICOM series{also})")


def _is_cell_format(name: str | None) -> bool:
    """A microscopy format of 2D object images (each case one image, read as a one-slice stack)."""
    return name is not None and get_format(name).has_cells


def _refuse_mixing_with_images(fmt: DataFormat, cases: list, modalities: Sequence[str], out_dir: Path) -> None:
    """A microscopy format reads every image file of its image folder: segmentations written
    into that folder would be read as images by the next run, so ``--output`` must be another.

    Raises:
        RunFolderError: the output folder holds some of the images to segment.
    """
    if not fmt.has_cells:
        return
    target = out_dir.resolve()
    for case in cases:
        if any(Path(f).resolve().parent == target for f in case.source_files(modalities)):
            raise RunFolderError(f"--output {out_dir} is the folder of the images to segment: the masks written "
                                 "there would be read as images next time; choose another --output folder")


def _cell_input(predictor: Predictor, input_dir: str | Path) -> str:
    """The format a 2D cell model reads ``input_dir`` with: its own format where that finds
    cases there; else the layout of another 2D cell data set (LIVECell, an image folder with
    masks); else ``cell_folder`` for plain images (a folder of PNG/TIFF files, or one file), so
    that a user's own images need no particular layout; else its own format, whose reader
    names what is wrong."""
    from pdeseg.data.detect import detect_format

    path = Path(input_dir).expanduser()
    if path.is_file():
        return "cell_folder"
    try:
        if predictor.format.find_cases(path, predictor.modalities, require_label=False):
            return predictor.format.name
    except DataError:
        pass
    try:
        found = detect_format(path)
    except DataError:
        found = None
    if _is_cell_format(found) and found != predictor.format.name:
        return found
    from pdeseg.data.readers.cells import find_image_files

    if path.is_dir() and find_image_files(path):
        return "cell_folder"
    return predictor.format.name  # its own reader says what is wrong with the folder


def _placeable(cases: list, skipped: dict[str, str]) -> list:
    """The DICOM cases a SEG can be derived from (the reference series has a frame of
    reference); the others are put in ``skipped`` before any is segmented."""
    kept = []
    for case in cases:
        if not case.reference.frame_of_reference:
            skipped[case.case_id] = (f"{case.reference.label}: no FrameOfReferenceUID, so a DICOM-SEG cannot be placed on "
                                     "it; use --output-format nifti")
        else:
            kept.append(case)
    return kept


def _write_dicom(predictor: Predictor, seg: Segmentation, loaded: LoadedCase, out_dir: Path, write_options: dict) -> Path:
    """Write a DICOM case's prediction (SEG segments named by the model's classes or regions)."""
    from pdeseg.data.readers.dicom_seg import segments_for, write_prediction

    spec = predictor.spec
    segments = segments_for(spec.class_names, spec.regions, spec.output)
    try:
        return write_prediction(seg.classes, loaded, out_dir, segments=segments, probabilities=seg.probabilities,
                                description=f"pdeseg {predictor.name}", **write_options)
    except OSError as exc:
        raise RunFolderError(f"cannot write the prediction of {loaded.case.case_id} under {out_dir}: {exc}") from exc


def _write(fmt: DataFormat, seg: Segmentation, loaded: LoadedCase, out_dir: Path, write_options: dict) -> Path:
    """Write one prediction (a cell format also gets the model's own cells); an OSError (disk
    full, permissions) stops the run as a RunFolderError."""
    try:
        if fmt.object_metrics and seg.instances is not None:
            return fmt.write_prediction(seg.classes, loaded, out_dir, objects=seg.instances, **write_options)
        return fmt.write_prediction(seg.classes, loaded, out_dir, **write_options)
    except OSError as exc:
        raise RunFolderError(f"cannot write the prediction of {loaded.case.case_id} under {out_dir}: {exc}") from exc


def _stop_after_fault(report: PredictionReport, cases: list, failed: str, exc: Exception) -> None:
    """A write failed (disk full, folder gone) after some cases were written: the case and
    every one after it are reported as not written (the run then exits 1, not 2, since
    files were written), and the error names what was written."""
    ids = [c.case_id for c in cases]
    left = ids[ids.index(failed):]
    log.error("%s; stopped after writing %d of %d case(s); not written: %s", exc, len(report.written), len(ids), ", ".join(left))
    for case_id in left:
        report.skipped[case_id] = f"not written: {exc}" if case_id == failed else "not written: the run stopped at an earlier fault"


def predict_folder(
    checkpoint: str | Path | Sequence[str | Path],
    input_dir: str | Path,
    output_dir: str | Path,
    options: InferenceOptions | None = None,
    progress: bool = True,
    overwrite: bool = False,
    input_format: str | None = None,
    read_options: dict | None = None,
    shard: tuple[int, int] | None = None,
    **write_options,
) -> PredictionReport:
    """Segment one case folder or a folder of cases, writing each in the input's own format
    (BraTS: ``<output>/<case>_seg.nii.gz`` with the input's affine, header and label values;
    LGG: ``<output>/<case>/<case>_<n>_mask.<png|tif>``).

    Before any case is read, every output path is computed and checked: none may be an
    input case's own file (image or label, even with ``overwrite``), none may exist unless
    ``overwrite``, and the output folder may not lie below a file. Each file is written to a
    temporary name in its folder and then renamed. A case that cannot be found consistently,
    read or segmented (a :class:`~pdeseg.errors.PdesegError`) is logged, skipped and
    reported; the others are written. Labels are never read.

    Args:
        checkpoint: a pdeseg checkpoint (model, weights, preprocessing, data format), or
            several, or a folder of runs: an ensemble (:meth:`Predictor.from_checkpoints`).
        input_dir: a case folder or a folder of cases.
        output_dir: where predictions go (created).
        options: device, precision, batch size, overlap, tta, stitching and post-processing
            (:class:`~pdeseg.inference.options.InferenceOptions`).
        progress: show progress (over cases, and over the windows or slices of each case).
        overwrite: replace existing output files (input files are never replaced).
        input_format: ``dicom`` to read DICOM series (cases of the model's channels, see
            :mod:`pdeseg.data.readers.dicom`); None: DICOM when the input folder holds DICOM
            files, else the checkpoint's own data format.
        read_options: the input format's reading options (DICOM: ``series`` rules,
            ``gantry_tilt``); None values mean the default.
        shard: ``(i, n)``: segment only shard ``i`` of ``n`` of the cases (round robin over the
            sorted case ids, :mod:`pdeseg.inference.shard`).
        write_options: the data format's output options (``convention`` for BraTS,
            ``mask_format`` for LGG, ``output_format`` and ``seg_type`` for DICOM); None
            values mean the default.

    Returns:
        the written files or case folders and the skipped cases with their reasons
        (nothing written when every case was skipped).

    Raises:
        RunFolderError: see :func:`check_outputs`; or the first output cannot be written (a
            later write that fails stops the run, and the case and those after it are
            reported as skipped beside the written ones).
        CheckpointError, DeviceError, ConfigError: unusable checkpoint, device or option.
        DataError: the input folder is missing or holds no cases at all.
    """
    predictor = Predictor.from_checkpoints(checkpoint, options)
    if predictor.postprocessing.enabled:
        log.info("post-processing: %s", predictor.postprocessing.describe())
    if isinstance(predictor.model, EnsembleModel):
        log.info("%s: class probabilities averaged", predictor.name)
    if predictor.tta:
        log.info("test-time augmentation: probabilities averaged over %d mirrorings per forward pass",
                 len(flip_sets(predictor.spec.spatial_dims)))
    fmt, out_dir = _input_format(predictor, input_dir, input_format), Path(output_dir).expanduser()
    read_options = {k: v for k, v in (read_options or {}).items() if v is not None}
    fmt.check_read_options(read_options)
    dicom = fmt.name == "dicom"
    if dicom:
        write_options = {"output_format": "dicom-seg", **{k: v for k, v in write_options.items() if v is not None}}
        log.info("DICOM input: %s", "; ".join(f"{k}={v}" for k, v in {**read_options, **write_options}.items()))
    report = PredictionReport()
    cases = fmt.find_cases(input_dir, predictor.modalities, require_label=False, skipped=report.skipped, **read_options)
    _refuse_mixing_with_images(fmt, cases, predictor.modalities, out_dir)
    if shard is not None:  # this copy's share of the cases (pdeseg.inference.shard)
        from pdeseg.inference.shard import shard_cases

        cases, report.skipped = shard_cases(cases, report.skipped, shard)
    if dicom and write_options["output_format"] != "nifti":
        cases = _placeable(cases, report.skipped)
    for case_id, reason in report.skipped.items():
        log.warning("skipped case %s: %s", case_id, _first_line(reason))
    check_outputs(fmt, cases, predictor.modalities, out_dir, overwrite, **write_options)
    created = make_folders(out_dir, "--output") if cases else []
    try:
        _predict_cases(predictor, fmt, cases, out_dir, write_options, report, progress)
    finally:
        if not report.written:  # every case skipped (or the run refused): leave no empty output folder
            remove_empty(created)
    if report.skipped:
        log.warning("%s", report.summary())
    else:
        log.info("%s", report.summary())
    return report


def _predict_cases(predictor, fmt, cases: list, out_dir: Path, write_options: dict, report: PredictionReport,
                   progress: bool) -> None:
    """Segment and write ``cases`` one by one into ``report`` (a bad case is skipped; a write
    fault after some were written stops the run, see :func:`_stop_after_fault`).

    Raises:
        RunFolderError: the first write fails (nothing written yet).
    """
    dicom = fmt.name == "dicom"
    fractional = dicom and write_options.get("seg_type") == "fractional"
    for case, read in zip(track(cases, "predicting", "case", enabled=progress), read_ahead(predictor.read, cases)):
        try:
            loaded, seg = predictor.predict_case(case, progress, with_probabilities=fractional, prepared=read.result())
        except PdesegError as exc:
            _skip(report, case.case_id, str(exc))
            continue
        try:
            check_still_ours(fmt.output_paths(case, out_dir, **write_options))  # a file saved there during the run
            if dicom:
                try:
                    path = _write_dicom(predictor, seg, loaded, out_dir, write_options)
                except DataError as exc:  # the source headers do not allow a SEG (reported, the others go on)
                    _skip(report, case.case_id, str(exc))
                    continue
            else:
                path = _write(fmt, seg, loaded, out_dir, write_options)
        except RunFolderError as exc:
            if not report.written:
                raise  # nothing written: the run is refused as a whole (exit 2)
            _stop_after_fault(report, cases, case.case_id, exc)
            break
        counts = np.bincount(seg.classes.ravel(), minlength=predictor.spec.num_classes)
        cells = f", {int(seg.instances.max(initial=0))} cells" if seg.instances is not None and fmt.object_metrics else ""
        log.info("%s -> %s (%s%s)", case.case_id, path,
                 ", ".join(f"{n}: {v}" for n, v in zip(predictor.spec.class_names, counts)), cells)
        report.written.append(path)
