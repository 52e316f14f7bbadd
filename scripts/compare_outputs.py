"""Check that a refactor leaves ``pdeseg predict``'s outputs unchanged (issue 34, "Outputs unchanged").

    python scripts/compare_outputs.py --before 8b207f5 [--after HEAD] --work /tmp/cmpout

Each revision is checked out as a detached git worktree under ``--work`` and runs its *own* code:
every step is a subprocess ``PYTHONPATH=<tree>/src python -m pdeseg ...`` with this interpreter
(the installed dependencies are shared; the script checks that ``pdeseg`` is imported from the
tree). One tiny checkpoint per case is trained once, with the *after* side, and both sides predict
the same inputs with it into separate folders. Every written file is compared:

* ``bytes``: identical bytes;
* ``content``: the bytes differ only where a container embeds a time or a UID, and the decoded
  content is identical: the decompressed stream of a ``.gz`` (gzip stores its mtime); for DICOM the
  pixel data and every element except dates/times and UIDs that the writer generates (a UID
  may differ only where it is replaced by one and the same new UID throughout the file); for TIFF the arrays of every
  page and the OME-XML without its UUIDs; for Zarr/JSON the parsed documents;
* ``DIFFERENT``: anything else, with the first differing field.

Cases: 2D BraTS (phantom + one real BraTS 2018 case), 3D Hippocampus (real MSD cases, model
trained on the MSD phantom), DSB 2018 flows cells (real images), tiled prediction of an OME-TIFF
and an OME-Zarr mosaic of real DSB tiles, DICOM-SEG (a Hippocampus case written as a DICOM series,
and, as NIfTI, two real MR series of ``dicom_series``, which lack the FrameOfReferenceUID a SEG needs), and the ONNX Runtime backend. BraTS models crop at
inference by default since issue 36 (6b469b8, an intended change): the strict comparison is the
after side's ``--no-crop`` against the before side's default, and the default-vs-default row is
reported as an expected change (it does not fail the run).

Runs with ``OMP_NUM_THREADS=1`` (one core; the machine is shared). Exit status 1 when a file
differs unexpectedly, 0 otherwise. About 5 minutes on one core.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PDESEG_SHARED_DATA", REPO.parent / "shared" / "data"))
TINY = [8, 16, 32, 64, 128]


# --------------------------------------------------------------------------------------------- running a side


def side_env(tree: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree / "src"), str(tree / "tests")])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = "1"
    env["PYTHONHASHSEED"] = "0"
    return env


def run(tree: Path, args: list[str], log: Path, python: str) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with log.open("w") as fh:
        proc = subprocess.run([python, *args], cwd=tree, env=side_env(tree), stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(args[:4])} ... failed in {tree} (exit {proc.returncode}; log {log}):\n{tail}")
    print(f"  {tree.name:6s} {' '.join(a if len(a) < 40 else '…' + a[-30:] for a in args[2:])}  [{time.time() - t0:.0f} s]", flush=True)


def check_import(tree: Path, python: str) -> None:
    out = subprocess.run(
        [python, "-c", "import pdeseg; print(pdeseg.__file__)"], env=side_env(tree), capture_output=True, text=True, check=True
    ).stdout.strip()
    if not Path(out).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"pdeseg imported from {out}, not from {tree}")


# --------------------------------------------------------------------------------------------- data (run in the after tree)


def prepare(work: Path) -> None:
    """Write every input and training set (called as ``_prepare`` in the after tree's environment)."""
    import nibabel as nib
    from dicom_writer import write_series

    from pdeseg.data.phantoms.brats import write_phantom_dataset
    from pdeseg.data.phantoms.mosaic import Mosaic, dsb_tiles
    from pdeseg.data.phantoms.msd import write_msd_phantom_dataset

    data = work / "data"
    # 2D BraTS: phantom (train + predict) and one real BraTS 2018 case (predict)
    write_phantom_dataset(data / "brats_phantom", n_cases=6, seed=3, shape=(64, 64, 24))
    (data / "brats_real").mkdir(parents=True)
    case = SHARED / "brats2018" / "Brats18_2013_11_1"
    (data / "brats_real" / case.name).symlink_to(case)
    # 3D Hippocampus: MSD MRI phantom (train), 3 real cases (predict)
    write_msd_phantom_dataset(data / "msd_phantom", n_cases=8, seed=0, kind="mri")
    task = SHARED / "msd_hippocampus" / "Task04_Hippocampus"
    hip = data / "hippo_real" / "imagesTs"
    hip.mkdir(parents=True)
    shutil.copy(task / "dataset.json", hip.parent)
    for name in ("hippocampus_001", "hippocampus_003", "hippocampus_004"):
        (hip / f"{name}.nii.gz").symlink_to(task / "imagesTr" / f"{name}.nii.gz")
    # DSB 2018 flows: 16 real images to train on, 5 others (several domains) to predict
    dsb = SHARED / "dsb2018"
    rows = [line.split("\t") for line in (dsb / "domains.tsv").read_text().splitlines()]
    header, rows = rows[0], rows[1:]
    train_rows = [r for r in rows if r[1] == "fluorescence" and r[2] == "256x256"][:16]
    (data / "dsb_train" / "stage1_train").mkdir(parents=True)
    (data / "dsb_train" / "domains.tsv").write_text("\n".join("\t".join(r) for r in [header, *train_rows]) + "\n")
    for r in train_rows:
        (data / "dsb_train" / "stage1_train" / r[0]).symlink_to(dsb / "stage1_train" / r[0])
    used = {r[0] for r in train_rows}
    picks: list[list[str]] = []
    for domain, n in (("fluorescence", 3), ("stained_color", 1), ("brightfield_gray", 1)):
        picks += [r for r in rows if r[1] == domain and r[0] not in used][:n]
    for r in picks:  # a stage folder without masks, as stage1_test
        (data / "dsb_images" / r[0] / "images").mkdir(parents=True)
        shutil.copy(dsb / "stage1_train" / r[0] / "images" / f"{r[0]}.png", data / "dsb_images" / r[0] / "images")
    # tiled + OME: a 768 x 768 mosaic of real DSB fluorescence tiles, as OME-TIFF and as OME-Zarr
    mosaic = Mosaic(dsb_tiles(dsb, size=256, limit=6), 768, 768, seed=0)
    (data / "ome_tiff").mkdir()
    mosaic.write_ome_tiff(data / "ome_tiff" / "mosaic.ome.tif")
    mosaic.write_ome_zarr(data / "mosaic.ome.zarr")
    # DICOM: a real Hippocampus case written as an MR series, and a real MR series of dicom_series
    img = nib.load(task / "imagesTr" / "hippocampus_001.nii.gz")
    write_series(
        np.asanyarray(img.dataobj).astype(float), img.affine, data / "dicom" / "hippo", "T1 MPRAGE", "1.2.826.0.1.6", "1.2.826.0.1.6.1"
    )
    # the real series of dicom_series have no FrameOfReferenceUID (no SEG can be placed): NIfTI out
    for sub in ("anatomical/001", "siemens_multiframe/anatomical/001"):
        shutil.copytree(SHARED / "dicom_series" / sub, data / "dicom_real" / sub.split("/")[0])


def configs(work: Path) -> dict[str, dict]:
    data = work / "data"
    split = {"fractions": [0.75, 0.25, 0.0], "seed": 0}
    return {
        "brats": {
            "name": "cmp_brats",
            "data": {
                "root": str(data / "brats_phantom"),
                "format": "brats",
                "cache_dir": str(work / "cache" / "brats"),
                "slices": "tumour",
                "split": {"fractions": [0.5, 0.25, 0.25], "seed": 0},
            },
            "models": [{"name": "pde_unet", "kwargs": {"features": TINY}}],
            "train": {"epochs": 10, "batch_size": 4, "lr": 3e-3, "precision": "32", "seed": 0, "device": "cpu"},
        },
        "hippo": {
            "name": "cmp_hippo",
            "data": {
                "root": str(data / "msd_phantom"),
                "format": "msd",
                "cache_dir": str(work / "cache" / "hippo"),
                "normalization": "zscore_all",
                "mode": "patches",
                "spatial_size": [24, 32, 24],
                "samples_per_case": 2,
                "split": split,
            },
            "models": [{"name": "unet3d", "kwargs": {"features": [8, 16, 32, 64], "deep_supervision": True}}],
            "train": {"epochs": 2, "batch_size": 2, "lr": 3e-3, "precision": "32", "seed": 0, "device": "cpu", "monitor": "dice_mean"},
        },
        "dsb": {
            "name": "cmp_dsb",
            "data": {
                "root": str(data / "dsb_train"),
                "format": "dsb2018",
                "format_options": {"targets": "flows"},
                "cache_dir": str(work / "cache" / "dsb"),
                "modalities": ["grey"],
                "normalization": "zscore_all",
                "mode": "slices",
                "slices": "all",
                "spatial_size": [128, 128],
                "crop": "random",
                "samples_per_case": 6,
                "split": split,
                "augment": {"enabled": True, "flip_prob": 0.5, "invert_prob": 0.5},
            },
            "models": [{"name": "unet", "kwargs": {"features": TINY}}],
            "loss": {"terms": [{"name": "ce", "weight": 1.0}, {"name": "dice", "weight": 1.0}, {"name": "instance_maps", "weight": 1.0}]},
            "train": {
                "epochs": 40,
                "batch_size": 8,
                "lr": 3e-3,
                "precision": "32",
                "seed": 0,
                "device": "cpu",
                "warmup_epochs": 0,
                "monitor": "dsb_score",
            },
        },
    }


# (case, run, checkpoint key, input, extra args after side, extra args before side, expected change)
def predictions(work: Path) -> list[tuple]:
    d = work / "data"
    tile = ["--tile", "256", "--halo", "64"]
    return [
        ("2D BraTS phantom", "--no-crop | default", "brats", d / "brats_phantom", ["--no-crop"], [], None),
        ("2D BraTS phantom", "default | default", "brats", d / "brats_phantom", [], [], "issue 36: crop by default"),
        (
            "2D BraTS phantom",
            "onnxruntime --no-crop | onnxruntime",
            "brats",
            d / "brats_phantom",
            ["--backend", "onnxruntime", "--no-crop"],
            ["--backend", "onnxruntime"],
            None,
        ),
        ("2D BraTS real", "--no-crop | default", "brats", d / "brats_real", ["--no-crop"], [], None),
        ("2D BraTS real", "default | default", "brats", d / "brats_real", [], [], "issue 36: crop by default"),
        ("2D BraTS real", "--crop | --crop", "brats", d / "brats_real", ["--crop"], ["--crop"], None),
        ("3D Hippocampus", "default", "hippo", d / "hippo_real" / "imagesTs", [], [], None),
        (
            "3D Hippocampus",
            "--precision 32 --backend torch --tta",
            "hippo",
            d / "hippo_real" / "imagesTs",
            ["--precision", "32", "--backend", "torch", "--tta"],
            None,
            None,
        ),
        ("3D Hippocampus", "onnxruntime", "hippo", d / "hippo_real" / "imagesTs", ["--backend", "onnxruntime"], None, None),
        ("DSB flows", "default", "dsb", d / "dsb_images", [], [], None),
        ("DSB flows", "--diameter auto (object_diameter 20 px)", "dsb_sized", d / "dsb_images", ["--diameter", "auto"], None, None),
        ("DSB flows", "onnxruntime", "dsb", d / "dsb_images", ["--backend", "onnxruntime"], None, None),
        ("tiled OME-TIFF", "tile 256 halo 64", "dsb", d / "ome_tiff", tile, None, None),
        ("tiled OME-TIFF", "default tile, --no-postprocess", "dsb", d / "ome_tiff", ["--no-postprocess"], None, None),
        ("tiled OME-Zarr", "labels inside the input", "dsb", "zarr", tile, None, None),
        ("DICOM-SEG", "binary", "hippo", d / "dicom", [], [], None),
        ("DICOM-SEG", "fractional", "hippo", d / "dicom", ["--seg-type", "fractional"], None, None),
        ("DICOM-SEG", "--output-format both", "hippo", d / "dicom", ["--output-format", "both"], None, None),
        ("DICOM real MR series", "--output-format nifti", "hippo", d / "dicom_real", ["--output-format", "nifti"], None, None),
    ]


# --------------------------------------------------------------------------------------------- comparing files

_UUID = re.compile(rb'UUID="urn:uuid:[0-9a-fA-F-]+"|urn:uuid:[0-9a-fA-F-]+')


def _dicom_diff(a: Path, b: Path) -> tuple[str, str]:
    """('content', ignored fields) or ('DIFFERENT', first differing field)."""
    import pydicom

    da, db = pydicom.dcmread(a), pydicom.dcmread(b)
    ignored: set[str] = set()
    uid_map: dict[str, str] = {}

    def walk(x, y, where: str) -> str | None:
        tags = sorted(set(x.keys()) | set(y.keys()))
        for tag in tags:
            ex, ey = x.get(tag), y.get(tag)
            name = (ex or ey).keyword or str(tag)
            if ex is None or ey is None:
                return f"{where}{name} present on one side only"
            if ex.VR == "SQ":
                if len(ex.value) != len(ey.value):
                    return f"{where}{name}: {len(ex.value)} vs {len(ey.value)} items"
                for i, (ix, iy) in enumerate(zip(ex.value, ey.value)):
                    found = walk(ix, iy, f"{where}{name}[{i}].")
                    if found:
                        return found
                continue
            if ex.value == ey.value:
                continue
            if ex.VR in ("DA", "TM", "DT"):
                ignored.add(name)
                continue
            if ex.VR == "UI" and uid_map.setdefault(str(ex.value), str(ey.value)) == str(ey.value):
                ignored.add(name)  # a UID generated by the writer, replaced consistently throughout the file
                continue
            if name == "PixelData":
                return f"{where}PixelData differs"
            return f"{where}{name}: {str(ex.value)[:40]!r} vs {str(ey.value)[:40]!r}"
        return None

    found = walk(da.file_meta, db.file_meta, "meta.") or walk(da, db, "")
    if found:
        return "DIFFERENT", found
    if "PixelData" in da and not np.array_equal(da.pixel_array, db.pixel_array):
        return "DIFFERENT", "pixel array"
    return "content", "ignored " + ",".join(sorted(ignored))


def _tiff_diff(a: Path, b: Path) -> tuple[str, str]:
    import tifffile

    with tifffile.TiffFile(a) as ta, tifffile.TiffFile(b) as tb:
        if len(ta.series) != len(tb.series):
            return "DIFFERENT", "number of series"
        for i, (sa, sb) in enumerate(zip(ta.series, tb.series)):
            for lvl, (la, lb) in enumerate(zip(sa.levels, sb.levels)):
                xa, xb = la.asarray(), lb.asarray()
                if xa.dtype != xb.dtype or xa.shape != xb.shape or not np.array_equal(xa, xb):
                    return "DIFFERENT", f"series {i} level {lvl}: array ({xa.dtype}{xa.shape} vs {xb.dtype}{xb.shape})"
        oa, ob = ta.ome_metadata, tb.ome_metadata
        if (oa is None) != (ob is None) or (oa and _UUID.sub(b"", oa.encode()) != _UUID.sub(b"", ob.encode())):
            return "DIFFERENT", "OME-XML"
        pa = [(p.shape, p.dtype, p.tags.get("ImageDescription").value if p.tags.get("ImageDescription") else None) for p in ta.pages]
        pb = [(p.shape, p.dtype, p.tags.get("ImageDescription").value if p.tags.get("ImageDescription") else None) for p in tb.pages]
        if [(s, d) for s, d, _ in pa] != [(s, d) for s, d, _ in pb]:
            return "DIFFERENT", "pages"
    return "content", "arrays and OME-XML (UUIDs aside)"


def _nifti_field(a: Path, b: Path) -> str:
    import nibabel as nib

    ia, ib = nib.load(a), nib.load(b)
    xa, xb = np.asanyarray(ia.dataobj), np.asanyarray(ib.dataobj)
    if xa.shape != xb.shape:
        return f"shape {xa.shape} vs {xb.shape}"
    if xa.dtype != xb.dtype:
        return f"dtype {xa.dtype} vs {xb.dtype}"
    if not np.array_equal(xa, xb):
        n = int((xa != xb).sum())
        return f"voxels: {n} of {xa.size} differ ({100 * n / xa.size:.2f} %)"
    if not np.array_equal(ia.affine, ib.affine):
        return "affine"
    for key in ia.header.keys():
        va, vb = ia.header[key], ib.header[key]
        if not np.array_equal(np.asarray(va), np.asarray(vb)):
            return f"header {key}: {va} vs {vb}"
    return "header (unnamed bytes)"


def _image_field(a: Path, b: Path) -> str:
    from PIL import Image

    xa, xb = np.asarray(Image.open(a)), np.asarray(Image.open(b))
    if xa.shape != xb.shape or xa.dtype != xb.dtype:
        return f"array {xa.dtype}{xa.shape} vs {xb.dtype}{xb.shape}"
    if not np.array_equal(xa, xb):
        return f"pixels: {int((xa != xb).sum())} of {xa.size} differ"
    return "metadata"


def compare_file(a: Path, b: Path) -> tuple[str, str]:
    ba, bb = a.read_bytes(), b.read_bytes()
    if ba == bb:
        return "bytes", ""
    name = a.name
    if name.endswith(".gz"):
        if gzip.decompress(ba) == gzip.decompress(bb):
            return "content", "gzip header (mtime) only"
        return "DIFFERENT", _nifti_field(a, b) if ".nii" in name else "decompressed bytes"
    if name.endswith(".dcm"):
        return _dicom_diff(a, b)
    if name.endswith((".tif", ".tiff")):
        if _UUID.sub(b"", ba) == _UUID.sub(b"", bb):
            return "content", "OME UUID only (other bytes identical)"
        return _tiff_diff(a, b)
    if name.endswith(".png"):
        return "DIFFERENT", _image_field(a, b)
    if name.endswith(".nii"):
        return "DIFFERENT", _nifti_field(a, b)
    if name.endswith(".json") or name in (".zattrs", ".zgroup", ".zarray", "zarr.json"):
        ja, jb = json.loads(ba), json.loads(bb)
        if ja == jb:
            return "content", "JSON formatting"
        return "DIFFERENT", f"JSON {_first_json_diff(ja, jb)}"
    return "DIFFERENT", "bytes (no decoder)"


def _first_json_diff(x, y, path: str = "") -> str:
    if isinstance(x, dict) and isinstance(y, dict):
        for k in sorted(set(x) | set(y)):
            if x.get(k) != y.get(k):
                return _first_json_diff(x.get(k), y.get(k), f"{path}.{k}")
    if isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
        for i, (u, v) in enumerate(zip(x, y)):
            if u != v:
                return _first_json_diff(u, v, f"{path}[{i}]")
    return f"{path or '.'}: {str(x)[:40]} vs {str(y)[:40]}"


def compare_dirs(a: Path, b: Path) -> dict:
    fa = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    fb = {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    res = {"files": len(fa | fb), "bytes": 0, "content": 0, "different": 0, "first": "", "notes": set()}
    for rel in sorted(fa ^ fb):
        res["different"] += 1
        res["first"] = res["first"] or f"{rel}: only {'after' if rel in fa else 'before'}"
    for rel in sorted(fa & fb):
        kind, why = compare_file(a / rel, b / rel)
        if kind == "bytes":
            res["bytes"] += 1
        elif kind == "content":
            res["content"] += 1
            res["notes"].add(why)
        else:
            res["different"] += 1
            res["first"] = res["first"] or f"{rel}: {why}"
    return res


def labels_present(folder: Path) -> str:
    """How many distinct values the written label maps hold (shows that the comparison is not of empty maps)."""
    values: set[int] = set()
    for p in sorted(folder.rglob("*")):
        try:
            if p.name.endswith((".nii.gz", ".nii")):
                import nibabel as nib

                x = np.asanyarray(nib.load(p).dataobj)
            elif p.name.endswith(".dcm"):
                import pydicom

                ds = pydicom.dcmread(p)
                values.add(-(10**6) - int(np.count_nonzero(ds.pixel_array)))  # SEG: non-zero pixels
                continue
            elif p.name.endswith((".tif", ".png")) and "instances" in p.name:
                import tifffile

                x = tifffile.imread(p) if p.name.endswith(".tif") else None
                if x is not None:
                    values.add(-int(x.max()))  # cells: count as "-N cells" below
                continue
            else:
                continue
        except Exception:  # noqa: BLE001 - a summary only
            continue
        if np.issubdtype(x.dtype, np.integer):
            values.update(int(v) for v in np.unique(x)[:50])
    seg = [-v - 10**6 for v in values if v <= -(10**6)]
    cells = [-v for v in values if -(10**6) < v < 0]
    classes = sorted(v for v in values if v >= 0)
    parts = [f"SEG {sum(seg)} non-zero pixels"] if seg else []
    if classes:
        parts.append(f"labels {classes[:8]}")
    if cells:
        parts.append(f"up to {max(cells)} cells")
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="revision before the refactor, e.g. 8b207f5")
    p.add_argument("--after", default="HEAD", help="revision after (default HEAD; uncommitted changes are not included)")
    p.add_argument("--work", type=Path, required=True, help="scratch folder (emptied first)")
    p.add_argument("--python", default=sys.executable, help="interpreter for both sides (default: this one)")
    p.add_argument("--keep", action="store_true", help="keep the worktrees")
    p.add_argument("--reuse", action="store_true", help="keep --work's data and checkpoints from an earlier run")
    p.add_argument("--rows", default="", help="only the rows whose case contains this text")
    args = p.parse_args(argv)

    work = args.work.resolve()
    reuse = args.reuse and (work / "runs" / "dsb_sized.pt").is_file()
    if work.exists():
        for sub in work.iterdir() if reuse else [work]:
            if not (reuse and sub.name in ("data", "runs", "configs", "cache")):
                shutil.rmtree(sub)
    work.mkdir(parents=True, exist_ok=True)
    trees = {"before": work / "before", "after": work / "after"}
    revs = {}
    subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], check=True)
    for side, rev in (("before", args.before), ("after", args.after)):
        revs[side] = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", rev], capture_output=True, text=True, check=True
        ).stdout.strip()
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(trees[side]), revs[side]], check=True, capture_output=True
        )
    try:
        for tree in trees.values():
            check_import(tree, args.python)
        print(f"before {revs['before']}, after {revs['after']}; OMP_NUM_THREADS=1", flush=True)
        after = trees["after"]
        logs = work / "logs"
        if not reuse:
            run(after, [str(Path(__file__).resolve()), "_prepare", str(work)], logs / "prepare.log", args.python)
        ckpts = {"dsb_sized": work / "runs" / "dsb_sized.pt"}
        for key, cfg in configs(work).items():
            if reuse:
                (ckpts[key],) = sorted((work / "runs" / key).rglob("best.pt"))
                continue
            import yaml

            path = work / "configs" / f"{key}.yaml"
            path.parent.mkdir(exist_ok=True)
            path.write_text(yaml.safe_dump(cfg))
            run(
                after,
                ["-m", "pdeseg", "train", "--config", str(path), "--out", str(work / "runs" / key), "--no-progress"],
                logs / f"train_{key}.log",
                args.python,
            )
            (ckpts[key],) = sorted((work / "runs" / key).rglob("best.pt"))
        if not reuse:  # the same DSB model stating its training object size, as shipped models do (--diameter auto)
            run(
                after,
                [str(Path(__file__).resolve()), "_sized", str(ckpts["dsb"]), str(ckpts["dsb_sized"]), "20"],
                logs / "sized.log",
                args.python,
            )
        rows = []
        for n, (case, label, key, src, extra_after, extra_before, expected) in enumerate(predictions(work)):
            if args.rows not in case:
                continue
            outs = {}
            for side, extra in (("after", extra_after), ("before", extra_after if extra_before is None else extra_before)):
                out = work / "pred" / f"{n:02d}" / side
                if src == "zarr":  # predictions go inside the input: each side gets its own copy
                    inp = work / "pred" / f"{n:02d}" / f"{side}_input" / "mosaic.ome.zarr"
                    shutil.copytree(work / "data" / "mosaic.ome.zarr", inp)
                    scan = inp / "labels"
                else:
                    inp, scan = src, out
                run(
                    trees[side],
                    [
                        "-m",
                        "pdeseg",
                        "predict",
                        "--checkpoint",
                        str(ckpts[key]),
                        "--input",
                        str(inp),
                        "--output",
                        str(out),
                        "--device",
                        "cpu",
                        "--no-progress",
                        *extra,
                    ],
                    logs / f"predict_{n:02d}_{side}.log",
                    args.python,
                )
                outs[side] = scan
            res = compare_dirs(outs["after"], outs["before"])
            res.update(case=case, run=label, expected=expected, summary=labels_present(outs["after"]))
            rows.append(res)
    finally:
        if not args.keep:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)

    unexpected = 0
    print(f"\nafter {revs['after']} (run | before {revs['before']}), same checkpoint and input per row\n")
    print("| case | run (after \\| before) | files | identical bytes | identical content | DIFFERENT | outputs / first difference |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        verdict = r["first"] or "; ".join(sorted(r["notes"]))
        if r["different"] and r["expected"]:
            verdict = f"expected ({r['expected']}): {r['first']}"
        elif r["different"]:
            unexpected += 1
        elif r["expected"]:
            verdict = f"(expected change did not show: {r['expected']}) " + verdict
        print(
            f"| {r['case']} | {r['run'].replace('|', chr(92) + '|')} | {r['files']} | {r['bytes']} | {r['content']} | {r['different']} | "
            f"{r['summary']}{'; ' if r['summary'] and verdict else ''}{verdict} |"
        )
    print(f"\n{unexpected} row(s) with an unexpected difference")
    return 1 if unexpected else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_prepare":
        prepare(Path(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_sized":
        from pdeseg.checkpoint import load_checkpoint, save_checkpoint

        ckpt = load_checkpoint(sys.argv[2])
        ckpt["object_diameter"] = float(sys.argv[4])
        save_checkpoint(ckpt, sys.argv[3])
    else:
        sys.exit(main())
