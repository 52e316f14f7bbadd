"""Paper 004's protocol on real LIVECell cells: train on two cell types, test on an unseen one,
plain training against the phase-field and reaction–diffusion penalties, 3 seeds, paired tests,
plus a low-sample run; scored with LIVECell's COCO mask AP, AP50/AP75, the DSB score and
boundary F1.

Each job is one ``pdeseg ablate`` of ``configs/cells_livecell_unseen_type.yaml`` (its
``ablation:`` variants; finished runs are reused, so an interrupted benchmark continues), then
``pdeseg evaluate`` of every run's ``best.pt`` on the unseen test images for the *pooled*
mask AP (every image's cells ranked together, LIVECell's published number). The table gives,
per job and variant, mean ± sd over seeds of each seed's value; the per-image mask AP range
(min–max over the test images of the seed-mean); and each penalty against ``plain`` on the
(seed, image) grid: mean difference, 95 % bootstrap interval, sign-flip p over images
(:func:`pdeseg.experiments.stats.paired_comparison`).

Jobs (the shared sample has four cell types: A172 3 images, BT474 4, Huh7 3, SKOV3 4)::

    skov3      train A172 + BT474 -> test SKOV3
    huh7       train BT474 + SKOV3 -> test HUH7
    skov3_n2   as skov3 with 2 training images (data.train_cases=2), the same test images

Run (about 20 min per job on a 2-core CPU)::

    python benchmarks/livecell_protocol.py --data ../shared/data/livecell --out bench_out/livecell
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np

from _common import run_logged

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "cells_livecell_unseen_type.yaml"
JOBS = {
    "skov3": ("{train: [A172, BT474], test: [SKOV3]}", []),
    "huh7": ("{train: [BT474, SKOV3], test: [HUH7]}", []),
    "skov3_n2": ("{train: [A172, BT474], test: [SKOV3]}", ["data.train_cases=2"]),
}
METRICS = ("mask_ap", "mask_ap50", "mask_ap75", "dsb_score", "ap50", "bf1_2", "dice_fg")
PAIRED = ("mask_ap", "dsb_score", "bf1_2")


def ms(values) -> str:
    a = np.asarray(list(values), float)
    return f"{a.mean():.3f} ± {a.std(ddof=1) if a.size > 1 else 0.0:.3f}"


def job(name: str, args) -> None:
    domains, extra = JOBS[name]
    out = Path(args.out) / name
    pdeseg = [sys.executable, "-m", "pdeseg"]
    wall = run_logged([*pdeseg, "ablate", "--config", str(CONFIG), "--data", args.data, "--seeds", str(args.seeds), "--out",
                str(out), "--no-progress", "--set", f"data.split.domains={domains}", *extra], out.parent / f"{name}.log")
    with open(out / "test_cases.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    with open(out / "runs.csv") as f:
        train_s = [float(r["train_time_s"]) for r in csv.DictReader(f) if r["split"] == "val"]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    seeds = sorted({int(r["seed"]) for r in rows})
    cases = sorted({r["case"] for r in rows})
    value = {(r["variant"], int(r["seed"]), r["case"], m): float(r[m]) for r in rows for m in METRICS}
    pooled: dict[tuple[str, int], dict] = {}
    for v in variants:
        for s in seeds:
            ev = out / "runs" / v / f"seed{s}" / "eval_test"
            if not (ev / "summary.json").is_file():
                run_logged([*pdeseg, "evaluate", "--checkpoint", str(out / "runs" / v / f"seed{s}" / "best.pt"), "--split", "test",
                     "--out", str(ev), "--no-progress"], ev.parent / "eval_test.log")
            pooled[v, s] = json.loads((ev / "summary.json").read_text())["pooled"]
    print(f"\n## {name}: train {domains}{' ' + ' '.join(extra) if extra else ''}; {len(cases)} unseen test images, "
          f"seeds {seeds}; ablate wall {wall / 60:.1f} min (this call; training {sum(train_s) / 60:.1f} min of CPU "
          f"over {len(train_s)} runs)\n")
    head = ["pooled mask AP", *METRICS, "per-image mask AP range"]
    print("| variant | " + " | ".join(head) + " |\n|---|" + "---|" * len(head))
    for v in variants:
        cells = [ms(pooled[v, s]["mask_ap"] for s in seeds)]
        cells += [ms(np.mean([value[v, s, c, m] for c in cases]) for s in seeds) for m in METRICS]
        per_image = [np.mean([value[v, s, c, "mask_ap"] for s in seeds]) for c in cases]
        cells.append(f"{min(per_image):.3f}–{max(per_image):.3f}")
        print(f"| {v} | " + " | ".join(cells) + " |")
    from pdeseg.experiments.stats import paired_comparison

    print("\npaired against plain ((seed, image) grid; 95% bootstrap interval; sign-flip p over images):")
    for v in variants[1:]:
        for m in PAIRED:
            grid = lambda name: np.array([[value[name, s, c, m] for c in cases] for s in seeds])  # noqa: E731
            res = paired_comparison(grid(v), grid("plain"), v, "plain", m)
            print(f"  {v} - plain, {m}: {res.diff:+.3f} [{res.lo:+.3f}, {res.hi:+.3f}], p = {res.p_value:.3g}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="LIVECell in its release layout (images/, annotations/LIVECell/)")
    p.add_argument("--out", default="bench_out/livecell")
    p.add_argument("--jobs", nargs="+", default=list(JOBS), choices=list(JOBS))
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()
    import torch

    from _common import machine

    dev, cpu = machine(torch.device("cpu"), torch)
    print(f"machine: {cpu}; {dev}; torch {torch.__version__}, {torch.get_num_threads()} threads "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")
    for name in args.jobs:
        job(name, args)


if __name__ == "__main__":
    main()
