"""From a resolved experiment to cached, split cases: reader -> validation -> cache -> patient split."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdeseg.config import DataConfig, TaskSpec
from pdeseg.data.files import write_atomically
from pdeseg.data.formats import get_format
from pdeseg.data.pipeline.cache import CachedCase, write_cache
from pdeseg.data.pipeline.splits import load_split, split_by_domain, split_cases
from pdeseg.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """Cached cases of a data set and its patient-level split."""

    split: dict[str, list[str]]
    cached: dict[str, CachedCase]

    def cases(self, part: str) -> list[CachedCase]:
        return [self.cached[c] for c in self.split[part]]


def subsample_training(train: list[str], train_cases: float | None, seed: int) -> list[str]:
    """The training cases a low-sample run uses: ``train_cases`` as a count (>= 1) or a
    fraction (< 1, rounded, at least one) of ``train``, drawn with ``seed``. Validation and
    test cases are never touched, so runs of different sizes share one test set.

    Raises:
        ConfigError: a count larger than the training side.
    """
    if train_cases is None:
        return list(train)
    n = int(train_cases) if train_cases >= 1 else max(1, int(round(train_cases * len(train))))
    if n > len(train):
        raise ConfigError(f"data.train_cases is {n} but the split has only {len(train)} training cases")
    order = np.random.default_rng(seed).permutation(len(train))
    return sorted(train[i] for i in order[:n])


def draw_split(d: DataConfig, cases: list) -> dict[str, list[str]]:
    """The patient-level split ``d.split`` gives these cases (by domain where it names domains),
    with the training side subsampled by ``d.train_cases``; the same for training, ``export-nnunet``
    and every study.

    Raises:
        ConfigError: a split setting that does not fit the cases.
    """
    s = d.split
    try:
        if s.domains is not None:
            domains = {c.case_id: str(getattr(c, "domain", "")) for c in cases}
            split = split_by_domain(domains, s.domains.train, s.domains.test, s.domains.val, s.fractions, s.counts,
                                    s.seed, s.scale_counts)
        else:
            split = split_cases([c.case_id for c in cases], s.fractions, s.counts, s.seed, s.scale_counts)
    except ValueError as exc:
        raise ConfigError(f"data.split: {exc}") from None
    split["train"] = subsample_training(split["train"], d.train_cases, s.seed)
    return split


def prepare_data(d: DataConfig, spec: TaskSpec, split_file: str | Path | None = None, progress: bool = True) -> PreparedData:
    """Find, validate and cache the cases of ``d.root`` and split them by patient.

    An existing ``split_file`` is reused (resume, or several models on one split); else
    the split is drawn from ``d.split`` and, with ``d.train_cases``, the training side is
    subsampled afterwards.

    With ``normalization: ct`` and no ``ct_window``, the window and statistics are taken
    from the training cases (:func:`training_ct_statistics`) and written into ``spec``
    (so checkpoints carry them to prediction).

    Raises:
        ConfigError: ``data.root`` is not set, or a split setting does not fit the data.
        DataError: bad or missing data (see the readers), or a reused split naming cases
            that are not in the folder.
    """
    if not d.root:
        raise ConfigError("data.root is not set: point it at a data folder (--data DIR or --set data.root=DIR)")
    cases = get_format(spec.format).find_cases(d.root, spec.modalities, True, **d.format_options)
    ids = [c.case_id for c in cases]
    if split_file is not None and Path(split_file).is_file():
        split = load_split(split_file)
        missing = sorted(set(sum(split.values(), [])) - set(ids))
        if missing:
            raise DataError(f"{split_file}: the split names cases not found under {d.root}: {missing[:5]}")
    else:
        split = draw_split(d, cases)
    log.info("cases: %d (train %d, val %d, test %d)", len(ids), *(len(split[k]) for k in ("train", "val", "test")))
    wanted = set(sum(split.values(), []))
    if spec.normalization == "ct" and spec.ct_window is None:
        by_id = {c.case_id: c for c in cases}
        spec.ct_window, spec.ct_stats = training_ct_statistics([by_id[i] for i in split["train"]], spec.modalities,
                                                               d.cache_dir, progress)
        log.info("CT normalisation from the training foreground: window [%.1f, %.1f], mean %.1f, sd %.1f",
                 *spec.ct_window, *spec.ct_stats)
    cached = write_cache([c for c in cases if c.case_id in wanted], d.cache_dir, spec, progress)
    return PreparedData(split, {c.case_id: c for c in cached})


def training_ct_statistics(cases: list, modalities: list[str], cache_dir: str | Path,
                           progress: bool = True) -> tuple[list[float], list[float]]:
    """nnU-Net's CT window and statistics over the labelled voxels of the training ``cases``
    (:func:`pdeseg.data.pipeline.preprocess.ct_statistics`), remembered in ``cache_dir`` under a key
    of the cases' files so that a resumed or repeated run does not read them again.

    Raises:
        DataError: the training cases have no labelled voxels, or one intensity only.
    """
    from pdeseg.data.pipeline.cache import source_key
    from pdeseg.data.pipeline.preprocess import ct_statistics, foreground_sample
    from pdeseg.progress import track

    key = hashlib.sha256("|".join(source_key(c, tuple(modalities)) for c in cases).encode()).hexdigest()[:16]
    memo = Path(cache_dir).expanduser() / f"ct-statistics-{key}.json"
    if memo.is_file():
        try:
            saved = json.loads(memo.read_text())
            return list(map(float, saved["window"])), list(map(float, saved["stats"]))
        except (ValueError, KeyError, TypeError):
            log.warning("%s is damaged; taking the CT statistics again", memo)
    samples = []
    for i, case in enumerate(track(cases, "CT statistics", "case", enabled=progress)):
        loaded = case.load(modalities)
        samples.append(foreground_sample(loaded.image, loaded.label, np.random.default_rng(i)))
    try:
        window, stats = ct_statistics(np.concatenate(samples) if samples else np.zeros(0))
    except ValueError as exc:
        raise DataError(f"normalization ct without ct_window: {exc}") from None
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(memo, lambda tmp: tmp.write_text(json.dumps({"window": window, "stats": stats})))
    except OSError as exc:
        log.warning("could not remember the CT statistics in %s (%s)", memo, exc)
    return window, stats


def steps_per_epoch(n_items: int, batch_size: int, world: int = 1) -> int:
    """Optimiser steps in one epoch of ``n_items`` sharded over ``world`` processes."""
    return max(1, math.ceil(math.ceil(n_items / world) / batch_size))


def load_cached_cases(root: str | Path, spec: TaskSpec, cache_dir: str | Path, ids: list[str] | None = None,
                      progress: bool = True, format_options: dict | None = None) -> list[tuple[object, CachedCase]]:
    """Find the labelled cases under ``root`` (only ``ids``, in that order, when given), cache
    them normalised as ``spec`` says (:func:`~pdeseg.data.pipeline.cache.write_cache`) and
    return ``(reader case, cache entry)`` pairs, as evaluation scores them.

    Raises:
        DataError: bad data, or ``ids`` naming cases that are not under ``root``.
    """
    cases = get_format(spec.format).find_cases(root, spec.modalities, True, **(format_options or {}))
    if ids is not None:
        by_id = {c.case_id: c for c in cases}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise DataError(f"{root}: cases not found: {missing[:5]}")
        cases = [by_id[i] for i in ids]
    if spec.normalization == "ct" and spec.ct_window is None:
        raise DataError("this spec's CT window was never taken from training data (normalization ct without ct_window)")
    entries = write_cache(cases, cache_dir, spec, progress)
    return list(zip(cases, entries))
