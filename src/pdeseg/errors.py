"""The errors a user's input can cause, one type per kind of mistake.

The command line reports any :class:`PdesegError` in one line (the message names the file,
key or value and what to do) with exit code 2. Every other exception is a bug in pdeseg
and is shown with its traceback.

This module is a leaf: it imports nothing from pdeseg, so every layer (the leaf
:mod:`pdeseg.config` included) can raise these.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "DataError", "DeviceError", "PdesegError", "RunFolderError"]


class PdesegError(Exception):
    """Base class of every error caused by a user's input (config, data, checkpoint, device,
    files). The command line reports these in one line with exit code 2; anything else is a
    bug and shows its traceback."""


class ConfigError(PdesegError, ValueError):
    """A configuration key or value is invalid; the message names it and what is allowed."""


class DataError(PdesegError, ValueError):
    """A data file or folder is missing, unreadable or inconsistent; the message names it."""


class CheckpointError(PdesegError, ValueError):
    """A file is not a usable pdeseg checkpoint; the message names it and what is wrong."""


class DeviceError(PdesegError, RuntimeError):
    """The requested device is not available (e.g. ``cuda`` on a machine without a GPU)."""


class RunFolderError(PdesegError, OSError):
    """A run or output folder cannot be used as asked (it holds a finished run, a resume
    has nothing to resume, a path lies below a file, it is not writable, writing there
    would replace existing outputs without ``--overwrite``, or would replace an input
    file)."""
