#!/usr/bin/env python
"""3D train-step throughput, sliding-window inference time and peak memory of the 3D
models, as ratios to MONAI's UNet measured in the same run.

For each registry model (default: ``monai_unet`` (the baseline), ``unet3d``,
``monai_dynunet``, ``monai_vnet``, ``monai_swinunetr``, ``monai_segresnet``,
``monai_attentionunet``, all at their registry defaults, 3D, ``--in-channels`` in and
``--classes`` out):

* train step: forward + CE + soft Dice (the default ``loss.terms``) + backward + Adam
  step on a random batch ``(--batch, C, --patch, --patch, --patch)``, samples/s;
* sliding-window inference: ``monai.inferers.sliding_window_inference`` over a random
  ``--volume``^3 volume, window ``--patch``^3, ``--batch`` windows per forward, overlap
  ``--overlap`` (0.5), Gaussian blending, in eval mode under ``no_grad``; seconds per
  volume;
* peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (reset before each phase,
  weights included); on CPU the increase of the process's peak RSS
  (``resource.getrusage().ru_maxrss``) over its RSS just before the model is built. That
  figure never goes down, so every model runs in its own spawned process, and inference
  runs before training so that its (smaller) peak is seen.

Train figures are medians of ``--repeats`` timed steps after ``--warmup`` untimed ones;
inference is one untimed window forward, then the median of ``--sw-repeats`` whole
volumes. Models run one after another (one in memory at a time); ``--interleave`` keeps
all of them in memory and takes their repeats round-robin, which is fairer when the
machine's load drifts. Ratios are time and memory ratios to ``monai_unet`` from the same
run (> 1: slower or bigger).

Usage::

    python benchmarks/bench_3d.py --quick              # smoke run: 32^3 patch, batch 1, 48^3 volume
    python benchmarks/bench_3d.py                      # 64^3 patch, batch 2, 128^3 volume
    python benchmarks/bench_3d.py --device cuda --json bench3d.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from _common import (  # benchmarks/_common.py: this script's folder is sys.path[0]
    WorkerBase, add_device_args, fill_defaults, largest_spread, machine, make_train_step, memory_labels, report_load,
    resolve_runtime, round_robin, run_groups, save_json,
)

BASELINE = "monai_unet"
MODELS = ("monai_unet", "unet3d", "monai_dynunet", "monai_vnet", "monai_swinunetr", "monai_segresnet", "monai_attentionunet")
#: Models that take ``deep_supervision`` (``--deep-supervision`` turns it on for them).
DEEP_SUPERVISION = ("unet3d", "monai_dynunet")
#: ``--quick`` settings (anything given explicitly on the command line wins).
QUICK = {"patch": 32, "batch": 1, "volume": 48, "repeats": 1, "warmup": 0, "sw_repeats": 1}
DEFAULTS = {"patch": 64, "batch": 2, "volume": 128, "repeats": 3, "warmup": 1, "sw_repeats": 1}


# ----------------------------------------------------------------------------- child side


class _Worker(WorkerBase):
    """One model in its own process; times single train steps and whole-volume inferences
    (spawned by :func:`_common.run_groups`, which pickles this class by reference: keep it
    top-level)."""

    def __init__(self, name: str, opts: dict):
        import monai.inferers  # imported before the baseline RSS: every model pays for MONAI alike
        import torch

        import pdeseg.nn.baselines  # noqa: F401
        from pdeseg.build import build_loss
        from pdeseg.config import LossConfig
        from pdeseg.nn.models import build_model, count_parameters
        from pdeseg.runtime import autocast

        self._setup(opts)
        device, precision = self.device, opts["precision"]
        b, p, v, c, k = opts["batch"], opts["patch"], opts["volume"], opts["in_channels"], opts["classes"]

        torch.manual_seed(0)
        x = torch.randn(b, c, p, p, p, device=device)
        y = torch.randint(0, k, (b, p, p, p), device=device)
        volume = torch.randn(1, c, v, v, v, device=device)
        self._mark_baseline()

        kwargs = {"spatial_dims": 3, "in_channels": c, "out_channels": k}
        if opts["deep_supervision"] and name in DEEP_SUPERVISION:
            kwargs["deep_supervision"] = True
        model = build_model(name, **kwargs).to(device)
        self.model = model
        self.info = {"model": name, "kwargs": kwargs, "params": count_parameters(model), "threads": torch.get_num_threads()}
        loss_fn = build_loss(LossConfig()).to(device)
        train_step = make_train_step(model, loss_fn, x, y, device, precision)  # takes a deep-supervision list of outputs too

        def window():  # one forward at the window size: warms the kernels up
            with torch.no_grad(), autocast(device, precision):
                model(x)

        def infer():
            with torch.no_grad(), autocast(device, precision):
                monai.inferers.sliding_window_inference(
                    volume, roi_size=(p, p, p), sw_batch_size=b, predictor=model, overlap=opts["overlap"], mode="gaussian"
                )

        self.fns = {"train": train_step, "window": window, "infer": infer}


# ----------------------------------------------------------------------------- parent side


def _measure(workers: list, opts: dict) -> dict[str, dict]:
    """Inference (one window forward, then whole volumes), then training, per worker."""
    out = {w.name: dict(w.info) for w in workers}
    for w in workers:
        w.call("mode", False)
        w.call("time", "window")
    if opts["sw_repeats"]:
        round_robin(workers, "infer", 0, opts["sw_repeats"], out)
    for w in workers:
        out[w.name]["infer_peak_mib"] = w.call("peak_mib")
        w.call("mode", True)
    round_robin(workers, "train", opts["warmup"], opts["repeats"], out)
    for w in workers:
        out[w.name]["train_peak_mib"] = w.call("peak_mib")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke configuration: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items()))
    add_device_args(p)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's default)")
    p.add_argument("--patch", type=int, default=None, help=f"cubic training patch and inference window (default {DEFAULTS['patch']})")
    p.add_argument("--batch", type=int, default=None, help=f"training batch and windows per forward (default {DEFAULTS['batch']})")
    p.add_argument("--volume", type=int, default=None, help=f"cubic volume for sliding-window inference (default {DEFAULTS['volume']})")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap")
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--classes", type=int, default=2, help="output channels")
    p.add_argument("--repeats", type=int, default=None, help=f"timed train steps (median; default {DEFAULTS['repeats']})")
    p.add_argument("--warmup", type=int, default=None, help=f"untimed train steps first (default {DEFAULTS['warmup']})")
    p.add_argument("--sw-repeats", type=int, default=None,
                   help=f"timed whole-volume inferences (median; 0 skips inference; default {DEFAULTS['sw_repeats']})")
    p.add_argument("--deep-supervision", action="store_true", help=f"train {', '.join(DEEP_SUPERVISION)} with deep supervision")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), help=f"ratios need {BASELINE!r}")
    p.add_argument("--interleave", action="store_true",
                   help="keep every model in memory (one process each) and interleave their repeats round-robin")
    p.add_argument("--json", metavar="PATH", help="also save the results as JSON")
    args = p.parse_args(argv)
    fill_defaults(args, QUICK, DEFAULTS)
    if args.patch < 8 or args.volume < 1 or args.batch < 1 or args.repeats < 1 or args.warmup < 0 or args.sw_repeats < 0:
        p.error("need --patch >= 8, --volume >= 1, --batch >= 1, --repeats >= 1, --warmup >= 0, --sw-repeats >= 0")
    if not 0 <= args.overlap < 1:
        p.error(f"--overlap must be in [0, 1), got {args.overlap}")

    import monai
    import torch

    device, precision = resolve_runtime(p, args)
    opts = {
        "device": str(device), "precision": precision, "threads": args.threads, "patch": args.patch,
        "batch": args.batch, "volume": args.volume, "overlap": args.overlap, "in_channels": args.in_channels,
        "classes": args.classes, "repeats": args.repeats, "warmup": args.warmup, "sw_repeats": args.sw_repeats,
        "deep_supervision": args.deep_supervision,
    }
    dev, cpu_line = machine(device, torch)
    mem_measure, mem = memory_labels(device, "peak RSS increase (ru_maxrss) over the RSS before building the model, "
                                             "one spawned process per model; inference measured before training")
    threads = args.threads or torch.get_num_threads()
    print(f"device: {dev}; cpu: {cpu_line}; torch {torch.__version__}, MONAI {monai.__version__}; "
          f"precision {precision} (requested {args.precision}); threads {threads}")
    print(f"train: batch {args.batch} x {args.in_channels} x {args.patch}^3, {args.classes} classes, CE + soft Dice, Adam; "
          f"median of {args.repeats} after {args.warmup} warm-up" + ("; deep supervision on" if args.deep_supervision else ""))
    print(f"inference: sliding window over 1 x {args.in_channels} x {args.volume}^3, window {args.patch}^3, "
          f"{args.batch} windows per forward, overlap {args.overlap}, gaussian; median of {args.sw_repeats}")
    print(f"memory: {mem_measure}; " + ("all models in memory, repeats interleaved" if args.interleave
                                        else "one model after another") + "\n", flush=True)

    t_start = time.perf_counter()
    load0 = os.getloadavg()[0]
    groups = [list(args.models)] if args.interleave else [[n] for n in args.models]
    results = run_groups(_Worker, groups, opts, lambda workers: _measure(workers, opts), join_timeout=60)
    for r in results.values():
        r["train_median_s"] = statistics.median(r["train_s"])
        r["train_samples_s"] = args.batch / r["train_median_s"]
        r["infer_median_s"] = statistics.median(r["infer_s"]) if "infer_s" in r else None

    have_base = BASELINE in results
    print(f"| model | params | train samples/s | train peak MiB ({mem}) | sliding-window s/volume | inference peak MiB "
          + ("| train time / MONAI UNet | train mem / MONAI UNet | inference time / MONAI UNet |" if have_base else "|"))
    print("|---|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if have_base else ""))
    ratios: dict[str, dict] = {}
    for name, r in results.items():
        infer = f"{r['infer_median_s']:.2f}" if r["infer_median_s"] is not None else "-"
        row = (f"| `{name}` | {r['params']:,} | {r['train_samples_s']:.2f} | {r['train_peak_mib']:.0f} | {infer} "
               f"| {r['infer_peak_mib']:.0f} |")
        if have_base:
            b = results[BASELINE]
            ratios[name] = {
                "train_time": r["train_median_s"] / b["train_median_s"],
                "train_memory": r["train_peak_mib"] / b["train_peak_mib"] if b["train_peak_mib"] > 0 else None,
                "infer_time": (r["infer_median_s"] / b["infer_median_s"]) if r["infer_median_s"] and b["infer_median_s"] else None,
            }
            q = ratios[name]
            row += "".join(f" {v:.2f} |" if v is not None else " - |" for v in (q["train_time"], q["train_memory"], q["infer_time"]))
        print(row)
    if not have_base and len(results) > 1:
        print(f"\n(no ratios: the baseline {BASELINE!r} was not run)")
    spread = largest_spread(results)
    if spread is not None:
        print(f"\nlargest (max - min)/median spread of any timed series: {100 * spread:.0f}% "
              "(ratios closer to 1 than that are within noise)")
    load = report_load(t_start, load0, device, ": timings are lower and noisier than on an idle machine.")

    if args.json:
        payload = {
            "device": dev, "cpu": cpu_line, "torch": torch.__version__, "monai": monai.__version__,
            "precision": precision, "requested_precision": args.precision, "threads": threads, "options": opts,
            "interleave": args.interleave, "memory_measure": mem_measure, "load_average_start": load0,
            "load_average_end": list(load), "results": results, "ratios_vs_monai_unet": ratios,
        }
        save_json(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
