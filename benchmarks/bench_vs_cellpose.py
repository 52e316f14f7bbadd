"""pdeseg against Cellpose on the shared DSB 2018 nuclei: same training images, same split, same
wall-clock training budget, the same scoring of the same held-out images.

Per seed:

1. **pdeseg** trains ``configs/cells_dsb.yaml`` (the shipped default representation) with
   ``pdeseg train`` (reusing the run of ``bench_cell_representations.py`` when ``--out``
   points at the same folder), and its training wall time (the whole ``pdeseg train``
   command: reading, caching, training, validation) becomes the budget.
2. **Cellpose 3** (from scratch, no pretrained weights; ``benchmarks/cellpose_side.py`` in its
   own venv) trains on the same images -- pdeseg's training and validation images of the run's
   ``split.json``, since Cellpose uses no validation set -- for that many seconds of wall time.
3. Both segment the run's test images at their own size (``pdeseg predict``, which writes
   ``<id>_instances.tif``; ``cellpose_side.py predict``), and both sets of cells are scored
   here by the same functions against the same truth (pdeseg's DSB reader):
   :func:`pdeseg.metrics.instances.instance_metrics` (DSB score, AP50) and the boundary F1 at
   2 px of the cells' union (:func:`pdeseg.metrics.instances.boundary_f1_scores`).

The table: mean ± sd over seeds of the per-seed means, overall and per domain, the ratio
pdeseg / Cellpose, the training seconds and the prediction seconds per image; then a paired
test over the (seed, image) grid (:func:`pdeseg.experiments.stats.paired_comparison`).

Install Cellpose once (its own venv, never a pdeseg dependency; about 1.6 GB)::

    python3 -m venv benchmarks/.venv-cellpose
    benchmarks/.venv-cellpose/bin/pip install torch==2.13.0 'cellpose>=3.1,<4'

Run::

    python benchmarks/bench_vs_cellpose.py --data ../shared/data/dsb2018 --out bench_out/cell_reps --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench_cell_representations import machine, mean_sd, run, run_dir, train_and_score

HERE = Path(__file__).resolve().parent
CELLPOSE_PY = HERE / ".venv-cellpose" / "bin" / "python"


def truth_of(data: str, ids: list[str]) -> dict[str, tuple[np.ndarray, str]]:
    """``id -> (true instances (H, W), domain)`` by pdeseg's DSB reader."""
    from pdeseg.data.readers.dsb import find_dsb_cases

    cases = {c.case_id: c for c in find_dsb_cases(data, ("grey",), True, None)}
    out = {}
    for i in ids:
        loaded = cases[i].load(("grey",))
        out[i] = (np.asarray(loaded.instances)[..., 0], cases[i].domain)
    return out


def scores(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    from pdeseg.metrics.instances import boundary_f1_scores, instance_metrics

    row = instance_metrics(pred, true)
    return {"dsb_score": row["dsb_score"], "ap50": row["ap50"],
            "bf1_2": boundary_f1_scores(pred > 0, true > 0, (2,))["bf1_2"], "n_merged": row["n_merged"]}


def link_images(data: str, ids: list[str], folder: Path) -> Path:
    """A DSB-layout folder of the given images (symlinks), for ``pdeseg predict``."""
    root = Path(data) / "stage1_train" if (Path(data) / "stage1_train").is_dir() else Path(data)
    for i in ids:
        target = folder / "stage1_train" / i / "images"
        target.mkdir(parents=True, exist_ok=True)
        link = target / f"{i}.png"
        if not link.exists():
            link.symlink_to((root / i / "images" / f"{i}.png").resolve())
    return folder


def one_seed(seed: int, args, truth_cache: dict) -> dict:
    import tifffile

    rep_args = argparse.Namespace(out=args.out, data=args.data, epochs=args.epochs)
    _, facts = train_and_score(args.representation, seed, rep_args)
    folder = Path(args.out) / args.representation / f"seed{seed}"
    split = json.loads((run_dir(folder) / "split.json").read_text())
    train_ids, test_ids = split["train"] + split["val"], split["test"]
    budget = facts["train_s"]
    cp = Path(args.out) / "cellpose" / f"seed{seed}"
    cp.mkdir(parents=True, exist_ok=True)
    (cp / "train_ids.txt").write_text("\n".join(train_ids) + "\n")
    (cp / "test_ids.txt").write_text("\n".join(test_ids) + "\n")
    if not (cp / "train.json").is_file():
        run([str(args.cellpose_python), str(HERE / "cellpose_side.py"), "train", "--data", args.data,
             "--train-ids", str(cp / "train_ids.txt"), "--budget-s", f"{budget:.0f}", "--seed", str(seed), "--out", str(cp)],
            cp / "train.log")
    if not (cp / "pred" / "predict.json").is_file():
        run([str(args.cellpose_python), str(HERE / "cellpose_side.py"), "predict", "--model", str(cp), "--data", args.data,
             "--ids", str(cp / "test_ids.txt"), "--out", str(cp / "pred")], cp / "predict.log")
    mine = folder / "predict"
    if not (mine / "done.json").is_file():
        images = link_images(args.data, test_ids, folder / "test_images")
        t0 = time.perf_counter()
        run([sys.executable, "-m", "pdeseg", "predict", "--checkpoint", str(run_dir(folder) / "best.pt"), "--input",
             str(images), "--output", str(mine), "--overwrite"], folder / "predict.log")
        (mine / "done.json").write_text(json.dumps({"seconds": time.perf_counter() - t0, "images": len(test_ids)}))
    for i in test_ids:
        if i not in truth_cache:
            truth_cache.update(truth_of(args.data, [i]))
    rows = {"pdeseg": [], "cellpose": []}
    for i in sorted(test_ids):
        true, domain = truth_cache[i]
        for name, path in (("pdeseg", mine / f"{i}_instances.tif"), ("cellpose", cp / "pred" / f"{i}.tif")):
            pred = tifffile.imread(path).astype(np.int64)
            if pred.shape != true.shape:
                sys.exit(f"{path}: cells of size {pred.shape} for an image of size {true.shape}")
            rows[name].append({"case": i, "domain": domain, **scores(pred, true)})
    cp_train = json.loads((cp / "train.json").read_text())
    cp_pred = json.loads((cp / "pred" / "predict.json").read_text())
    mine_pred = json.loads((mine / "done.json").read_text())
    return {"rows": rows, "budget_s": budget, "cellpose_train_s": cp_train["train_s"],
            "cellpose_steps": cp_train["steps_per_epoch"] * cp_train["n_epochs"], "cellpose_epochs": cp_train["n_epochs"],
            "pdeseg_predict_s": mine_pred["seconds"] / mine_pred["images"], "cellpose_predict_s": cp_pred["mean_s"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the DSB 2018 folder (stage1_train/, domains.tsv)")
    p.add_argument("--out", default="bench_out/cell_reps", help="shared with bench_cell_representations.py")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=8, help="pdeseg's epochs (its wall time is Cellpose's budget)")
    p.add_argument("--representation", default="flows", help="pdeseg's representation (the config's default)")
    p.add_argument("--cellpose-python", default=str(CELLPOSE_PY))
    args = p.parse_args()
    if not Path(args.cellpose_python).is_file():
        sys.exit(f"{args.cellpose_python}: no Cellpose venv; install it with the command in this script's docstring")
    truth: dict = {}
    results = {}
    for seed in args.seeds:
        print(f"seed {seed} ...", flush=True)
        results[seed] = one_seed(seed, args, truth)
    print(f"\nmachine: {machine()}")
    first = results[args.seeds[0]]
    domains = sorted({r["domain"] for r in first["rows"]["pdeseg"]})
    counts = ", ".join(f"{sum(r['domain'] == d for r in first['rows']['pdeseg'])} {d}" for d in domains)
    print(f"{len(first['rows']['pdeseg'])} test images ({counts}); seeds {args.seeds}; "
          f"pdeseg {args.representation}, {args.epochs} epochs")
    metrics = ("dsb_score", "ap50", "bf1_2")
    header = "| method | train s | predict s/image | " + " | ".join(metrics) + " | " + " | ".join(f"DSB {d}" for d in domains) + " |"
    print("\n" + header + "\n|" + "---|" * (header.count("|") - 1))
    per_method = {}
    for name in ("pdeseg", "cellpose"):
        means = {m: [np.mean([r[m] for r in res["rows"][name]]) for res in results.values()] for m in metrics}
        dom = {d: [np.mean([r["dsb_score"] for r in res["rows"][name] if r["domain"] == d]) for res in results.values()]
               for d in domains}
        train_s = np.mean([res["budget_s"] if name == "pdeseg" else res["cellpose_train_s"] for res in results.values()])
        pred_s = np.mean([res[f"{name}_predict_s"] for res in results.values()])
        per_method[name] = (means, dom)
        print(f"| {name} | {train_s:.0f} | {pred_s:.2f} | " + " | ".join(mean_sd(means[m]) for m in metrics) + " | "
              + " | ".join(mean_sd(dom[d]) for d in domains) + " |")
    def ratio(m: str) -> str:
        theirs = float(np.mean(per_method["cellpose"][0][m]))
        return f"{np.mean(per_method['pdeseg'][0][m]) / theirs:.2f}x" if theirs > 0 else "n/a (Cellpose 0)"

    print("| ratio pdeseg / cellpose | | | " + " | ".join(ratio(m) for m in metrics) + " |" + " |" * len(domains))
    print("\ncellpose steps per seed: " + ", ".join(f"{results[s]['cellpose_steps']} ({results[s]['cellpose_epochs']} epochs)"
                                                    for s in args.seeds))
    from pdeseg.experiments.stats import paired_comparison

    for m in ("dsb_score", "ap50"):
        grid = {name: np.array([[r[m] for r in results[s]["rows"][name]] for s in args.seeds]) for name in ("pdeseg", "cellpose")}
        res = paired_comparison(grid["pdeseg"], grid["cellpose"], "pdeseg", "cellpose", m)
        print(f"paired pdeseg - cellpose, {m}: {res.diff:+.3f} [{res.lo:+.3f}, {res.hi:+.3f}], p = {res.p_value:.3g}")


if __name__ == "__main__":
    main()
