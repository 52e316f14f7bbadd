"""Nothing lost, nothing silent: one writer per run folder, checkpoints with the umask, and
no leftovers of interrupted checkpoint writes."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
import yaml

import pdeseg
from conftest import tiny_config_dict
from pdeseg.checkpoint import load_checkpoint, remove_stale_temporaries, save_checkpoint
from pdeseg.cli import main
from pdeseg.config import config_from_dict
from pdeseg.errors import ConfigError, DataError, RunFolderError
from pdeseg.runlock import LOCK_NAME, RunLock
from pdeseg.training.run import train_model

SRC = Path(pdeseg.__file__).resolve().parents[1]

HOLD_LOCK = """
import sys, time
from pathlib import Path
from pdeseg.runlock import RunLock
with RunLock(sys.argv[1]):
    Path(sys.argv[2]).write_text("locked")
    time.sleep(600)
"""

# a checkpoint write that stops after the bytes are written, before the rename
STALL_IN_SAVE = """
import os, sys, time
from pathlib import Path
import torch
from pdeseg.checkpoint import save_checkpoint

def stall(fd):
    Path(sys.argv[2]).write_text("writing")
    time.sleep(600)

os.fsync = stall
save_checkpoint({"state_dict": {"w": torch.ones(5000)}}, Path(sys.argv[1]) / "last.pt")
"""


def _child(script: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", script, *args], env=env)


def _wait_for(proc: subprocess.Popen, flag: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not flag.exists():
        assert proc.poll() is None, f"child exited with {proc.returncode} before signalling"
        assert time.monotonic() < deadline, "child did not signal in time"
        time.sleep(0.05)


@contextlib.contextmanager
def lock_held_by_child(folder: Path, scratch: Path):
    """A live child process holding ``RunLock(folder)`` (killed at the end if still alive)."""
    flag = scratch / f"locked-{uuid.uuid4().hex}"
    proc = _child(HOLD_LOCK, str(folder), str(flag))
    try:
        _wait_for(proc, flag)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# (a) two real processes -------------------------------------------------------------------

def test_a_live_owner_refuses_a_second_writer_and_a_killed_one_is_taken_over(tmp_path, caplog):
    folder = tmp_path / "run"
    folder.mkdir()
    lock_file = folder / LOCK_NAME
    with lock_held_by_child(folder, tmp_path) as child:
        owner = json.loads(lock_file.read_text())
        assert owner["pid"] == child.pid and owner["host"] == socket.gethostname()
        with pytest.raises(RunFolderError) as refused:
            with RunLock(folder):
                pytest.fail("a second writer got the lock of a live owner")
        message = str(refused.value)
        assert f"PID {child.pid}" in message and str(folder) in message, message
        assert f"host {socket.gethostname()}" in message and f"started {owner['started']}" in message, message
        assert "wait for it to finish or stop it" in message and "\n" not in message
        assert json.loads(lock_file.read_text())["token"] == owner["token"], "a refused taker must not touch the lock"

        child.send_signal(signal.SIGKILL)
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # dead but not reaped: a zombie still has its PID
        assert lock_file.is_file(), "SIGKILL leaves the lock behind (that is what takeover is for)"

        caplog.set_level(logging.WARNING, logger="pdeseg.runlock")
        with RunLock(folder):
            assert json.loads(lock_file.read_text())["pid"] == os.getpid()
        assert not lock_file.exists()
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and f"PID {child.pid}" in warnings[0] and "no longer running" in warnings[0], warnings
    assert sorted(folder.iterdir()) == [], "no temporary or stale lock files are left behind"


def test_concurrent_takeovers_of_a_stale_lock_leave_exactly_one_owner(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    with lock_held_by_child(folder, tmp_path) as dead:
        dead.kill()
        dead.wait(timeout=60)
    go, results = tmp_path / "go", tmp_path / "results"
    results.mkdir()
    script = """
import sys, time
from pathlib import Path
from pdeseg.errors import RunFolderError
from pdeseg.runlock import RunLock
folder, go, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
out.with_suffix(".ready").write_text("")
while not go.exists():
    time.sleep(0.001)
try:
    with RunLock(folder):
        out.write_text("got")
        deadline = time.time() + 60  # hold until every contender has tried (a loaded machine starts them late)
        while len(list(out.parent.glob("*.txt"))) < 4 and time.time() < deadline:
            time.sleep(0.01)
except RunFolderError as exc:
    out.write_text("refused " + str(exc))
"""
    procs = [_child(script, str(folder), str(go), str(results / f"{i}.txt")) for i in range(4)]
    try:
        for i, proc in enumerate(procs):
            _wait_for(proc, results / f"{i}.ready")
        go.write_text("")
        for proc in procs:
            assert proc.wait(timeout=120) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    outcomes = [(results / f"{i}.txt").read_text() for i in range(4)]
    assert sum(o == "got" for o in outcomes) == 1, outcomes
    assert all(o == "got" or o.startswith("refused run folder") for o in outcomes), outcomes
    assert sorted(p.name for p in folder.iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_taker_that_was_overtaken_leaves_the_new_lock_alone(tmp_path):
    """The interleaving the takeover protocol exists for, made deterministic: A judges the
    lock stale, B takes it over first, then A's takeover must not remove B's fresh lock."""
    stale = _fake_lock(tmp_path, process_start="1")  # this PID with another start time: dead
    b = RunLock(tmp_path)
    b.acquire()
    fresh = (tmp_path / LOCK_NAME).read_bytes()
    assert fresh != stale
    assert RunLock(tmp_path)._take_over(stale) is False
    assert (tmp_path / LOCK_NAME).read_bytes() == fresh
    b.release()
    assert list(tmp_path.iterdir()) == []


def test_without_hard_links_the_lock_is_created_exclusively(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    with RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
        assert [p.name for p in tmp_path.iterdir()] == [LOCK_NAME]
        with pytest.raises(RunFolderError, match=f"PID {os.getpid()}"):
            RunLock(tmp_path).acquire()
    assert list(tmp_path.iterdir()) == []


def test_lock_is_released_on_exceptions_and_keyboard_interrupt(tmp_path):
    lock_file = tmp_path / LOCK_NAME
    for exc in (ValueError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with RunLock(tmp_path):
                assert lock_file.is_file()
                raise exc
        assert not lock_file.exists()
    with RunLock(tmp_path) as lock:
        assert lock.held
        pid = os.fork()  # e.g. a DataLoader worker: its copy of the lock must not release the parent's
        if pid == 0:
            lock.release()
            os._exit(0)
        os.waitpid(pid, 0)
        assert lock_file.is_file()
    assert not lock.held and list(tmp_path.iterdir()) == []


def _fake_lock(folder: Path, **fields) -> bytes:
    record = {"host": socket.gethostname(), "pid": os.getpid(), "started": "2001-02-03T04:05:06+00:00",
              "command": "pdeseg train --config x.yaml", "pid_namespace": os.readlink("/proc/self/ns/pid"),
              "process_start": None, "token": "t" * 32, **fields}
    raw = json.dumps(record).encode()
    (folder / LOCK_NAME).write_bytes(raw)
    return raw


@pytest.mark.skipif(not Path("/proc/self/ns/pid").exists(), reason="needs Linux /proc")
def test_locks_that_cannot_be_checked_from_here_are_never_taken_over(tmp_path):
    raw = _fake_lock(tmp_path, host="other-node-17", pid=4242)
    with pytest.raises(RunFolderError) as refused:
        RunLock(tmp_path).acquire()
    message = str(refused.value)
    assert "PID 4242 on host other-node-17" in message and "another machine" in message, message
    assert f"remove {tmp_path / LOCK_NAME}" in message and "known to be dead" in message, message
    assert (tmp_path / LOCK_NAME).read_bytes() == raw

    # same host name, another PID namespace (a container with host networking): its PIDs mean nothing here
    raw = _fake_lock(tmp_path, pid=999_999_999, pid_namespace="pid:[1]")
    with pytest.raises(RunFolderError, match="another PID namespace"):
        RunLock(tmp_path).acquire()
    assert (tmp_path / LOCK_NAME).read_bytes() == raw


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_corrupt_locks_and_reused_pids_are_taken_over(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="pdeseg.runlock")
    (tmp_path / LOCK_NAME).write_bytes(b'{"host": "x", "pi')
    with RunLock(tmp_path):
        pass
    assert "unreadable lock file" in _warnings(caplog)[-1]
    # this very PID is alive, but the recorded process started at another time: the PID was reused
    _fake_lock(tmp_path, process_start="1")
    with RunLock(tmp_path):
        pass
    assert f"PID {os.getpid()}" in _warnings(caplog)[-1] and "no longer running" in _warnings(caplog)[-1]
    # the same PID and start time: the owner is alive (here: this process)
    own_start = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]
    _fake_lock(tmp_path, process_start=own_start)
    with pytest.raises(RunFolderError, match=f"PID {os.getpid()}"):
        RunLock(tmp_path).acquire()
    assert len(_warnings(caplog)) == 2
    assert (tmp_path / LOCK_NAME).is_file()


# (b) the command line -------------------------------------------------------------------

def test_cli_train_into_a_locked_run_folder_exits_2_naming_the_owner(phantom_root, tmp_path, caplog):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(phantom_root, tmp_path / "runs", epochs=1)))
    run_dir = tmp_path / "runs" / "tiny" / "unet"
    run_dir.mkdir(parents=True)
    with lock_held_by_child(run_dir, tmp_path) as child:
        caplog.set_level(logging.ERROR)
        code = main(["train", "--config", str(config), "--model", "unet", "--no-progress"])
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert code == 2 and len(errors) == 1 and "\n" not in errors[0], errors
        assert f"PID {child.pid}" in errors[0] and str(run_dir) in errors[0], errors[0]
        assert [p.name for p in run_dir.iterdir()] == [LOCK_NAME], "the refused run wrote nothing"
        assert json.loads((run_dir / LOCK_NAME).read_text())["pid"] == child.pid


# (c) a kill during a checkpoint write -------------------------------------------------------

def test_a_run_removes_what_a_killed_checkpoint_write_left(phantom_root, tmp_path, caplog):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    flag = tmp_path / "writing"
    writer = _child(STALL_IN_SAVE, str(run_dir), str(flag))
    try:
        _wait_for(writer, flag)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)
    real = [p for p in run_dir.iterdir() if p.name.startswith(".last.pt.")]
    assert len(real) == 1 and len(real[0].name) == len(".last.pt.") + 8 and not (run_dir / "last.pt").exists()
    assert real[0].stat().st_size > 20_000, "the killed write had written the checkpoint's bytes"
    fake = run_dir / ".best.pt.abcd1234"
    fake.write_bytes(b"\0" * 1234)
    keep = {"notes.txt": b"mine", ".keep.pt.tmp": b"not a checkpoint temporary", ".best.pt.abc": b"too short"}
    for name, content in keep.items():
        (run_dir / name).write_bytes(content)
    freed = real[0].stat().st_size + 1234

    caplog.set_level(logging.WARNING, logger="pdeseg.checkpoint")
    cfg = config_from_dict(tiny_config_dict(phantom_root, tmp_path, epochs=1))
    train_model(cfg, cfg.models[0], run_dir, progress=False)

    names = {p.name for p in run_dir.iterdir()}
    assert not [n for n in names - set(keep) if n.startswith((".last.pt.", ".best.pt."))], names
    assert set(keep) <= names and LOCK_NAME not in names
    assert load_checkpoint(run_dir / "last.pt")["training"]["epoch"] == 1
    removed = [m for m in _warnings(caplog) if "temporary checkpoint" in m]
    assert len(removed) == 1, _warnings(caplog)
    assert real[0].name in removed[0] and fake.name in removed[0] and f"freeing {freed} bytes" in removed[0], removed[0]
    assert remove_stale_temporaries(run_dir) == ([], 0)


# (d) checkpoint modes ---------------------------------------------------------------------

@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_checkpoint_mode_follows_the_umask(tmp_path, umask, mode):
    path = tmp_path / "best.pt"
    old = os.umask(umask)
    try:
        save_checkpoint({"state_dict": {"w": torch.ones(2)}}, path)
        assert os.umask(umask) == umask, "saving must leave the umask as it was"
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


def test_checkpoint_mode_without_proc(tmp_path, monkeypatch):
    """Where /proc/self/status cannot be read, the umask is read by setting it (and put back)."""
    real_read_text = Path.read_text

    def no_proc(self, *args, **kwargs):
        if str(self) == "/proc/self/status":
            raise FileNotFoundError(self)
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", no_proc)
    old = os.umask(0o027)
    try:
        save_checkpoint({"state_dict": {"w": torch.ones(2)}}, tmp_path / "last.pt")
        assert os.umask(old) == 0o027
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "last.pt").stat().st_mode) == 0o640


# (e) runs that fail their checks leave nothing -----------------------------------------------

def test_runs_failing_their_checks_leave_no_run_folder_and_no_lock(phantom_root, tmp_path):
    out = tmp_path / "out"
    run_dir = out / "tiny" / "unet"

    data = tiny_config_dict(phantom_root, tmp_path, epochs=1)
    data["data"]["split"] = {"fractions": [0.75, 0.0, 0.25]}  # no validation cases for the default monitor
    cfg = config_from_dict(data)
    with pytest.raises(ConfigError, match="monitor"):
        train_model(cfg, cfg.models[0], run_dir, progress=False)
    assert not out.exists()

    data = tiny_config_dict(tmp_path / "nowhere", tmp_path, epochs=1)  # fails under the lock, once the data are read
    cfg = config_from_dict(data)
    with pytest.raises(DataError, match="nowhere"):
        train_model(cfg, cfg.models[0], run_dir, progress=False)
    assert not out.exists()

    cfg = config_from_dict(tiny_config_dict(phantom_root, tmp_path, epochs=1))
    with pytest.raises(RunFolderError, match="no .*last.pt"):
        train_model(cfg, cfg.models[0], run_dir, resume=True, progress=False)
    assert not out.exists()

    # a folder the user made is kept, but the lock is gone
    run_dir.mkdir(parents=True)
    with pytest.raises(DataError):
        train_model(config_from_dict(data), cfg.models[0], run_dir, progress=False)
    assert run_dir.is_dir() and list(run_dir.iterdir()) == []

    # a run folder path that is a file
    (out / "file").write_text("x")
    with pytest.raises(RunFolderError, match="is a file"):
        train_model(cfg, cfg.models[0], out / "file", progress=False)
    with pytest.raises(RunFolderError, match="is a file"):
        train_model(cfg, cfg.models[0], out / "file" / "run", progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["file", "tiny"]


def test_a_full_disk_during_a_checkpoint_write_names_the_real_cause(tmp_path, monkeypatch):
    """torch reports ENOSPC as a bare 'file write failed'; the user gets 'the disk is full'."""
    import errno
    import shutil
    from collections import namedtuple

    import pdeseg.checkpoint as ck
    from pdeseg.errors import RunFolderError

    usage = namedtuple("usage", "total used free")

    def torch_on_a_full_disk(obj, fh):
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(ck.torch, "save", torch_on_a_full_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 4096, 4096))
    with pytest.raises(RunFolderError, match=r"last.pt: the disk is full \(0.0 MiB free\)"):
        ck.save_checkpoint({"state_dict": {}}, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []  # no temporary file left

    def no_space(obj, fh):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", no_space)
    with pytest.raises(RunFolderError, match="disk is full"):
        ck.save_checkpoint({"state_dict": {}}, tmp_path / "best.pt")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(RunFolderError, match="cannot write"):
        ck.save_checkpoint({"state_dict": {}}, tmp_path / "afile" / "last.pt")
