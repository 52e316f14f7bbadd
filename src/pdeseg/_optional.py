"""Optional dependencies: the packages that only one surface of pdeseg uses are extras.

The base install (``pip install pdeseg``) covers training, prediction and evaluation on
NIfTI, DICOM (DICOM-SEG out), TIFF / PNG folders and COCO files, the demo and the figures.
The extras (sizes measured in ``docs/getting-started.md``, *Extras and install size*):

========================  ==========================================================  ================================
extra                     packages                                                    what needs them
========================  ==========================================================  ================================
``ome``                   zarr, ome-zarr, dask[array]                                 OME-TIFF / OME-Zarr in and out,
                                                                                      tiled prediction of large images
``distributed``           distributed (+ ``ome``)                                     ``--dask-workers`` /
                                                                                      ``--dask-scheduler``
``deploy``                onnx, onnxruntime                                           ONNX export, ``--backend
                                                                                      onnxruntime`` (``auto`` keeps
                                                                                      PyTorch without them, saying so)
``napari``                napari, npe2, PyQt5, pytest-qt (+ ``ome``)                  the napari plugin
========================  ==========================================================  ================================

Every place that imports one of them calls :func:`require` first (inside the function that
needs it, so that ``import pdeseg`` and the base surfaces never import them); a missing one
raises :class:`MissingExtraError`, which the command line reports in one line with exit
code 2, naming the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from pdeseg.errors import PdesegError

__all__ = ["EXTRAS", "MissingExtraError", "require"]

#: extra -> the distributions it adds (the module names they provide are in ``_DISTRIBUTION``).
EXTRAS: dict[str, tuple[str, ...]] = {
    "ome": ("zarr", "ome-zarr", "dask[array]"),
    "distributed": ("distributed",),
    "deploy": ("onnx", "onnxruntime"),
}

#: top-level module -> the distribution that provides it (where the names differ).
_DISTRIBUTION = {"ome_zarr": "ome-zarr", "dask": "dask[array]"}


class MissingExtraError(PdesegError, ImportError):
    """A feature needs a package of an extra that is not installed; the message names the
    package and the ``pip install 'pdeseg[extra]'`` that adds it."""


def require(*modules: str, extra: str, feature: str) -> ModuleType:
    """Import ``modules`` (dotted names) and return the first one.

    Args:
        modules: the modules ``feature`` imports, e.g. ``"ome_zarr.io", "dask.array"``.
        extra: the pdeseg extra that installs them (a key of :data:`EXTRAS`).
        feature: what needs them, in words (``"reading OME-Zarr"``), for the message.

    Returns:
        the first of ``modules``, imported.

    Raises:
        MissingExtraError: one of them is not installed (or cannot be imported); the one-line
            message names it and ``pip install 'pdeseg[<extra>]'``.
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; one of {', '.join(EXTRAS)}")
    imported = []
    for name in modules:
        try:
            imported.append(importlib.import_module(name))
        except ImportError as exc:
            top = name.split(".")[0]
            package = _DISTRIBUTION.get(top, top)
            missing = isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] == top
            why = "is not installed" if missing else f"cannot be imported ({type(exc).__name__}: {_first_line(exc)})"
            raise MissingExtraError(f"{feature} needs {package}, which {why}: pip install 'pdeseg[{extra}]'") from None
    return imported[0]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no reason given"
