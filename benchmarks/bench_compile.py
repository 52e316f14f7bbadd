#!/usr/bin/env python
"""``torch.compile`` against eager for the four paper models: training step and inference,
with the compile time paid once, ratios measured in the same run.

For ``unet`` and ``pde_unet`` (2D, 4 channels in and out, ``--size2d`` square, batch
``--batch2d``) and ``unet3d`` and ``pde3d_unet`` (3D, 1 channel in, 3 out, the
Hippocampus config's widths, ``--patch`` and batch ``--batch3d``): the trainer's own step
(``_common.make_train_step``: forward under autocast, CE + Dice (+ the PDE consistency
term for pde3d_unet), backward, optimiser step) and a ``no_grad`` eval forward, each
eager and through ``torch.compile`` (TorchInductor; default mode). Figures: median of
``--repeats`` after the first calls (which, compiled, include the compilation: reported
apart as compile seconds).

Usage::

    python benchmarks/bench_compile.py                      # all four, default sizes (several minutes of compiling)
    python benchmarks/bench_compile.py --models unet pde3d_unet --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from _common import make_train_step  # benchmarks/_common.py: this script's folder is sys.path[0]

MODELS = ("unet", "pde_unet", "unet3d", "pde3d_unet")
HIPPO = {"features": [24, 48, 96, 192], "deep_supervision": True}


def build(name: str, args):
    import torch

    from pdeseg.build import build_loss
    from pdeseg.config import LossConfig, LossTerm
    from pdeseg.nn.models import build_model

    torch.manual_seed(0)
    if name in ("unet", "pde_unet"):
        model = build_model(name, in_channels=4, out_channels=4).to(memory_format=torch.channels_last)
        x = torch.randn(args.batch2d, 4, args.size2d, args.size2d).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 4, (args.batch2d, args.size2d, args.size2d))
        terms = [LossTerm(name="ce"), LossTerm(name="dice")]
    else:
        kwargs = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, **HIPPO}
        model = build_model(name, **kwargs)
        x = torch.randn(args.batch3d, 1, *args.patch)
        y = torch.randint(0, 3, (args.batch3d, *args.patch))
        terms = [LossTerm(name="ce"), LossTerm(name="dice")]
        if name == "pde3d_unet":
            terms.append(LossTerm(name="pde_consistency", weight=0.1))
    return model, x, y, build_loss(LossConfig(terms=terms))


def timed(fn, repeats: int) -> tuple[float, float]:
    """``(first call s, median of the next repeats s)``."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--size2d", type=int, default=192)
    p.add_argument("--batch2d", type=int, default=8)
    p.add_argument("--patch", type=int, nargs=3, default=[40, 56, 40])
    p.add_argument("--batch3d", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--precision", default="auto")
    args = p.parse_args(argv)

    import torch

    from pdeseg.runtime import autocast, check_compile, resolve_precision

    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from bench_predict import machine_line

    device = torch.device("cpu")
    precision = resolve_precision(args.precision, device)
    check_compile(device, "bench_compile")
    print(machine_line(), f"; precision {precision}", flush=True)
    rows = []
    for name in args.models:
        for compiled in (False, True):
            model, x, y, loss_fn = build(name, args)
            net = torch.compile(model) if compiled else model

            def infer():
                net.eval()
                with torch.no_grad(), autocast(device, precision):
                    net(x)

            step = make_train_step(net, loss_fn, x, y, device, precision)

            def train():
                net.train()
                step()

            i_first, i_med = timed(infer, args.repeats)
            t_first, t_med = timed(train, args.repeats)
            rows.append({"model": name, "compiled": compiled, "infer": i_med, "train": t_med,
                         "compile": (i_first - i_med) + (t_first - t_med) if compiled else None})
            print(f"  {name} {'compiled' if compiled else 'eager'}: train {1e3 * t_med:.0f} ms, infer {1e3 * i_med:.0f} ms",
                  flush=True)
    print("\n| model | input | eager train ms | compiled train ms | train speed-up | eager infer ms | compiled infer ms "
          "| infer speed-up | compile s (once) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.models:
        e = next(r for r in rows if r["model"] == name and not r["compiled"])
        c = next(r for r in rows if r["model"] == name and r["compiled"])
        shape = (f"{args.batch2d} x 4 x {args.size2d}^2" if name in ("unet", "pde_unet")
                 else f"{args.batch3d} x 1 x {'x'.join(map(str, args.patch))}")
        print(f"| {name} | {shape} | {1e3 * e['train']:.0f} | {1e3 * c['train']:.0f} | {e['train'] / c['train']:.2f}x | "
              f"{1e3 * e['infer']:.0f} | {1e3 * c['infer']:.0f} | {e['infer'] / c['infer']:.2f}x | {c['compile']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
