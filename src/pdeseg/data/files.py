"""Writing output files so that a killed process never leaves a half-written file under
the final name: each file is written to a hidden temporary name in the same folder
(``.<name>.tmp-XXXXXXXX<ext>``) and renamed over the final name with :func:`os.replace`,
which is atomic within one file system.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

#: Marker in the names of temporary files (``.<name>.tmp-<hex><ext>``).
TMP_MARKER = ".tmp-"
#: Extensions kept at the end of a temporary name, so that writers choosing the file type
#: from the name (nibabel, PIL) still do.
_EXTENSIONS = (".nii.gz", ".nii", ".png", ".tiff", ".tif")


def split_extension(name: str) -> tuple[str, str]:
    """``("case_seg", ".nii.gz")`` for ``"case_seg.nii.gz"``; the last suffix otherwise."""
    for ext in _EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)], name[-len(ext):]
    stem, dot, ext = name.rpartition(".")
    return (stem, dot + ext) if dot and stem else (name, "")


def temporary_path(path: Path) -> Path:
    """A new, empty hidden file beside ``path`` that keeps its extension; created here (with
    the default permissions) so that no other writer can take the same name."""
    base, ext = split_extension(path.name)
    while True:
        tmp = path.with_name(f".{base}{TMP_MARKER}{secrets.token_hex(4)}{ext}")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue


def write_atomically(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Write a file through a temporary name in its folder, then rename it to ``path``.

    Args:
        path: the final file (its folder must exist).
        write: ``write(tmp_path)`` writes the whole file to ``tmp_path``.

    Returns:
        ``path``.

    Raises:
        OSError: the folder is not writable, the disk is full, ... (the temporary file is
            removed, ``path`` is left as it was).
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
