"""Fine-tuning a shipped model with a few labelled images (issue 35): the score against the number of
labelled images (1, 3, 5, 10), fine-tuned from ``nuclei`` (``train.init``) against trained from scratch, the
same budget, on a domain the model has seen little of: LIVECell's phase-contrast cells.

Protocol (every choice printed with the table):

* **Data**: a LIVECell folder in its release layout (the shared sample: 14 images of A172, BT474, Huh7 and
  SKOV3). **Test set**: one image of each cell type, drawn once with ``--test-seed`` (default 0) from the
  sorted ids of that type; it is the same for every row, size and seed (4 images on the shared sample).
  **Training images**: ``n`` of the other images, drawn with the run's seed (a seeded permutation of their sorted
  ids, first ``n``: the draws are nested, so seed ``s``'s 3 images include its 1). With 10 images on the shared
  sample, n = 10 takes them all (the seeds then differ only in initialisation of the head-free parts and
  sampling). No validation images: a user with ``n`` labelled images trains on all of them.
* **Runs**: ``pdeseg train --config configs/finetune_nuclei.yaml`` with the split written to the run folder's
  ``split.json`` beforehand (``pdeseg train`` reuses an existing ``split.json``: the documented way to give a
  run its cases), ``train.init=--init`` (fine-tuned) or ``train.init=null`` (from scratch). Both keep the
  nuclei model's task spec (grey, per-image z-score, flows) and network, and train the **same budget**: the
  same epochs and ``--windows`` training windows per epoch (``samples_per_case = windows / n``), so every run
  takes the same optimiser steps whatever ``n``. Learning rates: ``--lr`` (fine-tuning) and ``--scratch-lr``
  (from scratch; 3e-3, the rate the nuclei model itself was trained at). ``--lr-sweep`` measures them.
* **Scoring**: ``last.pt`` (the end of the fixed schedule; no validation decides) of every run through the
  library's one scoring path (:func:`pdeseg.inference.score.score`, what ``pdeseg evaluate --split test``
  runs; the images read by LIVECell's reader, since the nuclei model's own format is ``dsb2018``) on the
  test images: DSB score, AP50 (per image, then averaged), COCO mask AP of the test images pooled
  (LIVECell's metric). Fine-tuned and scratch checkpoints state no training object size, so they segment at
  the image's own scale (``--diameter off``, what ``predict`` does for them).
* **n = 0**: the ``--init`` model as it is (no fine-tuning) on the same test images, at ``--diameter off``
  and, when the model states its training object size (a shipped model does; ``--object-diameter PX``
  supplies it for a plain checkpoint), at ``--diameter auto``.

Per row: mean ± sd over seeds of each seed's mean over test images (the pooled mask AP per seed), the
training wall time per run, and for each ``n`` the paired difference fine-tuned - scratch (mean ± sd over
seeds). Finished runs are reused (``facts.json`` per run), so an interrupted benchmark continues.
Results: ``<out>/finetune.csv`` (one row per run) and ``<out>/finetune.md`` (the tables).

Run (from the repository root; about 1 min per training run on an idle 2-core CPU, 24 runs + evaluations)::

    python benchmarks/bench_finetune.py --data ../shared/data/livecell --out bench_out/finetune --lr-sweep
    python benchmarks/bench_finetune.py --data ../shared/data/livecell --out bench_out/finetune --lr 3e-3

``--init`` is a shipped model's name (default ``nuclei``) or a checkpoint path. ``--quick`` (n 1 and 3,
seed 0, 1 epoch) only checks that everything runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from _common import machine_line as machine, report_load, run_logged

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "finetune_nuclei.yaml"
#: LIVECell's reading options in every run (as configs/cells_livecell_unseen_type.yaml reads it).
LIVECELL = ["data.format=livecell", "data.format_options={targets: flows, overlap: smallest}"]
SWEEP_LRS = (3e-3, 1e-3, 3e-4)
METRICS = ("dsb_score", "ap50", "mask_ap")


def cell_types(data: str) -> dict[str, str]:
    """Case id -> cell type of the LIVECell folder (the reader's ``domain``)."""
    from pdeseg.data.formats import get_format

    cases = get_format("livecell").find_cases(data, ["grey"], True, targets="flows")
    return {c.case_id: str(getattr(c, "domain", "")) for c in cases}


def fixed_test_set(types: dict[str, str], seed: int) -> list[str]:
    """One image of each cell type, drawn with ``seed`` from that type's sorted ids (independent of n and
    of the run seeds)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    test = []
    for t in sorted(set(types.values())):
        ids = sorted(i for i, d in types.items() if d == t)
        test.append(ids[int(rng.integers(len(ids)))])
    return sorted(test)


def training_draw(pool: list[str], n: int, seed: int) -> list[str]:
    """``n`` of ``pool``: the first ``n`` of a seeded permutation of its sorted ids (nested in ``n``)."""
    import numpy as np

    ids = sorted(pool)
    if n > len(ids):
        sys.exit(f"n = {n} training images asked for, but only {len(ids)} are left beside the test set")
    order = np.random.default_rng(seed).permutation(len(ids))
    return sorted(ids[i] for i in order[:n])


def evaluate(checkpoint: Path, out: Path, data: str, diameter: str, test: list[str], cache: Path) -> dict:
    """``checkpoint`` on the ``test`` images, scored by the library's one scoring path
    (:func:`pdeseg.inference.score.score`, what ``pdeseg evaluate`` runs), the images read by LIVECell's
    reader whatever format the model was trained on (the nuclei model's is ``dsb2018``), normalised as
    its spec says. Writes ``per_case.csv`` and ``summary.json`` to ``out`` (reused when there); returns
    the per-image means of :data:`METRICS` (``mask_ap``: pooled over the images) and the images' count."""
    summary_file = out / "summary.json"
    if summary_file.is_file() and json.loads(summary_file.read_text()).get("checkpoint") != str(checkpoint):
        sys.exit(f"{out} holds the scores of another checkpoint; use another --out")
    if not summary_file.is_file():
        from pdeseg.data.pipeline.prepare import load_cached_cases
        from pdeseg.inference.evaluate import write_results
        from pdeseg.inference.options import InferenceOptions
        from pdeseg.inference.predict import Predictor
        from pdeseg.inference.score import score

        predictor = Predictor.from_checkpoint(checkpoint, InferenceOptions(diameter=diameter))
        spec = predictor.spec.model_copy(update={"format": "livecell"})
        entries = load_cached_cases(data, spec, cache, test, False, {"targets": "flows", "overlap": "smallest"})
        result = score(predictor, [e for _, e in entries], "volume")
        summary = {
            "scope": "volume",
            "split": "test",
            "checkpoint": str(checkpoint),
            "diameter": diameter,
            "cases": len(result.rows),
            "inference": {"diameter": diameter},
            "metrics": result.summary(),
            "pooled": result.pooled,
        }
        write_results(result.rows, summary, out)
    summary = json.loads(summary_file.read_text())
    m, pooled = summary["metrics"], summary.get("pooled") or {}
    row = {k: float(m[k]["mean"]) for k in ("dsb_score", "ap50") if k in m}
    if "mask_ap" in pooled:
        row["mask_ap"] = float(pooled["mask_ap"])
    elif "mask_ap" in m:
        row["mask_ap"] = float(m["mask_ap"]["mean"])
    row["images"] = int(summary["cases"])
    return row


def train_run(folder: Path, split: dict, init: str | None, n: int, seed: int, lr: float, args) -> dict:
    """One training run (reused when finished) and its scores; returns its facts."""
    facts_file = folder / "facts.json"
    facts = json.loads(facts_file.read_text()) if facts_file.is_file() else {}
    asked = {"init": init or "scratch", "lr": lr, "epochs": args.epochs, "windows": args.windows, "set": args.set}
    if "train_s" in facts and any(facts.get(k) != v for k, v in asked.items()):
        sys.exit(f"{folder} holds a run of other settings ({ {k: facts.get(k) for k in asked} }); use another --out")
    run_dir = folder / "run" / "finetune_nuclei" / "unet"
    if "train_s" not in facts:
        if (folder / "run").exists():  # an interrupted run of this benchmark: start it again
            shutil.rmtree(folder / "run")
        run_dir.mkdir(parents=True)
        (run_dir / "split.json").write_text(json.dumps(split, indent=1))  # train reuses it (prepare_data)
        spc = math.ceil(args.windows / n)
        sets = [
            *LIVECELL,
            f"train.init={init if init else 'null'}",
            f"train.seed={seed}",
            f"train.epochs={args.epochs}",
            f"train.lr={lr}",
            f"data.samples_per_case={spc}",
            f"data.cache_dir={Path(args.out) / 'cache'}",
            *(["train.warmup_epochs=0"] if args.epochs < 2 else []),
            *args.set,
        ]
        cmd = [
            sys.executable,
            "-m",
            "pdeseg",
            "train",
            "--config",
            str(args.config),
            "--data",
            args.data,
            "--out",
            str(folder / "run"),
            "--no-progress",
            "--set",
            *sets,
        ]
        facts = {
            **asked,
            "n": n,
            "seed": seed,
            "samples_per_case": spc,
            "steps": args.epochs * math.ceil(spc * n / 8),
            "train": split["train"],
        }
        facts["train_s"] = run_logged(cmd, folder / "train.log")
        facts_file.write_text(json.dumps(facts, indent=1))
    if "dsb_score" not in facts:
        facts.update(evaluate(run_dir / "last.pt", folder / "eval", args.data, "off", split["test"], Path(args.out) / "cache"))
        facts_file.write_text(json.dumps(facts, indent=1))
    return facts


def no_finetuning(init_path: Path, split: dict, args) -> list[dict]:
    """The ``--init`` model on the test images as it is, at each usable diameter mode."""
    from pdeseg.checkpoint import load_checkpoint, save_checkpoint

    folder = Path(args.out) / "n0"
    folder.mkdir(parents=True, exist_ok=True)
    model = init_path
    if args.object_diameter:  # a copy that states the training object size
        model = folder / "model.pt"
        ckpt = load_checkpoint(init_path)
        ckpt["object_diameter"] = float(args.object_diameter)
        save_checkpoint(ckpt, model)
    has_size = "object_diameter" in load_checkpoint(model)
    rows = []
    for diameter in ("off", "auto") if has_size else ("off",):
        t0 = time.perf_counter()
        row = evaluate(model, folder / f"eval_{diameter}", args.data, diameter, split["test"], Path(args.out) / "cache")
        rows.append(
            {
                "n": 0,
                "init": f"{args.init} (no fine-tuning), diameter {diameter}",
                "seed": 0,
                "lr": "",
                "train_s": 0.0,
                "eval_s": time.perf_counter() - t0,
                **row,
            }
        )
    if not has_size:
        print(f"note: {init_path} states no training object size: n = 0 is scored at --diameter off only (--object-diameter PX adds auto)")
    return rows


def mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


def write_csv(rows: list[dict], path: Path) -> None:
    keys = ["init", "n", "seed", "lr", "samples_per_case", "steps", "train_s", *METRICS, "images", "train"]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "train": " ".join(r.get("train", []))})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a LIVECell folder in its release layout (../shared/data/livecell)")
    p.add_argument("--out", default="bench_out/finetune")
    p.add_argument("--init", default="nuclei", help="a shipped model's name or a checkpoint to fine-tune from")
    p.add_argument("--config", default=str(CONFIG), help="the fine-tuning config (default configs/finetune_nuclei.yaml)")
    p.add_argument("--sizes", nargs="+", type=int, help="numbers of labelled training images (default 1 3 5 10)")
    p.add_argument("--seeds", nargs="+", type=int, help="seeds: training draw and run (default 0 1 2)")
    p.add_argument("--epochs", type=int, help="epochs of every run (default: 12)")
    p.add_argument("--windows", type=int, default=120, help="training windows per epoch, whatever n (default 120: 15 steps of 8)")
    p.add_argument("--lr", type=float, default=3e-3, help="fine-tuning learning rate (default 3e-3, the --lr-sweep choice)")
    p.add_argument("--scratch-lr", type=float, default=3e-3, help="from-scratch learning rate (default 3e-3)")
    p.add_argument(
        "--lr-sweep", action="store_true", help=f"instead of the table: n 5, seed 0, both starts at lr {', '.join(map(str, SWEEP_LRS))}"
    )
    p.add_argument("--test-seed", type=int, default=0, help="the draw of the fixed test images (one per cell type)")
    p.add_argument(
        "--object-diameter",
        type=float,
        help="training object size (px) of a --init checkpoint that states none, for the n = 0 row at --diameter auto",
    )
    p.add_argument("--set", nargs="*", default=[], help="more config overrides for every run")
    p.add_argument("--quick", action="store_true", help="n 1 and 3, seed 0, 1 epoch: checks that it runs")
    args = p.parse_args()
    args.sizes = args.sizes or ([1, 3] if args.quick else [1, 3, 5, 10])
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.epochs = args.epochs or (1 if args.quick else 12)
    t_start, load0 = time.perf_counter(), os.getloadavg()[0]

    from pdeseg.pretrained import resolve

    init_path = resolve(args.init)
    if not init_path.is_file():
        sys.exit(f"--init {args.init}: no checkpoint at {init_path}")
    types = cell_types(args.data)
    test = fixed_test_set(types, args.test_seed)
    pool = sorted(set(types) - set(test))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"test images (fixed, one per cell type): {', '.join(test)}; {len(pool)} images to draw training sets from", flush=True)

    runs: list[dict] = []
    if args.lr_sweep:
        n, seed = (5 if len(pool) >= 5 else len(pool)), 0
        train = training_draw(pool, n, seed)
        for lr in SWEEP_LRS:
            for init in (args.init, None):
                name = "init" if init else "scratch"
                print(f"sweep: {name}, lr {lr:g}, n {n} ...", flush=True)
                runs.append(
                    train_run(out / "sweep" / f"{name}_lr{lr:g}", {"train": train, "val": [], "test": test}, init, n, seed, lr, args)
                )
    else:
        runs += no_finetuning(init_path, {"test": test}, args)
        for seed in args.seeds:  # seed-major: an interrupted run has every size at the same seeds
            for n in args.sizes:
                train = training_draw(pool, n, seed)
                for init, lr in ((args.init, args.lr), (None, args.scratch_lr)):
                    name = "init" if init else "scratch"
                    print(f"{name}, n {n}, seed {seed}, lr {lr:g} ...", flush=True)
                    runs.append(
                        train_run(out / name / f"n{n}" / f"seed{seed}", {"train": train, "val": [], "test": test}, init, n, seed, lr, args)
                    )

    lines = [
        f"machine: {machine()}",
        f"config {Path(args.config).name}, init {args.init} ({init_path}), {args.epochs} epochs x {args.windows} "
        f"windows ({args.epochs * math.ceil(args.windows / 8)} steps of 8 whatever n), fine-tune lr {args.lr:g}, "
        f"scratch lr {args.scratch_lr:g}; {' '.join(args.set)}",
        f"test images ({len(test)}, fixed): {', '.join(test)}",
        "scores: last.pt, per-image means over the test images (mask AP pooled over them); mean ± sd over seeds",
        "",
    ]
    if args.lr_sweep:
        lines += ["| start | lr | n | DSB score | AP50 | mask AP | train s |", "|---|---|---|---|---|---|---|"]
        for r in runs:
            lines.append(
                f"| {'fine-tuned' if r['init'] != 'scratch' else 'scratch'} | {r['lr']:g} | {r['n']} | "
                f"{r['dsb_score']:.3f} | {r['ap50']:.3f} | {r.get('mask_ap', float('nan')):.3f} | {r['train_s']:.0f} |"
            )
    else:
        lines += ["| start | n | seeds | DSB score | AP50 | mask AP | train s/run |", "|---|---|---|---|---|---|---|"]
        for r in (r for r in runs if r["n"] == 0):
            lines.append(
                f"| {r['init']} | 0 | - | {r['dsb_score']:.3f} | {r['ap50']:.3f} | "
                f"{r.get('mask_ap', float('nan')):.3f} | 0 (eval {r['eval_s']:.0f} s) |"
            )
        for n in args.sizes:
            for name in ("fine-tuned", "scratch"):
                rs = [r for r in runs if r["n"] == n and (r["init"] == "scratch") == (name == "scratch")]
                cells = [mean_sd([r[m] for r in rs if m in r]) for m in METRICS]
                lines.append(
                    f"| {name} | {n} | {len(rs)} | " + " | ".join(cells) + f" | {statistics.fmean(r['train_s'] for r in rs):.0f} |"
                )
        lines += [
            "",
            "paired by seed, fine-tuned - scratch (mean ± sd over seeds):",
            "",
            "| n | Δ DSB score | Δ AP50 | Δ mask AP |",
            "|---|---|---|---|",
        ]
        for n in args.sizes:
            by = {(r["init"] == "scratch", r["seed"]): r for r in runs if r["n"] == n}
            diffs = [
                mean_sd(
                    [by[(False, s)][m] - by[(True, s)][m] for s in args.seeds if m in by.get((False, s), {}) and m in by.get((True, s), {})]
                )
                for m in METRICS
            ]
            lines.append(f"| {n} | " + " | ".join(diffs) + " |")
    text = "\n".join(lines)
    print("\n" + text)
    stem = "finetune_lr_sweep" if args.lr_sweep else "finetune"
    (out / f"{stem}.md").write_text(text + "\n")
    write_csv(runs, out / f"{stem}.csv")
    print(f"\nwrote {out / (stem + '.md')} and {out / (stem + '.csv')}")
    import torch

    report_load(t_start, load0, torch.device("cpu"), ": timings are high and noisy")


if __name__ == "__main__":
    main()
