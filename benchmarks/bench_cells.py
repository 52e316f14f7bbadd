#!/usr/bin/env python
"""Microscopy (cells) costs: the PDE penalties per 2D training step, and tiled slice
inference at native resolution, each against a baseline measured in the same run.

1. **Penalty cost per training step.** The registered 2D ``unet`` (default widths, 1 grey
   channel in, 2 classes for ``semantic`` or 3 for ``boundary`` targets) on a random batch
   of ``--batch`` x 1 x ``--size`` x ``--size`` (8 x 1 x 256x256), one step of the trainer's
   own ``train_step`` (``_common.make_train_step``: forward under autocast, the loss on the
   float32 logits, backward, Adam step). Baseline ``ce_dice``: the default loss, CE + soft
   Dice. The other variants add penalty terms (weight ``--weight``, default options):
   ``tv``, ``phase_field`` (eps 1), ``reaction_diffusion`` with an Allen-Cahn (a 0.5) or a
   Fisher-KPP (a 1) reaction (D 1), and ``phase_field`` + ``reaction_diffusion`` (Allen-Cahn).
   Per variant: ms per step and the extra time over ``ce_dice`` (the issue's target: <= 5 %),
   and the loss alone on fixed float32 logits (forward, and forward + backward), so that the
   penalty's own cost is visible; ``(step of ce_dice + the variant's extra loss
   forward+backward time) / step of ce_dice`` is a second, less noisy estimate of the extra
   time. One process per target rule holds the model and every variant's loss (and Adam
   state); the variants' repeats are interleaved, the order rotating every repeat.
2. **Tiled inference at native resolution.** A :class:`pdeseg.inference.predict.Predictor`
   (the registry's ``unet``, random weights, a ``slices``-mode spec with ``spatial_size``
   ``--window`` = [256, 256], ``dsb2018`` format) on synthetic grey images of the DSB 2018
   sizes 256x256, 520x696 and 1024x1024: the whole image in one forward pass (baseline,
   ``tile_inference`` off; the UNet pads it to a multiple of 16) against Gaussian-weighted
   overlapping windows of the training size (``tile_inference`` on, ``overlap`` 0.25 and
   0.5, ``--infer-batch`` windows per forward pass). Per image size and mode: seconds per
   image, megapixels/s, windows, peak memory (CUDA max allocated, or the peak-RSS increase of
   a fresh process per mode), and the share of pixels whose argmax class differs between
   the tiled and the whole-image output. The random network's head bias is centred on a
   calibration image (:func:`centre_head`) so that it predicts every class somewhere; even
   so that share is only indicative (a trained network's outputs are more confident, so
   fewer pixels change class). Images no larger than the window run ``whole`` only: the
   Predictor takes the whole-image path for them whatever ``tile_inference`` says.

Figures are medians of the timed repeats after the warm-up ones. ``--quick`` is a smoke run
(part 1: 64x64, batch 2, 1 warm-up round and 1 timed round; part 2: a 64 window on 64x64,
130x174 and 256x256 images, the DSB sizes scaled down, 1 repeat, no warm-up): its numbers
are not measurements.

Usage::

    python benchmarks/bench_cells.py --quick --threads 1    # smoke run
    python benchmarks/bench_cells.py                        # 8 x 256x256, DSB 2018 sizes, 5 / 3 repeats
    python benchmarks/bench_cells.py --device cuda --json cells.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from _common import (  # benchmarks/_common.py: this script's folder is sys.path[0]
    Remote, WorkerBase, add_device_args, fill_defaults, largest_spread, machine, make_train_step, memory_labels,
    report_load, resolve_runtime, round_robin, run_groups, save_json,
)

BASELINE = "ce_dice"
#: variant -> penalty terms added to CE + Dice (the weight is ``--weight``; options as listed).
VARIANTS: dict[str, list[dict]] = {
    BASELINE: [],
    "tv": [{"name": "tv", "eps": 0.01}],
    "phase_field": [{"name": "phase_field", "eps": 1.0}],
    "rd_allen_cahn": [{"name": "reaction_diffusion", "diffusion": 1.0, "a": 0.5, "reaction": "allen_cahn"}],
    "rd_fisher_kpp": [{"name": "reaction_diffusion", "diffusion": 1.0, "a": 1.0, "reaction": "fisher_kpp"}],
    "phase_field_rd": [{"name": "phase_field", "eps": 1.0},
                       {"name": "reaction_diffusion", "diffusion": 1.0, "a": 0.5, "reaction": "allen_cahn"}],
}
CLASSES = {"semantic": ["background", "cell"], "boundary": ["background", "interior", "boundary"]}
TARGET_EXTRA = 0.05  # the target: a penalty costs <= 5 % extra training time per step
WHOLE = "whole"
QUICK = {"size": 64, "batch": 2, "repeats": 1, "warmup": 1, "window": 64, "images": ["64x64", "130x174", "256x256"],
         "infer_repeats": 1, "infer_warmup": 0}
DEFAULTS = {"size": 256, "batch": 8, "repeats": 5, "warmup": 2, "window": 256, "images": ["256x256", "520x696", "1024x1024"],
            "infer_repeats": 3, "infer_warmup": 1}


def loss_terms(variant: str, weight: float) -> list[dict]:
    """The ``loss.terms`` of a variant: CE + Dice (weight 1 each) and its penalties at ``weight``."""
    return [{"name": "ce", "weight": 1.0}, {"name": "dice", "weight": 1.0},
            *({"weight": weight, **t} for t in VARIANTS[variant])]


def describe_terms(variant: str) -> str:
    if not VARIANTS[variant]:
        return "CE + Dice"
    parts = []
    for t in VARIANTS[variant]:
        opts = ", ".join(f"{k} {v}" for k, v in t.items() if k != "name")
        parts.append(f"{t['name']} ({opts})")
    return "+ " + " + ".join(parts)


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 520x696, got {text!r}") from None
    if h < 16 or w < 16:
        raise argparse.ArgumentTypeError(f"image sides must be >= 16, got {text!r}")
    return h, w


def cell_phantom(h: int, w: int, seed: int = 0):
    """A grey ``(1, h, w, 1)`` float32 image of bright discs (nuclei, radius 4-12 px, about one
    per 6000 px^2) on a dark noisy background, z-score normalised (the Predictor's input)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    img = np.zeros((h, w), np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(max(3, h * w // 6000)):
        r = rng.uniform(4, 12)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        y0, y1, x0, x1 = int(max(cy - r - 2, 0)), int(min(cy + r + 3, h)), int(max(cx - r - 2, 0)), int(min(cx + r + 3, w))
        d = np.hypot(yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx)
        img[y0:y1, x0:x1] = np.maximum(img[y0:y1, x0:x1], rng.uniform(0.5, 1.0) / (1 + np.exp(2 * (d - r))))
    img += rng.normal(0, 0.05, img.shape).astype(np.float32)
    img = (img - img.mean()) / (img.std() + 1e-8)
    return img[None, :, :, None].astype(np.float32)


def centre_head(model, window: int, device) -> None:
    """Shift the random ``unet``'s head bias so that every class has mean logit 0 on a
    ``window`` x ``window`` calibration phantom (float32, eval mode): without it a random
    network predicts one class nearly everywhere, and tiled and whole outputs would agree
    trivially. Deterministic, so every process gets the same weights."""
    import torch

    x = torch.from_numpy(cell_phantom(window, window, seed=1)[..., 0]).to(device)[None]
    model.eval()
    with torch.no_grad():
        mean = model(x).float().mean(dim=(0, 2, 3))
        model.head.bias.sub_(mean.to(model.head.bias.dtype))


# ----------------------------------------------------------------------------- child side


class _StepWorker(WorkerBase):
    """Part 1: one target rule (``semantic`` or ``boundary``) in its own process: the ``unet``,
    a fixed random batch, and every variant's train step and loss (spawned by
    :class:`_common.Remote`, which pickles this class by reference: keep it top-level)."""

    def __init__(self, name: str, opts: dict):
        import torch

        from pdeseg.build import build_loss
        from pdeseg.config import LossConfig
        from pdeseg.nn.models import build_model, count_parameters

        self._setup(opts)
        device, precision, k, b, s = self.device, opts["precision"], len(CLASSES[name]), opts["batch"], opts["size"]
        torch.manual_seed(0)
        x = torch.randn(b, 1, s, s, device=device)
        y = torch.randint(0, k, (b, s, s), device=device)
        logits = torch.randn(b, k, s, s, device=device)  # fixed float32 logits for the loss alone
        self._mark_baseline()
        model = build_model("unet", spatial_dims=2, in_channels=1, out_channels=k).to(device)
        self.model = model
        self.info = {"targets": name, "classes": k, "params": count_parameters(model), "threads": torch.get_num_threads()}
        self.fns = {}
        for v in opts["variants"]:
            loss_fn = build_loss(LossConfig(terms=loss_terms(v, opts["weight"]))).to(device)
            self.fns[f"train:{v}"] = make_train_step(model, loss_fn, x, y, device, precision)
            self.fns[f"loss:{v}"] = self._loss_forward(loss_fn, logits, y)
            self.fns[f"lossgrad:{v}"] = self._loss_backward(loss_fn, logits, y)

    def _loss_forward(self, loss_fn, logits, y):
        torch = self.torch

        def run():
            with torch.no_grad():
                loss_fn(logits, y)

        return run

    def _loss_backward(self, loss_fn, logits, y):
        leaf = logits.clone().requires_grad_(True)

        def run():
            leaf.grad = None
            loss_fn(leaf, y).backward()

        return run


class _InferWorker(WorkerBase):
    """Part 2: one image size and one mode (``whole`` or ``tiled<overlap>``) in its own process:
    a Predictor over the registry's ``unet`` (random weights, the same in every process) and
    a synthetic cell image (spawned by :class:`_common.Remote`: keep it top-level)."""

    def __init__(self, name: str, opts: dict):
        import torch

        from pdeseg.config import TaskSpec
        from pdeseg.inference.options import InferenceOptions
        from pdeseg.inference.predict import Predictor, window_count
        from pdeseg.nn.models import build_model

        self._setup(opts)
        size, mode = name.split(":")
        h, w = (int(v) for v in size.split("x"))
        classes, window = CLASSES[opts["infer_targets"]], opts["window"]
        tiled = mode != WHOLE
        overlap = float(mode[len("tiled"):]) if tiled else 0.5
        self.image = cell_phantom(h, w)
        self._mark_baseline()
        torch.manual_seed(0)  # the same random weights in every process
        model = build_model("unet", spatial_dims=2, in_channels=1, out_channels=len(classes)).to(self.device)
        centre_head(model, window, self.device)
        model = model.to(memory_format=torch.channels_last)  # as Predictor.from_checkpoint does for 2D
        spec = TaskSpec(format="dsb2018", modalities=["grey"], normalization="zscore", mode="slices", spatial_dims=2,
                        spatial_size=[window, window], resize=False, tile_inference=tiled,
                        num_classes=len(classes), class_names=classes)
        self.predictor = Predictor(model, spec, self.device, InferenceOptions(precision=opts["precision"],
                                   batch_size=opts["infer_batch"], overlap=overlap), "unet")
        self.model = model
        windows = window_count((h, w), (window, window), overlap) if tiled and (h > window or w > window) else 1
        self.info = {"size": [h, w], "mode": mode, "overlap": overlap if tiled else None, "windows": windows,
                     "threads": torch.get_num_threads()}
        self.fns = {"infer": lambda: self.predictor.predict_logits(self.image)}

    def classes(self):
        """The predicted class map ``(H, W)`` uint8."""
        return self.predictor.predict_volume(self.image)[..., 0]


# ----------------------------------------------------------------------------- parent side


def measure_steps(targets: list[str], opts: dict, warmup: int, repeats: int) -> dict[str, dict]:
    """Part 1: per target rule a worker; per phase (loss forward, loss forward+backward, train
    step) ``warmup + repeats`` rounds over the variants, the order rotating each round.
    Returns ``"<targets>:<variant>" -> {info, train_s, loss_s, lossgrad_s}``."""
    variants = opts["variants"]
    out: dict[str, dict] = {}
    for target in targets:
        t0 = time.perf_counter()
        w = Remote(_StepWorker, target, opts, join_timeout=60)
        try:
            w.call("mode", True)
            for v in variants:
                out[f"{target}:{v}"] = {**w.info, "variant": v}
            for phase in ("loss", "lossgrad", "train"):
                for rep in range(warmup + repeats):
                    k = rep % len(variants)
                    for v in variants[k:] + variants[:k]:
                        dt = w.call("time", f"{phase}:{v}")
                        if rep >= warmup:
                            out[f"{target}:{v}"].setdefault(f"{phase}_s", []).append(dt)
        finally:
            w.close()
        print(f"  part 1, {target} targets: measured in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    for r in out.values():
        for key in ("train", "loss", "lossgrad"):
            r[f"{key}_median_s"] = statistics.median(r[f"{key}_s"])
    return out


def measure_tiles(images: list[tuple[int, int]], modes: list[str], opts: dict, warmup: int, repeats: int) -> dict[str, dict]:
    """Part 2: per image size one process per mode, their repeats interleaved; then the peak
    memory and the class maps (tiled vs whole). Images that fit in one window run only
    ``whole`` (the Predictor takes the whole-image path for them whatever tile_inference says)."""
    import numpy as np

    def measure(workers: list[Remote]) -> dict[str, dict]:
        res = {w.name: dict(w.info) for w in workers}
        for w in workers:
            w.call("mode", False)
        round_robin(workers, "infer", warmup, repeats, res)
        maps = {}
        for w in workers:
            res[w.name]["peak_mib"] = w.call("peak_mib")
            maps[w.name] = w.call("classes")
        whole = next(n for n in maps if n.endswith(":" + WHOLE))
        counts = np.bincount(maps[whole].ravel(), minlength=len(CLASSES[opts["infer_targets"]]))
        res[whole]["class_shares"] = (counts / counts.sum()).tolist()
        for n, m in maps.items():
            if n != whole:
                res[n]["differs_from_whole"] = float((m != maps[whole]).mean())
        return res

    groups = []
    for h, w in images:
        fits = h <= opts["window"] and w <= opts["window"]
        groups.append([f"{h}x{w}:{m}" for m in modes if m == WHOLE or not fits])
    results = run_groups(_InferWorker, groups, opts, measure, join_timeout=60)
    for r in results.values():
        r["infer_median_s"] = statistics.median(r["infer_s"])
    return results


def report_steps(results: dict[str, dict], targets: list[str], variants: list[str], args) -> dict:
    """Print part 1's table and verdicts; returns ratios and verdicts per row."""
    spread = largest_spread(results, keys=("train_s",))
    print(f"| targets (classes) | variant | loss | train ms/step | extra vs {BASELINE} | loss fwd ms | loss fwd+bwd ms "
          f"| extra from the loss's own time | <= {100 * TARGET_EXTRA:.0f} % extra? |")
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    summary: dict[str, dict] = {}
    for target in targets:
        base = results.get(f"{target}:{BASELINE}")
        for v in variants:
            r = results[f"{target}:{v}"]
            row = summary[f"{target}:{v}"] = {}
            extra = own = None
            if base is not None:
                extra = row["extra_train"] = r["train_median_s"] / base["train_median_s"] - 1
                own = row["extra_from_loss_time"] = (r["lossgrad_median_s"] - base["lossgrad_median_s"]) / base["train_median_s"]
            verdict = "-"
            if extra is not None and v != BASELINE:
                ok = extra <= TARGET_EXTRA
                verdict = "meets" if ok else "ABOVE"
                if spread is not None and abs(extra - TARGET_EXTRA) < spread:
                    verdict += " (within noise)"
                row["meets_target"] = ok
            pct = (lambda q: "-" if q is None or v == BASELINE else f"{100 * q:+.1f} %")
            print(f"| {target} ({r['classes']}) | `{v}` | {describe_terms(v)} | {1e3 * r['train_median_s']:.0f} | {pct(extra)} "
                  f"| {1e3 * r['loss_median_s']:.1f} | {1e3 * r['lossgrad_median_s']:.1f} | {pct(own)} | {verdict} |")
    print("\n" + (f"largest (max - min)/median spread of the train-step series: {100 * spread:.0f} % (an extra time "
                  "closer to the target than that is within noise)" if spread is not None else
                  "one repeat only: no estimate of the noise"))
    rows = [(k, q) for k, q in summary.items() if "meets_target" in q]
    if rows:
        worst_key, worst = max(rows, key=lambda kv: kv[1]["extra_train"])
        n_ok = sum(q["meets_target"] for _, q in rows)
        print(f"target <= {100 * TARGET_EXTRA:.0f} % extra per step: {n_ok} of {len(rows)} penalty rows meet it; largest extra "
              f"{100 * worst['extra_train']:+.1f} % ({worst_key}; {100 * worst['extra_from_loss_time']:+.1f} % from the loss's "
              f"own time)" + (" (quick run: a smoke check, not a measurement)" if args.quick else ""))
    return summary


def report_tiles(results: dict[str, dict], images: list[tuple[int, int]], modes: list[str], mem: str, args) -> None:
    print(f"| image | mode | windows | s/image | megapixels/s | time / {WHOLE} | peak MiB ({mem}) | pixels whose class "
          f"differs from {WHOLE} |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for h, w in images:
        base = results.get(f"{h}x{w}:{WHOLE}")
        for m in modes:
            r = results.get(f"{h}x{w}:{m}")
            label = WHOLE if m == WHOLE else f"tiled, overlap {m[len('tiled'):]}"
            if r is None:
                print(f"| {h}x{w} | {label} | 1 | = {WHOLE} | | | | (fits in one window: the whole-image path) |")
                continue
            t = r["infer_median_s"]
            ratio = f"{t / base['infer_median_s']:.2f}" if base is not None else "-"
            if m == WHOLE:
                shares = ", ".join(f"{100 * s:.0f} %" for s in r.get("class_shares", []))
                diff = f"(classes of {WHOLE}: {shares})"
            else:
                diff = f"{100 * r['differs_from_whole']:.2f} %" if "differs_from_whole" in r else "-"
            print(f"| {h}x{w} | {label} | {r['windows']} | {t:.3f} | {h * w / 1e6 / t:.2f} | {ratio} | {r['peak_mib']:.0f} | {diff} |")
    print(f"\nrandom weights: the disagreement of tiled and {WHOLE} outputs is only indicative (a trained network is more "
          "confident, so fewer pixels change class); the class shares of the whole-image output show whether the random "
          "network predicts more than one class at all")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke configuration: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items()))
    add_device_args(p)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's default)")
    p.add_argument("--parts", nargs="+", default=["steps", "tiles"], choices=["steps", "tiles"],
                   help="steps: penalty cost per train step; tiles: tiled inference")
    g = p.add_argument_group("part 1: penalty cost per training step")
    g.add_argument("--targets", nargs="+", default=["semantic", "boundary"], choices=list(CLASSES),
                   help="semantic: 2 classes; boundary: 3 (one process each)")
    g.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), help=f"ratios need {BASELINE!r}")
    g.add_argument("--size", type=int, default=None, help=f"square training image side (default {DEFAULTS['size']})")
    g.add_argument("--batch", type=int, default=None, help=f"images per step (default {DEFAULTS['batch']})")
    g.add_argument("--weight", type=float, default=0.1, help="weight of each penalty term (does not change the cost)")
    g.add_argument("--repeats", type=int, default=None, help=f"timed rounds per phase (median; default {DEFAULTS['repeats']})")
    g.add_argument("--warmup", type=int, default=None, help=f"untimed rounds first (default {DEFAULTS['warmup']})")
    g = p.add_argument_group("part 2: tiled inference")
    g.add_argument("--images", nargs="+", default=None, metavar="HxW", help=f"image sizes (default {' '.join(DEFAULTS['images'])})")
    g.add_argument("--window", type=int, default=None, help=f"spec.spatial_size (square; default {DEFAULTS['window']})")
    g.add_argument("--overlaps", type=float, nargs="+", default=[0.25, 0.5], help="tiled overlaps")
    g.add_argument("--infer-batch", type=int, default=16, help="windows per forward pass (the Predictor's batch_size)")
    g.add_argument("--infer-targets", default="boundary", choices=list(CLASSES), help="output classes of the model")
    g.add_argument("--infer-repeats", type=int, default=None, help=f"timed images per mode (default {DEFAULTS['infer_repeats']})")
    g.add_argument("--infer-warmup", type=int, default=None, help=f"untimed images first (default {DEFAULTS['infer_warmup']})")
    p.add_argument("--json", metavar="PATH", help="also save the results as JSON")
    args = p.parse_args(argv)
    fill_defaults(args, QUICK, DEFAULTS)
    try:
        images = [parse_size(s) for s in args.images]
    except argparse.ArgumentTypeError as exc:
        p.error(str(exc))
    if (args.size < 16 or args.batch < 1 or args.repeats < 1 or args.warmup < 0 or args.window < 16
            or args.infer_repeats < 1 or args.infer_warmup < 0 or args.infer_batch < 1):
        p.error("need --size and --window >= 16, --batch and --infer-batch >= 1, --repeats and --infer-repeats >= 1, "
                "--warmup and --infer-warmup >= 0")
    if not args.weight > 0:
        p.error("--weight must be > 0 (a term of weight 0 is skipped by the loss, so it would cost nothing)")
    if any(not 0 <= o < 1 for o in args.overlaps):
        p.error("--overlaps must be in [0, 1)")
    variants = [BASELINE] + [v for v in args.variants if v != BASELINE] if BASELINE in args.variants else list(args.variants)
    modes = [WHOLE] + [f"tiled{o:g}" for o in dict.fromkeys(args.overlaps)]

    import torch

    device, precision = resolve_runtime(p, args)
    dev, cpu_line = machine(device, torch)
    mem_measure, mem = memory_labels(device, "peak RSS increase (ru_maxrss) over the RSS before building the model, "
                                             "one spawned process per image size and mode")
    threads = args.threads or torch.get_num_threads()
    print(f"device: {dev}; cpu: {cpu_line}; torch {torch.__version__}; precision {precision} (requested {args.precision}); "
          f"threads {threads}" + ("; QUICK smoke run: the numbers are not measurements" if args.quick else ""))
    opts = {"device": str(device), "precision": precision, "threads": args.threads, "batch": args.batch, "size": args.size,
            "variants": variants, "weight": args.weight, "window": args.window, "infer_batch": args.infer_batch,
            "infer_targets": args.infer_targets}
    t_start, load0 = time.perf_counter(), os.getloadavg()[0]
    payload: dict = {"device": dev, "cpu": cpu_line, "torch": torch.__version__, "precision": precision,
                     "requested_precision": args.precision, "threads": threads, "quick": args.quick}

    if "steps" in args.parts:
        print(f"\n## Part 1: penalty cost per training step\n\nunet (registry defaults), batch {args.batch} x 1 x "
              f"{args.size}x{args.size}, Adam lr 1e-4 (the trainer's train_step); penalty weight {args.weight:g}; "
              f"median of {args.repeats} after {args.warmup} warm-up; loss alone on fixed float32 logits "
              f"(no autocast, as in the trainer); baseline {BASELINE} (CE + Dice)\n", flush=True)
        steps = measure_steps(args.targets, opts, args.warmup, args.repeats)
        payload["steps"] = {"batch": args.batch, "size": args.size, "weight": args.weight, "repeats": args.repeats,
                            "warmup": args.warmup, "results": steps,
                            "summary": report_steps(steps, args.targets, variants, args), "target_extra": TARGET_EXTRA}

    if "tiles" in args.parts:
        print(f"\n## Part 2: tiled inference at native resolution\n\nPredictor, slices mode, spatial_size "
              f"[{args.window}, {args.window}], unet with random weights ({len(CLASSES[args.infer_targets])} classes), "
              f"{args.infer_batch} windows per forward pass, Gaussian blending; synthetic cell images; median of "
              f"{args.infer_repeats} after {args.infer_warmup} warm-up; baseline {WHOLE} (one forward pass of the whole "
              f"image)\nmemory: {mem_measure}\n", flush=True)
        tiles = measure_tiles(images, modes, opts, args.infer_warmup, args.infer_repeats)
        report_tiles(tiles, images, modes, mem, args)
        payload["tiles"] = {"window": args.window, "infer_batch": args.infer_batch, "repeats": args.infer_repeats,
                            "warmup": args.infer_warmup, "memory_measure": mem_measure, "results": tiles}

    load = report_load(t_start, load0, device, ": timings are lower and noisier than on an idle machine.")
    if args.json:
        save_json(args.json, {**payload, "load_average_start": load0, "load_average_end": list(load)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
