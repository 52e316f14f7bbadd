"""Object size (issue 35): how much of a nuclei model's score ``predict --diameter`` recovers on images whose
nuclei are half or twice the size the model was trained at.

Each held-out DSB 2018 image of the model (its ``split.json``: beside a shipped model's weights, or beside a
run's ``best.pt``; the test split of configs/pretrained_nuclei.yaml, 70 / 10 / 20 % by image, seed 0) is
rescaled by each ``--scales`` factor (x0.5, x1, x2: the image bilinear and antialiased when shrinking, by
:func:`pdeseg.inference.size.rescale_planes`; its true nuclei nearest-neighbour to the same grid, so a
nucleus that vanishes at x0.5 is no longer in the truth), then segmented through the library's API
(:func:`pdeseg.load` and :meth:`Segmenter.predict` with ``cells=True``, the cells ``pdeseg predict`` writes)
under three conditions:

* ``off``: the image as it is (``--diameter off``), the **baseline** of the differences;
* ``auto``: the object size estimated in each image (``--diameter auto``, the default of a model that
  states its training size: :mod:`pdeseg.inference.size`);
* ``oracle``: the true size given (``--diameter PX``, PX the median equivalent diameter of the rescaled
  truth's nuclei): the most a size estimate can recover.

Scores against the rescaled truth with :mod:`pdeseg.metrics.instances` (the DSB score and AP50 of each
image; the table gives means over images). Per row (scale x condition): mean DSB score, AP50, the difference
to ``off`` at the same scale (paired by image), the median estimate / true size ratio (``auto``) and the
wall time per image (segmentation only: reading and rescaling excluded; after one untimed warm-up). Results:
``<out>/object_size.csv`` (one row per image and condition) and ``<out>/object_size.md``.

The model states its training object size (``object_diameter``, written by ``scripts/make_pretrained.py``);
for a plain checkpoint that does not, it is measured here the same way (median equivalent diameter of the
nuclei of its training split, :func:`pdeseg.pretrained.pack.training_object_diameter`) or given with
``--object-diameter``.

Run (from the repository root)::

    python benchmarks/bench_object_size.py --data ../shared/data/dsb2018             # the shipped nuclei model
    python benchmarks/bench_object_size.py --data ../shared/data/dsb2018 --model runs/pretrained/pretrained_nuclei/unet/best.pt

``--quick`` (4 images) only checks that everything runs.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from _common import machine_line as machine, report_load

CONDITIONS = ("off", "auto", "oracle")


def rescaled(image: np.ndarray, instances: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """``image (C, X, Y, 1)`` and ``instances (X, Y, 1)`` resized by ``factor``: the image as the library
    rescales for the network (bilinear, antialiased when shrinking), the ids nearest-neighbour to the same
    grid. Returns ``(image (C, X', Y'), instances (X', Y'))``."""
    import torch
    import torch.nn.functional as F

    from pdeseg.inference.size import rescale_planes

    if factor == 1:
        return image[..., 0], instances[..., 0]
    img = rescale_planes(image, factor)[..., 0]
    ids = torch.from_numpy(np.ascontiguousarray(instances[..., 0]).astype(np.float64))[None, None]
    ids = F.interpolate(ids, size=img.shape[1:], mode="nearest-exact")[0, 0].numpy().astype(np.int32)
    return img, ids


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the DSB 2018 folder the model was trained on (../shared/data/dsb2018)")
    p.add_argument("--model", help="a shipped model's name, a model folder or a checkpoint (default: nuclei)")
    p.add_argument("--split", default="test", choices=["val", "test"], help="the model's held-out images")
    p.add_argument("--scales", nargs="+", type=float, default=[0.5, 1.0, 2.0])
    p.add_argument("--images", type=int, help="at most this many held-out images (the first, sorted; default all)")
    p.add_argument(
        "--object-diameter",
        type=float,
        help="the model's training object size (px), for a checkpoint that states none (default: measured on its training split)",
    )
    p.add_argument("--precision", default="auto", choices=["auto", "32", "bf16-mixed"])
    p.add_argument("--out", default="bench_out/object_size")
    p.add_argument("--quick", action="store_true", help="4 images: checks that it runs")
    args = p.parse_args()
    if args.quick and args.images is None:
        args.images = 4
    t_start, load0 = time.perf_counter(), os.getloadavg()[0]

    import pdeseg
    from pdeseg.data.formats import get_format
    from pdeseg.data.pipeline.splits import load_split
    from pdeseg.inference.size import median_diameter
    from pdeseg.metrics.instances import ap50, dsb_score
    from pdeseg.pretrained import installed_models, resolve

    if args.model is None:
        if "nuclei" not in installed_models():
            sys.exit("the shipped nuclei model is not installed here: give --model CHECKPOINT (a run's best.pt)")
        args.model = "nuclei"
    weights = resolve(args.model)
    split_file = weights.parent / "split.json"
    if not split_file.is_file():
        sys.exit(f"{split_file} not found: the held-out images are those of the model's own split")
    split = load_split(split_file)
    seg = pdeseg.load(args.model, precision=args.precision, diameter="off")
    pred = seg.predictor
    measured = ""
    if pred.object_diameter is None:
        if args.object_diameter:
            pred.object_diameter, measured = float(args.object_diameter), " (given: --object-diameter)"
        else:
            from pdeseg.data.pipeline.prepare import load_cached_cases
            from pdeseg.pretrained.pack import training_object_diameter

            cache = pred.config.data.cache_dir if pred.config is not None else "~/.cache/pdeseg"
            entries = load_cached_cases(args.data, pred.spec, cache, split["train"], False)
            pred.object_diameter = training_object_diameter([e for _, e in entries])
            measured = f" (measured on its {len(split['train'])} training images: the checkpoint states none)"
    base = pred.options

    ids = sorted(split[args.split])[: args.images]
    by_id = {c.case_id: c for c in get_format(pred.spec.format).find_cases(args.data, seg.modalities, True)}
    missing = [i for i in ids if i not in by_id]
    if missing:
        sys.exit(f"{args.data}: the model's {args.split} images {missing[:3]} are not there")
    print(f"{len(ids)} {args.split} images of {weights}; trained at {pred.object_diameter:.1f} px{measured}", flush=True)

    seg.predict(by_id[ids[0]].load(seg.modalities).image[..., 0], cells=True)  # untimed warm-up (first-call costs)
    rows: list[dict] = []
    for k, case_id in enumerate(ids):
        loaded = by_id[case_id].load(seg.modalities)
        for factor in args.scales:
            image, truth = rescaled(loaded.image, loaded.instances, factor)
            true_d = median_diameter(truth)
            for cond in CONDITIONS:
                if cond == "oracle" and true_d is None:
                    continue
                pred.options = base.replace(diameter=true_d if cond == "oracle" else cond)
                t0 = time.perf_counter()
                cells = seg.predict(image, cells=True)
                dt = time.perf_counter() - t0
                rows.append(
                    {
                        "case": case_id,
                        "domain": loaded.domain,
                        "scale": factor,
                        "condition": cond,
                        "dsb_score": dsb_score(cells, truth),
                        "ap50": ap50(cells, truth),
                        "seconds": dt,
                        "true_diameter": true_d,
                        "used_diameter": pred.last_diameter,
                        "shape": "x".join(map(str, image.shape[1:])),
                    }
                )
        print(f"  {k + 1}/{len(ids)} {case_id}", flush=True)
    pred.options = base

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "object_size.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = [
        f"machine: {machine()}",
        f"model {args.model} ({weights}), trained at {pred.object_diameter:.1f} px{measured}; precision "
        f"{pred.precision}; {len(ids)} {args.split} images; truth rescaled nearest-neighbour",
        "",
        "| scale | diameter | DSB score | AP50 | Δ DSB vs off | Δ AP50 vs off | used / true size | s/image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for factor in args.scales:
        off = {r["case"]: r for r in rows if r["scale"] == factor and r["condition"] == "off"}
        for cond in CONDITIONS:
            rs = [r for r in rows if r["scale"] == factor and r["condition"] == cond]
            if not rs:
                continue
            d_dsb = statistics.fmean(r["dsb_score"] - off[r["case"]]["dsb_score"] for r in rs)
            d_ap = statistics.fmean(r["ap50"] - off[r["case"]]["ap50"] for r in rs)
            ratio = [r["used_diameter"] / r["true_diameter"] for r in rs if r["used_diameter"] and r["true_diameter"]]
            used = f"{statistics.median(ratio):.2f}" if ratio else "-"
            lines.append(
                f"| x{factor:g} | {cond} | {statistics.fmean(r['dsb_score'] for r in rs):.3f} | "
                f"{statistics.fmean(r['ap50'] for r in rs):.3f} | {d_dsb:+.3f} | {d_ap:+.3f} | {used} | "
            )
            lines[-1] += f"{statistics.fmean(r['seconds'] for r in rs):.2f} |"
    lines += [
        "",
        "used / true size: median over images of the size the prediction used (auto: the estimate; oracle: "
        "the truth's) over the rescaled truth's median equivalent diameter; auto keeps the first pass when the "
        "estimate is within x1.15 of the training size",
    ]
    text = "\n".join(lines)
    print("\n" + text)
    (out / "object_size.md").write_text(text + "\n")
    print(f"\nwrote {out / 'object_size.md'} and {out / 'object_size.csv'}")
    import torch

    report_load(t_start, load0, torch.device("cpu"), ": timings are high and noisy")


if __name__ == "__main__":
    main()
