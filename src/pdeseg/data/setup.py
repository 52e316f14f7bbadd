"""From a config to cached, split cases: reader -> validation -> cache -> patient split."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pdeseg.config import ConfigError, ExperimentConfig
from pdeseg.data.formats import get_format
from pdeseg.data.cache import CachedCase, cache_cases
from pdeseg.data.splits import load_split, split_cases

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """Cached cases of a data set and its patient-level split."""

    split: dict[str, list[str]]
    cached: dict[str, CachedCase]

    def cases(self, part: str) -> list[CachedCase]:
        return [self.cached[c] for c in self.split[part]]


def prepare_data(cfg: ExperimentConfig, split_file: str | Path | None = None, progress: bool = True) -> PreparedData:
    """Find, validate and cache the cases of ``cfg.data.root`` and split them by patient.

    An existing ``split_file`` is reused (resume, or several models on one split); else
    the split is drawn from ``cfg.data.split``.

    Raises:
        ConfigError: ``data.root`` is not set.
        BratsDataError, LggDataError: bad or missing data (see the readers).
        ValueError: a reused split names cases that are not in the folder.
    """
    d = cfg.data
    if not d.root:
        raise ConfigError("data.root is not set: point it at a data folder (--data DIR or --set data.root=DIR)")
    cases = get_format(d.format).find_cases(d.root, d.modalities)
    if d.max_cases:
        cases = cases[: d.max_cases]
    ids = [c.case_id for c in cases]
    if split_file is not None and Path(split_file).is_file():
        split = load_split(split_file)
        missing = sorted(set(sum(split.values(), [])) - set(ids))
        if missing:
            raise ValueError(f"{split_file}: split names cases not found under {d.root}: {missing[:5]}")
    else:
        s = d.split
        split = split_cases(ids, s.fractions, s.counts, s.seed, s.scale_counts)
    log.info("cases: %d (train %d, val %d, test %d)", len(ids), *(len(split[k]) for k in ("train", "val", "test")))
    wanted = set(sum(split.values(), []))
    cached = cache_cases([c for c in cases if c.case_id in wanted], d.cache_dir, d.modalities, d.normalization, progress)
    return PreparedData(split, {c.case_id: c for c in cached})
