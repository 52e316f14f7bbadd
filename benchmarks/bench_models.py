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
import os
import statistics
import sys
import time

from _common import (  # benchmarks/_common.py: this script's folder is sys.path[0]
    WorkerBase, add_device_args, cpu_info, largest_spread, make_train_step, measure_phases, memory_labels, report_load,
    resolve_runtime, run_groups, save_json,
)

BASELINE = "unet"
MODELS = ("unet", "pde_unet", "monai_unet")
LABELS = {"unet": "UNet", "pde_unet": "PDE-UNet", "monai_unet": "MONAI UNet"}
TARGET_RATIO = 1.03


# ----------------------------------------------------------------------------- child side


class _Worker(WorkerBase):
    """Holds one model in its own process and times single calls on request (spawned by
    :func:`_common.run_groups`, which pickles this class by reference: keep it top-level)."""

    def __init__(self, name: str, opts: dict):
        import torch

        from pdeseg.build import build_loss
        from pdeseg.config import LossConfig
        from pdeseg.nn.models import build_model, count_parameters
        from pdeseg.runtime import autocast

        self._setup(opts)
        device, precision = self.device, opts["precision"]
        b, s = opts["batch"], opts["size"]
        fmt = torch.channels_last if opts["channels_last"] else torch.contiguous_format

        torch.manual_seed(0)
        x = torch.randn(b, 4, s, s, device=device).contiguous(memory_format=fmt)
        y = torch.randint(0, 4, (b, s, s), device=device)
        if name == "monai_unet":  # import MONAI before the baseline RSS is taken
            import monai.networks.nets  # noqa: F401
        self._mark_baseline()

        model = build_model(name, in_channels=4, out_channels=4).to(device).to(memory_format=fmt)
        self.model = model
        self.info = {"model": name, "params": count_parameters(model), "threads": torch.get_num_threads()}
        loss_fn = build_loss(LossConfig()).to(device)

        def infer():
            with torch.no_grad(), autocast(device, precision):
                model(x)

        self.fns = {"infer": infer, "train": make_train_step(model, loss_fn, x, y, device, precision)}
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


# ----------------------------------------------------------------------------- parent side


def _measure(workers: list, warmup: int, repeats: int) -> dict[str, dict]:
    """Inference then training, repeats interleaved round-robin across ``workers`` (the order
    rotating every repeat), so slow drifts in machine load hit every model alike."""
    out = measure_phases(workers, warmup, repeats)
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
    add_device_args(p)
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

    device, precision = resolve_runtime(p, args)
    opts = {
        "device": str(device), "precision": precision, "channels_last": args.channels_last,
        "threads": args.threads, "size": args.size, "batch": args.batch,
        "repeats": args.repeats, "warmup": args.warmup,
    }
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_info()[0]
    mem_measure, mem = memory_labels(device, "peak RSS increase (ru_maxrss) over the RSS before building the model, "
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
    results = run_groups(_Worker, groups, opts, lambda workers: _measure(workers, args.warmup, args.repeats))
    for r in results.values():
        for k in ("train_s", "infer_s", "block_infer_s", "block_train_s"):
            if k in r:
                r[k[:-2] + "_median_s"] = statistics.median(r[k])
        r["train_img_s"] = args.batch / r["train_median_s"]
        r["infer_img_s"] = args.batch / r["infer_median_s"]

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
        spread = largest_spread(results)
        if spread is not None:
            print(f"  (largest (max - min)/median spread of any timed series: {100 * spread:.0f}%; "
                  "ratios closer to 1 than that are within noise)")
        else:
            print("  (one repeat only: no estimate of the noise)")
    elif len(results) > 1:
        print(f"\n(no ratios: the baseline {BASELINE!r} was not run)")
    threads = args.threads or torch.get_num_threads()
    load = report_load(t_start, load0, device, "; throughput is lower and noisier than on an idle machine"
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
        save_json(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
