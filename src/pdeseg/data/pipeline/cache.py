"""On-disk cache of normalised cases, so that training never re-reads NIfTI each epoch.

Each case becomes a folder ``<cache_dir>/<case_id>-<key>/`` holding

* ``image.npy``: float16 ``(Z, C, X, Y)``, normalised, slice-major so a slice is contiguous;
* ``label.npy``: uint8 ``(Z, X, Y)`` contiguous classes (absent for unlabelled cases);
* ``fg_locations.npy``: int32 ``(M, 4)`` rows ``(class, x, y, z)`` (labelled cases only):
  for each foreground class ``k >= 1`` present in the label, up to
  :data:`FG_LOCATIONS_PER_CLASS` of its voxels, drawn without replacement with a seed derived
  from the case id (the same case always gives the same file). Rows are grouped by class in
  increasing class order; coordinates are in the ``(X, Y, Z)`` frame of ``meta["shape"]``.
  Patch sampling centres foreground patches on these rows instead of searching the label;
* ``meta.json``: source files, geometry, label convention, per-slice non-zero ("brain") and
  labelled ("tumour") flags, voxel count per class, and ``fg_classes`` / ``fg_counts`` /
  ``fg_per_class`` (the classes in ``fg_locations.npy``, how many rows each has, in file
  order, and the cap they were drawn with).

``key`` hashes the source paths, sizes and modification times and the preprocessing
(modalities, normalisation with its CT window and statistics, target spacing, the non-zero
crop: see :class:`~pdeseg.data.pipeline.preprocess.Preprocessing`), so a changed file or setting gets a fresh
entry; with a target spacing the arrays are on the resampled grid and ``meta`` keeps the
``source_shape`` and ``source_spacing``; with ``crop_nonzero`` the arrays (label, objects and
field of view too) cover the case's non-zero box only, ``meta["crop_box"]`` is that box in the
source's voxels (``[[start, stop], ...]``, None when not cropped). Entries are written to a
temporary folder and renamed into place (atomic), and are read with memory mapping. An
entry is checked when it is opened (readable meta, arrays of the recorded shape and type);
a damaged one (including a ``fg_locations.npy`` that is missing, unreadable or disagrees
with the meta) is named in a warning and rebuilt from the source files.

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

from pdeseg.data.pipeline.preprocess import Preprocessing, box_slices
from pdeseg.errors import DataError
from pdeseg.progress import track

log = logging.getLogger(__name__)
CACHE_VERSION = 3  # 3: fg_locations.npy and meta fg_classes / fg_counts
#: Most voxel coordinates stored per foreground class (a uniform sample of the class's voxels).
FG_LOCATIONS_PER_CLASS = 10_000


@dataclass
class CachedCase:
    """A cached case; arrays are memory-mapped on first access."""

    case_id: str
    path: Path
    meta: dict

    def _array(self, name: str) -> np.ndarray:
        """``<name>.npy`` of the entry, memory-mapped on first access."""
        if not hasattr(self, f"_{name}"):
            setattr(self, f"_{name}", np.load(self.path / f"{name}.npy", mmap_mode="r"))
        return getattr(self, f"_{name}")

    @property
    def image(self) -> np.ndarray:
        """float16 ``(Z, C, X, Y)``."""
        return self._array("image")

    @property
    def label(self) -> np.ndarray | None:
        """uint8 ``(Z, X, Y)`` or None."""
        return self._array("label") if self.meta["has_label"] else None

    @property
    def instances(self) -> np.ndarray | None:
        """int32 ``(Z, X, Y)`` objects (0 background), or None for data without objects."""
        return self._array("instances") if self.meta.get("has_instances") else None

    @property
    def valid(self) -> np.ndarray | None:
        """bool ``(Z, X, Y)`` field of view (pixels outside it are not scored), or None."""
        return self._array("valid") if self.meta.get("has_valid") else None

    @property
    def domain(self) -> str:
        """Cell type or imaging modality ('' when the data set has none)."""
        return str(self.meta.get("domain", ""))

    @property
    def fg_locations(self) -> np.ndarray:
        """int32 ``(M, 4)`` rows ``(class, x, y, z)``, grouped by class (empty for unlabelled cases)."""
        if not hasattr(self, "_fg"):
            path = self.path / "fg_locations.npy"
            self._fg = np.load(path) if self.meta["has_label"] else np.zeros((0, 4), np.int32)
        return self._fg

    @property
    def foreground_classes(self) -> list[int]:
        """Foreground classes (>= 1) present in the label, increasing."""
        return list(self.meta.get("fg_classes", []))

    def with_image(self, image: np.ndarray) -> CachedCase:
        """The same case (id, meta, label, objects, field of view) holding another normalised
        image in memory, stored as the cache stores it (float16, slice-major); nothing is
        written to disk. For scoring a model on a perturbed copy of a case.

        Args:
            image: ``(C, X, Y, Z)`` normalised intensities on this case's grid.

        Raises:
            ValueError: the image's grid differs from the case's (a preprocessing mismatch).
        """
        if list(image.shape[1:]) != list(self.meta["shape"]):
            raise ValueError(f"case {self.case_id}: preprocessed grid {tuple(image.shape[1:])} differs from the cached "
                             f"{tuple(self.meta['shape'])}")
        copy = CachedCase(self.case_id, self.path, self.meta)
        copy._image = np.ascontiguousarray(np.asarray(image).transpose(3, 0, 1, 2)).astype(np.float16)
        for name in ("label", "instances", "valid"):  # shared with this case (memory-mapped, read-only)
            if hasattr(self, f"_{name}"):
                setattr(copy, f"_{name}", getattr(self, f"_{name}"))
        return copy

    def foreground(self, k: int) -> np.ndarray:
        """Stored ``(x, y, z)`` voxel coordinates of class ``k``, int32 ``(n, 3)``; ``n`` is 0
        when the class is absent."""
        classes, counts = self.foreground_classes, self.meta.get("fg_counts", [])
        if k not in classes:
            return np.zeros((0, 3), np.int32)
        i = classes.index(k)
        start = int(sum(counts[:i]))
        return self.fg_locations[start:start + int(counts[i]), 1:]

    @property
    def num_slices(self) -> int:
        return int(self.meta["shape"][2])

    def slices(self, kind: str) -> list[int]:
        """Slice indices containing ``brain`` or ``tumour`` voxels."""
        return list(self.meta[f"{kind}_slices"])

    def __getstate__(self):  # do not pickle open memory maps (or loaded arrays) into DataLoader workers
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


def _key(case, prep: Preprocessing) -> str:
    h = hashlib.sha256(source_key(case, prep.modalities).encode())
    h.update(f"{prep.key()}|{getattr(case, 'convention', '')}|v{CACHE_VERSION}".encode())
    return h.hexdigest()[:16]


def cache_case(case, cache_dir: str | Path, preprocessing) -> CachedCase:
    """Return the cache entry of ``case`` (a case of any :mod:`~pdeseg.data.formats` reader),
    building it (reading and validating the files) if needed.

    Args:
        preprocessing: a :class:`~pdeseg.data.pipeline.preprocess.Preprocessing`, a
            :class:`~pdeseg.config.TaskSpec`, or a list of modalities (z-score, own grid).
    """
    prep = Preprocessing.of(preprocessing)
    modalities = prep.modalities
    cache_dir = Path(cache_dir).expanduser()
    target = cache_dir / f"{case.case_id}-{_key(case, prep)}"
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
    prepared = prep.prepare(loaded.image, loaded.spacing, loaded.label)
    image, label, mask, box = prepared.image, prepared.label, prepared.mask, prepared.box
    _, spacing = prep.grid(loaded.image.shape[1:], loaded.spacing)
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
            "normalization": prep.normalization,
            "shape": list(image.shape[1:]),
            "affine": loaded.affine.tolist(),
            "spacing": list(spacing),
            "source_shape": list(loaded.image.shape[1:]),
            "source_spacing": list(loaded.spacing),
            "crop_box": [list(b) for b in box] if box is not None else None,
            "convention": loaded.convention,
            "domain": loaded.domain,
            "has_label": loaded.label is not None,
            "has_instances": False,
            "has_valid": False,
            "brain_slices": np.flatnonzero(brain).tolist(),
            "tumour_slices": [],
            "class_voxels": [],
            "fg_classes": [],
            "fg_counts": [],
            "fg_per_class": FG_LOCATIONS_PER_CLASS,
        }
        if label is not None:
            np.save(tmp / "label.npy", np.ascontiguousarray(label.transpose(2, 0, 1)))
            meta["tumour_slices"] = np.flatnonzero(label.any(axis=(0, 1))).tolist()
            meta["class_voxels"] = np.bincount(label.ravel()).tolist()
            locations, classes, counts = foreground_locations(label, case.case_id)
            np.save(tmp / "fg_locations.npy", locations)
            meta["fg_classes"], meta["fg_counts"] = classes, counts
        cut = box_slices(box) if box is not None else (slice(None),) * (loaded.image.ndim - 1)
        same_grid = tuple(image.shape[1:]) == tuple(loaded.image[(0, *cut)].shape)  # not resampled
        for name, extra, dtype in (("instances", loaded.instances, np.int32), ("valid", loaded.valid, bool)):
            if extra is not None and same_grid:  # objects are kept on the source grid (cropped as the image) only
                np.save(tmp / f"{name}.npy", np.ascontiguousarray(np.asarray(extra, dtype)[cut].transpose(2, 0, 1)))
                meta[f"has_{name}"] = True
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished the same entry first
            if not meta_path.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return CachedCase(case.case_id, target, json.loads(meta_path.read_text()))


def _case_id_seed(case_id: str) -> int:
    """A seed that depends only on the case id (stable across processes, unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(case_id.encode()).digest()[:8], "little")


def foreground_locations(label: np.ndarray, case_id: str, per_class: int | None = None
                         ) -> tuple[np.ndarray, list[int], list[int]]:
    """Up to ``per_class`` voxel coordinates of every foreground class of ``label``.

    Args:
        label: ``(X, Y, Z)`` (or any ``(*spatial)``) contiguous classes, 0 = background.
        case_id: seeds the draw, so the same case always gives the same coordinates.
        per_class: most coordinates kept per class (default :data:`FG_LOCATIONS_PER_CLASS`); a
            class with more voxels keeps a uniform sample without replacement, one with fewer
            keeps them all.

    Returns:
        ``(locations, classes, counts)``: int32 ``(M, 1 + ndim)`` rows ``(class, *coords)``
        grouped by class in increasing order; the classes present (>= 1); rows per class.
    """
    per_class = FG_LOCATIONS_PER_CLASS if per_class is None else int(per_class)
    rng = np.random.default_rng(_case_id_seed(case_id))
    flat = np.asarray(label).ravel()
    present = [k for k in np.flatnonzero(np.bincount(flat)).tolist() if k >= 1]
    blocks, counts = [], []
    for k in present:
        idx = np.flatnonzero(flat == k)
        if len(idx) > per_class:
            idx = np.sort(rng.choice(idx, per_class, replace=False))
        coords = np.stack(np.unravel_index(idx, label.shape), axis=1)
        blocks.append(np.concatenate([np.full((len(idx), 1), k), coords], axis=1).astype(np.int32))
        counts.append(len(idx))
    locations = np.concatenate(blocks) if blocks else np.zeros((0, 1 + label.ndim), np.int32)
    return locations, present, counts


def _fg_problem(folder: Path, meta: dict, shape: list[int]) -> str | None:
    """What is wrong with ``fg_locations.npy`` given the meta, or None."""
    try:
        classes, counts, voxels = list(meta["fg_classes"]), list(meta["fg_counts"]), list(meta["class_voxels"])
        cap = int(meta["fg_per_class"])
    except (KeyError, TypeError, ValueError):
        return "meta.json lacks fg_classes / fg_counts / fg_per_class"
    try:
        fg = np.load(folder / "fg_locations.npy")
    except (OSError, ValueError, EOFError) as exc:
        return f"fg_locations.npy unreadable: {exc}"
    if fg.dtype != np.int32 or fg.ndim != 2 or fg.shape[1] != 1 + len(shape) or len(fg) != sum(counts):
        return f"fg_locations.npy holds {fg.dtype} {tuple(fg.shape)}, expected int32 ({sum(counts)}, {1 + len(shape)})"
    want = [k for k in range(1, len(voxels)) if voxels[k] > 0]
    if classes != want or counts != [min(voxels[k], cap) for k in want]:
        return f"fg_locations.npy classes {classes} / counts {counts} disagree with the label's voxel counts"
    if not np.array_equal(fg[:, 0], np.repeat(np.asarray(classes, np.int32), counts)):
        return "fg_locations.npy class column disagrees with meta fg_classes / fg_counts"
    if len(fg) and ((fg[:, 1:] < 0).any() or (fg[:, 1:] >= np.asarray(shape)).any()):
        return f"fg_locations.npy has coordinates outside the volume {tuple(shape)}"
    return None


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
    if meta.get("has_instances"):
        expected["instances.npy"] = ((shape[-1], *shape[:-1]), np.int32)
    if meta.get("has_valid"):
        expected["valid.npy"] = ((shape[-1], *shape[:-1]), np.bool_)
    for name, (want_shape, want_dtype) in expected.items():
        try:
            arr = np.load(folder / name, mmap_mode="r")
        except (OSError, ValueError, EOFError) as exc:
            return f"{name} unreadable: {exc}"
        if tuple(arr.shape) != tuple(want_shape) or arr.dtype != want_dtype:
            return f"{name} holds {arr.dtype} {tuple(arr.shape)}, expected {np.dtype(want_dtype)} {tuple(want_shape)}"
    if meta.get("has_label"):
        return _fg_problem(folder, meta, shape)
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


def write_cache(cases: list, cache_dir: str | Path, preprocessing, progress: bool = True) -> list[CachedCase]:
    """Write the cache entry of every case (reusing entries already there, with progress
    shown); returns the entries in the same order (``preprocessing`` as for :func:`cache_case`)."""
    return [cache_case(case, cache_dir, preprocessing)
            for case in track(cases, "caching cases", "case", enabled=progress)]
