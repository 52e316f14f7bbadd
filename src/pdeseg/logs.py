"""Third-party libraries' own log records, moved to pdeseg's debug log.

When pdeseg catches a library's failure and explains it in its own one-line error, the
library's records of that same failure (pydicom logs an ERROR and a traceback per pixel-data
handler it tries) would only bury that line: :func:`library_logs_at_debug` re-emits them at
DEBUG level under ``pdeseg.<library>`` (shown with ``-v``) instead of letting them reach the
console.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


class _ToDebug(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        target = logging.getLogger(f"pdeseg.{record.name}")
        if target.isEnabledFor(logging.DEBUG):
            target.debug("[%s %s] %s", record.name, record.levelname, record.getMessage(), exc_info=record.exc_info)


@contextmanager
def library_logs_at_debug(*names: str) -> Iterator[None]:
    """Within the block, the records of the loggers ``names`` (e.g. ``"pydicom"``) go to
    pdeseg's log at DEBUG level only.

    Args:
        names: the libraries' logger names.
    """
    handler = _ToDebug()
    saved = []
    for name in names:
        logger = logging.getLogger(name)
        saved.append((logger, logger.propagate, logger.handlers))
        logger.handlers = [handler]  # its own console handlers too
        logger.propagate = False
    try:
        yield
    finally:
        for logger, propagate, handlers in saved:
            logger.handlers = handlers
            logger.propagate = propagate
