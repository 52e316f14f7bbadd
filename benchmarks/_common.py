"""Machinery shared by ``bench_models.py``, ``bench_3d.py`` and ``bench_pde.py`` (not a benchmark itself).

* child side: :class:`WorkerBase` (timing, train/eval mode, peak memory of the one model a
  worker process holds), :func:`make_train_step` (one optimiser step as the trainer does
  it) and :func:`worker_main`, the loop that serves the parent's requests;
* parent side: :class:`Remote` (a spawned worker process), :func:`round_robin` (interleaved
  repeats), :func:`measure_phases` (inference then training, round-robin), :func:`run_groups`
  (spawn, measure, close);
* the command line and the report: device / precision options and their resolution,
  ``--quick`` presets, the machine line (device, CPU model and flags), the largest spread
  of the timed series, memory-measure labels, the wall-time / load-average footer, JSON
  output.

The scripts are run as ``python benchmarks/bench_X.py``, so this folder is ``sys.path[0]``
and ``from _common import ...`` finds this module. A worker process is started with the
``spawn`` method: the child gets the parent's ``sys.path`` (so it imports ``_common`` too),
re-runs the script as ``__mp_main__`` (aliased to ``__main__``), then unpickles its target
:func:`worker_main` (by reference, ``_common.worker_main``) and its arguments, among them
the script's worker class (by reference, ``__main__._Worker``). The worker class must
therefore be defined at the top level of the script. Nothing here imports ``torch`` at
module level, so importing this module costs the parent and the children almost nothing.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time

#: CPU flags that decide CPU speed (AVX-512 and AMX make bf16 autocast pay), printed by :func:`machine`.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
MEM_MEASURE_CUDA = "torch.cuda.max_memory_allocated (reset before each phase; includes weights)"


# ----------------------------------------------------------------------------- child side


def rss_now_mib() -> float:
    """Current resident set size (VmRSS) in MiB; falls back to the peak where /proc is absent."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return maxrss_mib()


def maxrss_mib() -> float:
    """Peak RSS of this process in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


class WorkerBase:
    """Holds one model in its own process and times single calls on request.

    A subclass's ``__init__(name, opts)`` calls :meth:`_setup` (threads, device), builds its
    inputs, calls :meth:`_mark_baseline` just before building the model, and sets
    ``self.model``, ``self.info`` (a dict sent to the parent once built) and ``self.fns``
    (key -> callable timed by :meth:`time`).
    """

    def _setup(self, opts: dict) -> None:
        import torch

        if opts["threads"]:
            torch.set_num_threads(opts["threads"])
        self.torch, self.device = torch, torch.device(opts["device"])
        self.cuda = self.device.type == "cuda"

    def _mark_baseline(self) -> None:
        """The RSS that the CPU peak-memory figure is measured from (after importing the
        trainer, which :func:`make_train_step` uses, so that its modules do not count)."""
        import pdeseg.training.trainer  # noqa: F401

        self._sync()
        self.rss0 = rss_now_mib()

    def _sync(self):
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def mode(self, train: bool) -> None:
        self.model.train(train)
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats(self.device)

    def time(self, key: str) -> float:
        self._sync()
        t0 = time.perf_counter()
        self.fns[key]()
        self._sync()
        return time.perf_counter() - t0

    def peak_mib(self) -> float:
        if self.cuda:
            return self.torch.cuda.max_memory_allocated(self.device) / 2**20
        return maxrss_mib() - self.rss0


def make_train_step(model, loss_fn, x, y, device, precision: str, train=None):
    """A callable doing one training step exactly as the trainer does it: the trainer's own
    :func:`pdeseg.training.trainer.train_step` (forward under autocast; ``loss_fn`` on the
    float32 output, which may be a tensor, a deep-supervision list of heads or a
    ``{"logits", "pde_residual"}`` dict; backward through a ``GradScaler`` enabled for
    16-mixed only; gradient clipping when ``train.grad_clip`` is set; optimiser step) on the
    batch ``x``, ``y``, with the optimiser of :func:`pdeseg.build.build_optimizer` (the
    trainer's parameter groups). ``train`` is a :class:`pdeseg.config.TrainConfig`; by
    default Adam at lr 1e-4 without clipping. The optimiser and scaler are made on the first
    call, so their memory counts in the training phase only."""
    import torch

    from pdeseg.build import build_optimizer
    from pdeseg.config import TrainConfig
    from pdeseg.training.trainer import train_step

    t = train if train is not None else TrainConfig(optimizer="adam", lr=1e-4)
    batch, state = {"image": x, "label": y}, {}

    def step():
        if not state:
            state["opt"] = build_optimizer(t, model)
            state["scaler"] = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
        train_step(model, batch, loss_fn, state["opt"], state["scaler"], t, device, precision, channels_last=False)

    return step


def worker_main(worker_cls: type, name: str, opts: dict, conn) -> None:
    """Process entry point: build ``worker_cls(name, opts)``, then serve ``(method, *args)``
    requests until ``None``."""
    try:
        w = worker_cls(name, opts)
        conn.send(("ok", w.info))
        while (req := conn.recv()) is not None:
            conn.send(("ok", getattr(w, req[0])(*req[1:])))
    except BaseException as exc:  # report to the parent instead of dying silently
        import traceback

        conn.send(("error", f"{name}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        conn.close()


# ----------------------------------------------------------------------------- parent side


class Remote:
    """Parent-side handle of a worker process (spawned, so its peak RSS is its own).

    ``worker_cls`` must be a top-level class of an importable module or of the main script
    (it is pickled by reference); ``join_timeout`` is how long :meth:`close` waits for the
    process to exit before terminating it.
    """

    def __init__(self, worker_cls: type, name: str, opts: dict, join_timeout: float = 30):
        ctx = mp.get_context("spawn")
        self.name = name
        self.join_timeout = join_timeout
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_main, args=(worker_cls, name, opts, child), daemon=True)
        self.proc.start()
        child.close()
        self.info = self._reply()

    def _reply(self):
        status, value = self.conn.recv()
        if status != "ok":
            raise RuntimeError(value)
        return value

    def call(self, method: str, *args):
        self.conn.send((method, *args))
        return self._reply()

    def close(self) -> None:
        try:
            self.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(timeout=self.join_timeout)
        if self.proc.is_alive():
            self.proc.terminate()


def round_robin(workers: list[Remote], key: str, warmup: int, repeats: int, out: dict) -> None:
    """``warmup + repeats`` calls of ``key`` per worker, the order rotating every repeat (so
    slow drifts in machine load hit every model alike); the timed ones go to
    ``out[name][key + '_s']``."""
    for rep in range(warmup + repeats):
        k = rep % len(workers)
        for w in workers[k:] + workers[:k]:
            dt = w.call("time", key)
            if rep >= warmup:
                out[w.name].setdefault(f"{key}_s", []).append(dt)


def run_groups(worker_cls: type, groups: list[list[str]], opts: dict, measure, join_timeout: float = 30) -> dict[str, dict]:
    """For each group of model names: one worker process per model, ``measure(workers)``
    (a dict name -> results), then the processes closed; the groups' results merged."""
    results: dict[str, dict] = {}
    for group in groups:
        t0 = time.perf_counter()
        workers = []
        try:
            for name in group:
                workers.append(Remote(worker_cls, name, opts, join_timeout))
            results.update(measure(workers))
        finally:
            for w in workers:
                w.close()
        print(f"  {', '.join(group)}: measured in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return results


def measure_phases(workers: list[Remote], warmup: int, repeats: int) -> dict[str, dict]:
    """Inference (eval mode, key ``infer``), then training (train mode, key ``train``), each
    ``warmup + repeats`` calls round-robin across ``workers``; per worker its ``info`` plus
    ``infer_s`` / ``train_s`` (the timed calls) and ``infer_peak_mib`` / ``train_peak_mib``
    (inference first, so that its smaller peak is seen on CPU)."""
    out = {w.name: dict(w.info) for w in workers}
    for phase, train in (("infer", False), ("train", True)):
        for w in workers:
            w.call("mode", train)
        round_robin(workers, phase, warmup, repeats, out)
        for w in workers:
            out[w.name][f"{phase}_peak_mib"] = w.call("peak_mib")
    return out


# ----------------------------------------------------------------------------- command line and report


def add_device_args(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--precision``."""
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="auto", choices=["auto", "32", "bf16-mixed", "16-mixed"],
                   help="auto: bf16 autocast on GPUs and bf16-capable CPUs, fp32 otherwise")


def resolve_runtime(p: argparse.ArgumentParser, args: argparse.Namespace):
    """(torch device, precision) from ``--device`` and ``--precision``; parser errors if unusable."""
    from pdeseg.runtime import resolve_device, resolve_precision

    try:
        device = resolve_device(args.device)
    except RuntimeError as exc:
        p.error(str(exc))
    precision = resolve_precision(args.precision, device)
    if precision == "16-mixed" and device.type != "cuda":
        p.error("--precision 16-mixed needs CUDA")
    return device, precision


def cpu_info() -> tuple[str, set[str]]:
    """(CPU model name, CPU flags) from the first ``model name`` and ``flags`` lines of
    /proc/cpuinfo; ``platform``'s processor name and no flags where those are absent."""
    cpu = platform.processor() or platform.machine()
    name_seen, flags = False, None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not name_seen:
                    cpu, name_seen = line.split(":", 1)[1].strip(), True
                elif line.startswith("flags") and flags is None:
                    flags = set(line.split(":", 1)[1].split())
                if name_seen and flags is not None:
                    break
    except OSError:
        pass
    return cpu, flags or set()


def fill_defaults(args: argparse.Namespace, quick: dict, defaults: dict) -> None:
    """Set every option of ``defaults`` left at ``None`` on the command line from ``quick``
    (with ``--quick``) or ``defaults``: an option given explicitly wins."""
    for key, value in (quick if args.quick else defaults).items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def machine(device, torch) -> tuple[str, str]:
    """(device description, CPU description with the :data:`CPU_FLAGS` it has and the CPU count)."""
    cpu, flags = cpu_info()
    have = [fl for fl in CPU_FLAGS if fl in flags]
    cpu_line = f"{cpu}; flags: {' '.join(have) or 'none of ' + ', '.join(CPU_FLAGS)}; cpu count {os.cpu_count()}"
    dev = f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "cpu"
    return dev, cpu_line


def machine_line() -> str:
    """One line: CPU model, flags and count, device, torch version and threads (:func:`machine`)."""
    import torch

    dev, cpu = machine(torch.device("cuda" if torch.cuda.is_available() else "cpu"), torch)
    return (f"{cpu}; {dev}; torch {torch.__version__} ({torch.get_num_threads()} threads, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")


def largest_spread(results: dict[str, dict], keys=("train_s", "infer_s")) -> float | None:
    """The largest ``(max - min) / median`` of any timed series with more than one value, or None."""
    spread = [(max(r[k]) - min(r[k])) / statistics.median(r[k]) for r in results.values() for k in keys if len(r.get(k, [])) > 1]
    return max(spread) if spread else None


def memory_labels(device, cpu_measure: str) -> tuple[str, str]:
    """(description of the peak-memory measure, short label for table headers)."""
    if device.type == "cuda":
        return MEM_MEASURE_CUDA, "CUDA max allocated"
    return cpu_measure, "peak RSS increase"


def report_load(t_start: float, load0: float, device, consequence: str) -> tuple[float, float, float]:
    """Print the total wall time and the load average, and a warning (ending with
    ``consequence``) when a CPU run shared the CPUs; returns the final load average."""
    load = os.getloadavg()
    print(f"\ntotal wall time {time.perf_counter() - t_start:.0f} s; load average {load0:.1f} at start, "
          f"{load[0]:.1f} at end (1 min), {load[1]:.1f} (5 min)")
    busy = (os.cpu_count() or 1) - 0.5
    if device.type == "cpu" and max(load0, load[1]) > busy:
        print(f"WARNING: other processes were using the CPUs (load average above {busy:.1f} "
              f"on {os.cpu_count()} CPUs){consequence}")
    return load


def run_logged(cmd: list[str], log) -> float:
    """Run a command (a ``pdeseg`` call) with its output to the file ``log``; returns the wall
    time in seconds, or exits naming the command and its log when it fails."""
    import subprocess

    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}; see {log}")
    return time.perf_counter() - t0


def save_json(path: str, payload: dict) -> None:
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    print(f"saved {path}")
