"""pdeseg's plan against nnU-Net v2, on the same cases, split, device and wall-clock training budget.

One command runs both tools end to end on a data set pdeseg reads, and prints one table:

1. ``pdeseg export-nnunet`` writes the data set as nnU-Net raw data with pdeseg's split (the
   plan's default, 0.7 / 0.1 / 0.2 by case, seed 0) as ``splits_final.json``;
2. **nnU-Net**: ``nnUNetv2_plan_and_preprocess --verify_dataset_integrity`` (its own planner),
   ``nnUNetv2_train`` fold 0 with ``nnUNetTrainer_WallClock`` (its default trainer, stopped at
   the budget with its poly schedule spread over the budget; ``benchmarks/nnunet/``), and
   ``nnUNetv2_predict`` of the test cases with its default inference (mirroring on);
3. **pdeseg**: ``pdeseg plan --time-budget`` (its own planner, measuring this device), ``pdeseg
   train`` of that plan, ``pdeseg predict`` of the same test cases with its default inference;
4. both sets of predictions are scored by the same code (pdeseg's functional metrics) against
   the exported labels: Dice and HD95 (mm; MONAI's definition, the larger of the two directed
   95th percentiles) per class, with a paired Wilcoxon test per class over the test cases.

The table also gives training wall time, inference seconds per case (whole command, start-up
included, divided by the cases) and the peak resident memory of the largest process of each
command (``/usr/bin/time``), with pdeseg / nnU-Net ratios. It prints the machine line (CPU
flags, threads, GPU) first.

Install nnU-Net first, once, in its own environment (never a pdeseg dependency)::

    bash benchmarks/nnunet/install.sh

Then, from the repository root with pdeseg's venv::

    python benchmarks/bench_vs_nnunet.py --data ../shared/data/msd_hippocampus/Task04_Hippocampus \\
        --budget 10m --out bench_out/hippocampus --dataset-id 4
    python benchmarks/bench_vs_nnunet.py --data ../shared/data/brats2018 --budget 20m --out bench_out/brats \\
        --dataset-id 501 --nnunet-config 2d

Rerunning with the same ``--out`` reuses finished steps (export, preprocessing, trainings,
predictions: each step writes a ``.done`` marker); ``--fresh`` starts over. ``--json`` writes
the table's numbers.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _common import machine  # noqa: E402

NNUNET_VENV = Path(os.environ.get("NNUNET_VENV", HERE / ".venv-nnunet"))
TRAINER = "nnUNetTrainer_WallClock"


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _run(cmd: list[str], log_file: Path, env: dict | None = None) -> tuple[float, float]:
    """Run ``cmd`` (output to ``log_file``); returns (wall seconds, peak RSS MiB of its largest process)."""
    timed = ["/usr/bin/time", "-f", "%M", "-o", str(log_file) + ".rss", *cmd] if Path("/usr/bin/time").exists() else cmd
    _log(" ".join(map(str, cmd)) + f"  (log: {log_file})")
    start = time.perf_counter()
    with open(log_file, "w") as out:
        rc = subprocess.call(timed, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - start
    if rc != 0:
        tail = "".join(open(log_file).readlines()[-25:])
        raise SystemExit(f"command failed (exit {rc}): {' '.join(map(str, cmd))}\n--- last lines of {log_file} ---\n{tail}")
    rss = float("nan")
    try:
        rss = float(Path(str(log_file) + ".rss").read_text().split()[-1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    load = os.getloadavg()
    _log(f"took {wall:.1f} s; load average now {load[0]:.2f} (1 min) {load[2]:.2f} (15 min) on {os.cpu_count()} CPUs")
    return wall, rss


def _step(out: Path, name: str, fn) -> dict:
    """Run ``fn() -> dict`` once; its result is kept in ``<out>/<name>.done`` for reruns."""
    marker = out / f"{name}.done"
    if marker.is_file():
        _log(f"{name}: done before, reused ({marker})")
        return json.loads(marker.read_text())
    result = fn()
    marker.write_text(json.dumps(result))
    return result


def _score(pred_dir: Path, pattern: str, label_dir: Path, cases: list[str], class_names: list[str],
           value_map: dict[int, int] | None = None) -> dict[str, dict[str, float]]:
    """Per-case Dice and HD95 per foreground class from prediction files against the exported labels."""
    import nibabel as nib
    import numpy as np

    from pdeseg.metrics import dice, hd95

    rows = {}
    k = len(class_names)
    for case in cases:
        truth_img = nib.load(label_dir / f"{case}.nii.gz")
        truth = np.asarray(truth_img.dataobj).astype(np.int64)
        pred = np.asarray(nib.load(pred_dir / pattern.format(case=case)).dataobj).astype(np.int64)
        if value_map:
            pred = _remap(pred, value_map)
        if pred.shape != truth.shape:
            raise SystemExit(f"{case}: prediction shape {pred.shape} != label shape {truth.shape}")
        spacing = truth_img.header.get_zooms()[:3]
        d = dice(pred, truth, k)
        row = {}
        for c in range(1, k):
            row[f"dice_{class_names[c]}"] = float(d[c])
            row[f"hd95_{class_names[c]}"] = float(hd95(pred == c, truth == c, spacing, one_empty=373.13))
        rows[case] = row
    return rows


def _remap(a, mapping: dict[int, int]):
    out = a.copy()
    for src, dst in mapping.items():
        out[a == src] = dst
    return out


def _mean_ci(values: list[float]) -> tuple[float, float]:
    import numpy as np

    v = np.asarray([x for x in values if math.isfinite(x)], float)
    if v.size == 0:
        return float("nan"), float("nan")
    half = 1.96 * v.std(ddof=1) / math.sqrt(v.size) if v.size > 1 else float("nan")
    return float(v.mean()), float(half)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:14.3f}" if b and math.isfinite(a) and math.isfinite(b) else f"{'n/a':>14}"


def _wilcoxon(a: list[float], b: list[float]) -> float:
    from scipy.stats import wilcoxon

    pairs = [(x, y) for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)]
    if len(pairs) < 2 or all(x == y for x, y in pairs):
        return float("nan")
    return float(wilcoxon([x for x, _ in pairs], [y for _, y in pairs]).pvalue)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a data set pdeseg reads (MSD/nnU-Net task, BraTS, ...)")
    p.add_argument("--out", required=True, help="work folder (reused on reruns)")
    p.add_argument("--budget", default="10m", help="wall-clock training budget of each tool (e.g. 10m, 2h)")
    p.add_argument("--dataset-id", type=int, default=900, help="nnU-Net dataset id (1-999) for the export")
    p.add_argument("--name", help="nnU-Net dataset name (default: from the folder)")
    p.add_argument("--nnunet-config", default="3d_fullres", help="nnU-Net configuration: 3d_fullres or 2d")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--skip-nnunet", action="store_true")
    p.add_argument("--skip-pdeseg", action="store_true")
    p.add_argument("--pdeseg-config", help="train this config instead of pdeseg's plan (e.g. a shipped one)")
    p.add_argument("--fresh", action="store_true", help="start over in --out")
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args()

    from pdeseg.planning import parse_duration

    budget_s = parse_duration(args.budget)
    data = Path(args.data).resolve()
    out = Path(args.out).resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    name = args.name or re.sub(r"[^A-Za-z0-9]+", "", data.name.split("_", 1)[-1]) or "Data"
    dataset = f"Dataset{args.dataset_id:03d}_{name}"
    raw, pre, res = out / "nnUNet_raw", out / "nnUNet_preprocessed", out / "nnUNet_results"
    nn_env = {"nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre), "nnUNet_results": str(res),
              "nnUNet_compile": "f", "NNUNET_WALLCLOCK_S": str(budget_s), "NNUNET_SKIP_FINAL_VAL": "1",
              "nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", "2"),
              "nnUNet_def_n_proc": os.environ.get("nnUNet_def_n_proc", "1")}
    pdeseg = [sys.executable, "-m", "pdeseg"]
    import torch

    dev_line, cpu_line = machine(torch.device(args.device), torch)
    print(f"machine: {dev_line}; {cpu_line}; torch threads {torch.get_num_threads()}")
    print(f"data {data}; budget {args.budget} ({budget_s:.0f} s) of training for each tool; out {out}")

    # 1. export (pdeseg's split)
    export = raw / dataset
    _step(out, "export", lambda: {"wall_s": _run([*pdeseg, "export-nnunet", "--data", str(data), "--out", str(export),
                                                  "--no-progress", "--overwrite"], out / "export.log")[0]})
    info = json.loads((export / "dataset.json").read_text())
    split = json.loads((export / "pdeseg_split.json").read_text())
    test = list(split["test"])
    class_names = [n for n, _ in sorted(info["labels"].items(), key=lambda kv: kv[1])]
    names_map = info.get("pdeseg", {}).get("cases") or {}
    _log(f"{len(split['train'])} train / {len(split['val'])} val / {len(test)} test cases; classes {class_names}")
    results: dict[str, dict] = {}

    # 2. nnU-Net
    if not args.skip_nnunet:
        bindir = NNUNET_VENV / "bin"
        if not (bindir / "nnUNetv2_train").exists():
            raise SystemExit(f"nnU-Net is not installed in {NNUNET_VENV}: run  bash benchmarks/nnunet/install.sh")

        def plan_pre() -> dict:
            wall, _ = _run([str(bindir / "nnUNetv2_plan_and_preprocess"), "-d", str(args.dataset_id), "-c",
                            args.nnunet_config, "--verify_dataset_integrity", "-np", "2"], out / "nnunet_plan.log", nn_env)
            shutil.copy(export / "splits_final.json", pre / dataset / "splits_final.json")
            return {"wall_s": wall}

        _step(out, "nnunet_preprocess", plan_pre)

        def nn_train() -> dict:
            wall, rss = _run([str(bindir / "nnUNetv2_train"), str(args.dataset_id), args.nnunet_config, "0", "-tr", TRAINER,
                              "-device", args.device], out / "nnunet_train.log", nn_env)
            return {"wall_s": wall, "rss_mib": rss}

        tr = _step(out, "nnunet_train", nn_train)

        def nn_predict() -> dict:
            src = out / "nnunet_test_in"
            shutil.rmtree(src, ignore_errors=True)
            src.mkdir()
            for case in test:
                for f in sorted((export / "imagesTr").glob(f"{case}_[0-9][0-9][0-9][0-9].nii.gz")):
                    os.symlink(f, src / f.name)
            dst = out / "nnunet_pred"
            shutil.rmtree(dst, ignore_errors=True)
            wall, rss = _run([str(bindir / "nnUNetv2_predict"), "-i", str(src), "-o", str(dst), "-d", str(args.dataset_id),
                              "-c", args.nnunet_config, "-f", "0", "-tr", TRAINER, "-chk", "checkpoint_final.pth",
                              "-device", args.device, "-npp", "1", "-nps", "1"], out / "nnunet_predict.log", nn_env)
            return {"wall_s": wall, "rss_mib": rss}

        pr = _step(out, "nnunet_predict", nn_predict)
        plans = json.loads((pre / dataset / "nnUNetPlans.json").read_text())["configurations"][args.nnunet_config]
        wc = next((res / dataset).rglob("wallclock.json"), None)
        results["nnU-Net"] = {
            "train_s": tr["wall_s"], "train_rss_mib": tr["rss_mib"], "predict_s_per_case": pr["wall_s"] / len(test),
            "predict_rss_mib": pr["rss_mib"],
            "what": f"{args.nnunet_config}, patch {'x'.join(map(str, plans['patch_size']))}, batch {plans['batch_size']}, "
                    f"widths {plans.get('architecture', {}).get('arch_kwargs', {}).get('features_per_stage', '?')}",
            "loop": json.loads(wc.read_text()) if wc else {},
            "patches": (json.loads(wc.read_text())["iterations_this_run"] * plans["batch_size"]) if wc else float("nan"),
            "cases": _score(out / "nnunet_pred", "{case}.nii.gz", export / "labelsTr", test, class_names),
        }

    # 3. pdeseg
    if not args.skip_pdeseg:
        runs = out / "pdeseg_runs"

        def pd_plan() -> dict:
            if args.pdeseg_config:
                shutil.copy(args.pdeseg_config, out / "pdeseg_config.yaml")
                return {"wall_s": 0.0, "config": "given"}
            wall, _ = _run([*pdeseg, "plan", "--data", str(data), "--time-budget", str(budget_s), "--device", args.device,
                            "--out", str(out / "pdeseg_config.yaml"), "--no-progress"], out / "pdeseg_plan.log")
            return {"wall_s": wall, "config": "plan"}

        plan_step = _step(out, "pdeseg_plan", pd_plan)

        def pd_train() -> dict:
            wall, rss = _run([*pdeseg, "train", "--config", str(out / "pdeseg_config.yaml"), "--data", str(data), "--out",
                              str(runs), "--no-progress", "--overwrite"], out / "pdeseg_train.log")
            return {"wall_s": wall, "rss_mib": rss}

        tr = _step(out, "pdeseg_train", pd_train)
        ckpt = next(runs.rglob("best.pt"))

        def pd_predict() -> dict:
            src = out / "pdeseg_test_in"
            shutil.rmtree(src, ignore_errors=True)
            src.mkdir()
            inverse = {v: k for k, v in names_map.items()} if names_map else {}
            everything = [p for p in data.rglob("*") if not p.name.startswith(".") and "labels" not in p.parent.name]
            for case in test:  # the case's own folder (BraTS) or image file (MSD), linked into one input folder
                source_id = inverse.get(case, case)
                hits = [p for p in everything if p.name == source_id or p.name.split(".nii")[0] == source_id]
                if not hits:
                    raise SystemExit(f"test case {source_id} not found under {data}")
                os.symlink(hits[0], src / hits[0].name)
            dst = out / "pdeseg_pred"
            shutil.rmtree(dst, ignore_errors=True)
            wall, rss = _run([*pdeseg, "predict", "--checkpoint", str(ckpt), "--input", str(src), "--output", str(dst),
                              "--device", args.device, "--no-progress"], out / "pdeseg_predict.log")
            return {"wall_s": wall, "rss_mib": rss}

        pr = _step(out, "pdeseg_predict", pd_predict)
        import yaml

        cfg = yaml.safe_load((out / "pdeseg_config.yaml").read_text())
        fmt = cfg["data"]["format"]
        pattern = "{case}_seg.nii.gz" if fmt == "brats" else "{case}.nii.gz"
        value_map = {4: 3} if fmt == "brats" else None
        d = cfg["data"]
        history = list(csv.DictReader(open(next(runs.rglob("metrics.csv"))))) if next(runs.rglob("metrics.csv"), None) else []
        n_train = len(split["train"])
        per_epoch = (n_train * d.get("samples_per_case", 1)) if d["mode"] == "patches" else float("nan")
        results["pdeseg"] = {
            "patches": len(history) * per_epoch,
            "train_s": tr["wall_s"], "train_rss_mib": tr["rss_mib"], "predict_s_per_case": pr["wall_s"] / len(test),
            "predict_rss_mib": pr["rss_mib"],
            "what": f"{plan_step['config']}: {d['mode']} {'x'.join(map(str, d.get('spatial_size') or []))}, batch "
                    f"{cfg['train']['batch_size']}, widths {cfg['models'][0]['kwargs'].get('features')}, "
                    f"{cfg['train']['epochs']} epochs",
            "cases": _score(out / "pdeseg_pred", pattern, export / "labelsTr", test, class_names, value_map),
        }

    # 4. the table
    metrics = [f"{m}_{c}" for m in ("dice", "hd95") for c in class_names[1:]]
    tools = list(results)
    print()
    for t in tools:
        print(f"{t}: {results[t]['what']}")
    print()
    header = f"| {'':<22} | " + " | ".join(f"{t:>18}" for t in tools) + (" | pdeseg/nnU-Net | p (Wilcoxon) |" if len(tools) == 2 else " |")
    print(header)
    print("|" + "|".join("-" * (len(c) + 0) for c in header.split("|")[1:-1]) + "|")
    for m in metrics:
        cells, means = [], []
        for t in tools:
            mean, half = _mean_ci([results[t]["cases"][c][m] for c in test])
            means.append(mean)
            cells.append(f"{mean:8.3f} +- {half:5.3f}" if m.startswith("dice") else f"{mean:8.2f} +- {half:5.2f}")
        extra = ""
        if len(tools) == 2:
            a = [results["pdeseg"]["cases"][c][m] for c in test]
            b = [results["nnU-Net"]["cases"][c][m] for c in test]
            extra = f" | {_ratio(means[tools.index('pdeseg')], means[tools.index('nnU-Net')])} | {_wilcoxon(a, b):12.3g} |"
        print(f"| {m + (' (mm)' if m.startswith('hd95') else ''):<22} | " + " | ".join(f"{c:>18}" for c in cells) + (extra or " |"))
    for key, label in (("patches", "patches trained on"), ("train_s", "training wall (s)"), ("predict_s_per_case", "inference s / case"),
                       ("train_rss_mib", "train peak RSS (MiB)"), ("predict_rss_mib", "predict peak RSS (MiB)")):
        vals = [results[t][key] for t in tools]
        ratio = f" | {_ratio(vals[tools.index('pdeseg')], vals[tools.index('nnU-Net')])} |              |" if len(tools) == 2 else " |"
        print(f"| {label:<22} | " + " | ".join(f"{v:18.1f}" for v in vals) + ratio)
    print(f"\n{len(test)} test cases (never seen in training by either tool); +- is a 95% normal interval of the mean "
          "over cases; HD95 = 373.13 mm where a class is empty in exactly one of truth and prediction.")
    if args.json:
        Path(args.json).write_text(json.dumps({"budget_s": budget_s, "results": results}, indent=1))
    with open(out / "per_case.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["tool", "case", *metrics])
        for t in tools:
            for c in test:
                w.writerow([t, c, *(results[t]["cases"][c][m] for m in metrics)])
    _log(f"per-case scores: {out / 'per_case.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
