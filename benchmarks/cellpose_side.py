#!/usr/bin/env python3
"""Cellpose 3, trained from scratch on the CPU, as the peer method on the DSB 2018 nuclei.

This script runs INSIDE Cellpose's own virtual environment (never pdeseg's: Cellpose is not a
pdeseg dependency, and this file imports nothing from pdeseg). Install, from the repository root::

    python3 -m venv benchmarks/.venv-cellpose
    benchmarks/.venv-cellpose/bin/pip install torch==2.13.0 'cellpose>=3.1,<4'

On the development machine that resolved to cellpose 3.1.1.3 with torch 2.13.0+cpu (the local
wheel pip finds), numpy 2.0.2, opencv-python-headless 5.1.0.95, fastremap 1.21.0, numba 0.68.1,
scipy 1.17.1, tifffile 2026.3.3 (``pip check``: no broken requirement; 1.6 GB venv). Cellpose 3.x
is the last major version whose network (the residual U-Net "CPnet") is trained from scratch;
Cellpose 4 is the SAM-based one and needs pretrained weights.

Usage (paths are examples)::

    PY=benchmarks/.venv-cellpose/bin/python
    nice -n 19 $PY benchmarks/cellpose_side.py train --data ../shared/data/dsb2018 \\
        --train-ids train_ids.txt --budget-s 900 --seed 0 --out bench_out/cellpose/seed0
    nice -n 19 $PY benchmarks/cellpose_side.py predict --model bench_out/cellpose/seed0 \\
        --data ../shared/data/dsb2018 --ids test_ids.txt --out bench_out/cellpose/seed0/pred

An ids file holds one image id (the ``stage1_train/<id>`` folder name) per line; blank lines,
``#`` comments, a header token ``image_id`` and any columns after the first are ignored (so
``domains.tsv`` itself, or a filtered copy of it, is a valid ids file).

Choices (each one is also written to ``train.json`` / ``predict.json``):

* **No pretrained weights, no downloads.** Before Cellpose is imported,
  ``CELLPOSE_LOCAL_MODELS_PATH`` is pointed at a fresh empty temporary folder (unless already
  set), and ``cellpose.utils.download_url_to_file`` (the only download path in Cellpose 3) is
  replaced by a function that raises. The network is built with
  ``CellposeModel(pretrained_model=False, model_type=None)`` - Cellpose logs
  ">>>> no model weights loaded" - so its weights are PyTorch's random initialisation, seeded.
* **Input.** Each image is read as grey: the mean of its red, green and blue channels in
  float32, the alpha channel dropped (a grey file is taken as is; grey + alpha: the grey) -
  the same ``grey`` channel as pdeseg's readers. It is given to Cellpose with
  ``channels=[0, 0]`` (grey, no nuclear channel) and Cellpose's default 2-channel network
  (``nchan=2``; the second input channel is zeros). Normalisation is Cellpose's own (per
  image, 1st-99th percentile), at training and at test time.
* **Labels.** The nucleus masks of an image (one 0/255 PNG each), in sorted file-name order,
  become ids 1..N of one int32 label image; a pixel claimed by several masks goes to the
  smallest nucleus (equal sizes: the first file), empty masks are left out - pdeseg's DSB
  reader rule, re-implemented here (grey images and label images were checked identical to
  pdeseg's reader on all 223 images). Cellpose's own ``dynamics.labels_to_flows`` turns them
  into its flow targets (computed once, timed, and counted in the training time: ``train_seg``
  would compute the same flows itself at its start).
* **Training.** Cellpose's own ``train.train_seg`` with the settings of its documented
  from-scratch command (``python -m cellpose --train --pretrained_model None``, whose CLI
  defaults are): SGD, learning rate 0.2, momentum 0.9, weight decay 1e-5, batch 8, 224x224
  crops, Cellpose's own augmentation (``random_rotate_and_resize``: random rotation, flip,
  scale, crop), its LR schedule (10-epoch linear warm-up; over 100 epochs the last 50 halve
  the rate every 5, over 300 the last 100 every 10), ``min_train_masks=5`` (images with fewer
  than 5 nuclei are dropped by Cellpose), an epoch = every (kept) training image once
  (Cellpose's default) unless the budget is too short for that (see "Time budget"), no
  intermediate checkpoints, default architecture (CPnet, nbase 32-64-128-256, 6.6 M
  parameters, 93 GFLOP forward + backward per 224x224 crop), CPU with MKL-DNN as Cellpose
  sets it, ``diam_mean`` 30.
* **Seed.** ``--seed`` seeds Python's, NumPy's and PyTorch's generators before the network is
  built, so it sets the initial weights. Note that ``train_seg`` itself reseeds NumPy with the
  epoch index at the start of every epoch, so the image order and the augmentation draws are
  the same for every seed: only the initialisation changes between seeds.
* **Sizes (diameters), default ``--size-mode native``.** The test side gets no ground-truth
  sizes, so neither does Cellpose: it trains *without* rescaling images to a common nucleus
  diameter (``train_seg(rescale=False)``, which widens Cellpose's random scale augmentation
  to x0.5-x1.5) and segments every test image at its own pixel size (``rescale=1``, i.e.
  ``diameter`` = the net's own ``diam_mean``); no size model, no true diameters. (Check:
  Cellpose's own mask reconstruction, at these settings, from the *true* flows of test images
  of all three domains recovers every nucleus, 1024x1024 brightfield included.) The
  alternative ``--size-mode train-mean`` is Cellpose's own default route for a custom model
  (CLI ``--diameter 0``): training rescales each image by its ground-truth mean diameter to
  ``diam_mean`` = 30 px, and every test image is rescaled by ``diam_mean / diam_labels``
  (the mean training-set diameter): again nothing from the test labels. ``predict`` reads the
  mode from ``train.json``.
* **Time budget -> epochs.** After the flows are computed (``flows_s``), a throwaway copy of
  the freshly initialised network is trained by ``train_seg`` for ``--calib-batches`` (4)
  batches, with a forward pre-hook recording when each batch starts. The median interval
  between batch starts is the time of one training step ``step_s`` (data augmentation,
  forward, backward, SGD step); the time before the first batch (``pre_s``: Cellpose's
  diameter and normalisation pass) and after the last (``post_s``: saving) are measured too.
  With ``avail = budget - flows_s - pre_s - post_s`` and ``steps = avail / step_s``:

  - the epoch size: Cellpose's own (every training image once) when the budget holds at
    least ``--min-epochs`` (101) such epochs; otherwise the epoch is shortened to
    ``batch * max(1, floor(steps / min_epochs))`` images (whole batches, which ``train_seg``
    samples at random with ``nimg_per_epoch``). Reason: Cellpose's LR schedule is per epoch
    (a 10-epoch linear warm-up from 0, then 0.2; above 100 epochs the last 50 halve it every
    5, above 300 the last 100 every 10). With Cellpose's own epochs a CPU budget buys only a
    few (one 8-crop step took 11-24 s on the 2-core development machine under ``nice -n 19``
    beside other trainings), so the whole run would sit in the warm-up - a 1-epoch run trains
    at LR 0 and learns nothing. With shorter epochs the same number of gradient steps
    follows the shape of Cellpose's intended schedule (warm-up, plateau, annealing tail).
    ``--min-epochs 0`` keeps Cellpose's own epoch whatever the budget; ``--nimg-per-epoch``
    sets it;
  - ``n_epochs = max(1, round(avail / epoch_s))`` with ``epoch_s = step_s * nimg_per_epoch /
    batch``: the nearest count, so the training may end a little over or under the budget
    (more when the machine's load changes after the calibration: a 90 s trial beside another
    training measured 11 s/step, then ran at 17.5 s/step and took 140 s).

  ``--epochs N`` skips the calibration and trains N epochs of all images (or
  ``--nimg-per-epoch``). The calibration time is reported (``calibration.calibration_s``)
  but is NOT part of the training time. ``train.json`` also records the LR schedule's first,
  last and highest value.
* **Reported training time** (``train_s`` in ``train.json``) is measured wall time:
  ``flows_s`` + the wall time of the ``train_seg`` call (which includes its set-up and saving).
  The same hook on the real network gives ``step_s_measured`` (median interval between
  steps) and ``epoch_s_measured`` (mean over its whole epochs).
  Image reading, the calibration and process start-up are reported separately.
* **Prediction.** ``CellposeModel.eval`` with Cellpose's defaults otherwise
  (``flow_threshold`` 0.4, ``cellprob_threshold`` 0, ``min_size`` 15, 224-px tiles with 10%
  overlap, no test-time augmentation, ``resample=True``), one image at a time at its own size;
  the seconds of each ``eval`` call are written to ``predict.json`` (the first one includes
  the warm-up of MKL-DNN). Labels are written as uint16 ``<id>.tif`` (tifffile).
* **Threads.** PyTorch's default (all cores) unless ``--threads`` is given; the number used is
  recorded.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Before Cellpose is imported: it reads CELLPOSE_LOCAL_MODELS_PATH at import time. An empty
# fresh folder means no cached or downloaded model can be found there.
if not os.environ.get("CELLPOSE_LOCAL_MODELS_PATH"):
    os.environ["CELLPOSE_LOCAL_MODELS_PATH"] = tempfile.mkdtemp(prefix="cellpose-no-models-")

import numpy as np  # noqa: E402
import tifffile  # noqa: E402
import torch  # noqa: E402
import cv2  # noqa: E402  (opencv-python-headless comes with Cellpose; Pillow does not)

import cellpose  # noqa: E402,F401
from cellpose import dynamics, models, train, utils  # noqa: E402

log = logging.getLogger("cellpose_side")

MODEL_NAME = "cellpose_dsb"
CHANNELS = [0, 0]  # grey, no nuclear channel
# the documented from-scratch command's CLI defaults (python -m cellpose --train --pretrained_model None)
TRAIN_SETTINGS = {
    "SGD": True, "learning_rate": 0.2, "momentum": 0.9, "weight_decay": 1e-5, "batch_size": 8,
    "bsize": 224, "min_train_masks": 5, "diam_mean": 30.0, "normalize": True,
}


def _no_download(url, dst, progress=True):  # pragma: no cover - must never run
    raise RuntimeError(f"cellpose_side: Cellpose tried to download {url} -> {dst}; pretrained weights are not allowed")


utils.download_url_to_file = _no_download
models.utils.download_url_to_file = _no_download


def _versions() -> dict:
    from importlib.metadata import version
    return {"cellpose": version("cellpose"), "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------

def read_ids(path: str | Path) -> list[str]:
    ids = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        tok = line.split()[0]
        if tok != "image_id":
            ids.append(tok)
    if not ids:
        raise SystemExit(f"{path}: no image ids")
    if len(set(ids)) != len(ids):
        raise SystemExit(f"{path}: an id is listed twice")
    return ids


def _stage1(root: Path) -> Path:
    return root / "stage1_train" if (root / "stage1_train").is_dir() else root


def _pixels(path: Path) -> np.ndarray:
    """The pixels of an image file, all channels kept (OpenCV's B, G, R(, A) order: the grey mean
    and the mask test below do not depend on the order; a palette PNG comes back as colour)."""
    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise SystemExit(f"{path}: unreadable image")
    return data


def read_grey(root: Path, image_id: str) -> np.ndarray:
    """The image as float32 grey: the mean of R, G, B (alpha dropped); a grey image as is.

    OpenCV gives (B, G, R, A); the alpha channel is the fourth in either order."""
    folder = _stage1(root) / image_id / "images"
    files = sorted(folder.glob(f"{image_id}.*"))
    if len(files) != 1:
        raise SystemExit(f"{folder}: expected one file {image_id}.<ext>, found {len(files)}")
    data = _pixels(files[0]).astype(np.float32)
    if data.ndim == 3 and data.shape[-1] == 2:  # grey + alpha
        data = data[..., 0]
    elif data.ndim == 3:
        data = data[..., :3].mean(axis=-1)
    if data.ndim != 2:
        raise SystemExit(f"{files[0]}: expected a 2D grey or RGB(A) image, got shape {data.shape}")
    return np.ascontiguousarray(data)


def read_instances(root: Path, image_id: str, shape: tuple[int, int]) -> np.ndarray:
    """int32 labels 1..N from the per-nucleus masks (sorted file names; overlaps to the smallest)."""
    pixels = []
    for path in sorted((_stage1(root) / image_id / "masks").glob("*.png")):
        m = _pixels(path)
        m = m[..., :3].max(axis=-1) if m.ndim == 3 else m
        if m.shape != shape:
            raise SystemExit(f"{path}: mask of size {m.shape} for an image of size {shape}")
        idx = np.flatnonzero(m)
        if len(idx):
            pixels.append(idx)
    flat = np.zeros(shape[0] * shape[1], np.int32)
    if pixels:
        sizes = np.array([len(p) for p in pixels])
        for k in np.lexsort((np.arange(len(pixels)), sizes))[::-1]:  # largest first, smallest wins
            flat[pixels[k]] = k + 1
    return flat.reshape(shape)


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------

class _StepClock:
    """Forward pre-hook: the perf_counter time at which each training batch starts."""

    def __init__(self, net: torch.nn.Module):
        self.times: list[float] = []
        self.handle = net.register_forward_pre_hook(lambda mod, inp: self.times.append(time.perf_counter()))

    def close(self):
        self.handle.remove()


def _train_call(net, data, flows, n_epochs, nimg_per_epoch, rescale, save_path, model_name):
    s = TRAIN_SETTINGS
    return train.train_seg(
        net, train_data=data, train_labels=flows, channels=CHANNELS, normalize=s["normalize"],
        SGD=s["SGD"], learning_rate=s["learning_rate"], momentum=s["momentum"],
        weight_decay=s["weight_decay"], batch_size=s["batch_size"], bsize=s["bsize"],
        min_train_masks=s["min_train_masks"], n_epochs=n_epochs, nimg_per_epoch=nimg_per_epoch,
        rescale=rescale, save_path=str(save_path), model_name=model_name, save_every=10**9)


def _lr_schedule(n_epochs: int, lr: float = TRAIN_SETTINGS["learning_rate"]) -> np.ndarray:
    """The per-epoch learning rates train_seg uses (a copy of Cellpose 3.1's rule, for the record)."""
    sched = np.append(np.linspace(0, lr, 10), lr * np.ones(max(0, n_epochs - 10)))
    if n_epochs > 300:
        sched = sched[:-100]
        for _ in range(10):
            sched = np.append(sched, sched[-1] / 2 * np.ones(10))
    elif n_epochs > 100:
        sched = sched[:-50]
        for _ in range(10):
            sched = np.append(sched, sched[-1] / 2 * np.ones(5))
    return sched[:n_epochs]


def cmd_train(a: argparse.Namespace) -> None:
    t_start = time.perf_counter()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.threads:
        torch.set_num_threads(a.threads)
    root = Path(a.data)
    ids = read_ids(a.train_ids)

    t0 = time.perf_counter()
    images = [read_grey(root, i) for i in ids]
    labels = [read_instances(root, i, im.shape) for i, im in zip(ids, images)]
    load_s = time.perf_counter() - t0
    counts = [int(lb.max()) for lb in labels]
    kept = [c >= TRAIN_SETTINGS["min_train_masks"] for c in counts]
    n_kept = int(sum(kept))
    if n_kept == 0:
        raise SystemExit("no training image has the minimum number of nuclei Cellpose requires")
    log.info("read %d images (%d with >= %d nuclei, used by Cellpose) in %.1f s", len(ids), n_kept,
             TRAIN_SETTINGS["min_train_masks"], load_s)

    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)
    model = models.CellposeModel(gpu=False, device=torch.device("cpu"), pretrained_model=False,
                                 model_type=None, diam_mean=TRAIN_SETTINGS["diam_mean"], nchan=2)
    assert not model.pretrained_model, "a pretrained model was loaded"
    rescale = a.size_mode == "train-mean"
    bs = TRAIN_SETTINGS["batch_size"]
    nimg_per_epoch = a.nimg_per_epoch or n_kept

    # Cellpose's flow targets, computed once (train_seg would do the same at its start)
    t0 = time.perf_counter()
    flows = dynamics.labels_to_flows([lb.copy() for lb in labels], files=None, device=torch.device("cpu"))
    flows_s = time.perf_counter() - t0
    log.info("flows of %d images in %.1f s", len(flows), flows_s)

    calib: dict = {}
    if a.epochs:
        n_epochs = a.epochs
        rule = f"--epochs {a.epochs} (no calibration)"
    else:
        net_c = copy.deepcopy(model.net)
        clock = _StepClock(net_c)
        with tempfile.TemporaryDirectory(prefix="cellpose-calib-") as tmp:
            c0 = time.perf_counter()
            _train_call(net_c, images, flows, 1, a.calib_batches * bs, rescale, tmp, "calib")
            c1 = time.perf_counter()
        clock.close()
        del net_c
        st = clock.times
        tau = statistics.median(np.diff(st)) if len(st) > 1 else (c1 - c0)
        pre_s, post_s = st[0] - c0, max(0.0, c1 - st[-1] - tau)
        avail = a.budget_s - flows_s - pre_s - post_s
        steps_avail = max(avail, 0.0) / tau
        full_epoch_steps = n_kept / bs  # Cellpose's own epoch: every kept image once
        if a.nimg_per_epoch:
            why = "--nimg-per-epoch"
        elif a.min_epochs <= 0 or steps_avail / full_epoch_steps >= a.min_epochs:
            nimg_per_epoch, why = n_kept, "Cellpose's default (all training images)"
        else:  # shorter epochs (whole batches, sampled by Cellpose), so the LR schedule fits the budget
            nimg_per_epoch = bs * max(1, int(steps_avail // a.min_epochs))
            why = f"shortened so that the budget holds >= {a.min_epochs} epochs (or 1-batch epochs)"
        epoch_s = tau * nimg_per_epoch / bs
        n_epochs = max(1, int(round(avail / epoch_s)))
        calib = {"calibration_s": c1 - c0, "batches": len(st), "step_s": tau, "pre_s": pre_s, "post_s": post_s,
                 "epoch_s_estimated": epoch_s, "nimg_per_epoch_rule": why,
                 "predicted_train_s": flows_s + pre_s + post_s + n_epochs * epoch_s}
        rule = ("nimg_per_epoch = all training images if the budget holds >= min_epochs such epochs, else "
                "batch * max(1, floor(steps_avail / min_epochs)); n_epochs = max(1, round((budget - flows_s - pre_s "
                "- post_s) / epoch_s)), epoch_s = step_s * nimg_per_epoch / batch")
        log.info("calibration: %.2f s/step, %d images/epoch (%s), %.1f s/epoch -> %d epochs for %.0f s",
                 tau, nimg_per_epoch, why, epoch_s, n_epochs, a.budget_s)

    clock = _StepClock(model.net)
    t0 = time.perf_counter()
    weights, train_losses, _ = _train_call(model.net, images, flows, n_epochs, nimg_per_epoch, rescale, out,
                                           MODEL_NAME)
    train_call_s = time.perf_counter() - t0
    clock.close()
    steps_per_epoch = math.ceil(nimg_per_epoch / bs)
    st = clock.times
    step_s_measured = float(np.median(np.diff(st))) if len(st) > 1 else None
    epoch_times = np.diff(st[::steps_per_epoch]).tolist()  # whole epochs (all but the last)
    epoch_s_measured = (float(np.mean(epoch_times)) if epoch_times
                        else step_s_measured * nimg_per_epoch / bs if step_s_measured else None)
    train_s = flows_s + train_call_s

    info = {
        "method": "Cellpose 3 trained from scratch (CPU)",
        "versions": _versions(),
        "model": str(Path(weights).resolve().relative_to(out.resolve())),
        "diam_mean": float(model.net.diam_mean.item()),
        "diam_labels": float(model.net.diam_labels.item()),
        "size_mode": a.size_mode,
        "train_rescale": rescale,
        "seed": a.seed,
        "budget_s": a.budget_s,
        "train_s": train_s,
        "flows_s": flows_s,
        "train_seg_call_s": train_call_s,
        "load_s": load_s,
        "n_epochs": n_epochs,
        "epoch_rule": rule,
        "calibration": calib,
        "epoch_s_measured": epoch_s_measured,
        "step_s_measured": step_s_measured,
        "lr_first_last": [float(x) for x in _lr_schedule(n_epochs)[[0, -1]]],
        "lr_max_reached": float(_lr_schedule(n_epochs).max()),
        "steps": len(st),
        "steps_per_epoch": steps_per_epoch,
        "nimg_per_epoch": nimg_per_epoch,
        "n_train_ids": len(ids),
        "n_train_used": n_kept,
        "train_ids_dropped_few_nuclei": [i for i, k in zip(ids, kept) if not k],
        "final_train_loss": float(train_losses[-1]),
        "train_losses": [float(x) for x in train_losses],
        "settings": {**TRAIN_SETTINGS, "channels": CHANNELS, "nchan": 2, "architecture": "CPnet default",
                     "augmentation": "cellpose.transforms.random_rotate_and_resize",
                     "scale_range": 1.0 if not rescale else 0.5, "pretrained": None},
        "threads": torch.get_num_threads(),
        "total_command_s": time.perf_counter() - t_start,
        "data": str(root.resolve()),
        "train_ids_file": str(Path(a.train_ids).resolve()),
    }
    (out / "train.json").write_text(json.dumps(info, indent=1) + "\n")
    log.info("trained %d epochs in %.1f s (budget %.0f s); model %s", n_epochs, train_s, a.budget_s, weights)


# --------------------------------------------------------------------------------------------
# prediction
# --------------------------------------------------------------------------------------------

def cmd_predict(a: argparse.Namespace) -> None:
    mdir = Path(a.model)
    meta = json.loads((mdir / "train.json").read_text())
    if a.threads:
        torch.set_num_threads(a.threads)
    model = models.CellposeModel(gpu=False, device=torch.device("cpu"), pretrained_model=str(mdir / meta["model"]),
                                 nchan=2)
    if meta["size_mode"] == "native":
        diameter, rescale = None, 1.0
    else:  # Cellpose's default for a custom model: the mean training diameter for every image
        diameter, rescale = float(model.diam_labels), None
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(a.data)
    per_image, objects = {}, {}
    for image_id in read_ids(a.ids):
        img = read_grey(root, image_id)
        t0 = time.perf_counter()
        masks, _flows, _styles = model.eval(img, channels=CHANNELS, diameter=diameter, rescale=rescale)
        per_image[image_id] = time.perf_counter() - t0
        masks = np.asarray(masks)
        if masks.max() > np.iinfo(np.uint16).max:
            raise SystemExit(f"{image_id}: {masks.max()} objects do not fit uint16")
        tifffile.imwrite(out / f"{image_id}.tif", masks.astype(np.uint16))
        objects[image_id] = int(len(np.unique(masks)) - (1 if (masks == 0).any() else 0))
        log.info("%s %s: %d objects in %.2f s", image_id[:12], img.shape, objects[image_id], per_image[image_id])
    secs = list(per_image.values())
    info = {
        "versions": _versions(), "model": str(mdir.resolve()), "size_mode": meta["size_mode"],
        "diameter": diameter, "rescale": rescale if rescale is not None else float(model.diam_mean / model.diam_labels),
        "eval_settings": {"channels": CHANNELS, "flow_threshold": 0.4, "cellprob_threshold": 0.0, "min_size": 15,
                          "bsize": 224, "tile_overlap": 0.1, "augment": False, "resample": True, "normalize": True},
        "threads": torch.get_num_threads(),
        "seconds_per_image": per_image, "mean_s": float(np.mean(secs)), "median_s": float(np.median(secs)),
        "total_s": float(np.sum(secs)), "objects": objects,
    }
    (out / "predict.json").write_text(json.dumps(info, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a Cellpose 3 network from scratch within a wall-time budget")
    t.add_argument("--data", required=True, help="the dsb2018 folder (or its stage1_train)")
    t.add_argument("--train-ids", required=True, help="file with one training image id per line")
    t.add_argument("--budget-s", type=float, required=True, help="wall-time budget of the training, seconds")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", required=True, help="output folder (model in OUT/models/, OUT/train.json)")
    t.add_argument("--size-mode", choices=("native", "train-mean"), default="native",
                   help="native: no rescaling, test at own pixel size (default); train-mean: Cellpose's "
                        "rescaling to diam_mean, test at the mean training diameter")
    t.add_argument("--epochs", type=int, default=0, help="train this many epochs instead of fitting the budget")
    t.add_argument("--nimg-per-epoch", type=int, default=None,
                   help="images per epoch (Cellpose's nimg_per_epoch; default: all training images)")
    t.add_argument("--min-epochs", type=int, default=101,
                   help="shorten epochs (whole batches) until the budget holds this many (default 101: Cellpose's "
                        "LR schedule has its annealing tail above 100 epochs); 0: always Cellpose's own epoch")
    t.add_argument("--calib-batches", type=int, default=4, help="batches of the timing calibration run")
    t.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's default)")
    q = sub.add_parser("predict", help="segment images with a trained model")
    q.add_argument("--model", required=True, help="the train --out folder")
    q.add_argument("--data", required=True)
    q.add_argument("--ids", required=True, help="file with one image id per line")
    q.add_argument("--out", required=True, help="folder for <id>.tif (uint16 labels) and predict.json")
    q.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    {"train": cmd_train, "predict": cmd_predict}[a.cmd](a)


if __name__ == "__main__":
    main()
