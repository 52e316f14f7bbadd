"""The rules every output of pdeseg obeys, in one place:

* :func:`check_name`: a name a user gives that becomes one component of a path (an OME-Zarr
  label layer, a case, an output file) is not empty, holds no path separator, is not ``.`` or
  ``..`` and does not start with ``.`` (pdeseg's hidden temporary and scratch names);
* :func:`check_outside`: an output path, resolved (symbolic links followed), lies outside
  every input it was derived from;
* :func:`check_replaceable`: an existing output is replaced only with ``overwrite``, and
  only when pdeseg wrote it (:func:`written_by_pdeseg`: the marker each writer leaves, see
  :data:`MARKER`), so ``--overwrite`` never deletes someone else's file or label layer.

Markers: JSON files carry a top-level ``"written_by": "pdeseg ..."``; YAML plans start with
``# planned by pdeseg``; OME-TIFF outputs have the TIFF ``Software`` tag ``pdeseg``; Zarr
groups (OME-Zarr label layers) carry the attribute ``"pdeseg": {...}``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from pdeseg.errors import ConfigError, RunFolderError

#: The value of the markers (TIFF Software tag, start of JSON ``written_by``).
MARKER = "pdeseg"
#: Prefix of pdeseg's scratch folders (tiled prediction).
SCRATCH_PREFIX = ".pdeseg-tiles-"


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
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return False


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
