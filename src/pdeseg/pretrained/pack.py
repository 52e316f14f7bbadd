"""Turn a trained checkpoint into a shipped model folder (``weights.pt``, ``card.yaml``,
``split.json``) and measure what its card states: ``scripts/make_pretrained.py`` is the command.

What is measured, on the run's own split (its ``split.json``, beside the checkpoint):

* ``object_diameter`` (cell models): the median equivalent diameter ``sqrt(4 area / pi)`` in
  pixels of the training images' objects, the size :mod:`pdeseg.inference.size` rescales to;
* float16 against float32 weights on the held-out images, both computed in fp32 on the CPU:
  the largest class-probability difference of any pixel, the share of pixels with the same
  class and (cell models) the DSB score of the float16 cells against the float32 cells. The
  weights are stored in float16 when the labels agree on at least :data:`MIN_LABEL_AGREEMENT`
  of the pixels and no probability moves by more than :data:`MAX_PROB_DIFF`, else in float32;
* the held-out scores of the very file written (``pdeseg evaluate --split test`` of it, fp32 on
  the CPU, object size not rescaled), which ``tests/test_pretrained.py`` reproduces.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pdeseg.checkpoint import load_checkpoint, preprocessing_spec, save_checkpoint
from pdeseg.errors import CheckpointError, DataError
from pdeseg.pretrained import CARD, SPLIT, WEIGHTS, read_card

log = logging.getLogger(__name__)

#: float16 weights are shipped only when at least this share of held-out pixels keep their class ...
MIN_LABEL_AGREEMENT = 0.999
#: ... and no class probability moves by more than this.
MAX_PROB_DIFF = 0.02
#: The issue's size limit for one shipped weights file.
MAX_BYTES = 10 * 2**20


def shipped_payload(ckpt: dict[str, Any], dtype: torch.dtype, name: str, object_diameter: float | None) -> dict[str, Any]:
    """The entries a shipped ``weights.pt`` keeps: model, weights (floating tensors in ``dtype``),
    spec, config, the training summary (no optimiser or RNG state), the object size."""
    state = {k: v.to(dtype) if torch.is_floating_point(v) else v for k, v in ckpt["state_dict"].items()}
    training = {k: ckpt.get("training", {}).get(k) for k in ("epoch", "best_epoch", "best_score")}
    payload = {"model": ckpt["model"], "state_dict": state, "preprocessing": ckpt["preprocessing"],
               "config": ckpt.get("config"), "training": training,
               "pretrained": {"name": name, "dtype": str(dtype).replace("torch.", "")}}
    if object_diameter is not None:
        payload["object_diameter"] = float(object_diameter)
    return payload


def training_object_diameter(entries: list) -> float:
    """Median equivalent diameter (px) of every object of cached cases (``.instances (Z, X, Y)``).

    Raises:
        DataError: no object in any of them.
    """
    from pdeseg.inference.size import equivalent_diameters

    d = [equivalent_diameters(np.moveaxis(np.asarray(e.instances), 0, -1)) for e in entries if e.instances is not None]
    d = np.concatenate(d) if d else np.zeros(0)
    if not d.size:
        raise DataError("no labelled object in the training cases to measure the object size from")
    return float(np.median(d))


def compare_precision(full: Path, half: Path, entries: list) -> dict[str, Any]:
    """float16 against float32 weights on cached cases (fp32 compute on the CPU, see the module
    docstring): ``max_prob_diff``, ``label_agreement`` (share of pixels), ``cases``; cell models
    also ``cells_dsb_vs_fp32`` and ``dsb_score_fp32`` / ``dsb_score_fp16`` (against the truth;
    means over images)."""
    from pdeseg.inference.options import InferenceOptions
    from pdeseg.inference.predict import Predictor
    from pdeseg.metrics.instances import dsb_score
    from pdeseg.nn.output import class_probabilities, predicted_classes

    options = InferenceOptions(device="cpu", precision="32", postprocess=False, diameter="off")
    a, b = Predictor.from_checkpoint(full, options), Predictor.from_checkpoint(half, options)
    max_diff, same, total, dsb, truth_dsb = 0.0, 0, 0, [], ([], [])
    for entry in entries:
        image = np.ascontiguousarray(np.moveaxis(np.asarray(entry.image, np.float32), 0, -1))  # (C, X, Y, Z)
        la, lb = a.predict_logits(image)[None], b.predict_logits(image)[None]
        pa, pb = class_probabilities(la, a.head), class_probabilities(lb, b.head)
        max_diff = max(max_diff, float((pa - pb).abs().max()))
        ca, cb = predicted_classes(la, a.head)[0].numpy(), predicted_classes(lb, b.head)[0].numpy()
        same, total = same + int((ca == cb).sum()), total + ca.size
        if a.representation is not None:
            ia, ib = a.cells(la[0], ca.astype(np.uint8)), b.cells(lb[0], cb.astype(np.uint8))
            dsb += [dsb_score(ib[..., z], ia[..., z]) for z in range(ia.shape[-1]) if ia[..., z].any()]
            if entry.instances is not None:  # both against the truth: what the rounding costs in score
                truth = np.moveaxis(np.asarray(entry.instances), 0, -1)
                for z in range(truth.shape[-1]):
                    truth_dsb[0].append(dsb_score(ia[..., z], truth[..., z]))
                    truth_dsb[1].append(dsb_score(ib[..., z], truth[..., z]))
    out = {"max_prob_diff": round(max_diff, 6), "label_agreement": round(same / max(total, 1), 6), "cases": len(entries)}
    if dsb:
        out["cells_dsb_vs_fp32"] = round(float(np.mean(dsb)), 4)
    if truth_dsb[0]:
        out["dsb_score_fp32"] = round(float(np.mean(truth_dsb[0])), 4)
        out["dsb_score_fp16"] = round(float(np.mean(truth_dsb[1])), 4)
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pack(checkpoint: str | Path, out: str | Path, *, name: str, data_root: str | Path, card: str | Path | None = None,
         split: str = "test", dtype: str = "auto", object_diameter: float | None = None, spread: float | None = None,
         progress: bool = False) -> dict[str, Any]:
    """Write a shipped model folder from a trained checkpoint and fill its card's measured fields.

    Args:
        checkpoint: the run's ``best.pt`` (its ``split.json`` beside it).
        out: the model folder (created; its ``weights.pt``, ``card.yaml`` and ``split.json``
            are replaced).
        name: the model's name (``nuclei``).
        data_root: the data set the run was trained on (the held-out cases are read there).
        card: the card to start from: a path, or None for the shipped card of ``name`` when
            there is one, else a card with only the measured fields.
        split: the held-out split the card's scores are measured on.
        dtype: ``auto`` (float16 when within the tolerances above), ``float16`` or ``float32``.
        object_diameter: the training object size in px (cell models); None: measured.
        spread: the sd of the held-out score over the recreate's seeds, when known.

    Returns:
        The card written.

    Raises:
        CheckpointError: not a checkpoint, or no ``split.json`` beside it.
        DataError: the data cannot be read.
    """
    import yaml

    from pdeseg.inference.evaluate import evaluate_checkpoint
    from pdeseg.inference.options import InferenceOptions
    from pdeseg.data.pipeline.prepare import load_cached_cases
    from pdeseg.data.pipeline.splits import load_split
    from pdeseg.pretrained import PRETRAINED

    checkpoint, out = Path(checkpoint), Path(out)
    split_file = checkpoint.parent / SPLIT
    if not split_file.is_file():
        raise CheckpointError(f"{split_file} not found: a shipped model's card is scored on its run's held-out split")
    ckpt = load_checkpoint(checkpoint)
    spec = preprocessing_spec(ckpt, checkpoint)
    ids = load_split(split_file)
    cache = Path(tempfile.mkdtemp(prefix="pdeseg_pack_"))
    try:
        cells = spec.instance_targets is not None
        if cells and object_diameter is None:
            object_diameter = training_object_diameter(
                [e for _, e in load_cached_cases(data_root, spec, cache / "cache", ids["train"], progress)])
        held_out = [e for _, e in load_cached_cases(data_root, spec, cache / "cache", ids[split], progress)]
        full, half = cache / "full.pt", cache / "half.pt"
        save_checkpoint(shipped_payload(ckpt, torch.float32, name, object_diameter), full)
        save_checkpoint(shipped_payload(ckpt, torch.float16, name, object_diameter), half)
        check = compare_precision(full, half, held_out)
        if dtype == "auto":
            dtype = "float16" if (check["label_agreement"] >= MIN_LABEL_AGREEMENT
                                  and check["max_prob_diff"] <= MAX_PROB_DIFF) else "float32"
        log.info("float16 vs float32 weights on %d held-out cases: %s -> shipped as %s", len(held_out), check, dtype)
        out.mkdir(parents=True, exist_ok=True)
        weights = out / WEIGHTS
        chosen = torch.float16 if dtype == "float16" else torch.float32
        save_checkpoint(shipped_payload(ckpt, chosen, name, object_diameter), weights)
        shutil.copyfile(split_file, out / SPLIT)
        options = InferenceOptions(device="cpu", precision="32", diameter="off")
        summary = evaluate_checkpoint(weights, cache / "eval", options, data_root=str(data_root), split=split,
                                      progress=progress)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    size = weights.stat().st_size
    if size > MAX_BYTES:
        log.warning("%s is %.1f MiB, above the %.0f MiB a shipped model may take", weights, size / 2**20, MAX_BYTES / 2**20)
    if card is None and name in PRETRAINED and (PRETRAINED[name].path / CARD).is_file():
        card = PRETRAINED[name].path / CARD
    filled = read_card(card) if card is not None else {
        "name": name, "summary": "", "task": "", "training_data": None, "weights_licence": None, "recreate": [],
        "held_out": {}, "inputs": {}, "limits": [], "weights": {}}
    filled["name"] = name
    held = dict(filled.get("held_out") or {})
    held.update(scored_on=split, cases=summary["cases"], metric=(ckpt.get("config") or {}).get("train", {}).get("monitor"),
                scores={k: round(float(v["mean"]), 4) for k, v in summary["metrics"].items()})
    if spread is not None:
        held["spread"] = float(spread)
    filled["held_out"] = held
    if object_diameter is not None:
        filled["inputs"] = {**(filled.get("inputs") or {}), "object_diameter_px": round(float(object_diameter), 2)}
    filled["weights"] = {**(filled.get("weights") or {}), "file": WEIGHTS, "dtype": dtype, "bytes": size,
                         "sha256": _sha256(weights), "half_precision_check": check,
                         "trained_epochs": (ckpt.get("training") or {}).get("epoch")}
    text = ("# Model card; measured fields written by scripts/make_pretrained.py "
            f"(pdeseg {ckpt.get('pdeseg_version', '?')} checkpoint {checkpoint.name}).\n")
    (out / CARD).write_text(text + yaml.safe_dump(filled, sort_keys=False, allow_unicode=True, width=120), encoding="utf-8")
    log.info("wrote %s (%s, %.2f MiB) and %s", weights, dtype, size / 2**20, out / CARD)
    return json.loads(json.dumps(filled))
