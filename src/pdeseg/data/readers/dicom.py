"""Reader for DICOM image series (pydicom): a folder of files in, cases of volumes with their geometry out.

The reader is three modules, one step each:

* :mod:`pdeseg.data.readers.dicom_scan` groups the files below a folder into series by ``SeriesInstanceUID``
  (headers only);
* :mod:`pdeseg.data.readers.dicom_series` checks that a series is one volume, gives its geometry (the voxel order
  and RAS+ affine convention, shared with the NIfTI readers) and decodes its pixels;
* this module makes cases of the series: :func:`find_dicom_cases`, :class:`DicomCase`, readable unique case names
  and :func:`is_dicom_folder`.

Each image series becomes one case of a one-channel model. A study whose series are a model's channels (BraTS:
FLAIR, T1, T1ce, T2) is one case: each channel takes the series whose ``SeriesDescription`` matches that channel's
patterns (:data:`DEFAULT_SERIES_RULES`, or ``series`` rules from the config / command line), and the channels must
share one grid.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from pdeseg.data.case import LoadedCase
from pdeseg.data.readers.dicom_scan import scan_series
from pdeseg.data.readers.dicom_series import TILT_MODES, DicomSeries, DicomSeriesError
from pdeseg.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: ``SeriesDescription`` patterns (``fnmatch``, case-insensitive) of the BraTS channels, tried
#: in this order (a series goes to the first channel that matches it: T1 post-contrast before
#: T1, FLAIR before T2).
DEFAULT_SERIES_RULES: dict[str, tuple[str, ...]] = {
    "t1ce": ("*t1*ce*", "*t1*c+*", "*t1*gd*", "*t1*post*", "*t1*contrast*", "*t1c", "*t1c_*", "*t1c *", "*t1-c*"),
    "flair": ("*flair*", "*t2f*", "*t2-f*", "*t2_f*"),
    "t2": ("*t2*",),
    "t1": ("*t1*", "*mprage*", "*spgr*"),
}

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def parse_series_rules(rules: Any) -> dict[str, tuple[str, ...]] | None:
    """``series`` rules as channel -> patterns.

    Accepts a mapping (``{flair: ["*FLAIR*"], ...}`` from a YAML config), a list of
    ``"channel=pattern[,pattern...]"`` strings, or one such string with rules separated by
    ``;`` (command line). None or empty: None (the defaults).

    Raises:
        ConfigError: a rule without ``=`` or without patterns.
    """
    if rules is None or (isinstance(rules, (str, Mapping, list, tuple)) and not rules):
        return None
    if not isinstance(rules, (str, Mapping, list, tuple)):
        raise ConfigError(f"series rules must be a mapping channel -> patterns or 'channel=PATTERN[,PATTERN]' strings, "
                          f"got {type(rules).__name__} {rules!r}")
    if isinstance(rules, Mapping):
        items = [(str(k), [v] if isinstance(v, str) else list(v)) for k, v in rules.items()]
    else:
        texts = [t for r in ([rules] if isinstance(rules, str) else list(rules)) for t in str(r).split(";") if t.strip()]
        items = []
        for text in texts:
            channel, sep, patterns = text.partition("=")
            if not sep or not channel.strip() or not patterns.strip():
                raise ConfigError(f"series rule {text!r} must look like channel=PATTERN[,PATTERN...] (SeriesDescription "
                                  "glob patterns, case-insensitive)")
            items.append((channel.strip(), [p.strip() for p in patterns.split(",") if p.strip()]))
    out: dict[str, tuple[str, ...]] = {}
    for channel, patterns in items:
        if not patterns:
            raise ConfigError(f"series rule for channel {channel!r} names no pattern")
        out[channel] = out.get(channel, ()) + tuple(patterns)
    return out


def series_rules(series: Any, modalities: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The rules that assign a study's series to ``modalities``: the user's ``series`` rules
    (tried first, in the order given) followed by the built-in ones
    (:data:`DEFAULT_SERIES_RULES`) for the channels the model reads, so user rules add to the
    built-in ones; a channel's user patterns come before its built-in patterns.

    Raises:
        ConfigError: bad ``series`` rules (see :func:`parse_series_rules`).
    """
    user = parse_series_rules(series) or {}
    rules = {m: tuple(p) for m, p in user.items()}
    for m, patterns in DEFAULT_SERIES_RULES.items():
        if m in modalities:
            rules[m] = rules.get(m, ()) + tuple(p for p in patterns if p not in rules.get(m, ()))
    return rules


def channel_of(description: str, rules: Mapping[str, Sequence[str]]) -> str | None:
    """The first channel (in rule order) one of whose patterns matches ``description``."""
    text = description.lower()
    for channel, patterns in rules.items():
        if any(fnmatch.fnmatchcase(text, p.lower()) for p in patterns):
            return channel
    return None


def _safe(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("_") or "series"


@dataclass
class DicomCase:
    """One case: a series (one-channel models) or a study's series, one per channel.

    Attributes:
        case_id: from the series' folder (and series number when a folder holds several), made
            unique by patient, study and a hash of the UID (:func:`unique_case_names`).
        folder: the folder of the (first channel's) files.
        channels: channel name -> series, in the model's channel order.
        gantry_tilt: how a tilted stack is handled (``refuse`` or ``resample``).
    """

    case_id: str
    folder: Path
    channels: dict[str, DicomSeries]
    gantry_tilt: str = "refuse"
    numbers: list[int] | None = None

    @property
    def reference(self) -> DicomSeries:
        """The series predictions are written against (the first channel's)."""
        return next(iter(self.channels.values()))

    def source_files(self, modalities: Sequence[str] | None = None) -> list[Path]:
        chosen = modalities or list(self.channels)
        return [f for m in chosen if m in self.channels for f in self.channels[m].files]

    def load(self, modalities: Sequence[str] | None = None, with_label: bool = True) -> LoadedCase:
        """Read the channels as ``LoadedCase`` (image ``(C, X, Y, Z)`` float32, RAS affine).

        Raises:
            DicomSeriesError: a series is not one volume or cannot be decoded, or the channels
                do not share one grid (shape and affine).
        """
        chosen = list(modalities or self.channels)
        missing = [m for m in chosen if m not in self.channels]
        if missing:
            raise DataError(f"DICOM case {self.case_id}: no series for channel(s) {missing}")
        volumes, ref = [], None
        for m in chosen:
            series = self.channels[m]
            volume, affine, zooms = series.read_volume(self.gantry_tilt)
            if ref is None:
                ref = (series, volume.shape, affine, zooms)
            elif volume.shape != ref[1] or not np.allclose(affine, ref[2], atol=1e-3):
                raise series.error(f"channel {m} is not on the grid of channel {chosen[0]} ({ref[0].label}): shape "
                                   f"{volume.shape} vs {ref[1]}, affine {np.round(affine, 3).tolist()} vs "
                                   f"{np.round(ref[2], 3).tolist()}")
            volumes.append(volume)
        _, shape, affine, zooms = ref
        header = nib.Nifti1Header()
        header.set_data_shape(shape)
        header.set_zooms(zooms)
        header.set_xyzt_units("mm")
        header.set_sform(affine, code=1)
        header.set_qform(affine, code=1)
        return LoadedCase(case=self, image=np.stack(volumes), label=None, affine=affine, header=header,
                          convention="dicom", modalities=tuple(chosen))


def find_dicom_cases(root: str | Path, modalities: Sequence[str], require_label: bool = False,
                     skipped: dict[str, str] | None = None, series: Any = None, gantry_tilt: str | None = None) -> list[DicomCase]:
    """The cases below ``root``: every image series (one channel), or per study the series the
    ``series`` rules assign to the channels (several channels).

    Each series' geometry is checked from its headers here; a series that is not one volume
    (and, for several channels, a study without a series for a channel or with two) is put in
    ``skipped`` with its one-line reason (or raised without ``skipped``).

    Args:
        modalities: the model's channels.
        require_label: DICOM series carry no training labels (True raises).
        series: channel -> SeriesDescription patterns (see :func:`parse_series_rules`).
        gantry_tilt: ``refuse`` (default) or ``resample``.

    Raises:
        DataError: no DICOM image series below ``root``; with ``require_label``; without
            ``skipped``, the first series or study that cannot be a case.
        ConfigError: bad ``series`` rules or ``gantry_tilt``.
    """
    root = Path(root).expanduser()
    tilt = gantry_tilt or "refuse"
    if tilt not in TILT_MODES:
        raise ConfigError(f"gantry_tilt must be one of {', '.join(TILT_MODES)}, got {gantry_tilt!r}")
    if require_label:
        raise DataError(f"{root}: the dicom format reads images only (no labels): use it to predict, or convert the "
                        "labelled cases to NIfTI for training and evaluation")
    found, others = scan_series(root)
    if others:
        log.info("%s: %d file(s) that are not DICOM left out (e.g. %s)", root, len(others), others[0].name)
    if not found:
        raise DataError(f"{root}: no DICOM files found ({len(others)} other file(s))")
    images, refused = [], {}
    for s in found:
        try:
            s.check(tilt)
        except DicomSeriesError as exc:
            refused[s.uid] = (s, str(exc))
            continue
        images.append(s)
    cases: list[DicomCase] = []
    problems: dict[str, str] = {}
    folder_count: dict[Path, int] = {}
    for s in found:
        folder_count[s.files[0].parent] = folder_count.get(s.files[0].parent, 0) + 1
    modalities = list(modalities)
    if len(modalities) <= 1 and not series:
        channel = modalities[0] if modalities else "image"
        names = unique_case_names([(s.uid, _case_id(root, s, folder_count), _qualifiers([s])) for s in found])
        for s in found:
            cid = names[s.uid]
            if s.uid in refused:
                problems[cid] = refused[s.uid][1]
            else:
                cases.append(DicomCase(cid, s.files[0].parent, {channel: s}, tilt))
    else:
        rules = series_rules(series, modalities)
        unruled = [m for m in modalities if m not in rules]
        if unruled:
            raise ConfigError(f"no series rule for channel(s) {unruled}: give SeriesDescription patterns, e.g. "
                              f"predict --series {unruled[0]}='*{unruled[0]}*' (or data.format_options.series)")
        studies: dict[str, list[DicomSeries]] = {}
        for s in found:
            studies.setdefault(s.study_uid, []).append(s)
        names = unique_case_names([(uid, _study_id(root, members), _qualifiers(members)) for uid, members in studies.items()])
        for study_uid, members in studies.items():
            cid = names[study_uid]
            chosen: dict[str, list[DicomSeries]] = {m: [] for m in modalities}
            for s in members:
                ch = channel_of(s.description, rules)
                if ch in chosen:
                    chosen[ch].append(s)
            bad = [m for m in modalities if len(chosen[m]) != 1]
            if bad:
                m = bad[0]
                present = ", ".join(repr(s.description) for s in members) or "none"
                what = "no series matches" if not chosen[m] else f"{len(chosen[m])} series match"
                problems[cid] = (f"study {study_uid} in {members[0].files[0].parent}: {what} channel {m} (patterns "
                                 f"{list(rules[m])}); its series: {present}")
                continue
            refusal = next((refused[chosen[m][0].uid][1] for m in modalities if chosen[m][0].uid in refused), None)
            if refusal:
                problems[cid] = refusal
                continue
            cases.append(DicomCase(cid, chosen[modalities[0]][0].files[0].parent, {m: chosen[m][0] for m in modalities}, tilt))
    if problems and skipped is None:
        raise DicomSeriesError(next(iter(problems.values())))
    if skipped is not None:
        skipped.update(problems)
    return cases


def _relative(root: Path, folder: Path) -> str:
    try:
        rel = folder.resolve().relative_to(root.resolve())
    except ValueError:
        rel = Path(folder.name)
    parts = [p for p in rel.parts if p not in ("", ".")]
    return "_".join(parts) if parts else root.resolve().name


def _case_id(root: Path, s: DicomSeries, folder_count: dict[Path, int]) -> str:
    folder = s.files[0].parent
    base = _safe(_relative(root if root.is_dir() else root.parent, folder))
    if folder_count.get(folder, 1) > 1:
        base += f"_s{_safe(s.number or s.uid[-8:])}"
    return base


def _study_id(root: Path, members: list[DicomSeries]) -> str:
    import os

    common = Path(os.path.commonpath([str(s.files[0].parent) for s in members]))
    return _safe(_relative(root if root.is_dir() else root.parent, common))


def _qualifiers(members: list[DicomSeries]) -> list[str]:
    """Readable parts that tell a case from another of the same name: patient, then study."""
    s = members[0]
    return [f"p{_safe(s.patient_id)}" if s.patient_id else "", f"st{_safe(s.study_id)}" if s.study_id else ""]


def unique_case_names(entries: Sequence[tuple[str, str, Sequence[str]]]) -> dict[str, str]:
    """One distinct, readable case name per identity (a SeriesInstanceUID, or a
    StudyInstanceUID for several channels), the same whatever subset of the folder is read.

    Args:
        entries: ``(uid, base name, qualifiers)``: the base name is the folder (and series
            number); while two uids share a name, the qualifiers (patient, study) that tell
            them apart are added in order, and a short hash of the uid last.

    Returns:
        uid -> name.
    """
    import hashlib

    names = {uid: base for uid, base, _ in entries}
    quals = {uid: list(q) for uid, _, q in entries}
    for level in range(max((len(q) for q in quals.values()), default=0) + 1):
        groups: dict[str, list[str]] = {}
        for uid, name in names.items():
            groups.setdefault(name, []).append(uid)
        clashes = [uids for uids in groups.values() if len(uids) > 1]
        if not clashes:
            break
        for uids in clashes:
            if level < len(quals[uids[0]]):
                parts = {u: quals[u][level] if level < len(quals[u]) else "" for u in uids}
                if len(set(parts.values())) > 1:  # this qualifier tells (some of) them apart
                    for u in uids:
                        names[u] = f"{names[u]}_{parts[u]}" if parts[u] else names[u]
            else:
                for u in uids:
                    names[u] = f"{names[u]}_u{hashlib.sha1(u.encode()).hexdigest()[:8]}"
    return names


def is_dicom_folder(root: str | Path, limit: int = 64) -> bool:
    """True when ``root`` (a file or folder) holds a DICOM file (``DICM`` after the 128-byte
    preamble) among its first ``limit`` files."""
    root = Path(root).expanduser()
    if not root.exists():
        return False
    paths = [root] if root.is_file() else (p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    for n, path in enumerate(paths):
        if n >= limit:
            break
        try:
            with open(path, "rb") as fh:
                head = fh.read(132)
        except OSError:
            continue
        if len(head) == 132 and head[128:] == b"DICM":
            return True
    return False
