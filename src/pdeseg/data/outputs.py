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
* TIFF (OME-TIFF, instance images, LGG ``.tif`` masks): the ``Software`` tag ``pdeseg``
  (:data:`TIFF_MARKER`, keyword arguments of ``tifffile.imwrite``);
* PNG masks: a ``tEXt`` chunk ``Software`` = ``pdeseg`` (:func:`png_marker`);
* NIfTI label volumes: the header's ``descrip`` ``pdeseg <version>`` (:func:`mark_nifti`);
* DICOM-SEG: ``Manufacturer`` ``pdeseg`` (:data:`DICOM_MANUFACTURER`, which the SEG
  writer also uses for its content creator);
* Zarr groups (OME-Zarr label layers): the attribute ``"pdeseg": {...}``.

A file of any other kind, or one that cannot be read, counts as someone else's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from pdeseg.errors import ConfigError, RunFolderError

#: The value of the markers (TIFF Software tag, start of JSON ``written_by``).
MARKER = "pdeseg"
#: Prefix of pdeseg's scratch folders (tiled prediction).
SCRATCH_PREFIX = ".pdeseg-tiles-"
#: ``tifffile.imwrite`` keyword arguments that mark a TIFF as pdeseg's (the ``Software`` tag).
TIFF_MARKER = {"software": MARKER}
#: The ``Manufacturer`` of pdeseg's DICOM-SEG files.
DICOM_MANUFACTURER = MARKER


def png_marker():
    """``PIL.PngImagePlugin.PngInfo`` with the ``tEXt`` chunk ``Software`` = ``pdeseg``; pass it
    as ``pnginfo=`` to ``Image.save``."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Software", MARKER)
    return info


def mark_nifti(header) -> None:
    """Set a NIfTI header's ``descrip`` (80 bytes) to ``pdeseg <version>`` (the label volume's
    own description; the input's is not a description of the prediction)."""
    from pdeseg import __version__

    header["descrip"] = f"{MARKER} {__version__}".encode()


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
                return tif.pages.first.software == MARKER
        if name.endswith(".png"):
            from PIL import Image

            with Image.open(path) as img:
                return img.format == "PNG" and getattr(img, "text", {}).get("Software") == MARKER
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
        descrip = nib.load(str(path)).header.get("descrip")
    except (ImageFileError, HeaderDataError):
        return False
    words = bytes(descrip).split(b"\0", 1)[0].decode("ascii", "replace").split() if descrip is not None else []
    return bool(words) and words[0] == MARKER


def _dicom_marked(path: Path) -> bool:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Manufacturer"])
    except InvalidDicomError:
        return False
    return str(ds.get("Manufacturer", "")) == DICOM_MANUFACTURER


def check_distinct(planned: Mapping[str, Iterable[str | Path]], what: str = "--output") -> None:
    """Refuse a plan in which two cases would write one file (the second would replace the first),
    counting names that differ only in case as one file (the output may be on a file system
    that ignores case).

    Args:
        planned: case id -> the files its prediction would write.
        what: the option that chose the folder (named in the message).

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
                raise RunFolderError(f"{path} would be written for two cases, {first} and {case}{same}; the second would "
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
