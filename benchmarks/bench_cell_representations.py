"""Instance representations head to head on the shared DSB 2018 nuclei (or, with ``--config``,
LIVECell's phase-contrast cells): which output separates touching cells best at the same data,
split and training budget.

For each representation (``data.format_options.targets``) and seed, it trains
``configs/cells_dsb.yaml`` (the same split by image, 70/10/20 % over all three imaging
domains, the same epochs, windows and augmentation) with ``pdeseg train``, scores the
held-out test images with ``pdeseg evaluate --split test`` (the one scoring path: DSB score,
AP50, boundary F1 at 2 px of the cells, per image), and prints, per representation, the mean ±
sd over seeds of the per-seed means, overall and per domain, with a paired test of each
representation against ``--baseline`` (the (seed, image) grid: bootstrap interval of the mean
difference and a sign-flip test over images, :func:`pdeseg.experiments.stats.paired_comparison`).

Representations and their settings (the only differences between the runs):

* ``semantic``: background / cell, connected components (the project's first cell output);
* ``boundary``: background / interior / boundary, 2-pixel boundary, cross-entropy weights
  1 / 1 / 5 (so the thin class cannot vanish), watershed from the interiors;
* ``distance``: background / cell + a normalised distance map (``instance_maps``), watershed
  from the distance peaks;
* ``flows``: background / cell + Cellpose-style flows (``instance_maps``), flow following.

Finished runs and evaluations are reused, so an interrupted benchmark continues.

Run (about 4 min of training per run on a 2-core CPU at the default 8 epochs)::

    python benchmarks/bench_cell_representations.py --data ../shared/data/dsb2018 --out bench_out/cell_reps

On LIVECell, the unseen-type protocol's config and split (``--set`` adds overrides to every run)::

    python benchmarks/bench_cell_representations.py --data ../shared/data/livecell --out bench_out/lc_reps \
        --config configs/cells_livecell_unseen_type.yaml --epochs 16 --representations boundary flows \
        --set 'data.split.domains={train: [A172, BT474], test: [SKOV3]}'
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from _common import run_logged

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "cells_dsb.yaml"
METRICS = ("dsb_score", "ap50", "mask_ap", "bf1_2", "dice_fg")
#: ``--set`` overrides of each representation (the config's own is ``flows``).
SETTINGS = {
    "semantic": ["data.format_options={targets: semantic}",
                 "loss.terms=[{name: ce, weight: 1.0}, {name: dice, weight: 1.0}]"],
    "boundary": ["data.format_options={targets: boundary, boundary_width: 2}",
                 "loss.terms=[{name: ce, weight: 1.0, class_weights: [1.0, 1.0, 5.0]}, {name: dice, weight: 1.0}]"],
    "distance": ["data.format_options={targets: distance}"],
    "flows": ["data.format_options={targets: flows}"],
}


def machine() -> str:
    """The machine line of every benchmark (:func:`_common.machine`: CPU model, flags, count;
    device), with the torch version and thread count."""
    import torch

    from _common import machine as machine_lines

    dev, cpu = machine_lines(torch.device("cuda" if torch.cuda.is_available() else "cpu"), torch)
    return f"{cpu}; {dev}; torch {torch.__version__} ({torch.get_num_threads()} threads)"


def run_dir(folder: Path, config: Path) -> Path:
    """Where ``pdeseg train --out folder/run`` puts the run of ``config`` (its ``name``, model ``unet``)."""
    import yaml

    return folder / "run" / yaml.safe_load(config.read_text())["name"] / "unet"


def train_and_score(rep: str, seed: int, args) -> tuple[list[dict], dict]:
    """The test images' rows of one (representation, seed) and its run facts."""
    folder = Path(args.out) / rep / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    pdeseg = [sys.executable, "-m", "pdeseg"]
    facts_file = folder / "facts.json"
    facts = json.loads(facts_file.read_text()) if facts_file.is_file() else {}
    if "train_s" not in facts:
        sets = [*SETTINGS[rep], f"train.seed={seed}", f"train.epochs={args.epochs}", f"data.cache_dir={Path(args.out) / 'cache'}",
                *args.set]
        facts["train_s"] = run_logged([*pdeseg, "train", "--config", str(args.config), "--data", args.data, "--out",
                                str(folder / "run"), "--no-progress", "--set", *sets], folder / "train.log")
        facts_file.write_text(json.dumps(facts))
    per_case = folder / "eval" / "per_case.csv"
    if not per_case.is_file():
        facts["eval_s"] = run_logged([*pdeseg, "evaluate", "--checkpoint", str(run_dir(folder, Path(args.config)) / "best.pt"), "--split", "test",
                               "--out", str(folder / "eval"), "--figures", "0"], folder / "eval.log")
        facts_file.write_text(json.dumps(facts))
    with open(per_case) as f:
        rows = [r for r in csv.DictReader(f)]
    return rows, facts


def mean_sd(values: list[float]) -> str:
    a = np.asarray(values, float)
    return f"{a.mean():.3f} ± {a.std(ddof=1) if a.size > 1 else 0.0:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the DSB 2018 folder (stage1_train/, domains.tsv), or LIVECell's")
    p.add_argument("--config", default=str(CONFIG), help="the cell config every run trains (default: cells_dsb.yaml)")
    p.add_argument("--set", nargs="*", default=[], help="more overrides for every run (a split, a data subset)")
    p.add_argument("--out", default="bench_out/cell_reps")
    p.add_argument("--representations", nargs="+", default=["boundary", "distance", "flows"], choices=sorted(SETTINGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--baseline", default="boundary", help="the representation the others are tested against")
    args = p.parse_args()
    results: dict[str, dict[int, list[dict]]] = defaultdict(dict)
    facts: dict[str, list[dict]] = defaultdict(list)
    for seed in args.seeds:  # seed-major: an interrupted run has every representation at the same seeds
        for rep in args.representations:
            print(f"{rep}, seed {seed} ...", flush=True)
            results[rep][seed], f = train_and_score(rep, seed, args)
            facts[rep].append(f)
    print(f"\nmachine: {machine()}")
    print(f"config {Path(args.config).name} {' '.join(args.set)}, {args.epochs} epochs, seeds {args.seeds}; test images: "
          f"{len(next(iter(results.values()))[args.seeds[0]])}")
    domains = sorted({r.get("domain", "") for rows in results[args.representations[0]].values() for r in rows})
    header = "| targets | train s/run | " + " | ".join(METRICS) + " | " + " | ".join(f"DSB {d}" for d in domains) + " |"
    print("\n" + header + "\n|" + "---|" * (header.count("|") - 1))
    for rep in args.representations:
        seeds = results[rep]
        cells = [mean_sd([np.mean([float(r[m]) for r in rows]) for rows in seeds.values()]) for m in METRICS]
        by_domain = [mean_sd([np.mean([float(r["dsb_score"]) for r in rows if r.get("domain", "") == d])
                              for rows in seeds.values()]) for d in domains]
        train_s = np.mean([f["train_s"] for f in facts[rep]])
        print(f"| {rep} | {train_s:.0f} | " + " | ".join(cells) + " | " + " | ".join(by_domain) + " |")
    if args.baseline in results:
        from pdeseg.experiments.stats import paired_comparison

        print(f"\npaired against {args.baseline} ((seed, image) grid; 95% bootstrap interval; sign-flip test over images):")
        for rep in args.representations:
            if rep == args.baseline:
                continue
            for m in ("dsb_score", "ap50", "mask_ap"):
                grid = lambda name: np.array([[float(r[m]) for r in sorted(results[name][s], key=lambda r: r["case"])]
                                              for s in args.seeds])
                res = paired_comparison(grid(rep), grid(args.baseline), rep, args.baseline, m)
                print(f"  {rep} - {args.baseline}, {m}: {res.diff:+.3f} [{res.lo:+.3f}, {res.hi:+.3f}], "
                      f"p = {res.p_value:.3g}")


if __name__ == "__main__":
    main()
