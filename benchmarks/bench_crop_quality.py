#!/usr/bin/env python
"""Held-out quality and speed of the non-zero crop and of each backend / precision (issue 36).

Every variant segments the same held-out cases as ``pdeseg predict`` does (the case read from
its files, preprocessed by the checkpoint's spec, segmented, pasted back on the input's grid,
post-processed) and is scored there against the case's own label file: per-case Dice and
HD95 (mm, MONAI's definition: the larger of the two directed 95th percentiles; the data
format's empty-mask rule). Variants (``--variants``; the first is the reference of the paired
table):

* ``nocrop``: the model trained without the crop (``--nocrop``), PyTorch fp32, no crop;
* ``nocrop-crop``: that model cropped at inference only (``InferenceOptions(crop=True)``);
* ``crop``: the model trained with the crop (``--crop``), PyTorch fp32, cropped as trained;
* ``crop-off``: that model on the whole case (``--no-crop``);
* ``crop-m8``: that model cropped with an 8-voxel margin;
* ``bf16``: PyTorch with bf16 autocast;
* ``ort``: ONNX Runtime fp32 (the verified export);
* ``ort-int8-dyn``: ONNX Runtime, weights and activations int8 by dynamic quantisation
  (``onnxruntime.quantization.quantize_dynamic``, ConvInteger);
* ``ort-int8-static``: ONNX Runtime, static QDQ quantisation (per-channel int8 weights, uint8
  activations) calibrated on ``--calibration`` slices / windows of the training cases.

Seconds per case (segmentation only, the read excluded) are printed with the load average.

    python benchmarks/bench_crop_quality.py --crop runs/q/crop/unet/best.pt --nocrop runs/q/nocrop/unet/best.pt \\
        --data ../shared/data/brats2018 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

ALL = ["nocrop", "nocrop-crop", "crop", "crop-off", "crop-m8", "bf16", "ort", "ort-int8-dyn", "ort-int8-static"]


def _onnx_graph(predictor) -> bytes:
    from pdeseg.inference.export import export_model

    spec = predictor.spec
    graph, _ = export_model(predictor.model, "onnx", len(spec.modalities) * (2 * spec.context_slices + 1),
                            spec.spatial_dims, spec.spatial_size)
    return graph


def _calibration_inputs(predictor, cases, n: int) -> list[np.ndarray]:
    """``n`` network inputs of the training cases, cut as prediction cuts them (non-empty
    axial slices, or windows of the patch size at random non-empty places)."""
    rng = np.random.default_rng(0)
    out = []
    per_case = max(1, math.ceil(n / len(cases)))
    for case in cases:
        loaded = case.load(predictor.modalities, with_label=False)
        image = predictor.preprocess(loaded)
        if predictor.spec.mode == "slices":
            filled = np.flatnonzero(image.reshape(image.shape[0], -1, image.shape[-1]).any(axis=(0, 1)))
            for z in rng.choice(filled, size=min(per_case, len(filled)), replace=False):
                out.append(np.ascontiguousarray(image[None, ..., z], np.float32))
        else:
            size = predictor.spec.spatial_size
            for _ in range(per_case):
                start = [int(rng.integers(0, max(1, s - p + 1))) for s, p in zip(image.shape[1:], size)]
                cut = tuple(slice(a, a + p) for a, p in zip(start, size))
                out.append(np.ascontiguousarray(image[(slice(None), *cut)][None], np.float32))
        if len(out) >= n:
            break
    return out[:n]


def _quantised(predictor, kind: str, calibration: list[np.ndarray], work: Path):
    """An ONNX Runtime model of ``predictor``'s network quantised to int8 (``dyn`` or ``static``)."""
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from pdeseg.inference.export import OnnxRuntimeModel, onnx_session

    raw, pre, out = work / "model.onnx", work / "pre.onnx", work / f"{kind}.onnx"
    raw.write_bytes(_onnx_graph(predictor))
    try:
        quant_pre_process(str(raw), str(pre), skip_symbolic_shape=True)
    except Exception as exc:  # noqa: BLE001  (the optimisation pass is optional)
        print(f"  quant_pre_process failed ({type(exc).__name__}: {exc}); quantising the raw graph", flush=True)
        pre = raw
    if kind == "dyn":
        quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8)
    else:
        class Reader(CalibrationDataReader):
            def __init__(self):
                self.items = iter(calibration)

            def get_next(self):
                x = next(self.items, None)
                return None if x is None else {"image": x}

        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return OnnxRuntimeModel(onnx_session(out, threads=torch.get_num_threads()))


def _predictor(variant: str, crop_ckpt: Path, nocrop_ckpt: Path | None, calibration_cases, work: Path):
    from dataclasses import replace

    from pdeseg.inference.options import InferenceOptions
    from pdeseg.inference.predict import Predictor

    fp32 = InferenceOptions(device="cpu", precision="32", backend="torch")
    if variant == "nocrop":
        return Predictor.from_checkpoint(nocrop_ckpt, fp32)
    if variant == "nocrop-crop":
        return Predictor.from_checkpoint(nocrop_ckpt, fp32.replace(crop=True))
    if variant == "crop":
        return Predictor.from_checkpoint(crop_ckpt, fp32)
    if variant == "crop-off":
        return Predictor.from_checkpoint(crop_ckpt, fp32.replace(crop=False))
    if variant == "crop-m8":
        p = Predictor.from_checkpoint(crop_ckpt, fp32)
        p.preprocessing = replace(p.preprocessing, crop_margin=8)
        return p
    if variant == "bf16":
        return Predictor.from_checkpoint(crop_ckpt, fp32.replace(precision="bf16-mixed"))
    if variant == "ort":
        return Predictor.from_checkpoint(crop_ckpt, fp32.replace(backend="onnxruntime"))
    if variant.startswith("ort-int8"):
        p = Predictor.from_checkpoint(crop_ckpt, fp32)
        calibration = _calibration_inputs(p, calibration_cases, 32) if variant.endswith("static") else []
        p.model = p.network = _quantised(p, "static" if variant.endswith("static") else "dyn", calibration, work)
        p.channels_last = False
        return p
    raise SystemExit(f"unknown variant {variant}")


def _metrics(row: dict) -> dict[str, float]:
    return {k: v for k, v in row.items() if k.startswith(("dice_", "hd95_")) and "background" not in k
            and not k.startswith("dice_class0")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--crop", type=Path, required=True, help="checkpoint trained with data.crop_nonzero")
    p.add_argument("--nocrop", type=Path, help="checkpoint trained without it (same config and budget)")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--split", default="test", help="which side of the crop run's split.json to score (default test)")
    p.add_argument("--variants", nargs="+", default=ALL, choices=ALL)
    p.add_argument("--regions", nargs="*", help="metric names to tabulate (default: every region, else class)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    import torch

    from _common import CPU_FLAGS, cpu_info
    from pdeseg.data.formats import get_format
    from pdeseg.inference.predict import Predictor
    from pdeseg.inference.score import scoring_rules

    split = json.loads((args.crop.parent / "split.json").read_text())
    base = Predictor.from_checkpoint(args.crop)
    fmt = get_format(base.spec.format)
    by_id = {c.case_id: c for c in fmt.find_cases(args.data, base.modalities, True)}
    cases = [by_id[i] for i in split[args.split]]
    calibration_cases = [by_id[i] for i in split["train"][:8]]
    rules = scoring_rules(base.spec)
    name, flags = cpu_info()
    machine = f"{name}; flags: {' '.join(f for f in CPU_FLAGS if f in flags)}; torch threads {torch.get_num_threads()}"
    print(machine, flush=True)
    print(f"{len(cases)} {args.split} cases of {args.data}: {', '.join(c.case_id for c in cases)}", flush=True)
    loaded = [c.load(base.modalities) for c in cases]
    rows, speed = [], {}
    with tempfile.TemporaryDirectory(prefix="pdeseg-crop-quality-") as tmp:
        for variant in args.variants:
            if variant.startswith("nocrop") and args.nocrop is None:
                continue
            try:
                predictor = _predictor(variant, args.crop, args.nocrop, calibration_cases, Path(tmp))
            except Exception as exc:  # noqa: BLE001  (a quantiser that fails is a finding, not a crash)
                print(f"{variant}: not measured ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})", flush=True)
                continue
            seconds = []
            predictor.predict_logits(predictor.preprocess(loaded[0])[..., :2] if predictor.spec.mode == "slices"
                                     else predictor.preprocess(loaded[0]))  # warm-up
            for case, lc in zip(cases, loaded):
                image = predictor.preprocess(lc)
                t0 = time.perf_counter()
                seg = predictor.segment(lc, image)
                seconds.append(time.perf_counter() - t0)
                metrics = rules.case_metrics(seg.classes, lc.label, lc.spacing, with_hd95=True)
                rows.append({"variant": variant, "case": case.case_id, "seconds": seconds[-1], **_metrics(metrics)})
            speed[variant] = (float(np.mean(seconds)), os.getloadavg()[0])
            print(f"{variant}: {speed[variant][0]:.2f} s per case (segment only), load {speed[variant][1]:.1f}; "
                  + ", ".join(f"{k} {np.mean([r[k] for r in rows if r['variant'] == variant]):.3f}"
                              for k in rows[-1] if k.startswith(("dice_", "hd95_"))), flush=True)
    keys = args.regions or [k for k in rows[0] if k.startswith("dice_")] + [k for k in rows[0] if k.startswith("hd95_")]
    keys = [k for k in keys if k in rows[0]]
    ref = rows[0]["variant"]
    print(f"\nper case ({ref} is the reference of the differences)\n")
    print("| variant | case | " + " | ".join(keys) + " | s |")
    print("|---|---|" + "---:|" * (len(keys) + 1))
    for r in rows:
        print(f"| {r['variant']} | {r['case']} | " + " | ".join(f"{r[k]:.3f}" if "dice" in k else f"{r[k]:.1f}" for k in keys)
              + f" | {r['seconds']:.2f} |")
    print(f"\npaired against {ref}: mean of the differences, and the largest per-case change (|x - {ref}|, its case)\n")
    print("| variant | s/case | load | " + " | ".join(f"{k} mean diff | {k} largest" for k in keys) + " |")
    print("|---|---:|---:|" + "---:|---:|" * len(keys))
    refs = {r["case"]: r for r in rows if r["variant"] == ref}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        cells = []
        for k in keys:
            d = [r[k] - refs[r["case"]][k] for r in mine]
            i = int(np.argmax(np.abs(d)))
            fmt_ = "{:+.3f}" if "dice" in k else "{:+.1f}"
            cells.append(f"{fmt_.format(np.mean(d))} | {fmt_.format(d[i])} ({mine[i]['case']})")
        print(f"| {variant} | {speed[variant][0]:.2f} | {speed[variant][1]:.1f} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rows": rows, "speed": speed}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
