#!/usr/bin/env python
"""Throughput and peak memory of UNet, PDE-UNet and MONAI's UNet, measured in one run.

For each registry model (``unet``, ``pde_unet``, ``monai_unet``; 4 in / 4 out channels,
2D) at ``--size`` x ``--size`` with batch ``--batch``:

* inference: ``no_grad`` forward in eval mode, images/s;
* train step: forward + CE + soft Dice (the default ``loss.terms``) + backward +
  Adam step (as in :mod:`pdeseg.training.trainer`), images/s;
* peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (reset before each phase);
  on CPU the increase of the process's peak RSS (``resource.getrusage().ru_maxrss``)
  over the RSS just before the model is built. ``ru_maxrss`` never goes down within a
  process, so every model lives in its own ``spawn`` subprocess; inference runs before
  training, so the inference peak is not hidden by the training one.

Each figure is the median over ``--repeats`` timed repeats after ``--warmup`` untimed
ones, on random inputs. The repeats are interleaved round-robin across the models (each
held by its own process, the order rotating every repeat), so a change in machine load
during the run hits every model alike; ``--sequential`` runs one model after another
instead (one model in memory at a time). The cable block (PDE-UNet's only addition) is also timed alone,
and the ratios against ``unet`` (the baseline, measured in the same run) are printed:
a time ratio is ``median time of model / median time of unet`` (> 1 means slower).

Usage::

    python benchmarks/bench_models.py                  # defaults: auto device/precision
    python benchmarks/bench_models.py --device cuda --json results.json
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

BASELINE = "unet"
MODELS = ("unet", "pde_unet", "monai_unet")
LABELS = {"unet": "UNet", "pde_unet": "PDE-UNet", "monai_unet": "MONAI UNet"}
TARGET_RATIO = 1.03


# ----------------------------------------------------------------------------- child side


def _rss_now_mib() -> float:
    """Current resident set size (VmRSS) in MiB; falls back to the peak where /proc is absent."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return _maxrss_mib()


def _maxrss_mib() -> float:
    """Peak RSS of this process in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


class _Worker:
    """Holds one model in its own process and times single calls on request."""

    def __init__(self, name: str, opts: dict):
        import torch

        from pdeseg.build import build_loss
        from pdeseg.config import LossConfig
        from pdeseg.registry import build_model, count_parameters
        from pdeseg.runtime import autocast

        if opts["threads"]:
            torch.set_num_threads(opts["threads"])
        self.torch, self.device = torch, torch.device(opts["device"])
        self.cuda = self.device.type == "cuda"
        device, precision = self.device, opts["precision"]
        b, s = opts["batch"], opts["size"]
        fmt = torch.channels_last if opts["channels_last"] else torch.contiguous_format

        torch.manual_seed(0)
        x = torch.randn(b, 4, s, s, device=device).contiguous(memory_format=fmt)
        y = torch.randint(0, 4, (b, s, s), device=device)
        if name == "monai_unet":  # import MONAI before the baseline RSS is taken
            import monai.networks.nets  # noqa: F401
        self._sync()
        self.rss0 = _rss_now_mib()

        model = build_model(name, in_channels=4, out_channels=4).to(device).to(memory_format=fmt)
        self.model = model
        self.info = {"model": name, "params": count_parameters(model), "threads": torch.get_num_threads()}
        loss_fn = build_loss(LossConfig()).to(device)
        state = {}

        def infer():
            with torch.no_grad(), autocast(device, precision):
                model(x)

        def train_step():
            if not state:  # Adam and scaler on first use, so their memory counts in training only
                state["opt"] = torch.optim.Adam(model.parameters(), lr=1e-4)
                state["scaler"] = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
            opt, scaler = state["opt"], state["scaler"]
            opt.zero_grad(set_to_none=True)
            with autocast(device, precision):
                logits = model(x)
            loss = loss_fn(logits.float(), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        self.fns = {"infer": infer, "train": train_step}
        if name == "pde_unet":  # the cable block alone, same input, same precision
            block = model.pde

            def block_infer():
                with torch.no_grad(), autocast(device, precision):
                    block(x)

            def block_train():  # forward + backward to the block's 12 parameters
                block.zero_grad(set_to_none=True)
                with autocast(device, precision):
                    u = block(x)
                u.float().mean().backward()

            self.fns.update(block_infer=block_infer, block_train=block_train)

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
        return _maxrss_mib() - self.rss0


def _worker_main(name: str, opts: dict, conn) -> None:
    """Process entry point: build the model, then serve (method, *args) requests until None."""
    try:
        w = _Worker(name, opts)
        conn.send(("ok", w.info))
        while (req := conn.recv()) is not None:
            conn.send(("ok", getattr(w, req[0])(*req[1:])))
    except BaseException as exc:  # report to the parent instead of dying silently
        import traceback

        conn.send(("error", f"{name}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        conn.close()


# ----------------------------------------------------------------------------- parent side


class _Remote:
    """Parent-side handle of a worker process (spawned, so its peak RSS is its own)."""

    def __init__(self, name: str, opts: dict):
        ctx = mp.get_context("spawn")
        self.name = name
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(name, opts, child), daemon=True)
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
        self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.terminate()


def _measure(workers: list[_Remote], warmup: int, repeats: int) -> dict[str, dict]:
    """Inference then training, repeats interleaved round-robin across ``workers`` (the order
    rotating every repeat), so slow drifts in machine load hit every model alike."""
    out = {w.name: dict(w.info) for w in workers}
    for phase, train in (("infer", False), ("train", True)):
        for w in workers:
            w.call("mode", train)
        for rep in range(warmup + repeats):
            k = rep % len(workers)
            for w in workers[k:] + workers[:k]:
                dt = w.call("time", phase)
                if rep >= warmup:
                    out[w.name].setdefault(f"{phase}_s", []).append(dt)
        for w in workers:
            out[w.name][f"{phase}_peak_mib"] = w.call("peak_mib")
    for w in workers:
        if w.name == "pde_unet":
            for key in ("block_infer", "block_train"):
                times = [w.call("time", key) for _ in range(warmup + repeats)]
                out[w.name][f"{key}_s"] = times[warmup:]
    return out


def _ratio_line(label: str, num: float, den: float, target: float | None = None) -> str:
    r = num / den
    line = f"- {label}: {r:.3f}"
    if target is not None:
        line += f"  (target <= {target:.2f}: {'OK' if r <= target else 'ABOVE TARGET'})"
    return line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="auto", choices=["auto", "32", "bf16-mixed", "16-mixed"],
                   help="auto: bf16 autocast on GPUs and bf16-capable CPUs, fp32 otherwise")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's default)")
    p.add_argument("--size", type=int, default=240, help="square input size (divisible by 16)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed repeats first")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS),
                   help=f"models to run; ratios need {BASELINE!r}")
    p.add_argument("--sequential", action="store_true",
                   help="run the models one after another instead of interleaving their repeats "
                        "(only one model in memory at a time, but more sensitive to load drift)")
    p.add_argument("--json", metavar="PATH", help="also save the results as JSON")
    args = p.parse_args(argv)
    if args.size < 8:
        p.error(f"--size must be >= 8, got {args.size}")
    if args.repeats < 1 or args.warmup < 0 or args.batch < 1:
        p.error("need --repeats >= 1, --warmup >= 0, --batch >= 1")

    import torch

    from pdeseg.runtime import resolve_device, resolve_precision

    try:
        device = resolve_device(args.device)
    except RuntimeError as exc:
        p.error(str(exc))
    precision = resolve_precision(args.precision, device)
    if precision == "16-mixed" and device.type != "cuda":
        p.error("--precision 16-mixed needs CUDA")
    opts = {
        "device": str(device), "precision": precision, "channels_last": args.channels_last,
        "threads": args.threads, "size": args.size, "batch": args.batch,
        "repeats": args.repeats, "warmup": args.warmup,
    }
    if device.type == "cuda":
        dev_name = torch.cuda.get_device_name(device)
        mem_measure = "torch.cuda.max_memory_allocated (reset before each phase; includes weights)"
    else:
        dev_name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                dev_name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        mem_measure = ("peak RSS increase (ru_maxrss) over the RSS before building the model, "
                       "one fresh spawned process per model; inference measured before training")
    print(f"device: {device} ({dev_name}); torch {torch.__version__}; precision {precision} "
          f"(requested {args.precision}); channels_last {args.channels_last}; "
          f"threads {args.threads or torch.get_num_threads()} (cpu count {os.cpu_count()})")
    print(f"input: batch {args.batch} x 4 x {args.size} x {args.size}, 4 classes; "
          f"median of {args.repeats} timed repeats after {args.warmup} warm-up, "
          + ("models one after another" if args.sequential else
             "repeats interleaved across the models (one process per model)"))
    print(f"memory measure: {mem_measure}\n", flush=True)

    t_start = time.perf_counter()
    load0 = os.getloadavg()[0]
    groups = [list(args.models)] if not args.sequential else [[n] for n in args.models]
    results = {}
    for group in groups:
        t0 = time.perf_counter()
        workers = []
        try:
            for name in group:
                workers.append(_Remote(name, opts))
            results.update(_measure(workers, args.warmup, args.repeats))
        finally:
            for w in workers:
                w.close()
        print(f"  {', '.join(group)}: measured in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    for r in results.values():
        for k in ("train_s", "infer_s", "block_infer_s", "block_train_s"):
            if k in r:
                r[k[:-2] + "_median_s"] = statistics.median(r[k])
        r["train_img_s"] = args.batch / r["train_median_s"]
        r["infer_img_s"] = args.batch / r["infer_median_s"]

    mem = "CUDA max allocated" if device.type == "cuda" else "peak RSS increase"
    print(f"| model | params | train img/s | infer img/s | train peak mem (MiB, {mem}) | infer peak mem (MiB, {mem}) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {LABELS[name]} (`{name}`) | {r['params']:,} | {r['train_img_s']:.2f} | {r['infer_img_s']:.2f} "
              f"| {r['train_peak_mib']:.0f} | {r['infer_peak_mib']:.0f} |")

    if "pde_unet" in results:
        r = results["pde_unet"]
        print(f"\ncable block alone (batch {args.batch}, 4 channels, {args.size}x{args.size}): "
              f"forward {1e3 * r['block_infer_median_s']:.1f} ms, forward+backward {1e3 * r['block_train_median_s']:.1f} ms")

    ratios = {}
    if BASELINE in results:
        base = results[BASELINE]
        print(f"\nratios vs `{BASELINE}` measured in this run (time ratio = median time / UNet's median time; > 1 is slower):")
        for name in args.models:
            if name == BASELINE:
                continue
            r = results[name]
            target = TARGET_RATIO if name == "pde_unet" else None
            ratios[name] = {
                "train_time_ratio": r["train_median_s"] / base["train_median_s"],
                "infer_time_ratio": r["infer_median_s"] / base["infer_median_s"],
            }
            print(_ratio_line(f"{LABELS[name]}/UNet train-step time", r["train_median_s"], base["train_median_s"], target))
            print(_ratio_line(f"{LABELS[name]}/UNet inference time", r["infer_median_s"], base["infer_median_s"], target))
            if name == "pde_unet":
                # Less noisy estimate: UNet time plus the block's own time (both medians, same run).
                bt = (base["train_median_s"] + r["block_train_median_s"]) / base["train_median_s"]
                bi = (base["infer_median_s"] + r["block_infer_median_s"]) / base["infer_median_s"]
                ratios[name]["block_implied_train_ratio"] = bt
                ratios[name]["block_implied_infer_ratio"] = bi
                print(f"  - from the block's own time: train (UNet + block)/UNet {bt:.3f}, "
                      f"inference {bi:.3f} (block = {100 * (bt - 1):.1f}% / {100 * (bi - 1):.1f}% of UNet)")
        spread = max(
            (max(r[k]) - min(r[k])) / statistics.median(r[k])
            for r in results.values() for k in ("train_s", "infer_s")
        )
        if args.repeats > 1:
            print(f"  (largest (max - min)/median spread of any timed series: {100 * spread:.0f}%; "
                  "ratios closer to 1 than that are within noise)")
        else:
            print("  (one repeat only: no estimate of the noise)")
    elif len(results) > 1:
        print(f"\n(no ratios: the baseline {BASELINE!r} was not run)")
    load = os.getloadavg()
    print(f"\ntotal wall time {time.perf_counter() - t_start:.0f} s; load average {load0:.1f} at start, "
          f"{load[0]:.1f} at end (1 min), {load[1]:.1f} (5 min)")
    threads = args.threads or torch.get_num_threads()
    if device.type == "cpu" and max(load0, load[1]) > (os.cpu_count() or 1) - 0.5:
        print(f"WARNING: other processes were using the CPUs (load average above {(os.cpu_count() or 1) - 0.5:.1f} "
              f"on {os.cpu_count()} CPUs); throughput is lower and noisier than on an idle machine"
              + (f", and with {threads} threads per process oversubscription can slow small ops a lot "
                 "(try --threads 1 or rerun when idle)" if threads > 1 else "") + ".")

    if args.json:
        payload = {
            "device": str(device), "device_name": dev_name, "torch": torch.__version__,
            "precision": precision, "requested_precision": args.precision,
            "channels_last": args.channels_last, "threads": args.threads or torch.get_num_threads(),
            "batch": args.batch, "size": args.size, "repeats": args.repeats, "warmup": args.warmup,
            "sequential": args.sequential, "memory_measure": mem_measure, "load_average_start": load0, "load_average_end": list(load),
            "results": results, "ratios_vs_unet": ratios,
        }
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)
        print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
