"""float16 against float32 weights of a trained checkpoint (issue 35: shipped models store their
weights in half precision where that is exact enough).

Both weight files are computed in fp32 on the CPU on the run's held-out cases (its ``split.json``),
so the only difference is the rounding of the stored weights. Prints, per run: the largest
class-probability difference of any pixel, the share of pixels with the same class, for cell models
the mean DSB score of the float16 cells against the float32 cells, the file sizes, the CPU and the
thread count.

    python benchmarks/bench_half_precision.py --checkpoint runs/dsb/cells_dsb/unet/best.pt \\
        --data ../shared/data/dsb2018 --split test --max-cases 20
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from _common import cpu_info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="the data set the run was trained on")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--max-cases", type=int, default=0, help="at most this many cases of the split (0: all)")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args()

    from pdeseg.checkpoint import load_checkpoint, preprocessing_spec, save_checkpoint
    from pdeseg.data.pipeline.prepare import load_cached_cases
    from pdeseg.data.pipeline.splits import load_split
    from pdeseg.pretrained.pack import compare_precision, shipped_payload

    ckpt_path = Path(args.checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    spec = preprocessing_spec(ckpt, ckpt_path)
    ids = load_split(ckpt_path.parent / "split.json")[args.split]
    ids = ids[: args.max_cases] if args.max_cases else ids
    tmp = Path(tempfile.mkdtemp(prefix="bench_half_"))
    try:
        entries = [e for _, e in load_cached_cases(args.data, spec, tmp / "cache", ids, progress=False)]
        full, half = tmp / "full.pt", tmp / "half.pt"
        save_checkpoint(shipped_payload(ckpt, torch.float32, "bench", None), full)
        save_checkpoint(shipped_payload(ckpt, torch.float16, "bench", None), half)
        t0 = time.perf_counter()
        result = compare_precision(full, half, entries)
        result.update(seconds=round(time.perf_counter() - t0, 1), bytes_float32=full.stat().st_size,
                      bytes_float16=half.stat().st_size, checkpoint=str(ckpt_path), split=args.split)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cpu, flags = cpu_info()
    result.update(cpu=cpu, avx512_bf16="avx512_bf16" in flags, threads=torch.get_num_threads())
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
