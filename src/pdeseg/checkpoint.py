"""Self-describing checkpoints, written atomically and loadable with ``weights_only=True``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts::

    format, format_version, pdeseg_version
    model:         {"name": registry name, "kwargs": constructor kwargs}
    state_dict:    model weights (contiguous fp32 tensors; float16 in a shipped model's
                   ``weights.pt``, cast back to float32 when loaded)
    object_diameter: (optional) median object diameter in pixels of a cell model's training
                   data, the size :mod:`pdeseg.inference.size` rescales images to
    preprocessing: a :class:`~pdeseg.config.TaskSpec` as a dict (format, modalities,
                   normalisation, sampling mode, spatial dims and size, classes, regions)
    config:        the resolved experiment config
    training:      {"epoch", "global_step", "best_score", "best_epoch", "history"}
    optimizer, scheduler, scaler, rng   (only in ``last.pt``, for resuming exactly)

Loading needs only the model table (:mod:`pdeseg.nn.models`) and the network modules, never
the trainer, so both training and inference use this module.

A checkpoint is written to a hidden temporary file ``.<name>.XXXXXXXX`` beside its target
and renamed over it, so a reader never sees half a checkpoint. A process killed during the
write leaves that temporary file behind; :func:`remove_stale_temporaries` clears them.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pydantic import ValidationError

from pdeseg import __version__
from pdeseg.config import ExperimentConfig, TaskSpec, config_from_dict
from pdeseg.errors import CheckpointError, ConfigError, RunFolderError
from pdeseg.nn.models import build_model

log = logging.getLogger(__name__)

FORMAT = "pdeseg-checkpoint"
#: 2: ``preprocessing`` is a full TaskSpec (format, mode, spatial dims, classes).
FORMAT_VERSION = 2


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Model weights as contiguous CPU tensors (unwraps DDP / compiled modules)."""
    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


#: The temporary files :func:`save_checkpoint` writes: ``.<name>.`` and mkstemp's 8 random
#: characters (``[a-z0-9_]``), for targets named ``*.pt``.
_TEMPORARY = re.compile(r"^\.(?P<target>.+\.pt)\.[a-z0-9_]{8}$")


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}."


def _umask() -> int:
    """The process umask, read without changing it where the system allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # No /proc (or a kernel before 4.7): the umask can only be read by setting it. Another
    # thread creating a file between these two calls would get the temporary umask, so it
    # is the strict 0o077 (private files), never 0 (world-writable ones).
    old = os.umask(0o077)
    os.umask(old)
    return old


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write ``payload`` to ``path`` atomically (temporary file in the same folder, then rename).

    The file gets the mode a newly created file would (``0o666`` less the umask), not the
    private ``0o600`` of the temporary file.

    Args:
        payload: the checkpoint's entries (format and versions are added).
        path: the checkpoint file; its folder is created if missing.

    Raises:
        RunFolderError: the folder or file cannot be written: full disk, no permission,
            read-only file system (the real cause is named; no temporary file is left behind).
        pickle.PicklingError, TypeError, AttributeError: ``payload`` cannot be saved.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path), dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "pdeseg_version": __version__, **payload}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, (OSError, RuntimeError)) and not isinstance(exc, RunFolderError):
            error = _write_error(path, exc)
            if error is not None:
                raise error from None
        raise


def _write_error(path: Path, exc: BaseException) -> RunFolderError | None:
    """A clear error for a failed checkpoint write: a full disk (which torch reports as a
    bare "file write failed"), a permission or read-only problem; None when it is neither."""
    import errno
    import shutil

    code = getattr(exc, "errno", None)
    try:
        free = shutil.disk_usage(path.parent if path.parent.exists() else Path(path.anchor or ".")).free
    except OSError:
        free = None
    if code in (errno.ENOSPC, errno.EDQUOT) or (isinstance(exc, RuntimeError) and free is not None and free < 64 * 2**20):
        shown = f"{free / 2**20:.1f} MiB free" if free is not None else "no space left"
        return RunFolderError(f"cannot write {path}: the disk is full ({shown}); free space or choose another --out")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return RunFolderError(f"cannot write {path}: {exc.strerror}; choose a writable --out")
    if code in (errno.ENOTDIR, errno.EEXIST):
        return RunFolderError(f"cannot write {path}: a part of the path is a file")
    if isinstance(exc, OSError):
        return RunFolderError(f"cannot write {path}: {exc.strerror or exc}")
    return None


def remove_stale_temporaries(folder: str | Path) -> tuple[list[str], int]:
    """Remove the temporary files that interrupted :func:`save_checkpoint` calls left in ``folder``.

    A process killed while writing ``last.pt`` or ``best.pt`` leaves ``.last.pt.XXXXXXXX``
    (or ``.best.pt.XXXXXXXX``) behind, as large as the part written. Only files named like
    that (for any ``*.pt`` target) are removed, directly in ``folder``; the names and the
    bytes freed are logged as a warning. Call this only while no other process can be
    writing checkpoints into ``folder`` (e.g. holding its :class:`~pdeseg.runlock.RunLock`):
    a live writer's temporary file would be removed under it.

    Args:
        folder: the folder to clean (a missing folder has nothing to clean).

    Returns:
        ``(names of the files removed, bytes freed)``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return [], 0
    removed, freed = [], 0
    for entry in sorted(folder.iterdir()):
        if not _TEMPORARY.match(entry.name) or entry.is_symlink() or not entry.is_file():
            continue
        try:
            size = entry.stat().st_size
            entry.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("%s: cannot remove this temporary checkpoint file of an interrupted write (%s)", entry, exc)
            continue
        removed.append(entry.name)
        freed += size
    if removed:
        log.warning("%s: removed %d temporary checkpoint file(s) left by interrupted writes (%s), freeing %d bytes",
                    folder, len(removed), ", ".join(removed), freed)
    return removed, freed


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` and check its format.

    Raises:
        CheckpointError: no such file, unreadable, or not a pdeseg checkpoint of a known version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a pdeseg checkpoint")
    version = ckpt.get("format_version", 0)
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version} is newer than this pdeseg understands; upgrade pdeseg")
    if version < FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version} predates pdeseg {__version__} (format {FORMAT_VERSION}), "
                              "whose checkpoints state their data format and sampling; retrain the model")
    missing = [k for k in ("model", "state_dict", "preprocessing") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    if isinstance(ckpt["state_dict"], dict):  # shipped models store weights in float16 (pdeseg.pretrained)
        ckpt["state_dict"] = {k: v.float() if torch.is_tensor(v) and v.dtype in (torch.float16, torch.bfloat16) else v
                              for k, v in ckpt["state_dict"].items()}
    model = ckpt["model"]
    if not (isinstance(model, dict) and isinstance(model.get("name"), str) and isinstance(model.get("kwargs"), dict)):
        raise CheckpointError(f"{path}: checkpoint's model entry must be {{name, kwargs}}, got {model!r:.200}")
    return ckpt


def preprocessing_spec(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> TaskSpec:
    """The validated preprocessing and sampling spec a checkpoint carries.

    Raises:
        CheckpointError: the spec is missing or invalid (no silent default format).
    """
    try:
        return TaskSpec.model_validate(ckpt.get("preprocessing"))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CheckpointError(f"{path}: bad preprocessing entry {where}: {first['msg']}") from None


def checkpoint_config(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> ExperimentConfig | None:
    """The experiment config a checkpoint was trained with, validated, or None when it carries
    none (a checkpoint written by hand or by another tool).

    Raises:
        CheckpointError: the stored config does not validate (e.g. written by a pdeseg whose
            config keys this version no longer reads); the message names the key.
    """
    stored = ckpt.get("config")
    if stored is None:
        return None
    if not isinstance(stored, dict):
        raise CheckpointError(f"{path}: the stored config must be a mapping, got {type(stored).__name__}")
    try:
        return config_from_dict(stored)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: its stored config is not valid for pdeseg {__version__}: {exc}") from None


def model_from_checkpoint(ckpt: dict[str, Any] | str | Path, map_location: str | torch.device = "cpu",
                          where: str | Path = "checkpoint") -> nn.Module:
    """Rebuild the model a checkpoint describes, load its weights, return it in eval mode.

    Args:
        where: the checkpoint's path, for messages when ``ckpt`` is already loaded.

    Raises:
        CheckpointError: the model cannot be built from its kwargs, or the weights do not fit.
    """
    if not isinstance(ckpt, dict):
        where, ckpt = ckpt, load_checkpoint(ckpt, map_location)
    name, kwargs = ckpt["model"]["name"], ckpt["model"]["kwargs"]
    try:
        model = build_model(name, **kwargs)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: cannot build model {name!r} with {kwargs} ({exc})") from None
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{where}: weights do not fit model {name!r} ({str(exc).splitlines()[0]})") from None
    return model.eval()
