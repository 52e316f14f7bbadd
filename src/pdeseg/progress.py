"""Progress for long work: a bar on a terminal, periodic log lines everywhere else.

When standard error is a terminal, :func:`track` draws a tqdm bar. When it is not (a log
file, a cluster job, CI), a bar would write thousands of carriage-return frames, so
:func:`track` logs one line at most every ``interval`` seconds instead (and one at the end):
``caching cases: 12/40 (30%), 1.9 case/s, about 15 s left``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

log = logging.getLogger("pdeseg.progress")

#: Seconds between two progress log lines when standard error is not a terminal.
LOG_INTERVAL_S = 30.0


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _LoggedProgress:
    """Iterates ``iterable`` and logs ``desc: i/n (p%), rate, time left`` every ``interval`` s."""

    def __init__(self, iterable: Iterable, desc: str, unit: str, total: int | None, interval: float):
        self.iterable, self.desc, self.unit, self.interval = iterable, desc, unit, interval
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.postfix: dict[str, Any] = {}

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def _line(self, done: int, elapsed: float) -> str:
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {done}" + (f"/{self.total} ({100 * done / self.total:.0f}%)" if self.total else "")]
        parts.append(f"{rate:.2f} {self.unit}/s")
        if self.total and rate > 0 and done < self.total:
            parts.append(f"about {(self.total - done) / rate:.0f} s left")
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        return ", ".join(parts)

    def __iter__(self) -> Iterator:
        start = last = time.perf_counter()
        done = 0
        for item in self.iterable:
            yield item
            done += 1
            now = time.perf_counter()
            if now - last >= self.interval:
                log.info(self._line(done, now - start))
                last = now
        if done and time.perf_counter() - start >= self.interval:
            log.info(self._line(done, time.perf_counter() - start))

    def __len__(self) -> int:
        return len(self.iterable)


class _Silent:
    def __init__(self, iterable: Iterable):
        self.iterable = iterable

    def __iter__(self) -> Iterator:
        return iter(self.iterable)

    def __len__(self) -> int:
        return len(self.iterable)

    def set_postfix(self, **values: Any) -> None:
        pass


def track(iterable: Iterable, desc: str, unit: str = "it", enabled: bool = True, total: int | None = None,
          interval: float | None = None, terminal: bool | None = None):
    """Wrap ``iterable`` with progress: a tqdm bar on a terminal, log lines otherwise.

    Args:
        desc, unit: what is counted (``"epoch 3/10"``, ``"batch"``).
        enabled: False shows nothing.
        total: item count when ``iterable`` has no ``len``.
        interval: seconds between log lines (default :data:`LOG_INTERVAL_S`).
        terminal: force the bar (True) or the log lines (False); default: whether standard
            error is a terminal.

    Returns:
        an iterable over the same items with a ``set_postfix(**values)`` method.
    """
    if not enabled:
        return _Silent(iterable)
    if terminal if terminal is not None else stderr_is_terminal():
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, unit=unit, total=total, leave=False)
    return _LoggedProgress(iterable, desc, unit, total, LOG_INTERVAL_S if interval is None else interval)
