"""Data-set fingerprint: what a planner needs to know about a data set, measured once.

For every case a reader finds (any registered format), :func:`case_fingerprint` records

* the spatial shape ``(X, Y, Z)`` and voxel spacing (mm; the readers of PNG/TIFF files give
  1 per pixel, and :attr:`Fingerprint.spacing_known` says so);
* per channel: the intensities under the labelled foreground (a seeded sample of at most
  :data:`SAMPLES_PER_CASE` voxels, pooled over cases for the 0.5 / 99.5 percentiles, mean and
  sd, as nnU-Net's CT rule needs), the minimum and maximum, whether every value is a whole
  number, and the mean inside and outside the foreground (microscopy contrast polarity:
  bright-on-dark when the objects are brighter than their surroundings);
* the share of exactly-zero voxels (skull-stripped MRI and padded scans have many);
* the share of the foreground (all classes > 0) in its largest connected component;
* per class: voxel count, number of connected components and the smallest one (26- or
  8-connectivity);
* for data sets with objects (cells): objects per image and their median area.

:func:`fingerprint_dataset` runs the cases in parallel (processes), aggregates them into a
:class:`Fingerprint` (medians, 10th / 90th percentiles, anisotropy, image kind per channel)
and caches it as JSON in the data cache folder under a key of the cases' files, so a second
``pdeseg fingerprint`` or ``pdeseg plan`` reads no image.

Image kinds (:attr:`ChannelStats.kind`): ``ct`` (Hounsfield units: a channel named CT, or
whole numbers reaching below -500), ``rgb8`` / ``grey8`` (8-bit microscopy or photographs:
whole numbers in [0, 255] from a 2D image format), ``mr`` (other volumes), ``other``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pdeseg.data.files import write_atomically
from pdeseg.data.formats import get_format
from pdeseg.errors import DataError
from pdeseg.progress import track

log = logging.getLogger(__name__)

FINGERPRINT_VERSION = 1
#: Foreground intensities sampled per case and channel for the pooled percentiles.
SAMPLES_PER_CASE = 10_000
#: Formats whose files carry no voxel size (their readers report 1 per pixel).
_NO_GEOMETRY = ("lgg", "dsb2018", "isbi_em", "drive", "cell_folder", "livecell")
_RGB_NAMES = ("red", "green", "blue")


@dataclass
class ChannelStats:
    """Intensity statistics of one channel over the data set (see the module docstring)."""

    name: str
    kind: str  # ct, mr, rgb8, grey8, other
    fg_mean: float
    fg_sd: float
    fg_p005: float  # 0.5th percentile of the foreground intensities
    fg_p995: float  # 99.5th percentile
    minimum: float
    maximum: float
    integral: bool
    bright_on_dark: float  # share of cases whose foreground is brighter than the background


@dataclass
class ClassStats:
    """One class over the data set (class 0 is the background)."""

    name: str
    voxel_fraction: float  # of all voxels of all cases
    cases_present: int
    smallest_component: int  # voxels; 0 when the class never occurs
    median_components: float  # connected components per case that has the class


@dataclass
class Fingerprint:
    """What a data set is, for planning. Sizes and spacings are per axis ``(X, Y, Z)``."""

    format: str
    root: str
    format_options: dict[str, Any]
    n_cases: int
    spatial_dims: int  # 2: every case is one image (Z = 1); 3: volumes or stacks of slices
    spacing_known: bool  # False: the files carry no voxel size (PNG/TIFF)
    shape_median: list[float]
    shape_p10: list[float]
    shape_p90: list[float]
    spacing_median: list[float]
    spacing_p10: list[float]
    spacing_p90: list[float]
    zero_fraction: float  # median share of voxels that are 0 in every channel
    largest_component_share: float  # median share of a case's foreground in its largest connected component
    nonzero_slices: float  # median number of axial (Z) slices with a non-zero voxel
    channels: list[ChannelStats]
    classes: list[ClassStats]
    objects_per_image: float | None = None  # instance data: median objects per image
    object_area_median: float | None = None  # median object size (pixels)
    domains: dict[str, int] = field(default_factory=dict)
    case_shapes: list[list[int]] = field(default_factory=list)
    case_spacings: list[list[float]] = field(default_factory=list)

    @property
    def anisotropy(self) -> float:
        """Largest over smallest median spacing (1 for isotropic data)."""
        s = [v for v in self.spacing_median[: self.spatial_dims]]
        return float(max(s) / min(s)) if min(s) > 0 else 1.0

    @property
    def microscopy(self) -> bool:
        return get_format(self.format).object_metrics

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fingerprint:
        data = dict(data)
        data.pop("written_by", None)  # the marker of pdeseg fingerprint --json
        data["channels"] = [ChannelStats(**c) for c in data["channels"]]
        data["classes"] = [ClassStats(**c) for c in data["classes"]]
        return cls(**data)

    def summary(self) -> str:
        """A few lines for people (``pdeseg fingerprint``)."""
        def axes(v: Sequence[float], fmt: str = "{:g}") -> str:
            return "x".join(fmt.format(round(x, 2)) for x in v[: 3 if self.spatial_dims == 3 else 2])

        lines = [f"data set: {self.root} (format {self.format}), {self.n_cases} labelled cases, "
                 f"{self.spatial_dims}D" + ("" if self.spacing_known else ", no voxel size in the files (pixels)")]
        lines.append(f"shape: median {axes(self.shape_median)}, 10th {axes(self.shape_p10)}, 90th {axes(self.shape_p90)}")
        lines.append(f"spacing: median {axes(self.spacing_median)} mm, 10th {axes(self.spacing_p10)}, "
                     f"90th {axes(self.spacing_p90)}; anisotropy {self.anisotropy:.2f}")
        lines.append(f"zero voxels: {100 * self.zero_fraction:.0f}% of a case (median); largest foreground component: "
                     f"{100 * self.largest_component_share:.0f}% of the foreground (median)")
        for c in self.channels:
            polarity = "" if not self.microscopy else (f", bright-on-dark in {100 * c.bright_on_dark:.0f}% of images")
            lines.append(f"channel {c.name}: {c.kind}, foreground mean {c.fg_mean:.4g} sd {c.fg_sd:.4g}, "
                         f"0.5-99.5% [{c.fg_p005:.4g}, {c.fg_p995:.4g}], range [{c.minimum:.4g}, {c.maximum:.4g}]{polarity}")
        for k in self.classes:
            lines.append(f"class {k.name}: {100 * k.voxel_fraction:.3f}% of voxels, in {k.cases_present} cases, "
                         f"smallest component {k.smallest_component} voxels, {k.median_components:g} components per case")
        if self.objects_per_image is not None:
            lines.append(f"objects: {self.objects_per_image:g} per image (median), median area {self.object_area_median:g} px")
        if self.domains:
            lines.append("domains: " + ", ".join(f"{d} {n}" for d, n in sorted(self.domains.items())))
        return "\n".join(lines)


# ----------------------------------------------------------------------------- one case


def case_fingerprint(case: Any, modalities: Sequence[str], num_classes: int, seed: int = 0) -> dict[str, Any]:
    """Measurements of one case (plain data, so worker processes can return it).

    Args:
        case: a reader's case object.
        modalities: channels to read.
        num_classes: classes of the data set (0 is the background).
        seed: seeds the foreground sample (with the case id), so the result is reproducible.

    Raises:
        DataError: the reader's own errors (file named).
    """
    from scipy import ndimage

    loaded = case.load(list(modalities))
    image = np.asarray(loaded.image, dtype=np.float32)
    label = loaded.label
    if label is None:
        raise DataError(f"{case.case_id}: no label (a fingerprint needs labelled cases)")
    rng = np.random.default_rng([seed, int(hashlib.sha256(str(case.case_id).encode()).hexdigest()[:8], 16)])
    fg = label > 0
    if loaded.valid is not None:
        fg &= loaded.valid
    bg = ~fg if loaded.valid is None else (~fg & loaded.valid)
    channels = []
    for c in range(image.shape[0]):
        x = image[c]
        inside = x[fg]
        if inside.size > SAMPLES_PER_CASE:
            inside = rng.choice(inside, SAMPLES_PER_CASE, replace=False)
        finite = x[np.isfinite(x)]
        channels.append({
            "sample": inside.astype(np.float32).tolist(),
            "min": float(finite.min()) if finite.size else 0.0, "max": float(finite.max()) if finite.size else 0.0,
            "integral": bool(np.all(np.mod(finite[: 200_000], 1) == 0)),
            "fg_mean": float(x[fg].mean()) if fg.any() else None, "bg_mean": float(x[bg].mean()) if bg.any() else None,
        })
    structure = ndimage.generate_binary_structure(label.ndim, label.ndim)  # 26- (3D) / 8-connectivity
    classes = []
    for k in range(num_classes):
        mask = label == k
        count = int(mask.sum())
        if k == 0 or count == 0:
            classes.append({"count": count, "components": 0, "smallest": 0})
            continue
        labelled, n = ndimage.label(mask, structure)
        sizes = np.bincount(labelled.ravel())[1:]
        classes.append({"count": count, "components": int(n), "smallest": int(sizes.min())})
    fg_labelled, n_fg = ndimage.label(label > 0, structure)
    fg_sizes = np.bincount(fg_labelled.ravel())[1:]
    largest_share = float(fg_sizes.max() / fg_sizes.sum()) if n_fg else 1.0
    objects = None
    if loaded.instances is not None:
        ids, areas = np.unique(loaded.instances[loaded.instances > 0], return_counts=True)
        objects = {"count": int(ids.size), "areas": areas.astype(int).tolist()}
    return {
        "case_id": str(case.case_id), "shape": [int(s) for s in image.shape[1:]],
        "spacing": [float(s) for s in loaded.spacing], "zero_fraction": float((image == 0).all(axis=0).mean()),
        "voxels": int(np.prod(image.shape[1:])), "channels": channels, "classes": classes, "objects": objects,
        "largest_share": largest_share, "nonzero_slices": int((image != 0).any(axis=(0, 1, 2)).sum()),
        "domain": str(loaded.domain or getattr(case, "domain", "") or ""),
    }


def _case_job(args: tuple) -> dict[str, Any]:
    case, modalities, num_classes, seed = args
    return case_fingerprint(case, modalities, num_classes, seed)


# ----------------------------------------------------------------------------- data set


def _channel_kind(name: str, fmt: str, lo: float, hi: float, integral: bool, spatial_dims: int, n_channels: int) -> str:
    if name.lower() == "ct" or (integral and lo <= -500 and fmt not in _NO_GEOMETRY):
        return "ct"
    if fmt in _NO_GEOMETRY and lo >= 0 and hi <= 255:  # 8-bit files (grey may be a weighted mean of RGB)
        return "rgb8" if (name in _RGB_NAMES or n_channels == 3) else "grey8"
    if spatial_dims == 3 and fmt not in _NO_GEOMETRY:
        return "mr"
    return "other"


def aggregate(fmt: str, root: str, options: dict[str, Any], modalities: Sequence[str], class_names: Sequence[str],
              cases: list[dict[str, Any]]) -> Fingerprint:
    """A :class:`Fingerprint` from the per-case measurements of :func:`case_fingerprint`.

    Raises:
        DataError: no cases.
    """
    if not cases:
        raise DataError(f"{root}: no labelled cases to fingerprint")
    shapes = np.array([c["shape"] for c in cases], dtype=float)
    spacings = np.array([c["spacing"] for c in cases], dtype=float)
    dims = 2 if np.all(shapes[:, 2] == 1) else 3
    channels = []
    for i, name in enumerate(modalities):
        sample = np.concatenate([np.asarray(c["channels"][i]["sample"], np.float32) for c in cases])
        if sample.size == 0:  # no foreground anywhere: fall back to the ranges only
            sample = np.array([0.0], np.float32)
        lo = min(c["channels"][i]["min"] for c in cases)
        hi = max(c["channels"][i]["max"] for c in cases)
        integral = all(c["channels"][i]["integral"] for c in cases)
        pol = [c["channels"][i]["fg_mean"] > c["channels"][i]["bg_mean"] for c in cases
               if c["channels"][i]["fg_mean"] is not None and c["channels"][i]["bg_mean"] is not None]
        p005, p995 = np.percentile(sample, [0.5, 99.5])
        channels.append(ChannelStats(
            name=name, kind=_channel_kind(name, fmt, lo, hi, integral, dims, len(modalities)),
            fg_mean=float(sample.mean()), fg_sd=float(sample.std()), fg_p005=float(p005), fg_p995=float(p995),
            minimum=lo, maximum=hi, integral=integral, bright_on_dark=float(np.mean(pol)) if pol else 1.0))
    total = float(sum(c["voxels"] for c in cases))
    classes = []
    for k, name in enumerate(class_names):
        counts = [c["classes"][k]["count"] for c in cases]
        present = [c for c in cases if c["classes"][k]["count"] > 0]
        smallest = min((c["classes"][k]["smallest"] for c in present), default=0) if k else 0
        comps = float(np.median([c["classes"][k]["components"] for c in present])) if (present and k) else 0.0
        classes.append(ClassStats(name=name, voxel_fraction=float(sum(counts) / total), cases_present=len(present),
                                  smallest_component=int(smallest), median_components=comps))
    objects = [c["objects"] for c in cases if c["objects"] is not None]
    areas = [a for o in objects for a in o["areas"]]
    domains: dict[str, int] = {}
    for c in cases:
        if c["domain"]:
            domains[c["domain"]] = domains.get(c["domain"], 0) + 1
    return Fingerprint(
        format=fmt, root=str(root), format_options=dict(options), n_cases=len(cases), spatial_dims=dims,
        spacing_known=fmt not in _NO_GEOMETRY,
        shape_median=[float(v) for v in np.median(shapes, axis=0)],
        shape_p10=[float(v) for v in np.percentile(shapes, 10, axis=0)],
        shape_p90=[float(v) for v in np.percentile(shapes, 90, axis=0)],
        spacing_median=[float(v) for v in np.median(spacings, axis=0)],
        spacing_p10=[float(v) for v in np.percentile(spacings, 10, axis=0)],
        spacing_p90=[float(v) for v in np.percentile(spacings, 90, axis=0)],
        zero_fraction=float(np.median([c["zero_fraction"] for c in cases])),
        largest_component_share=float(np.median([c["largest_share"] for c in cases])),
        nonzero_slices=float(np.median([c["nonzero_slices"] for c in cases])),
        channels=channels, classes=classes,
        objects_per_image=float(np.median([o["count"] for o in objects])) if objects else None,
        object_area_median=float(np.median(areas)) if areas else None, domains=domains,
        case_shapes=[list(map(int, s)) for s in shapes], case_spacings=[list(map(float, s)) for s in spacings],
    )


def find_labelled_cases(fmt_name: str, root: str | Path, modalities: Sequence[str] | None,
                        options: dict[str, Any] | None = None) -> tuple[list, list[str], tuple[str, ...]]:
    """The labelled cases of ``root``, the channels read and the class names.

    Raises:
        ConfigError, DataError: unknown format or option, missing or inconsistent files
            (the reader names them), a folder with no labelled case.
    """
    fmt = get_format(fmt_name)
    options = dict(options or {})
    fmt.check_read_options(options)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    info = fmt.dataset_info(root, options)
    mods = fmt.channels(info, modalities)
    cases = fmt.find_cases(root, mods, True, **options)
    if not cases:
        raise DataError(f"{root}: no labelled {fmt.name} cases found")
    return cases, mods, info.class_names


def fingerprint_dataset(fmt_name: str, root: str | Path, modalities: Sequence[str] | None = None,
                        options: dict[str, Any] | None = None, cache_dir: str | Path = "~/.cache/pdeseg",
                        workers: int | None = None, progress: bool = True, refresh: bool = False) -> Fingerprint:
    """The :class:`Fingerprint` of the labelled cases under ``root`` read as format ``fmt_name``.

    Cached in ``cache_dir`` as ``fingerprint-<key>.json`` (``key`` hashes the cases' file
    paths, sizes and modification times, the channels, the options and
    :data:`FINGERPRINT_VERSION`); ``refresh`` measures again.

    Args:
        workers: processes (default: the CPUs, at most 8; 1 runs in this process).

    Raises:
        ConfigError, DataError: see :func:`find_labelled_cases`; a case the reader rejects.
    """
    from pdeseg.data.pipeline.cache import source_key

    cases, mods, class_names = find_labelled_cases(fmt_name, root, modalities, options)
    options = dict(options or {})
    key = hashlib.sha256("|".join([fmt_name, json.dumps(options, sort_keys=True), ",".join(mods),
                                   f"v{FINGERPRINT_VERSION}", *(source_key(c, tuple(mods)) for c in cases)]).encode())
    memo = Path(cache_dir).expanduser() / f"fingerprint-{key.hexdigest()[:16]}.json"
    if memo.is_file() and not refresh:
        try:
            return Fingerprint.from_dict(json.loads(memo.read_text()))
        except (ValueError, KeyError, TypeError):
            log.warning("%s is damaged; measuring the data set again", memo)
    workers = workers or min(8, os.cpu_count() or 1)
    jobs = [(c, mods, len(class_names), 0) for c in cases]
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=mp.get_context("spawn")) as pool:
            results = list(track(pool.map(_case_job, jobs, chunksize=max(1, len(jobs) // (8 * workers))),
                                 "fingerprint", "case", total=len(jobs), enabled=progress))
    else:
        results = [_case_job(j) for j in track(jobs, "fingerprint", "case", enabled=progress)]
    fp = aggregate(fmt_name, str(Path(root).expanduser()), options, mods, class_names, results)
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(memo, lambda tmp: tmp.write_text(json.dumps(fp.to_dict())))
    except OSError as exc:
        log.warning("could not cache the fingerprint in %s (%s)", memo, exc)
    return fp
