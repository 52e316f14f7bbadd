"""On-disk cache of normalised cases, so that training never re-reads NIfTI each epoch.

Each case becomes a folder ``<cache_dir>/<case_id>-<key>/`` holding

* ``image.npy``: float16 ``(Z, C, X, Y)``, normalised, slice-major so a slice is contiguous;
* ``label.npy``: uint8 ``(Z, X, Y)`` contiguous classes (absent for unlabelled cases);
* ``meta.json``: source files, geometry, label convention, per-slice non-zero ("brain") and
  labelled ("tumour") flags, voxel count per class.

``key`` hashes the source paths, sizes and modification times, the modalities and the
normalisation (with its CT window), so a changed file or setting gets a fresh entry. Entries are written to a
temporary folder and renamed into place (atomic), and are read with memory mapping. An
entry is checked when it is opened (readable meta, arrays of the recorded shape and type);
a damaged one is named in a warning and rebuilt from the source files.

While building an entry, a blank (all-zero) or constant channel, and an image with no
signal under a labelled region, are reported as warnings naming the case and channel.
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

from pdeseg.data.preprocess import nonzero_mask, normalize
from pdeseg.errors import DataError
from pdeseg.progress import track

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


def source_key(case, modalities: tuple[str, ...]) -> str:
    """Path, size and modification time of every file a case's entry depends on."""
    parts = []
    for f in case.source_files(modalities):
        st = f.stat()
        parts.append(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}")
    return "|".join(parts)


def _key(case, modalities: tuple[str, ...], normalization: str, ct_window, ct_stats=None) -> str:
    h = hashlib.sha256(source_key(case, modalities).encode())
    h.update(f"{modalities}|{normalization}|{ct_window}|{ct_stats}|{getattr(case, 'convention', '')}|v{CACHE_VERSION}".encode())
    return h.hexdigest()[:16]


def cache_case(
    case,
    cache_dir: str | Path,
    modalities: tuple[str, ...] | list[str],
    normalization: str = "zscore",
    ct_window=None,
    ct_stats=None,
) -> CachedCase:
    """Return the cache entry of ``case`` (a case of any :mod:`~pdeseg.data.formats` reader),
    building it (reading and validating the files) if needed."""
    modalities = tuple(modalities)
    cache_dir = Path(cache_dir).expanduser()
    target = cache_dir / f"{case.case_id}-{_key(case, modalities, normalization, ct_window, ct_stats)}"
    meta_path = target / "meta.json"
    if target.is_dir():
        problem = entry_problem(target)
        if problem is None:
            return CachedCase(case.case_id, target, json.loads(meta_path.read_text()))
        log.warning("cache entry %s is damaged (%s); rebuilding it from %s", target, problem, case.folder)
        shutil.rmtree(target, ignore_errors=True)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the cache folder {cache_dir} ({exc.strerror}); set data.cache_dir to a writable folder") from None
    loaded = case.load(modalities)
    warn_about_signal(case.case_id, loaded.image, loaded.label, modalities)
    mask = nonzero_mask(loaded.image)
    image = normalize(loaded.image, normalization, ct_window, ct_stats)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{case.case_id}-", dir=cache_dir))
    except OSError as exc:
        raise DataError(f"cannot write to the cache folder {cache_dir} ({exc.strerror}); set data.cache_dir to a writable folder") from None
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


def entry_problem(folder: Path) -> str | None:
    """What is wrong with a cache entry, or None when its meta and arrays are intact."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        shape, channels = meta["shape"], len(meta["modalities"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"meta.json unreadable: {type(exc).__name__}"
    expected = {"image.npy": ((shape[-1], channels, *shape[:-1]), np.float16)}
    if meta.get("has_label"):
        expected["label.npy"] = ((shape[-1], *shape[:-1]), np.uint8)
    for name, (want_shape, want_dtype) in expected.items():
        try:
            arr = np.load(folder / name, mmap_mode="r")
        except (OSError, ValueError) as exc:
            return f"{name} unreadable: {exc}"
        if tuple(arr.shape) != tuple(want_shape) or arr.dtype != want_dtype:
            return f"{name} holds {arr.dtype} {tuple(arr.shape)}, expected {np.dtype(want_dtype)} {tuple(want_shape)}"
    return None


def warn_about_signal(case_id: str, image: np.ndarray, label: np.ndarray | None, modalities) -> list[str]:
    """Log (and return) warnings for blank or constant channels and for labels on an empty image.

    Args:
        image: ``(C, *spatial)`` raw intensities; label: ``(*spatial)`` classes or None.
    """
    found = []
    for c, name in enumerate(modalities):
        channel = image[c]
        if not channel.any():
            found.append(f"case {case_id}: channel {name} is blank (all zero); check the file, it carries no information")
        elif channel.min() == channel.max():
            found.append(f"case {case_id}: channel {name} is constant ({float(channel.min()):g}); it carries no information")
    if label is not None and label.any() and not image[:, label > 0].any():
        found.append(f"case {case_id}: the image is zero everywhere the label marks a structure ({int((label > 0).sum())} voxels); "
                     "image and label files may not belong together")
    for text in found:
        log.warning(text)
    return found


def cache_cases(
    cases: list,
    cache_dir: str | Path,
    modalities: tuple[str, ...] | list[str],
    normalization: str = "zscore",
    ct_window=None,
    progress: bool = True,
    ct_stats=None,
) -> list[CachedCase]:
    """Cache every case (with progress shown); returns entries in the same order."""
    return [cache_case(case, cache_dir, modalities, normalization, ct_window, ct_stats)
            for case in track(cases, "caching cases", "case", enabled=progress)]
