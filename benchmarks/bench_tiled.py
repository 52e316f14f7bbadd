"""Images larger than memory: whole-image against tiled (1 process) against Dask (LocalCluster)
prediction of DSB-nuclei mosaics, with peak memory, and the checks that go with them.

Mosaics of real DSB 2018 fluorescence tiles (``pdeseg.data.phantoms.mosaic``) are written as
OME-TIFF, one tile at a time. Each measurement runs in its own process, so that its peak RSS
(``ru_maxrss``) is its own; Dask's peak is the client's plus every worker's.

1. ``--size`` (default 2048) mosaic, small enough to segment whole: megapixels per second and
   peak memory of whole-image, tiled and Dask prediction, ratios against whole-image; cells
   that differ from whole-image prediction, how far from a seam (exactly equal, best IoU,
   within ``--margin`` px of a seam or not).
2. ``--big`` (default 16384) mosaic: tiled (1 process) and Dask, peak memory against the
   stated bound (``--bound-mib``) and the image's size, ids unique, and Dask's labels equal to
   the single process's (compared chunk by chunk, never whole in memory).

Run (a trained 2D cell checkpoint, e.g. ``pdeseg train --config configs/cells_dsb_unseen_domain.yaml``):

    python benchmarks/bench_tiled.py --checkpoint runs/dsb/unet/best.pt --data ../shared/data/dsb2018
    python benchmarks/bench_tiled.py --checkpoint ... --data ... --big 0        # only the small table
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _common import cpu_info  # noqa: E402  (benchmarks/ is sys.path[0])

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ----------------------------------------------------------------------------- children


def child(args: argparse.Namespace) -> dict:
    import torch

    from pdeseg.data.readers.ome import open_ome
    from pdeseg.inference.options import InferenceOptions
    from pdeseg.inference.tiling import OmeSource, predict_tiled

    options = InferenceOptions(device="cpu", precision=args.precision, postprocess=False)
    ome = open_ome(args.mosaic)
    h, w = ome.levels[0].shape
    out: dict = {"mode": args.child, "pixels": h * w, "threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    if args.child == "whole":
        from pdeseg.data.pipeline.label_geometry import predicted_instances
        from pdeseg.data.pipeline.preprocess import Preprocessing
        from pdeseg.inference.predict import Predictor
        from pdeseg.nn.output import predicted_classes

        p = Predictor.from_checkpoint(args.checkpoint, options.replace(**_no_skip(options)))
        t0 = time.perf_counter()
        image = ome.read(0, [(0,)])
        norm, _, _ = Preprocessing.of(p.spec).apply(image[..., None], (1.0, 1.0, 1.0))
        logits = p.predict_logits(norm.astype(np.float16).astype(np.float32))
        classes = predicted_classes(logits[None], p.head)[0, ..., 0].numpy().astype(np.uint8)
        del logits
        labels = predicted_instances(classes)
        out["objects"] = int(labels.max())
        np.save(args.labels, labels)
    else:
        source = OmeSource(str(args.mosaic), 0, ((0,),), (h, w), str(ome.dtype))
        kw = dict(options=options, tile=args.tile, halo=args.halo, progress=False,
                  scratch_dir=Path(args.labels).parent)
        if args.child == "dask":
            kw["dask_workers"] = args.workers
        result = predict_tiled(args.checkpoint, source, **kw)
        out["objects"] = result.objects
        out["runner"] = result.runner
        out["worker_rss_mib"] = getattr(result, "worker_peaks", [])
        _export(result, args.labels)
        result.cleanup()
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_mib"] = _maxrss_mib()
    return out


def _no_skip(options) -> dict:
    return {"skip_empty": False} if "skip_empty" in options.describe() else {}


def _export(result, path: str) -> None:
    """The labels as .npy (small) or a Zarr copy (large), chunk by chunk."""
    import zarr

    labels = result.labels
    if labels.shape[0] * labels.shape[1] <= 64 * 2**20:
        np.save(path, labels[:])
        return
    dst = zarr.create_array(store=path, shape=labels.shape, chunks=labels.chunks, dtype=labels.dtype, fill_value=0)
    cy, cx = labels.chunks
    for y in range(0, labels.shape[0], cy):  # one chunk at a time, as the OME writers do
        for x in range(0, labels.shape[1], cx):
            dst[y: y + cy, x: x + cx] = labels[y: y + cy, x: x + cx]


def run_child(mode: str, args: argparse.Namespace, mosaic: Path, labels: Path, env_threads: int | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--mosaic", str(mosaic), "--labels", str(labels), "--checkpoint",
           str(args.checkpoint), "--tile", str(args.tile), "--halo", str(args.halo), "--workers", str(args.workers),
           "--precision", args.precision]
    env = dict(os.environ)
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{run.stderr[-4000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- comparisons


def _differences(whole: np.ndarray, tiled: np.ndarray, grid, margin: int) -> dict:
    from scipy import ndimage as ndi

    pairs, counts = np.unique(np.stack([whole.ravel(), tiled.ravel()]), axis=1, return_counts=True)
    aw, at = np.bincount(whole.ravel()), np.bincount(tiled.ravel(), minlength=1)
    exact, best = set(), {}
    for (u, v), c in zip(pairs.T, counts):
        if u and v:
            if c == aw[u] == at[v]:
                exact.add(int(u))
            best[int(u)] = max(best.get(int(u), 0.0), c / (aw[u] + at[v] - c))
    hy, by, hx, bx = grid.canvas
    seams = (np.arange(grid.tile - by, grid.height, grid.tile), np.arange(grid.tile - bx, grid.width, grid.tile))
    near = far = lost = 0
    far_iou = []
    for u, sl in enumerate(ndi.find_objects(whole), start=1):
        if sl is None or u in exact:
            continue
        d = min((np.abs(np.arange(s.start, s.stop)[:, None] - z[None]).min() for s, z in zip(sl, seams) if len(z)),
                default=10**9)
        if best.get(u, 0.0) < 0.5:
            lost += 1
        if d <= margin:
            near += 1
        else:
            far += 1
            far_iou.append(best.get(u, 0.0))
    n = int((aw[1:] > 0).sum())
    return {"cells": n, "identical": len(exact), "differ_near_seam": near, "differ_far": far,
            "far_min_iou": min(far_iou) if far_iou else None, "no_match_iou50": lost,
            "fg_pixels_differ": int(((whole > 0) != (tiled > 0)).sum())}


def _chunks_equal_and_unique(a_path: Path, b_path: Path, objects: int) -> tuple[bool, bool]:
    """Whether two label arrays are equal, and the first holds exactly the ids 1..objects,
    read one chunk at a time."""
    import zarr

    a, b = zarr.open_array(str(a_path), mode="r"), zarr.open_array(str(b_path), mode="r")
    seen = np.zeros(objects + 1, bool)
    equal, top = a.shape == b.shape, 0
    cy, cx = a.chunks
    for y in range(0, a.shape[0], cy):
        for x in range(0, a.shape[1], cx):
            u, v = a[y: y + cy, x: x + cx], b[y: y + cy, x: x + cx]
            equal = equal and bool((u == v).all())
            top = max(top, int(u.max()))
            seen[np.unique(u)] = True
    return equal, bool(seen[1:].all()) and top == objects


# ----------------------------------------------------------------------------- parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint")
    p.add_argument("--data", help="the DSB 2018 folder (stage1_train + domains.tsv)")
    p.add_argument("--work", default="/tmp/pdeseg_bench_tiled", help="where mosaics and labels go")
    p.add_argument("--size", type=int, default=2048, help="side of the mosaic also segmented whole")
    p.add_argument("--big", type=int, default=16384, help="side of the large mosaic (0: skip)")
    p.add_argument("--tile", type=int, default=1024)
    p.add_argument("--halo", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--margin", type=int, default=16, help="px from a seam within which a differing cell counts as 'near'")
    p.add_argument("--bound-mib", type=float, default=1536.0, help="stated peak-memory bound for tiled prediction")
    p.add_argument("--precision", default="32")
    p.add_argument("--child")
    p.add_argument("--mosaic")
    p.add_argument("--labels")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    if not args.checkpoint or not args.data:
        p.error("--checkpoint and --data are required")
    import torch

    from pdeseg.data.phantoms.mosaic import Mosaic, dsb_tiles
    from pdeseg.inference.tiling import TileGrid

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cpu, flags = cpu_info()
    print(f"machine: {cpu}; flags: {' '.join(f for f in FLAGS if f in flags) or 'none of ' + ', '.join(FLAGS)}; "
          f"cpu count {os.cpu_count()}; torch threads {torch.get_num_threads()} (1 process), Dask: {args.workers} "
          f"workers x 1 thread; precision {args.precision}; tile {args.tile} + halo {args.halo}")
    tiles = dsb_tiles(args.data)
    small = work / f"mosaic_{args.size}.ome.tif"
    if not small.exists():
        Mosaic(tiles, args.size, args.size, seed=0).write_ome_tiff(small)
    rows = {}
    for mode in ("whole", "tiled", "dask"):
        rows[mode] = run_child(mode, args, small, work / f"labels_{args.size}_{mode}.npy")
    base = rows["whole"]
    print(f"\n{args.size}x{args.size} mosaic of {len(tiles)} real DSB fluorescence tiles ({args.size ** 2 / 1e6:.1f} MP)\n")
    print("| prediction | s | MP/s | x whole | peak RSS MiB | x whole | cells |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode, r in rows.items():
        mps = r["pixels"] / r["seconds"] / 1e6
        peak = r["peak_rss_mib"] + sum(r.get("worker_rss_mib") or [])
        r["peak_total_mib"] = peak
        print(f"| {mode if mode != 'dask' else r.get('runner', 'dask')} | {r['seconds']:.1f} | {mps:.2f} | "
              f"{mps / (base['pixels'] / base['seconds'] / 1e6):.2f} | {peak:.0f} | {peak / base['peak_rss_mib']:.2f} | "
              f"{r['objects']} |")
    whole = np.load(work / f"labels_{args.size}_whole.npy")
    tiled = np.load(work / f"labels_{args.size}_tiled.npy")
    dask_labels = np.load(work / f"labels_{args.size}_dask.npy")
    grid = TileGrid(args.size, args.size, args.tile, args.halo)
    diff = _differences(whole, tiled, grid, args.margin)
    print(f"\ntiled vs whole: {diff}")
    print(f"dask labels equal to 1-process tiled: {bool((dask_labels == tiled).all())}")
    print(f"tiled ids unique: {len(np.unique(tiled)) - 1 == tiled.max() == rows['tiled']['objects']}")
    if args.big:
        big = work / f"mosaic_{args.big}.ome.tif"
        if not big.exists():
            t0 = time.perf_counter()
            Mosaic(tiles, args.big, args.big, seed=1).write_ome_tiff(big)
            print(f"\nwrote {big} ({big.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s")
        image_mib = args.big ** 2 / 2**20
        results = {}
        for mode in ("tiled", "dask"):
            results[mode] = run_child(mode, args, big, work / f"labels_{args.big}_{mode}.zarr")
        print(f"\n{args.big}x{args.big} mosaic ({args.big ** 2 / 1e6:.0f} MP; uint8 {image_mib:.0f} MiB, float32 "
              f"{4 * image_mib:.0f} MiB, float32 3-class logits {12 * image_mib:.0f} MiB)\n")
        print("| prediction | s | MP/s | peak RSS MiB (all processes) | bound MiB | cells |")
        print("|---|---:|---:|---:|---:|---:|")
        for mode, r in results.items():
            peak = r["peak_rss_mib"] + sum(r.get("worker_rss_mib") or [])
            print(f"| {r.get('runner', mode)} | {r['seconds']:.0f} | {r['pixels'] / r['seconds'] / 1e6:.2f} | {peak:.0f} "
                  f"| {args.bound_mib:.0f} | {r['objects']} |")
        equal, unique = _chunks_equal_and_unique(work / f"labels_{args.big}_tiled.zarr", work / f"labels_{args.big}_dask.zarr",
                                                 results["tiled"]["objects"])
        print(f"\nDask labels equal to 1-process tiled: {equal}; ids 1..N all present and unique: {unique}; "
              f"single-process peak below the bound: {results['tiled']['peak_rss_mib'] < args.bound_mib}")


if __name__ == "__main__":
    main()
