"""Writing output files so that a killed process never leaves a half-written file under
the final name: each file is written to a hidden temporary name in the same folder
(``.<name>.tmp-XXXXXXXX<ext>``) and renamed over the final name with :func:`os.replace`,
which is atomic within one file system.

Output folders are checked here too, before any work: :func:`check_output_folder` (it can
be created, or it exists, and a file can be written in it) and :func:`make_folders` (create
it, remembering what was created so that a refused command can remove it again).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

from pdeseg.errors import RunFolderError

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


def blocking_path(folder: str | Path) -> Path | None:
    """The nearest path at or above ``folder`` that is in the way of a folder there: a file, or
    a symbolic link to nothing; None when ``folder`` exists as a folder or can be made."""
    for path in (Path(folder), *Path(folder).parents):
        if path.is_symlink() and not path.exists():
            return path
        if path.exists():
            return None if path.is_dir() else path
    return None


def describe_blocker(path: Path) -> str:
    """``"is a file"``, or what a dangling symbolic link points to."""
    if path.is_symlink() and not path.exists():
        return f"is a symbolic link to {os.readlink(path)}, which does not exist (create its target or remove the link)"
    return "is a file, not a folder"


def check_output_folder(folder: str | Path, what: str) -> None:
    """Check, before any work, that files can be written in ``folder`` (created later if
    missing): nothing in the way (:func:`blocking_path`), and a file can be created in the
    nearest existing folder (a read-only folder or file system fails here, also for root).

    Args:
        folder: the output folder.
        what: how the user named it, e.g. ``"--out"``.

    Raises:
        RunFolderError: naming the folder and what is wrong.
    """
    folder = Path(folder).expanduser()
    blocker = blocking_path(folder)
    if blocker is not None:
        raise RunFolderError(f"{what} {folder}: {blocker} {describe_blocker(blocker)}; choose another {what}")
    existing = next(p for p in (folder, *folder.parents) if p.is_dir())
    try:
        temporary_path(existing / ".pdeseg-write-check").unlink()
    except OSError as exc:
        raise RunFolderError(f"{what} {folder}: cannot write in {existing} ({exc.strerror or exc}); choose a writable "
                             f"{what}") from None


def make_folders(folder: str | Path, what: str = "output folder") -> list[Path]:
    """Create ``folder`` and its missing parents; returns the folders created, outermost first
    (for :func:`remove_empty` when the command is refused before it writes anything).

    Raises:
        RunFolderError: a path on the way is a file or a link to nothing, or a folder cannot
            be created.
    """
    folder = Path(folder)
    blocker = blocking_path(folder)
    if blocker is not None:
        raise RunFolderError(f"cannot create {what} {folder}: {blocker} {describe_blocker(blocker)}")
    missing, cur = [], folder
    while not cur.is_dir() and cur != cur.parent:
        missing.append(cur)
        cur = cur.parent
    created: list[Path] = []
    for cur in reversed(missing):
        try:
            cur.mkdir()
            created.append(cur)
        except FileExistsError:
            if not cur.is_dir():
                remove_empty(created)
                raise RunFolderError(f"cannot create {what} {folder}: {cur} {describe_blocker(cur)}") from None
        except OSError as exc:
            remove_empty(created)
            raise RunFolderError(f"cannot create {what} {folder}: {exc.strerror or exc}") from None
    return created


def remove_empty(created: list[Path]) -> None:
    """Remove the folders of :func:`make_folders` again, innermost first, while they are empty."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:  # something was written: keep it and the folders above it
            return
