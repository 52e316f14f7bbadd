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


class _LoggedCounter:
    """Counts work by hand (:meth:`update`) and logs ``desc: i/n (p%), rate, time left`` at
    most every ``interval`` s (and once at :meth:`close` when the work took that long)."""

    def __init__(self, desc: str, unit: str, total: int | None, interval: float):
        self.desc, self.unit, self.total, self.interval = desc, unit, total, interval
        self.postfix: dict[str, Any] = {}
        self.done, self.closed = 0, False
        self.start = self.last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.interval:
            log.info(self._line(self.done, now - self.start))
            self.last = now

    def close(self) -> None:
        elapsed = time.perf_counter() - self.start
        if self.done and elapsed >= self.interval and not self.closed:
            log.info(self._line(self.done, elapsed))
        self.closed = True

    def __enter__(self) -> _LoggedCounter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

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


class _LoggedProgress(_LoggedCounter):
    """Iterates ``iterable``, logging as :class:`_LoggedCounter` does."""

    def __init__(self, iterable: Iterable, desc: str, unit: str, total: int | None, interval: float):
        super().__init__(desc, unit, total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None),
                         interval)
        self.iterable = iterable

    def __iter__(self) -> Iterator:
        self.done, self.closed, self.start = 0, False, time.perf_counter()
        self.last = self.start
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def __len__(self) -> int:
        return len(self.iterable)


class _SilentCounter:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def set_postfix(self, **values: Any) -> None:
        pass

    def __enter__(self) -> _SilentCounter:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


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


def counter(desc: str, unit: str = "it", total: int | None = None, enabled: bool = True, interval: float | None = None,
            terminal: bool | None = None):
    """Progress for work counted by hand, for loops that run inside a library (e.g. the
    windows of MONAI's sliding-window inference): a tqdm bar on a terminal, log lines
    otherwise (at most one every ``interval`` s), nothing when not ``enabled``.

    Args:
        desc, unit: what is counted.
        total: how many units to expect, if known.
        enabled, interval, terminal: as for :func:`track`.

    Returns:
        a context manager with ``update(n=1)``, ``set_postfix(**values)`` and ``close()``.
    """
    if not enabled:
        return _SilentCounter()
    if terminal if terminal is not None else stderr_is_terminal():
        from tqdm.auto import tqdm

        return tqdm(desc=desc, unit=unit, total=total, leave=False)
    return _LoggedCounter(desc, unit, total, LOG_INTERVAL_S if interval is None else interval)
