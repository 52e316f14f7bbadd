"""The rules every output of pdeseg obeys, in one place:

* :func:`check_name`: a name a user gives that becomes one component of a path (an OME-Zarr
  label layer, a case, an output file) is not empty, holds no path separator, is not ``.`` or
  ``..`` and does not start with ``.`` (pdeseg's hidden temporary and scratch names);
* :func:`check_outside`: an output path, resolved (symbolic links followed), lies outside
  every input it was derived from;
* :func:`check_replaceable`: an existing output is replaced only with ``overwrite``, and
  only when pdeseg wrote it (:func:`written_by_pdeseg`: the marker each writer leaves, see
  :data:`MARKER`), so ``--overwrite`` never deletes someone else's file or label layer.

* :func:`check_distinct`: no file is planned for two cases of one run (the second would
  replace the first), names that differ only in case included.

Markers, each in the file's own metadata (one helper per kind for the writers):

* JSON files: a top-level ``"written_by": "pdeseg ..."``; YAML plans: the first line
  ``# planned by pdeseg``;
* TIFF (OME-TIFF, instance images, LGG ``.tif`` masks): the ``Software`` tag ``pdeseg ...``
  (:func:`tiff_marker`, keyword arguments of ``tifffile.imwrite``);
* PNG masks: a ``tEXt`` chunk ``Software`` = ``pdeseg ...`` (:func:`png_marker`);
* NIfTI label volumes: the header's ``descrip`` ``pdeseg ...`` (:func:`mark_nifti`);
* DICOM-SEG: ``Manufacturer`` ``pdeseg`` (:data:`DICOM_MANUFACTURER`, which the SEG
  writer also uses for its content creator);
* Zarr groups (OME-Zarr label layers): the attribute ``"pdeseg": {...}``.

The NIfTI, PNG and non-OME TIFF markers also hold a digest of the values written
(:func:`marker_text`): a copy corrected by hand and saved with the marker kept counts as
someone else's. A file of any other kind, or one that cannot be read, counts as someone else's.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from pdeseg.errors import ConfigError, RunFolderError

#: The value of the markers (TIFF Software tag, start of JSON ``written_by``).
MARKER = "pdeseg"
#: Prefix of pdeseg's scratch folders (tiled prediction).
SCRATCH_PREFIX = ".pdeseg-tiles-"
#: The ``Manufacturer`` of pdeseg's DICOM-SEG files.
DICOM_MANUFACTURER = MARKER


def content_digest(data) -> str:
    """16 hex digits of the SHA-256 of an array's values, shape and dtype (byte order aside)."""
    a = np.asarray(data)
    a = np.ascontiguousarray(a.astype(a.dtype.newbyteorder("="), copy=False))
    digest = hashlib.sha256(f"{a.dtype.name}{a.shape}".encode())
    digest.update(a.tobytes())
    return digest.hexdigest()[:16]


def marker_text(data=None) -> str:
    """``pdeseg <version>``, and with ``data`` `` sha256:<digest>`` of the values written: a file
    whose values were changed after pdeseg wrote it (a segmentation corrected by hand and saved
    keeping its metadata, as ITK-based editors keep a NIfTI ``descrip``) no longer counts as
    pdeseg's."""
    from pdeseg import __version__

    return f"{MARKER} {__version__}" + ("" if data is None else f" sha256:{content_digest(data)}")


def tiff_marker(data=None) -> dict:
    """``tifffile.imwrite`` keyword arguments that mark a TIFF as pdeseg's: the ``Software`` tag
    :func:`marker_text` of ``data`` (the array written)."""
    return {"software": marker_text(data)}


def png_marker(data=None):
    """``PIL.PngImagePlugin.PngInfo`` with the ``tEXt`` chunk ``Software`` = :func:`marker_text`
    of ``data`` (the array written); pass it as ``pnginfo=`` to ``Image.save``."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Software", marker_text(data))
    return info


def mark_nifti(header, data=None) -> None:
    """Set a NIfTI header's ``descrip`` (80 bytes) to :func:`marker_text` of ``data`` (the
    volume written; the input's description does not describe the prediction)."""
    header["descrip"] = marker_text(data).encode()


def _carries_marker(text: object, values: Callable[[], object]) -> bool:
    """``text`` is a marker, and when it holds a digest, ``values()`` still has it."""
    words = str(text or "").split()
    if not words or words[0] != MARKER:
        return False
    digests = [w.removeprefix("sha256:") for w in words if w.startswith("sha256:")]
    return not digests or content_digest(values()) == digests[0]


def check_name(name: object, what: str) -> str:
    """Return ``name`` when it can be one component of a path, else raise.

    Args:
        name: the user's name (e.g. ``--labels-name``).
        what: how the user gave it, for the message (e.g. ``"--labels-name"``).

    Raises:
        ConfigError: an empty name, ``.`` or ``..``, a name with ``/`` or ``\\`` (or the
            platform's separators), a NUL or control character, or a leading ``.``.
    """
    text = "" if name is None else str(name)
    seps = {"/", "\\", os.sep, *(filter(None, [os.altsep]))}
    problem = None
    if not text.strip():
        problem = "is empty"
    elif text in (".", ".."):
        problem = "is a relative folder, not a name"
    elif any(s in text for s in seps):
        problem = "holds a path separator"
    elif any(ord(ch) < 32 for ch in text):
        problem = "holds a control character"
    elif text.startswith("."):
        problem = "starts with '.' (hidden names are pdeseg's temporary files)"
    if problem:
        raise ConfigError(f"{what} {text!r} {problem}: give a plain name (letters, digits, '-', '_', '.'), which becomes "
                          "one file or folder name")
    return text


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def check_outside(output: str | Path, inputs: Iterable[str | Path], what: str) -> Path:
    """Return ``output`` resolved when it lies outside every one of ``inputs`` (files or folders).

    Args:
        output: the path to be written.
        inputs: the inputs it derives from (a data set's folder, an image).
        what: how the user named the output (e.g. ``"--out"``).

    Raises:
        RunFolderError: ``output`` is one of the inputs or lies inside one.
    """
    out = Path(output).expanduser().resolve()
    for item in inputs:
        source = Path(item).expanduser().resolve()
        if out == source or _inside(out, source):
            raise RunFolderError(f"{what} {output} lies inside the input {item}: pdeseg never writes into an input's "
                                 f"own files; choose a {what} outside it")
    return out


def written_by_pdeseg(path: str | Path) -> bool:
    """Whether ``path`` carries the marker pdeseg's writers leave (see the module docstring)."""
    path = Path(path)
    name = path.name.lower()
    try:
        if path.is_dir():
            for meta in ("zarr.json", ".zattrs"):
                if (path / meta).is_file():
                    data = json.loads((path / meta).read_text())
                    attrs = data.get("attributes", data) if meta == "zarr.json" else data
                    return isinstance(attrs, dict) and MARKER in attrs
            return False
        if name.endswith(".json"):
            data = json.loads(path.read_text())
            return isinstance(data, dict) and str(data.get("written_by", "")).startswith(MARKER)
        if name.endswith((".yaml", ".yml")):
            with open(path, encoding="utf-8", errors="replace") as fh:
                return fh.readline().startswith(f"# planned by {MARKER}")
        if name.endswith((".tif", ".tiff")):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                return _carries_marker(tif.pages.first.software, tif.asarray)
        if name.endswith(".png"):
            from PIL import Image

            with Image.open(path) as img:
                return img.format == "PNG" and _carries_marker(getattr(img, "text", {}).get("Software"),
                                                               lambda: np.asarray(img))
        if name.endswith((".nii", ".nii.gz")):
            return _nifti_marked(path)
        if name.endswith(".dcm"):
            return _dicom_marked(path)
    except (OSError, ValueError, UnicodeDecodeError, EOFError, KeyError):
        return False
    return False


def _nifti_marked(path: Path) -> bool:
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError

    try:
        img = nib.load(str(path))
        descrip = img.header.get("descrip")
        text = bytes(descrip).split(b"\0", 1)[0].decode("ascii", "replace") if descrip is not None else ""
        return _carries_marker(text, lambda: np.asanyarray(img.dataobj.get_unscaled()))
    except (ImageFileError, HeaderDataError):
        return False


def _dicom_marked(path: Path) -> bool:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Manufacturer"])
    except InvalidDicomError:
        return False
    return str(ds.get("Manufacturer", "")) == DICOM_MANUFACTURER


def check_distinct(planned: Mapping[str, Iterable[str | Path]], what: str = "--output", items: str = "cases") -> None:
    """Refuse a plan in which two cases would write one file (the second would replace the first),
    counting names that differ only in case as one file (the output may be on a file system
    that ignores case).

    Args:
        planned: case id (or image) -> the files its prediction would write.
        what: the option that chose the folder (named in the message).
        items: what the keys are, for the message (``cases``, ``images``).

    Raises:
        RunFolderError: a file planned for two cases; the message names it and both cases.
    """
    owner: dict[str, tuple[str, Path]] = {}
    for case, paths in planned.items():
        for path in paths:
            key = os.path.abspath(Path(path).expanduser()).casefold()
            first, first_path = owner.setdefault(key, (case, Path(path)))
            if first != case:
                same = "" if Path(path) == first_path else (f" (on a file system that ignores case, as macOS, Windows "
                                                             f"and most network shares do, {first_path.name} is the same file)")
                raise RunFolderError(f"{path} would be written for two {items}, {first} and {case}{same}; the second would "
                                     f"replace the first, so nothing was written: rename one of them or predict them into "
                                     f"separate {what} folders")


def check_still_ours(paths: Iterable[str | Path], what: str = "--output") -> None:
    """Just before a planned output is written: refuse when a file without pdeseg's marker has
    appeared at one of ``paths`` since the run was checked (someone saved a file there meanwhile).

    Raises:
        RunFolderError: such a file (named; it is left as it is).
    """
    for path in map(Path, paths):
        if (path.exists() or path.is_symlink()) and (path.is_symlink() or not written_by_pdeseg(path)):
            raise RunFolderError(f"{path} appeared after the outputs were checked and was not written by pdeseg, so it "
                                 f"is not replaced; move it or choose another {what}")


def check_replaceable(path: str | Path, overwrite: bool, what: str) -> None:
    """Refuse to replace ``path`` unless ``overwrite`` is given and pdeseg wrote it.

    Args:
        path: the output about to be written.
        overwrite: the user's ``--overwrite``.
        what: the option that chose the path (named in the message).

    Raises:
        RunFolderError: ``path`` exists and ``overwrite`` is off, or it exists without
            pdeseg's marker (someone else's file: never replaced).
    """
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    if not overwrite:
        raise RunFolderError(f"{path} already exists; pass --overwrite to replace it, or choose another {what}")
    if path.is_symlink() or not written_by_pdeseg(path):
        raise RunFolderError(f"{path} exists and was not written by pdeseg, so --overwrite does not replace it; "
                             f"choose another {what}")
