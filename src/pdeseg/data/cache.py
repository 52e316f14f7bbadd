"""On-disk cache of normalised cases, so that training never re-reads NIfTI each epoch.

Each case becomes a folder ``<cache_dir>/<case_id>-<key>/`` holding

* ``image.npy``: float16 ``(Z, C, X, Y)``, normalised, slice-major so a slice is contiguous;
* ``label.npy``: uint8 ``(Z, X, Y)`` contiguous classes (absent for unlabelled cases);
* ``meta.json``: source files, geometry, label convention, per-slice non-zero ("brain") and
  labelled ("tumour") flags, voxel count per class.

``key`` hashes the source paths, sizes and modification times, the modalities and the
normalisation (with its CT window), so a changed file or setting gets a fresh entry. Entries are written to a
temporary folder and renamed into place (atomic), and are read with memory mapping.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdeseg.progress import track
from pdeseg.data.preprocess import nonzero_mask, normalize

log = logging.getLogger(__name__)
CACHE_VERSION = 2


@dataclass
class CachedCase:
    """A cached case; arrays are memory-mapped on first access."""

    case_id: str
    path: Path
    meta: dict

    @property
    def image(self) -> np.ndarray:
        """float16 ``(Z, C, X, Y)``."""
        if not hasattr(self, "_image"):
            self._image = np.load(self.path / "image.npy", mmap_mode="r")
        return self._image

    @property
    def label(self) -> np.ndarray | None:
        """uint8 ``(Z, X, Y)`` or None."""
        if not self.meta["has_label"]:
            return None
        if not hasattr(self, "_label"):
            self._label = np.load(self.path / "label.npy", mmap_mode="r")
        return self._label

    @property
    def num_slices(self) -> int:
        return int(self.meta["shape"][2])

    def slices(self, kind: str) -> list[int]:
        """Slice indices containing ``brain`` or ``tumour`` voxels."""
        return list(self.meta[f"{kind}_slices"])

    def __getstate__(self):  # do not pickle open memory maps into DataLoader workers
        return {"case_id": self.case_id, "path": self.path, "meta": self.meta}

    def __setstate__(self, state):
        self.__dict__.update(state)


def _key(case, modalities: tuple[str, ...], normalization: str, ct_window) -> str:
    h = hashlib.sha256()
    for f in case.source_files(modalities):
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    h.update(f"{modalities}|{normalization}|{ct_window}|v{CACHE_VERSION}".encode())
    return h.hexdigest()[:16]


def cache_case(
    case,
    cache_dir: str | Path,
    modalities: tuple[str, ...] | list[str],
    normalization: str = "zscore",
    ct_window=None,
) -> CachedCase:
    """Return the cache entry of ``case`` (a case of any :mod:`~pdeseg.data.formats` reader),
    building it (reading and validating the files) if needed."""
    modalities = tuple(modalities)
    cache_dir = Path(cache_dir).expanduser()
    target = cache_dir / f"{case.case_id}-{_key(case, modalities, normalization, ct_window)}"
    meta_path = target / "meta.json"
    if meta_path.is_file():
        return CachedCase(case.case_id, target, json.loads(meta_path.read_text()))
    cache_dir.mkdir(parents=True, exist_ok=True)
    loaded = case.load(modalities)
    mask = nonzero_mask(loaded.image)
    image = normalize(loaded.image, normalization, ct_window)
    tmp = Path(tempfile.mkdtemp(prefix=f".{case.case_id}-", dir=cache_dir))
    try:
        np.save(tmp / "image.npy", np.ascontiguousarray(image.transpose(3, 0, 1, 2)).astype(np.float16))
        brain = mask.any(axis=(0, 1))
        meta = {
            "case_id": case.case_id,
            "folder": str(case.folder),
            "modalities": list(modalities),
            "normalization": normalization,
            "shape": list(loaded.image.shape[1:]),
            "affine": loaded.affine.tolist(),
            "spacing": list(loaded.spacing),
            "convention": loaded.convention,
            "has_label": loaded.label is not None,
            "brain_slices": np.flatnonzero(brain).tolist(),
            "tumour_slices": [],
            "class_voxels": [],
        }
        if loaded.label is not None:
            np.save(tmp / "label.npy", np.ascontiguousarray(loaded.label.transpose(2, 0, 1)))
            meta["tumour_slices"] = np.flatnonzero(loaded.label.any(axis=(0, 1))).tolist()
            meta["class_voxels"] = np.bincount(loaded.label.ravel()).tolist()
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished the same entry first
            if not meta_path.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return CachedCase(case.case_id, target, json.loads(meta_path.read_text()))


def cache_cases(
    cases: list,
    cache_dir: str | Path,
    modalities: tuple[str, ...] | list[str],
    normalization: str = "zscore",
    ct_window=None,
    progress: bool = True,
) -> list[CachedCase]:
    """Cache every case (with progress shown); returns entries in the same order."""
    return [cache_case(case, cache_dir, modalities, normalization, ct_window)
            for case in track(cases, "caching cases", "case", enabled=progress)]
