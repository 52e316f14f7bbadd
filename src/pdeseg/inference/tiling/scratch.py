"""Scratch folders of tiled runs (``.pdeseg-tiles-*``, with the owner's host and pid), and the
reclaiming of those that a killed run left."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)


#: A scratch folder without an owner file this old (seconds) is a leftover of an older pdeseg.
_ORPHAN_AGE_S = 3600.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def reclaim_scratch(folder: str | Path) -> list[Path]:
    """Remove the scratch folders (``.pdeseg-tiles-*``) in ``folder`` that a killed run left:
    its owner process (``owner.json``: host and pid) is gone from this host, or it has no owner
    file and is older than an hour. Returns the folders removed."""
    from pdeseg.data.outputs import SCRATCH_PREFIX

    removed = []
    for path in Path(folder).glob(SCRATCH_PREFIX + "*"):
        if not path.is_dir() or path.is_symlink():
            continue
        try:
            owner = json.loads((path / "owner.json").read_text())
            stale = owner.get("host") == socket.gethostname() and not _alive(int(owner["pid"]))
        except FileNotFoundError:
            stale = time.time() - path.stat().st_mtime > _ORPHAN_AGE_S
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed %s, the scratch folder of a run that was killed", path)
            removed.append(path)
    return removed


def make_scratch(folder: str | Path | None) -> Path:
    """A new scratch folder ``.pdeseg-tiles-*`` in ``folder`` (default: the system's temporary
    folder), with ``owner.json`` (host, pid); leftovers of killed runs there are reclaimed first."""
    from pdeseg.data.outputs import SCRATCH_PREFIX

    where = Path(folder) if folder else Path(tempfile.gettempdir())
    reclaim_scratch(where)
    scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=str(where)))
    (scratch / "owner.json").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    return scratch
