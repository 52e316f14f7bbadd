"""pdeseg: PDE-informed segmentation networks and losses for medical and microscopy images.

The Python API (:mod:`pdeseg.api`, imported on first use so that ``import pdeseg`` stays
cheap and imports neither torch nor matplotlib)::

    import pdeseg

    seg = pdeseg.load("runs/demo/unet/best.pt")   # a trained checkpoint (or a folder: ensemble)
    labels = seg.predict(image)                   # raw (C, X, Y, Z), or (C, X, Y) for a 2D model
    labels, probs = seg.predict(image, probabilities=True)
    net = pdeseg.create_model("unet", in_channels=4, out_channels=4)
    pdeseg.list_models()
    pdeseg.train("config.yaml", "runs/mine")
    cases = pdeseg.read_dicom("scans/series_dir")  # DICOM series as volumes (RAS+ affine)
    pdeseg.export("best.pt", "onnx", "deploy/")    # model.onnx + pdeseg_export.json
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.3.0"

__all__ = ["Segmenter", "__version__", "create_model", "export", "list_models", "load", "read_dicom", "train"]

_API = frozenset({"Segmenter", "create_model", "export", "list_models", "load", "read_dicom", "train"})

if TYPE_CHECKING:
    from pdeseg.api import Segmenter, create_model, export, list_models, load, read_dicom, train  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        value = getattr(importlib.import_module("pdeseg.api"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pdeseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
