#!/usr/bin/env python
"""Slice loading speed: the memory-mapped case cache against re-reading NIfTI.

Writes ``--cases`` phantom cases (:func:`pdeseg.data.phantoms.brats.write_phantom_dataset`,
BraTS layout, ``--shape`` voxels) to a temporary folder, builds the cache with
:func:`pdeseg.data.pipeline.cache.write_cache`, then measures slices/second of one epoch over the
selected slices (``--selection``, default ``tumour`` as in training), iterated through a
``DataLoader`` with batch ``--batch`` and ``num_workers=0``:

(a) cache: :class:`pdeseg.data.pipeline.sampling.SliceDataset` over the cached cases (memory-mapped
    float16), shuffled like training, without and with the training augmentation
    (``build_train_transform(AugmentConfig(), spatial_size)``);
(b) NIfTI, read once per volume per epoch: the best a loader without a cache can do.
    Every case is read (``pdeseg.data.readers.brats.load_case``) and normalised
    (``normalize``) once per epoch, then its selected slices go through
    ``SliceDataset``'s own per-slice code (fit, optional augmentation), over the volume
    held in memory; slices are shuffled within a volume only. Measured end to end;
(c) NIfTI, re-read per batch: what a shuffled loader without a cache pays if it reads
    a volume for every batch (a shuffled batch usually spans several volumes, so one
    read per batch is still a lower bound on its cost). Derived, not run:
    ``batch / (t_volume + batch * t_slice)`` with ``t_volume`` the median measured
    read+normalise time of one volume and ``t_slice`` the per-slice time of (b) minus
    its volume reads.

Each figure is the median over ``--repeats`` epochs after ``--warmup`` untimed ones. All
files were just written, so both paths read from the OS page cache (warm); a cold disk
adds I/O to both (the cache stores float16, about 5x the gzip'd NIfTI bytes, but reads
only the selected slices).

Usage::

    python benchmarks/bench_data.py                       # 4 cases of 240x240x155
    python benchmarks/bench_data.py --cases 2 --shape 128 128 64 --json data.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _dir_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--shape", type=int, nargs=3, default=[240, 240, 155], metavar=("X", "Y", "Z"))
    p.add_argument("--cases", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--selection", default="tumour", choices=["tumour", "brain", "all", "middle"],
                   help="slices used per volume per epoch (see pdeseg.data.pipeline.sampling.select_slices)")
    p.add_argument("--spatial-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="training slice size (default: the shape's first two dims)")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per pipeline (the median is reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed epochs first")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's default)")
    p.add_argument("--workdir", help="keep the phantom and cache here (default: a temporary folder, removed)")
    p.add_argument("--json", metavar="PATH", help="also save the results as JSON")
    args = p.parse_args(argv)
    if args.cases < 1 or args.repeats < 1 or args.warmup < 0 or args.batch < 1:
        p.error("need --cases >= 1, --repeats >= 1, --warmup >= 0, --batch >= 1")
    spatial = tuple(args.spatial_size or args.shape[:2])

    import numpy as np
    import torch
    from torch.utils.data import DataLoader, IterableDataset

    from pdeseg.config import AugmentConfig
    from pdeseg.data.phantoms.brats import MODALITIES, write_phantom_dataset
    from pdeseg.data.pipeline.cache import CachedCase, write_cache
    from pdeseg.data.pipeline.preprocess import normalize
    from pdeseg.data.pipeline.sampling import SliceDataset, select_slices
    from pdeseg.data.pipeline.transforms import build_train_transform
    from pdeseg.data.readers.brats import find_cases, load_case

    if args.threads:
        torch.set_num_threads(args.threads)
    modalities = tuple(MODALITIES)
    own_tmp = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="pdeseg-bench-data-") if own_tmp else args.workdir).expanduser()
    raw_dir, cache_dir = work / "raw", work / "cache"
    print(f"torch {torch.__version__}; threads {torch.get_num_threads()} (cpu count {os.cpu_count()}); "
          f"load average at start {os.getloadavg()[0]:.1f}")
    print(f"phantom: {args.cases} cases of {args.shape[0]}x{args.shape[1]}x{args.shape[2]}, 4 modalities; "
          f"selection {args.selection!r}; slice size {spatial[0]}x{spatial[1]}; batch {args.batch}, num_workers 0; "
          f"median of {args.repeats} epochs after {args.warmup} warm-up", flush=True)

    try:
        # --- one-off costs: write NIfTI, build the cache (always rebuilt, so it is timed)
        t0 = time.perf_counter()
        write_phantom_dataset(raw_dir, n_cases=args.cases, seed=args.seed, shape=tuple(args.shape))
        t_write = time.perf_counter() - t0
        cases = find_cases(raw_dir, modalities)
        shutil.rmtree(cache_dir, ignore_errors=True)
        t0 = time.perf_counter()
        cached = write_cache(cases, cache_dir, modalities, progress=False)
        t_cache = time.perf_counter() - t0
        selected = [select_slices(c, args.selection) for c in cached]
        n_slices = sum(len(s) for s in selected)
        print(f"one-off: phantom written in {t_write / args.cases:.1f} s/case ({_dir_mib(raw_dir):.0f} MiB NIfTI); "
              f"cache built in {t_cache / args.cases:.2f} s/case ({_dir_mib(cache_dir):.0f} MiB); "
              f"{n_slices} slices per epoch ({', '.join(str(len(s)) for s in selected)} per case)\n", flush=True)

        aug_cfg = AugmentConfig()

        def make_transform(augment: bool):
            return build_train_transform(aug_cfg, spatial) if augment else None

        def run_epochs(make_loader, transform) -> list[float]:
            times = []
            for epoch in range(args.warmup + args.repeats):
                if transform is not None:
                    transform.set_random_state(seed=args.seed + epoch)
                loader = make_loader(epoch)
                seen = 0
                t0 = time.perf_counter()
                for batch in loader:
                    seen += batch["image"].shape[0]
                dt = time.perf_counter() - t0
                if seen != n_slices:
                    raise RuntimeError(f"epoch saw {seen} slices, expected {n_slices}")
                if epoch >= args.warmup:
                    times.append(dt)
            return times

        # --- (a) cache: SliceDataset over memory-mapped cases, shuffled as in training
        def cache_pipeline(augment: bool) -> list[float]:
            transform = make_transform(augment)
            ds = SliceDataset(cached, selection=args.selection, spatial_size=spatial, transform=transform)
            assert len(ds) == n_slices
            return run_epochs(
                lambda epoch: DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=0,
                                         generator=torch.Generator().manual_seed(args.seed + epoch)),
                transform,
            )

        # --- (b) NIfTI: read + normalise every volume once per epoch, same per-slice code
        volume_times: list[float] = []

        class InMemoryCase(CachedCase):
            """A cached case's metadata with in-memory arrays, so that the NIfTI path runs
            exactly ``SliceDataset``'s per-slice code (fit, augmentation, conversions)."""

            def __init__(self, cc: CachedCase, image: np.ndarray, label: np.ndarray):
                super().__init__(cc.case_id, cc.path, cc.meta)
                self._arrays = (image, label)

            @property
            def image(self) -> np.ndarray:
                return self._arrays[0]

            @property
            def label(self) -> np.ndarray:
                return self._arrays[1]

        class NiftiSlices(IterableDataset):
            def __init__(self, transform, epoch: int):
                self.transform, self.rng = transform, np.random.default_rng(args.seed + epoch)

            def __iter__(self):
                for case, cc in zip(cases, cached):
                    t0 = time.perf_counter()
                    loaded = load_case(case, modalities)
                    image = normalize(loaded.image, "zscore")
                    image = np.ascontiguousarray(image.transpose(3, 0, 1, 2))  # (Z, C, X, Y), as the cache
                    label = np.ascontiguousarray(loaded.label.transpose(2, 0, 1))
                    volume_times.append(time.perf_counter() - t0)
                    ds = SliceDataset([InMemoryCase(cc, image, label)], selection=args.selection,
                                      spatial_size=spatial, transform=self.transform)
                    for i in self.rng.permutation(len(ds)):  # shuffled within the volume only
                        yield ds[int(i)]

        def nifti_pipeline(augment: bool) -> list[float]:
            transform = make_transform(augment)
            return run_epochs(
                lambda epoch: DataLoader(NiftiSlices(transform, epoch), batch_size=args.batch, num_workers=0),
                transform,
            )

        rows = {}
        for key, fn, augment in (
            ("cache", cache_pipeline, False),
            ("cache_aug", cache_pipeline, True),
            ("nifti_volume", nifti_pipeline, False),
            ("nifti_volume_aug", nifti_pipeline, True),
        ):
            t0 = time.perf_counter()
            volume_times.clear()
            times = fn(augment)
            med = statistics.median(times)
            rows[key] = {"epoch_s": times, "median_epoch_s": med, "slices_per_s": n_slices / med, "augment": augment}
            if key.startswith("nifti"):
                # per-volume read+normalise, timed epochs only
                vt = volume_times[args.warmup * args.cases:]
                rows[key]["volume_s"] = vt
                rows[key]["median_volume_s"] = statistics.median(vt)
            print(f"  {key}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

        # --- (c) derived: one volume read per batch
        t_vol = statistics.median(rows["nifti_volume"]["volume_s"] + rows["nifti_volume_aug"]["volume_s"])
        for key in ("nifti_volume", "nifti_volume_aug"):
            r = rows[key]
            t_slice = max(0.0, (r["median_epoch_s"] - args.cases * statistics.median(r["volume_s"])) / n_slices)
            per_batch = args.batch / (t_vol + args.batch * t_slice)
            rows[key.replace("volume", "batch")] = {
                "derived": True, "t_volume_s": t_vol, "t_slice_s": t_slice,
                "slices_per_s": per_batch, "median_epoch_s": n_slices / per_batch, "augment": r["augment"],
            }

        labels = {
            "cache": "(a) cache, memory-mapped (SliceDataset)",
            "cache_aug": "(a) cache, memory-mapped (SliceDataset) + augmentation",
            "nifti_volume": "(b) NIfTI read + normalise once per volume per epoch",
            "nifti_volume_aug": "(b) NIfTI read + normalise once per volume per epoch + augmentation",
            "nifti_batch": "(c) NIfTI read + normalise once per batch (derived)",
            "nifti_batch_aug": "(c) NIfTI read + normalise once per batch + augmentation (derived)",
        }
        print("| pipeline | s/epoch | slices/s | cache speed-up (same augmentation) |")
        print("|---|---:|---:|---:|")
        for key in labels:
            r = rows[key]
            ref = rows["cache_aug" if r["augment"] else "cache"]["slices_per_s"]
            r["cache_speedup"] = ref / r["slices_per_s"]
            speedup = "-" if key.startswith("cache") else f"{r['cache_speedup']:.1f}x"
            print(f"| {labels[key]} | {r['median_epoch_s']:.3f} | {r['slices_per_s']:.1f} | {speedup} |")
        print(f"\nNIfTI read + normalise of one {args.shape[0]}x{args.shape[1]}x{args.shape[2]} volume (4 modalities + label): "
              f"median {t_vol:.2f} s = {1e3 * t_vol / max(1, n_slices / args.cases):.1f} ms per slice used "
              f"({n_slices / args.cases:.0f} slices per volume per epoch)")
        print("cache speed-up = cache slices/s / NIfTI slices/s, with the same augmentation setting: "
              f"no augmentation {rows['nifti_volume']['cache_speedup']:.1f}x (per volume), "
              f"{rows['nifti_batch']['cache_speedup']:.1f}x (per batch); with augmentation "
              f"{rows['nifti_volume_aug']['cache_speedup']:.1f}x (per volume), {rows['nifti_batch_aug']['cache_speedup']:.1f}x (per batch)")
        load = os.getloadavg()[0]
        print(f"load average at end {load:.1f}")
        if load > (os.cpu_count() or 1) - 0.5 and torch.get_num_threads() > 1:
            print(f"WARNING: the machine was busy (load {load:.1f} on {os.cpu_count()} CPUs); with "
                  f"{torch.get_num_threads()} torch threads small ops suffer from thread oversubscription, "
                  "so these figures are pessimistic. Rerun when idle, or with --threads 1.")

        if args.json:
            payload = {
                "torch": torch.__version__, "threads": torch.get_num_threads(), "shape": args.shape,
                "cases": args.cases, "selection": args.selection, "spatial_size": list(spatial),
                "batch": args.batch, "repeats": args.repeats, "warmup": args.warmup, "slices_per_epoch": n_slices,
                "write_s_per_case": t_write / args.cases, "cache_build_s_per_case": t_cache / args.cases,
                "nifti_mib": _dir_mib(raw_dir), "cache_mib": _dir_mib(cache_dir), "results": rows,
            }
            with open(args.json, "w") as f:
                json.dump(payload, f, indent=2)
            print(f"saved {args.json}")
    finally:
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
