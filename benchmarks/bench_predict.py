#!/usr/bin/env python
"""Seconds per case of ``pdeseg predict``, split into read / preprocess / forward /
post-process / write, for the prediction path before and after issue 36 (the non-zero crop and
the ONNX Runtime backend), and optionally compiled.

Rows (each a shipped config's model with random weights: the speed does not depend on the
weights, and empty slices and the non-zero box are found from the data):

* ``brats 2D``: ``configs/pde_unet_brats_realistic.yaml``'s first model (slices, its
  post-processing) on real BraTS volumes (240 x 240 x 155, four gzipped NIfTI files each);
* ``brats 3D``: ``configs/unet3d_brats.yaml`` (3D UNet, sliding windows) on the same volumes
  (``--cases-3d``, default 1: minutes per case on a 2-core CPU);
* ``hippocampus``: ``configs/unet3d_hippocampus.yaml`` on MSD Hippocampus cases;
* ``microscopy``: ``configs/cells_dsb_unseen_domain.yaml`` (2D UNet, tiled windows) on a
  1024 x 1024 image made of real DSB 2018 nuclei images side by side.

Paths, per row (``--paths``; every path skips empty slices / windows and reads the next case
ahead, as since issue 26):

* ``before``: the path before issue 36: PyTorch at ``--precision`` (auto: bf16 autocast where
  the CPU has bf16 instructions), the whole case (``--no-crop``);
* ``crop``: PyTorch, the case cropped to its non-zero box (``--crop``) and pasted back;
* ``onnxruntime``: ONNX Runtime fp32, the whole case;
* ``after``: ``predict``'s defaults after issue 36 (BraTS models cropped at inference; ``--backend auto``:
  PyTorch bf16 on CPUs with bf16 instructions, else ONNX Runtime);
* ``compiled`` (``--compile``): PyTorch through ``torch.compile`` with the crop (its compile
  time reported apart: it is paid once per process and input shape).

The per-phase split is measured case by case without read-ahead (so that read time is
visible); the ``end to end`` column is the whole folder through ``predict_folder`` (per
case, model loading and the ONNX export included), which is where read-ahead shows. Ratios
are against ``before``, measured in the same run.

Usage (data: ``$PDESEG_SHARED_DATA`` or ``../shared/data``)::

    python benchmarks/bench_predict.py                    # brats 2D, hippocampus, microscopy; 2 BraTS cases
    python benchmarks/bench_predict.py --rows brats2d --cases 4 --paths before after
    python benchmarks/bench_predict.py --rows all --json predict.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "brats2d": ("configs/pde_unet_brats_realistic.yaml", "brats2018", "BraTS volume, 2D PDE-UNet (slices)"),
    "brats3d": ("configs/unet3d_brats.yaml", "brats2018", "BraTS volume, 3D UNet (sliding windows)"),
    "hippocampus": ("configs/unet3d_hippocampus.yaml", "msd_hippocampus/Task04_Hippocampus", "Hippocampus case, 3D UNet"),
    "microscopy": ("configs/cells_dsb_unseen_domain.yaml", None, "1024x1024 microscopy image, 2D UNet (tiled)"),
}
DEFAULT_ROWS = ["brats2d", "hippocampus", "microscopy"]


def shared_data() -> Path:
    return Path(os.environ.get("PDESEG_SHARED_DATA", ROOT.parent / "shared" / "data"))


def machine_line() -> str:
    import platform

    import torch

    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        have = set(next(line for line in text.splitlines() if line.startswith("flags")).split(":")[1].split())
        flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in have)
        model = next(line for line in text.splitlines() if line.startswith("model name")).split(":")[1].strip()
    except (OSError, StopIteration):
        model = platform.processor()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{model}; flags: {flags}; {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; {gpu}; "
            f"torch {torch.__version__}; load average {os.getloadavg()[0]:.1f}")


def microscopy_folder(out: Path, size: int = 1024) -> Path:
    """A cell-folder data set of one ``size`` x ``size`` grey image tiled from real DSB 2018
    fluorescence images (and its mask, so that the folder reads as labelled)."""
    from PIL import Image

    from pdeseg.data.readers.dsb import find_dsb_cases

    cases = find_dsb_cases(shared_data() / "dsb2018", ("grey",), require_label=False)
    canvas = np.zeros((size, size), np.uint8)
    y = x = row_h = 0
    for case in cases:
        img = np.asarray(case.load(("grey",), with_label=False).image[0, ..., 0])
        img = (255 * (img - img.min()) / max(float(np.ptp(img)), 1e-6)).astype(np.uint8)
        h, w = min(img.shape[0], size - y), min(img.shape[1], size - x)
        if w < 32:
            y, x, row_h = y + row_h, 0, 0
            continue
        if h < 32:
            break
        canvas[y:y + h, x:x + w] = img[:h, :w]
        x, row_h = x + w, max(row_h, h)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    Image.fromarray(canvas).save(out / "images" / "mosaic.png")
    Image.fromarray(((canvas > 128) * 255).astype(np.uint8)).save(out / "masks" / "mosaic.png")
    return out


def row_setup(name: str, work: Path, n_cases: int):
    """``(checkpoint, input folder, description)`` of one row: a random-weight checkpoint of the
    config's first model and a folder of its first ``n_cases`` cases (linked, not copied)."""
    import torch

    from pdeseg.build import build_network, checkpoint_meta, resolve
    from pdeseg.checkpoint import plain_state_dict, save_checkpoint
    from pdeseg.config import load_config

    config, data, what = CONFIGS[name]
    cfg = load_config(ROOT / config)
    if name == "microscopy":
        root = microscopy_folder(work / "cells")
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={
            "root": str(root), "format": "cell_folder", "split": cfg.data.split.model_copy(
                update={"domains": None})})})
    else:
        source = shared_data() / data
        if not source.is_dir():
            raise SystemExit(f"{source}: the shared data this row needs are not here")
        root = work / name
        root.mkdir()
        if name == "hippocampus":
            for sub in ("imagesTr", "labelsTr"):
                (root / sub).mkdir()
            shutil.copy(source / "dataset.json", root / "dataset.json")
            for f in sorted((source / "imagesTr").glob("*.nii.gz"))[:n_cases]:
                (root / "imagesTr" / f.name).symlink_to(f)
                (root / "labelsTr" / f.name).symlink_to(source / "labelsTr" / f.name)
        else:
            for case in sorted(p for p in source.iterdir() if p.is_dir())[:n_cases]:
                (root / case.name).symlink_to(case)
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": str(root)})})
    exp = resolve(cfg)
    model_cfg = exp.cfg.models[0]
    torch.manual_seed(0)
    net = build_network(exp, model_cfg)
    ckpt = work / f"{name}.pt"
    save_checkpoint({**checkpoint_meta(exp, model_cfg, net), "state_dict": plain_state_dict(net)}, ckpt)
    return ckpt, root, f"{what} ({model_cfg.name})"


def phases(ckpt: Path, root: Path, out: Path, options) -> tuple[dict[str, float], int, float | None]:
    """Seconds per case of each phase (case by case, no read-ahead, after one untimed warm-up
    forward of the first case), the cases, and the compile time (the warm-up's, with
    ``options.compile``)."""
    import torch.nn.functional as F

    from pdeseg.inference.predict import Predictor
    from pdeseg.nn.output import predicted_classes

    predictor = Predictor.from_checkpoint(ckpt, options)
    fmt = predictor.format
    cases = fmt.find_cases(root, predictor.modalities, require_label=False)
    totals = dict.fromkeys(("read", "preprocess", "forward", "postprocess", "write"), 0.0)
    predictor.predict_logits(predictor.read(cases[0])[1])  # warm-up (and, with compile, the compilation)
    compile_s = predictor.compile_seconds
    for i, case in enumerate(cases):
        t0 = time.perf_counter()
        loaded = case.load(predictor.modalities, with_label=False)
        t1 = time.perf_counter()
        image = predictor.preprocess(loaded)
        box = predictor.crop_box(loaded, image)
        t2 = time.perf_counter()
        logits = predictor.predict_logits(image)[None]
        t3 = time.perf_counter()  # with compile, a new input shape compiles again: counted here
        full = tuple(loaded.image.shape[1:])
        shape = tuple(b - a for a, b in box) if box is not None else full
        if tuple(logits.shape[2:]) != shape:
            logits = F.interpolate(logits, size=shape, mode="trilinear" if len(shape) == 3 else "bilinear", align_corners=False)
        classes = predictor.finish(predicted_classes(logits, predictor.head)[0].numpy().astype(np.uint8))
        if box is not None:  # as Predictor.segment: post-processed on the box, pasted back
            classes, _ = predictor._paste(box, full, classes, None)
        t4 = time.perf_counter()
        fmt.write_prediction(classes, loaded, out / f"phases_{i}")
        t5 = time.perf_counter()
        for key, dt in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            totals[key] += dt
        del logits, image
    return {k: v / len(cases) for k, v in totals.items()}, len(cases), compile_s


def end_to_end(ckpt: Path, root: Path, out: Path, options) -> float:
    """Seconds per case of the whole folder through ``predict_folder`` (read-ahead; model
    loading and, for ONNX Runtime, the export and its check included)."""
    from pdeseg.inference.folder import predict_folder

    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    report = predict_folder(ckpt, root, out, options, progress=False)
    seconds = time.perf_counter() - t0
    return seconds / max(len(report.written), 1)


def path_options(precision: str) -> dict:
    """The options of each path (see the module docstring)."""
    from pdeseg.inference.options import InferenceOptions

    return {"before": InferenceOptions(precision=precision, backend="torch", crop=False),
            "crop": InferenceOptions(precision=precision, backend="torch", crop=True),
            "onnxruntime": InferenceOptions(backend="onnxruntime", crop=False),
            "after": InferenceOptions(),  # predict's defaults (BraTS: cropped, --backend auto)
            "compiled": InferenceOptions(precision=precision, backend="torch", compile=True, crop=True)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="+", default=DEFAULT_ROWS, choices=list(CONFIGS) + ["all"])
    p.add_argument("--cases", type=int, default=2, help="cases per volume row (default 2)")
    p.add_argument("--cases-3d", type=int, default=1, help="cases of the brats3d row (default 1)")
    p.add_argument("--paths", nargs="+", default=["before", "crop", "onnxruntime", "after"],
                   choices=["before", "crop", "onnxruntime", "after", "compiled"])
    p.add_argument("--compile", action="store_true", help="also the compiled path (torch.compile; minutes of compiling)")
    p.add_argument("--no-phases", action="store_true", help="end to end only (not the case-by-case phases)")
    p.add_argument("--precision", default="auto")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    rows = list(CONFIGS) if "all" in args.rows else args.rows
    paths = list(dict.fromkeys(args.paths + (["compiled"] if args.compile else [])))
    if "before" not in paths:
        paths.insert(0, "before")

    import torch

    print(machine_line(), flush=True)
    results = []
    options = path_options(args.precision)
    with tempfile.TemporaryDirectory(prefix="pdeseg-bench-predict-") as tmp:
        work = Path(tmp)
        for name in rows:
            ckpt, root, what = row_setup(name, work, args.cases_3d if name == "brats3d" else args.cases)
            for label in paths:
                torch.manual_seed(0)
                load0 = os.getloadavg()[0]
                if args.no_phases:
                    split, n, compile_s = dict.fromkeys(("read", "preprocess", "forward", "postprocess", "write"),
                                                        float("nan")), 0, None
                else:
                    split, n, compile_s = phases(ckpt, root, work / f"out_{name}", options[label])
                total = end_to_end(ckpt, root, work / f"e2e_{name}", options[label])
                load = max(load0, os.getloadavg()[0])
                results.append({"row": name, "what": what, "path": label, "cases": n, **split,
                                "sum": sum(split.values()), "end_to_end": total, "compile_s": compile_s, "load": load})
                print(f"  {name} / {label}: {total:.2f} s per case end to end (load average {load:.1f})", flush=True)
    print()
    print("| row | path | read | preprocess | forward | post-process | write | sum of phases | end to end (s/case) "
          "| before / this | compile (s, once) | load average |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        compiled = "-" if r["compile_s"] is None else f"{r['compile_s']:.0f}"
        base = next(b for b in results if b["row"] == r["row"] and b["path"] == "before")
        print(f"| {r['what']} | {r['path']} | {r['read']:.2f} | {r['preprocess']:.2f} | {r['forward']:.2f} | "
              f"{r['postprocess']:.2f} | {r['write']:.2f} | {r['sum']:.2f} | {r['end_to_end']:.2f} | "
              f"{base['end_to_end'] / r['end_to_end']:.2f}x | {compiled} | {r['load']:.1f} |")
    counts = ", ".join(f"{row}: {n}" for row, n in {x["row"]: x["cases"] for x in results}.items())
    print(f"\nphases: seconds per case, case by case without read-ahead ({counts} cases); "
          "end to end: predict_folder over the folder, model loading and the first forward included")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine_line(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
