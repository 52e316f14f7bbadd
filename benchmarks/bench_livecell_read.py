"""Reading a LIVECell-sized COCO file: seconds and peak memory of pdeseg's reader against the
json module and pycocotools' own loader, in one run.

The whole LIVECell release (5,239 images, about 1.6 million outlines) is not on these machines,
so the benchmark writes a synthetic COCO file of that size in LIVECell's release layout:
``annotations/LIVECell/livecell_coco_train.json`` with every image and outline, polygons of
the real files' median length (48 coordinates, 2 decimals, inside 704x520 images), and one
empty placeholder ``.tif`` per image (the reader finds image files but reads pixels only
when a case is loaded). Each measurement runs in a fresh process, so its peak RSS
(``ru_maxrss``) is its own:

* ``json.load``: the parsed document (the floor of any reader that parses the file whole);
* ``pycocotools COCO()``: what a user of pycocotools gets (parse plus its indexes);
* ``pdeseg find_livecell_cases``: every case with its annotations, ready to decode;
* ``pdeseg decode``: one case's instance image (700 cells) after the above.

Run:
    python benchmarks/bench_livecell_read.py                      # full size: 5,239 images, 1.6 M outlines
    python benchmarks/bench_livecell_read.py --images 500 --per-image 300   # a quick run
Prints a table, the machine, and the ratios to ``json.load``; ``--json FILE`` saves the numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import CPU_FLAGS, cpu_info, save_json

HEIGHT, WIDTH = 520, 704


def write_dataset(root: Path, n_images: int, per_image: int, seed: int = 0) -> Path:
    """The synthetic release layout; returns the json file."""
    rng = random.Random(seed)
    folder = root / "images" / "livecell_train_val_images"
    folder.mkdir(parents=True, exist_ok=True)
    types = ("A172", "BT474", "BV2", "HUH7", "MCF7", "SHSY5Y", "SKBR3", "SKOV3")
    path = root / "annotations" / "LIVECell" / "livecell_coco_train.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    ann_id = n_images + 1
    with open(path, "w") as f:
        f.write('{"info": {"description": "synthetic, LIVECell-sized"}, "categories": [{"id": 1, "name": "cell"}], '
                '"images": [')
        names = []
        for i in range(n_images):
            name = f"{types[i % len(types)]}_Phase_A{i % 12}_1_{i:05d}_1.tif"
            names.append(name)
            (folder / name).touch()
            f.write(("" if i == 0 else ", ") + json.dumps({"id": i + 1, "width": WIDTH, "height": HEIGHT,
                                                           "file_name": name}))
        f.write('], "annotations": [')
        first = True
        for i in range(n_images):
            for _ in range(per_image):
                cx, cy, r = rng.uniform(20, WIDTH - 20), rng.uniform(20, HEIGHT - 20), rng.uniform(6, 15)
                pts = []
                for k in range(24):  # 24 vertices = 48 coordinates, the real files' median
                    a = 2 * 3.141592653589793 * k / 24
                    rr = r * rng.uniform(0.8, 1.2)
                    pts += [round(cx + rr * math.cos(a), 2), round(cy + rr * math.sin(a), 2)]
                f.write(("" if first else ", ") + json.dumps(
                    {"id": ann_id, "image_id": i + 1, "category_id": 1, "segmentation": [pts], "area": 3.14 * r * r,
                     "bbox": [cx - r, cy - r, 2 * r, 2 * r], "iscrowd": 0}))
                first = False
                ann_id += 1
        f.write("]}")
    return path


CHILD = {
    "json.load": "import json; d = json.load(open(PATH)); n = len(d['annotations'])",
    "pycocotools COCO()": ("import contextlib, io\nfrom pycocotools.coco import COCO\n"
                           "with contextlib.redirect_stdout(io.StringIO()):\n    c = COCO(PATH)\nn = len(c.anns)"),
    "pdeseg find_livecell_cases": ("from pdeseg.data.readers.livecell import find_livecell_cases\n"
                                   "cases = find_livecell_cases(ROOT)\nn = sum(len(c.objects.annotations) for c in cases)"),
}


def measure(label: str, code: str, path: Path, root: Path) -> dict:
    """Wall time and peak RSS of ``code`` in a fresh interpreter (its own ru_maxrss)."""
    script = (f"import resource, sys, time\nPATH = {str(path)!r}\nROOT = {str(root)!r}\nt0 = time.perf_counter()\n{code}\n"
              "t = time.perf_counter() - t0\nextra = ''\n")
    if label == "pdeseg find_livecell_cases":
        script += ("t1 = time.perf_counter()\nimport numpy as np\nbig = max(cases, key=lambda c: len(c.objects.annotations))\n"
                   "inst = big.objects((520, 704))\nextra = f'{time.perf_counter() - t1:.3f} {int(inst.max())}'\n")
    script += "print(t, n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, extra)\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    row = {"what": label, "seconds": float(out[0]), "outlines": int(out[1]), "peak_mib": float(out[2])}
    if len(out) > 3:
        row["decode_s"], row["decode_cells"] = float(out[3]), int(out[4])
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=5239)
    p.add_argument("--per-image", type=int, default=306, help="outlines per image (5,239 x 306 = 1.6 M)")
    p.add_argument("--keep", help="write the data set here and keep it (default: a temporary folder)")
    p.add_argument("--json", help="save the numbers here")
    args = p.parse_args()
    model, flags = cpu_info()
    print(f"machine: {model}; flags {' '.join(f for f in CPU_FLAGS if f in flags) or '-'}; {os.cpu_count()} CPUs; "
          f"python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        t0 = time.perf_counter()
        path = write_dataset(root, args.images, args.per_image)
        size = path.stat().st_size
        print(f"wrote {args.images} images, {args.images * args.per_image:,} outlines: {size / 2**20:.0f} MiB of json "
              f"in {time.perf_counter() - t0:.0f} s")
        rows = [measure(label, code, path, root) for label, code in CHILD.items()]
    base = rows[0]
    print("\n| what | s | x json.load | peak MiB | x json.load | peak / file size |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['what']} | {r['seconds']:.1f} | {r['seconds'] / base['seconds']:.2f} | {r['peak_mib']:.0f} | "
              f"{r['peak_mib'] / base['peak_mib']:.2f} | {r['peak_mib'] * 2**20 / size:.2f} |")
    reader = rows[-1]
    print(f"\nthen one case of {args.per_image} cells decoded to its instance image in {reader['decode_s']:.3f} s "
          f"(ids up to {reader['decode_cells']})")
    if args.json:
        save_json(args.json, {"images": args.images, "per_image": args.per_image, "json_mib": size / 2**20, "rows": rows})


if __name__ == "__main__":
    main()
