"""PyTorch vs ONNX Runtime for whole-case prediction on this CPU (issue 24).

The same :class:`pdeseg.inference.predict.Predictor` segments a case twice per repeat, once
with the PyTorch network and once with its ONNX export (:mod:`pdeseg.inference.export`) run by
ONNX Runtime, alternating, on the same normalised image and with the same thread count:

* a BraTS volume (240 x 240 x 155, 4 channels; the shared BraTS 2018 case when present, else a
  phantom of that size) with the 2D paper UNet (``unet``), slice by slice in batches of 16;
* a Hippocampus case (the shared MSD Task04 case when present, else a phantom of its size)
  with ``unet3d`` and ``pde3d_unet``, sliding windows of 40 x 56 x 40 (overlap 0.5).

Random weights: only the time matters, and the architectures are the shipped ones; the 2D
UNet runs at widths 16..256 by default (``--unet-width 64`` for the paper's 64..1024, about
16x the work). Precision is fp32 in both backends (ONNX Runtime's CPU provider has no bf16
autocast). The logits of the two backends are compared too (max abs difference).

    python benchmarks/bench_onnx.py [--repeats 3] [--threads N] [--unet-width 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_info, CPU_FLAGS  # noqa: E402

SHARED = Path(os.environ.get("PDESEG_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _brats_image():
    import nibabel as nib
    import numpy as np

    case = SHARED / "brats2018" / "Brats18_2013_11_1"
    if case.is_dir():
        vols = [np.asanyarray(nib.load(case / f"{case.name}_{m}.nii.gz").dataobj).astype(np.float32)
                for m in ("flair", "t1", "t1ce", "t2")]
        return np.stack(vols), f"BraTS 2018 {case.name}"
    rng = np.random.default_rng(0)
    return rng.normal(size=(4, 240, 240, 155)).astype(np.float32), "phantom 240x240x155"


def _hippocampus_image():
    import nibabel as nib
    import numpy as np

    path = SHARED / "msd_hippocampus" / "Task04_Hippocampus" / "imagesTr" / "hippocampus_001.nii.gz"
    if path.is_file():
        return np.asanyarray(nib.load(path).dataobj).astype(np.float32)[None], "MSD Task04 hippocampus_001"
    rng = np.random.default_rng(0)
    return rng.normal(size=(1, 35, 51, 35)).astype(np.float32), "phantom 35x51x35"


def _zscore(image):
    out = image.copy()
    for c in range(out.shape[0]):
        mask = out[c] != 0
        sel = out[c][mask] if mask.any() else out[c]
        out[c] = (out[c] - sel.mean()) / (sel.std() + 1e-8)
    return out


def _predictors(name, dims, in_ch, classes, spec_kwargs, features):
    import torch

    from pdeseg.config import TaskSpec
    from pdeseg.inference.export import OnnxRuntimeModel, export_model, onnx_session
    from pdeseg.inference.options import InferenceOptions
    from pdeseg.inference.predict import Predictor
    from pdeseg.nn.models import build_model

    torch.manual_seed(0)
    model = build_model(name, spatial_dims=dims, in_channels=in_ch, out_channels=classes, features=features).eval()
    spec = TaskSpec(format="brats", modalities=[f"c{i}" for i in range(in_ch)], normalization="zscore", spatial_dims=dims,
                    num_classes=classes, class_names=[f"k{i}" for i in range(classes)], **spec_kwargs)
    options = InferenceOptions(device="cpu", precision="32", batch_size=16, overlap=0.5, postprocess=False)
    t = time.perf_counter()
    graph, check = export_model(model, "onnx", in_ch, dims, spec.spatial_size)
    export_s = time.perf_counter() - t
    if dims == 2:
        model = model.to(memory_format=torch.channels_last)
    ort_model = OnnxRuntimeModel(onnx_session(graph, threads=torch.get_num_threads()))
    return (Predictor(model, spec, torch.device("cpu"), options, name),
            Predictor(ort_model, spec, torch.device("cpu"), options, f"{name} (onnxruntime)"), export_s, check)


def _time(predictor, image, repeats):

    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = predictor.predict_logits(image)
        times.append(time.perf_counter() - t)
    return times, out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads (default: torch's)")
    p.add_argument("--unet-width", type=int, default=16, help="first-level width of the 2D UNet (paper: 64)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()

    import onnxruntime as ort
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cpu, flags = cpu_info()
    print(f"machine: {cpu}; flags: {' '.join(f for f in CPU_FLAGS if f in flags) or 'none of ' + ', '.join(CPU_FLAGS)}; "
          f"cpu count {os.cpu_count()}; threads {torch.get_num_threads()} (torch and onnxruntime)")
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, fp32, {args.repeats} alternating repeats, median\n")
    w = args.unet_width
    brats, brats_name = _brats_image()
    hippo, hippo_name = _hippocampus_image()
    cases = [
        ("BraTS volume", brats_name, "unet", 2, 4, 4, dict(mode="slices", spatial_size=None),
         [w, 2 * w, 4 * w, 8 * w, 16 * w], _zscore(brats)),
        ("Hippocampus case", hippo_name, "unet3d", 3, 1, 3, dict(mode="patches", spatial_size=[40, 56, 40]),
         [32, 64, 128, 256, 320][:5], _zscore(hippo)),
        ("Hippocampus case", hippo_name, "pde3d_unet", 3, 1, 3, dict(mode="patches", spatial_size=[40, 56, 40]),
         [32, 64, 128, 256, 320][:5], _zscore(hippo)),
    ]
    rows = []
    for what, source, name, dims, in_ch, classes, spec_kwargs, features, image in cases:
        torch_pred, ort_pred, export_s, check = _predictors(name, dims, in_ch, classes, spec_kwargs, features)
        torch_pred.predict_logits(image[..., : min(image.shape[-1], 16)] if dims == 2 else image)  # warm-up
        ort_pred.predict_logits(image[..., : min(image.shape[-1], 16)] if dims == 2 else image)
        t_torch, t_ort = [], []
        for _ in range(args.repeats):
            a, out_t = _time(torch_pred, image, 1)
            b, out_o = _time(ort_pred, image, 1)
            t_torch += a
            t_ort += b
        diff = float((out_t - out_o).abs().max())
        row = {"case": what, "source": source, "model": name, "features": features, "shape": list(image.shape),
               "torch_s": statistics.median(t_torch), "onnxruntime_s": statistics.median(t_ort),
               "torch_all": t_torch, "onnxruntime_all": t_ort, "export_s": export_s, "max_abs_logit_diff": diff}
        row["ratio"] = row["torch_s"] / row["onnxruntime_s"]
        rows.append(row)
    print(f"| {'case':<17}| {'model':<11}| {'widths':<22}| {'torch s':>8} | {'onnxruntime s':>13} | {'torch / ort':>11} | "
          f"{'max |dlogit|':>12} |")
    print(f"|{'-' * 18}|{'-' * 12}|{'-' * 23}|{'-' * 10}|{'-' * 15}|{'-' * 13}|{'-' * 14}|")
    for r in rows:
        print(f"| {r['case']:<17}| {r['model']:<11}| {','.join(map(str, r['features'])):<22}| {r['torch_s']:>8.2f} | "
              f"{r['onnxruntime_s']:>13.2f} | {r['ratio']:>10.2f}x | {r['max_abs_logit_diff']:>12.2e} |")
    print("\ntorch / ort > 1: ONNX Runtime is faster. Sources: " + "; ".join(sorted({f"{r['case']}: {r['source']}" for r in rows})))
    load = os.getloadavg()
    print(f"load average at end {load[0]:.1f} (1 min), {load[1]:.1f} (5 min) on {os.cpu_count()} CPUs"
          + (" -- other processes shared the CPUs; compare only the ratios" if load[1] > (os.cpu_count() or 1) - 0.5 else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
