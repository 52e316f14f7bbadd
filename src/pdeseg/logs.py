"""Third-party libraries' own log records, moved to pdeseg's debug log.

When pdeseg catches a library's failure and explains it in its own one-line error, the
library's records of that same failure (pydicom logs an ERROR and a traceback per pixel-data
handler it tries) would only bury that line: :func:`library_logs_at_debug` re-emits them at
DEBUG level under ``pdeseg.<library>`` (shown with ``-v``) instead of letting them reach the
console.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class _ToDebug(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        target = logging.getLogger(f"pdeseg.{record.name}")
        if target.isEnabledFor(logging.DEBUG):
            target.debug("[%s %s] %s", record.name, record.levelname, record.getMessage(), exc_info=record.exc_info)


_lock = threading.Lock()
#: logger name -> (blocks active, its own propagate flag, its own handlers)
_active: dict[str, tuple[int, bool, list[logging.Handler]]] = {}
_handler = _ToDebug()


@contextmanager
def library_logs_at_debug(*names: str) -> Iterator[None]:
    """Within the block, the records of the loggers ``names`` (e.g. ``"pydicom"``) go to
    pdeseg's log at DEBUG level only. Blocks may nest and run in several threads at once: a
    logger gets its own handlers back when the last block using it ends.

    Args:
        names: the libraries' logger names.
    """
    with _lock:
        for name in names:
            logger = logging.getLogger(name)
            if name in _active:
                count, propagate, handlers = _active[name]
                _active[name] = (count + 1, propagate, handlers)
            else:
                _active[name] = (1, logger.propagate, logger.handlers)
                logger.handlers = [_handler]  # its own console handlers too
                logger.propagate = False
    try:
        yield
    finally:
        with _lock:
            for name in names:
                count, propagate, handlers = _active[name]
                if count > 1:
                    _active[name] = (count - 1, propagate, handlers)
                    continue
                del _active[name]
                logger = logging.getLogger(name)
                logger.handlers = handlers
                logger.propagate = propagate
