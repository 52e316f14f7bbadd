"""An advisory lock on a run folder: one writer at a time, for the life of a run.

The lock is the file ``<folder>/.pdeseg.lock`` holding JSON about its owner: host, PID,
start time and command line (plus a random token, the PID namespace and the kernel's
start time of the owning process, used to tell a live owner from a dead one).

Why a lock *file* created exclusively, and not ``fcntl.flock``:

* Run folders often live on shared file systems (NFS, Lustre, GPFS) that several machines
  write. ``flock`` there is, depending on the file system and its mount options, local to
  one client, emulated or refused, so two machines could both "hold" it and write the same
  checkpoints. Exclusive creation is atomic on local file systems and on NFS.
* The file is written completely *before* it appears: the owner's JSON goes to a private
  temporary file that is then hard-linked to ``.pdeseg.lock`` (``link`` fails if the name
  exists; the link count is checked too, as ``open(2)`` recommends for NFS). Nobody can
  read a half-written lock and mistake it for a corrupt one. Where hard links are not
  supported, ``os.open(O_CREAT | O_EXCL)`` is used instead.
* A process killed with SIGKILL (or a machine that crashed) leaves its lock behind. On the
  same machine that is detected: the PID no longer exists (``os.kill(pid, 0)`` raises
  ProcessLookupError) or now belongs to a different process (its start time differs), and
  the lock is taken over with a warning. A lock from another host, or from another PID
  namespace (a container sharing the host name), cannot be checked from here and is never
  taken over automatically: the error says which file to remove if that run is known to be
  dead. An unreadable or corrupt lock file is taken over with a warning.
* Taking over is race-free between several starters: takeover only ever happens for an
  owner on this host, so the takers are serialised by an ``flock`` on the run folder itself
  (local, no extra file). Under it the lock file is read again and removed only if it is
  still the very file judged stale; the new lock is then created exclusively as usual, and
  a lock that another starter created meanwhile is never touched.

The lock is advisory: it binds pdeseg runs, not other programs writing the folder.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shlex
import socket
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from pdeseg.errors import RunFolderError

__all__ = ["LOCK_NAME", "RunLock"]

log = logging.getLogger(__name__)

#: Name of the lock file inside a run folder.
LOCK_NAME = ".pdeseg.lock"

_ALIVE, _DEAD, _UNKNOWN = "alive", "dead", "unknown"
_LINK_UNSUPPORTED = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}
_ATTEMPTS = 5  # takeovers and releases racing with us; more than this is reported


class RunLock:
    """Context manager holding the advisory lock ``<folder>/.pdeseg.lock``.

    ``with RunLock(folder): ...`` takes the lock on entry and removes the lock file on exit,
    also when the body raises (KeyboardInterrupt included). The folder must exist.

    Args:
        folder: the run folder to lock.

    Raises:
        RunFolderError: on entry, when another live run holds the lock (the message names
            the folder, the owner's host and PID, when it started and what to do), when
            the lock belongs to another host or PID namespace, or when the lock file cannot
            be written.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._token: str | None = None
        self._pid = 0  # the process that took the lock (a forked child must not release it)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._token is not None

    def acquire(self) -> None:
        """Take the lock, taking over a stale one (logged as a warning).

        Raises:
            RunFolderError: see the class.
        """
        if self._token is not None:
            raise RuntimeError(f"{self.path} is already held by this RunLock")
        record = _owner_record()
        mine = json.dumps(record, indent=1).encode()
        for _ in range(_ATTEMPTS):
            if self._create(mine):
                self._token, self._pid = record["token"], os.getpid()
                log.debug("locked %s", self.folder)
                return
            raw = self._read()
            if raw is None:
                continue  # released meanwhile: try again
            owner = _parse(raw)
            if owner is None:
                time.sleep(0.2)  # written right now through the O_EXCL fallback? look again
                again = self._read()
                if again != raw:
                    continue
                if self._take_over(raw):
                    log.warning("%s: taking over an unreadable lock file (%d bytes, not a pdeseg lock record)",
                                self.folder, len(raw))
                continue
            state = _owner_state(owner)
            if state == _ALIVE:
                raise RunFolderError(f"run folder {self.folder} is in use by another pdeseg run ({_describe(owner)}); "
                                     "wait for it to finish or stop it, or choose another run folder (--out)")
            if state == _UNKNOWN:
                raise RunFolderError(f"run folder {self.folder} is locked by a pdeseg run {_where(owner)} "
                                     f"({_describe(owner)}) whose state cannot be checked from here; if that run is "
                                     f"known to be dead, remove {self.path} and start again, else wait for it or "
                                     "choose another run folder (--out)")
            if self._take_over(raw):
                log.warning("%s: taking over the stale lock of a run that is no longer running (%s)",
                            self.folder, _describe(owner))
        raise RunFolderError(f"cannot take the lock {self.path}: it kept changing while pdeseg tried "
                             f"{_ATTEMPTS} times (are several runs starting in {self.folder} at once?); try again")

    def release(self) -> None:
        """Remove the lock file if it is still this lock's (a no-op when not held, and in a
        child process forked while it was held)."""
        token, self._token = self._token, None
        if token is None or os.getpid() != self._pid:
            return
        try:
            raw = self._read()
        except RunFolderError as exc:
            log.warning("%s; remove it by hand once this run has ended", exc)
            return
        owner = _parse(raw) if raw is not None else None
        if owner is None or owner.get("token") != token:
            log.warning("%s: the lock file was removed or replaced while this run held it; left as it is", self.path)
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("%s: cannot remove the lock file (%s); remove it by hand", self.path, exc)
        else:
            log.debug("unlocked %s", self.folder)

    def _read(self) -> bytes | None:
        """The lock file's bytes, or None when there is none."""
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RunFolderError(f"cannot read the lock file {self.path}: {exc}") from None

    def _create(self, content: bytes) -> bool:
        """Create the lock file holding ``content`` if there is none; False if there is one."""
        tmp = self.folder / f"{LOCK_NAME}.{uuid.uuid4().hex}.tmp"
        try:
            _write_new(tmp, content)
            try:
                os.link(tmp, self.path)
                return True
            except FileExistsError:
                # on NFS a lost reply can report a link that was made: then tmp has two links
                return os.stat(tmp).st_nlink == 2
            except OSError as exc:
                if exc.errno not in _LINK_UNSUPPORTED:
                    raise
            try:  # no hard links on this file system: exclusive creation, then write
                _write_new(self.path, content)
                return True
            except FileExistsError:
                return False
        except OSError as exc:
            raise RunFolderError(f"cannot write the lock file in {self.folder} ({exc.strerror or exc}); "
                                 "check that the folder exists and is writable") from None
        finally:
            try:
                tmp.unlink()
            except OSError:
                pass

    def _take_over(self, stale: bytes) -> bool:
        """Remove the lock file if it still holds ``stale``; False if it changed (or vanished).

        Takers on this host hold an exclusive ``flock`` on the folder while they check and
        remove, so one taker cannot remove a lock that another created after taking over.
        """
        import fcntl

        try:
            fd = os.open(self.folder, os.O_RDONLY)
        except OSError as exc:
            raise RunFolderError(f"cannot take over the stale lock {self.path} ({exc.strerror or exc}); "
                                 "remove it by hand if its run is dead") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if self._read() != stale:
                return False
            self.path.unlink(missing_ok=True)
            return True
        except RunFolderError:
            raise
        except OSError as exc:
            raise RunFolderError(f"cannot take over the stale lock {self.path} ({exc.strerror or exc}); "
                                 "remove it by hand if its run is dead") from None
        finally:
            os.close(fd)  # releases the flock


def _write_new(path: Path, content: bytes) -> None:
    """Create ``path`` exclusively (mode 0o644 less the umask) and write ``content``; a file
    that cannot be written completely is removed again."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _owner_record() -> dict[str, Any]:
    now, stat = datetime.now().astimezone(), _process_stat(os.getpid())
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": now.isoformat(timespec="seconds"),
        "started_unix": now.timestamp(),
        "command": shlex.join(sys.argv if sys.argv and sys.argv[0] not in ("", "-c") else [sys.executable, *sys.argv]),
        "pid_namespace": _pid_namespace(),
        "process_start": stat[1] if stat else None,
        "token": uuid.uuid4().hex,
    }


def _parse(raw: bytes) -> dict[str, Any] | None:
    """The owner record in ``raw``, or None when it is not a valid one."""
    try:
        owner = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(owner, dict):
        return None
    pid, host, token = owner.get("pid"), owner.get("host"), owner.get("token")
    # pid 0 or below would make os.kill address process groups: never accept it
    if not (isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 and isinstance(host, str)
            and isinstance(token, str)):
        return None
    return owner


def _owner_state(owner: dict[str, Any]) -> str:
    """``alive``, ``dead``, or ``unknown`` (another host or PID namespace: cannot be checked)."""
    if owner["host"] != socket.gethostname() or owner.get("pid_namespace") != _pid_namespace():
        return _UNKNOWN
    pid = owner["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return _DEAD
    except PermissionError:
        pass  # exists, owned by another user
    stat = _process_stat(pid)
    if stat is not None:
        state, start = stat
        if state in "ZX":
            return _DEAD  # exited, not yet reaped by its parent
        recorded = owner.get("process_start")
        if recorded is not None and recorded != start:
            return _DEAD  # the PID was reused by a process started later
    return _ALIVE


def _describe(owner: dict[str, Any]) -> str:
    """``PID 123 on host h, started <time>, command: <...>`` (the command shortened)."""
    command = str(owner.get("command", "?"))
    if len(command) > 160:
        command = command[:157] + "..."
    return (f"PID {owner.get('pid', '?')} on host {owner.get('host', '?')}, started {owner.get('started', '?')}, "
            f"command: {command}")


def _where(owner: dict[str, Any]) -> str:
    if owner["host"] != socket.gethostname():
        return f"on another machine ({owner['host']})"
    return "in another container of this machine (another PID namespace)"


def _pid_namespace() -> str | None:
    """This process's PID namespace (``pid:[4026531836]``), or None where there is no /proc."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _process_stat(pid: int) -> tuple[str, str] | None:
    """Process ``pid``'s state letter and start time in clock ticks since boot (fields 3 and
    22 of /proc/PID/stat), or None where it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()  # the name in (...) may hold spaces
        return fields[0], fields[19]
    except (OSError, ValueError, IndexError):
        return None
