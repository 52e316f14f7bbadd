"""LIVECell's own files (../shared/data/livecell: LIVECell's release layout and json, 14 real
phase-contrast images), and cell ids past 8 and 16 bits through every step after the reader.
The real-data tests skip, with the reason, where the shared data are absent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import shared_data

from pdeseg.data.detect import detect_format
from pdeseg.data.readers.livecell import decode_instances, find_livecell_cases

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools, numpy 2


def _annotation_counts(root: Path) -> dict[str, int]:
    """Annotations per image stem, counted straight from the json files."""
    counts: dict[str, int] = {}
    for path in sorted((root / "annotations").rglob("livecell_coco_*.json")):
        doc = json.loads(path.read_text())
        images = doc["images"].values() if isinstance(doc["images"], dict) else doc["images"]
        anns = doc["annotations"].values() if isinstance(doc["annotations"], dict) else doc["annotations"]
        stems = {im["id"]: Path(im["file_name"]).stem for im in images}
        for stem in stems.values():
            counts.setdefault(stem, 0)
        for a in anns:
            counts[stems[a["image_id"]]] += 1
    return counts


@pytest.mark.shared_data
def test_every_shared_livecell_image_reads_with_all_its_cells():
    root = shared_data("livecell")
    assert detect_format(root) == "livecell"  # the release layout, without --format
    cases = find_livecell_cases(root)
    expected = _annotation_counts(root)
    assert sorted(c.case_id for c in cases) == sorted(expected)
    assert {c.domain for c in cases} == {"A172", "BT474", "HUH7", "SKOV3"}  # the cell type from the file name
    for case in cases:
        loaded = case.load(["grey"])
        assert loaded.image.shape == (1, 520, 704, 1)  # LZW TIFF decoded, 704x520
        assert float(np.std(loaded.image)) > 1.0  # real pixels, not a blank decode
        inst = np.asarray(loaded.instances)
        ids = np.unique(inst[inst > 0])
        # no annotation of these images loses all its pixels to an overlap (checked once by hand): every one is a cell
        assert len(ids) == expected[case.case_id], case.case_id
        assert ids.tolist() == list(range(1, len(ids) + 1))
    crowded = next(c for c in cases if c.case_id == "SKOV3_Phase_E4_1_02d12h00m_2")
    assert np.asarray(crowded.load(["grey"]).instances).max() == 279  # > 255: every id distinct


def _squares(n: int, shape=(520, 704), size: int = 5, step: int = 8) -> list[tuple[int, list]]:
    """``n`` polygon annotations of small squares on a grid."""
    out = []
    cols = shape[1] // step
    for k in range(n):
        y, x = (k // cols) * step + 1, (k % cols) * step + 1
        out.append((k + 1, [[x, y, x + size, y, x + size, y + size, x, y + size]]))
    return out


def test_decode_keeps_hundreds_of_cells_distinct():
    inst = decode_instances(_squares(800), (520, 704))  # LIVECell images hold up to about 800 cells
    assert inst.dtype == np.int32
    assert len(np.unique(inst)) - 1 == 800 and inst.max() == 800


def test_ids_past_16_bits_survive_targets_metrics_and_the_written_image(tmp_path):
    """After the reader (int32), ids travel through the training targets, the metrics and the
    instance image that predict writes; none of them may wrap ids into 8 or 16 bits."""
    from pdeseg.data.pipeline.representations import Representation
    from pdeseg.data.readers.cells import write_prediction
    from pdeseg.metrics.coco import coco_mask_ap
    from pdeseg.metrics.instances import instance_metrics

    inst = np.zeros((64, 64), np.int64)
    for k in range(64):  # 64 cells whose ids straddle 65,535 (and 255 + 65,536 = 65,791)
        y, x = (k // 8) * 8, (k % 8) * 8
        inst[y + 1:y + 7, x + 1:x + 7] = 65_500 + k * 5
    classes, maps = Representation("flows").targets(inst)
    assert int((classes > 0).sum()) == int((inst > 0).sum()) and maps.shape == (2, 64, 64)
    assert instance_metrics(inst, inst)["dsb_score"] == 1.0 and instance_metrics(inst, inst)["n_true"] == 64
    assert coco_mask_ap([(inst, inst)])["mask_ap"] == 1.0

    class _Case:
        case_id = "big_ids"
        semantic_only = False

    class _Loaded:
        case = _Case()

    write_prediction((inst > 0).astype(np.uint8)[..., None], _Loaded(), tmp_path, objects=inst[..., None])
    back = tifffile.imread(tmp_path / "big_ids_instances.tif")
    assert back.dtype == np.uint32
    assert np.array_equal(back, inst)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pdeseg.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.shared_data
@pytest.mark.slow
def test_fingerprint_train_evaluate_on_livecell_without_format(tmp_path):
    root = shared_data("livecell")
    fp = _cli("fingerprint", "--data", str(root), "--no-progress", cwd=tmp_path)
    assert fp.returncode == 0, fp.stderr[-2000:]
    assert "(format livecell), 14 labelled cases" in fp.stdout and "domains: A172 3, BT474 4, HUH7 3, SKOV3 4" in fp.stdout
    config = Path(__file__).resolve().parents[1] / "configs" / "cells_livecell_unseen_type.yaml"
    train = _cli("train", "--config", str(config), "--data", str(root), "--out", str(tmp_path / "runs"), "--no-progress",
                 "--set", "train.epochs=1", "train.warmup_epochs=0", "data.samples_per_case=2", "models=[{name: unet, kwargs: {features: [8, 16, 32, 64, 128]}}]",
                 cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    best = next((tmp_path / "runs").rglob("best.pt"))
    ev = _cli("evaluate", "--checkpoint", str(best), "--split", "test", "--out", str(tmp_path / "eval"), "--no-progress",
              cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr[-3000:]
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["cases"] == 4  # the unseen SKOV3 images
    assert set(summary["pooled"]) == {"mask_ap", "mask_ap50", "mask_ap75"}
    for key in ("mask_ap", "mask_ap50", "dsb_score", "bf1_2"):
        assert key in summary["metrics"]


def test_augmentation_and_flow_decoding_keep_hundreds_of_cells():
    """The training augmentation resamples instance ids by nearest neighbour (no id is invented or
    wrapped past 65,535), and the flows decode finds more than 255 cells in one image."""
    import torch

    from pdeseg.config import AugmentConfig
    from pdeseg.data.pipeline.instance_maps import instances_from_flows
    from pdeseg.data.pipeline.representations import FLOW_SCALE, Representation
    from pdeseg.data.pipeline.transforms import build_train_transform

    inst = np.zeros((160, 160), np.int64)
    for k in range(400):  # 400 cells of 6x6 px, ids 65,400 + 3k (past 65,535 from k = 46)
        y, x = (k // 20) * 8, (k % 20) * 8
        inst[y + 1:y + 7, x + 1:x + 7] = 65_400 + 3 * k
    transform = build_train_transform(AugmentConfig(enabled=True, rotate_deg=30, scale_range=0.1, affine_prob=1.0),
                                      (160, 160))
    transform.set_random_state(0)
    out = transform({"image": torch.rand(1, 160, 160), "label": torch.from_numpy(inst)[None].float()})
    label = np.asarray(out["label"])[0]
    assert set(np.unique(label).astype(np.int64)) <= set(np.unique(inst))  # nearest: only ids that were there
    assert len(np.unique(label)) - 1 > 300

    classes, maps = Representation("flows").targets(inst)
    found = instances_from_flows(classes > 0, maps / FLOW_SCALE)  # the targets' own flows, unit length
    assert found.dtype == np.int32 and found.max() == len(np.unique(found)) - 1
    assert found.max() >= 390  # every cell but a few at the image's edge
