"""``--shard i/n``: a deterministic share of the inputs, so that n copies of one command (a
SLURM array, n machines, any scheduler) segment a folder together with nothing shared but the
file system.

Inputs are sorted by their name (case id or file name) and shard ``i`` takes every ``n``-th
one starting at the ``i``-th (round robin: shard sizes differ by at most one). Every copy must
see the same input listing; each input then belongs to exactly one shard, so the union of the
shards' outputs is the single run's, and no file is written twice.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TypeVar

from pdeseg.errors import ConfigError

T = TypeVar("T")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; None stays None.

    Raises:
        ConfigError: not ``i/n``, ``n < 1``, or ``i`` out of range (the message gives the range).
    """
    if text is None:
        return None
    m = re.fullmatch(r"\s*(-?\d+)\s*/\s*(-?\d+)\s*", str(text))
    if not m:
        raise ConfigError(f"--shard must be I/N (this copy's index I of N copies, 0 <= I < N, e.g. 0/4), got {text!r}")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1:
        raise ConfigError(f"--shard {text}: the number of shards must be >= 1, got {n}")
    if not 0 <= i < n:
        raise ConfigError(f"--shard {text}: shard index {i} is out of range for {n} shard(s); use 0..{n - 1} "
                          f"(with SLURM: --array=0-{n - 1} and --shard $SLURM_ARRAY_TASK_ID/{n})")
    return i, n


def select_shard(items: Sequence[T], shard: tuple[int, int] | None, key: Callable[[T], str]) -> list[T]:
    """The items of shard ``(i, n)`` (all of them for None), in name order."""
    ordered = sorted(items, key=key)
    if shard is None:
        return ordered
    i, n = shard
    return ordered[i::n]


def shard_cases(cases: Sequence, skipped: dict[str, str], shard: tuple[int, int] | None) -> tuple[list, dict[str, str]]:
    """Shard ``(i, n)`` of a folder's cases and of the entries its reader skipped (both by
    case id, in one order, so each case or skipped entry is reported by exactly one copy)."""
    if shard is None:
        return list(cases), dict(skipped)
    ids = sorted({c.case_id for c in cases} | set(skipped))
    i, n = shard
    mine = set(ids[i::n])
    return ([c for c in sorted(cases, key=lambda c: c.case_id) if c.case_id in mine],
            {k: v for k, v in skipped.items() if k in mine})
