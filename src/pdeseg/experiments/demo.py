"""``pdeseg demo``: synthetic BraTS-like data -> UNet vs PDE-UNet compare -> table, figures, report.

Everything runs on the CPU in a few minutes and uses the real code paths: the phantom is
written as NIfTI files, read back by the BraTS reader, cached and split by patient; both
models are trained, their checkpoints chosen by validation Dice, the test cases are
segmented whole and scored in 3D, and ``pdeseg compare`` writes its table and report.
A freshly initialised UNet is scored too, as the floor that training must beat.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pdeseg.build import build_network, checkpoint_meta, resolve
from pdeseg.checkpoint import plain_state_dict, save_checkpoint
from pdeseg.config import config_from_dict
from pdeseg.data.phantoms.brats import write_phantom_dataset
from pdeseg.experiments.compare import run_compare, score_run
from pdeseg.runtime import seed_everything

log = logging.getLogger(__name__)

PHANTOM_SHAPE = (96, 96, 40)


def demo_config(data_root: Path, out: Path, epochs: int, seed: int) -> dict[str, Any]:
    return {
        "name": "demo",
        "output_dir": str(out / "runs"),
        "data": {
            "root": str(data_root),
            "cache_dir": str(out / "cache"),
            "slices": "tumour",
            "split": {"fractions": [0.75, 0.125, 0.125], "seed": seed},
        },
        "models": [{"name": "unet"}, {"name": "pde_unet"}],
        "train": {"epochs": epochs, "batch_size": 8, "lr": 3e-3, "seed": seed},
    }


def run_demo(
    out: str | Path = "demo_out", epochs: int = 6, cases: int = 12, seed: int = 0, shape: tuple[int, int, int] = PHANTOM_SHAPE
) -> dict[str, Any]:
    """Run the demo end to end; returns the report, table and untrained-floor paths and scores."""
    out = Path(out)
    data_root = out / "data"
    if not (data_root.is_dir() and len(list(data_root.iterdir())) >= cases):
        log.info("writing %d synthetic BraTS-like cases to %s", cases, data_root)
        write_phantom_dataset(data_root, n_cases=cases, seed=seed, shape=shape)
    cfg = config_from_dict(demo_config(data_root, out, epochs, seed))
    result = run_compare(cfg, out / "compare", seeds=[seed], scope="volume")
    floor = _untrained_floor(cfg, result.data.cases("test"), out / "untrained.pt")
    (out / "untrained.md").write_text(
        "A freshly initialised UNet scored on the same test cases (whole volumes): "
        f"Dice {floor['dice_mean']:.3f}, WT {floor['dice_WT']:.3f}: the floor a trained model must beat.\n"
    )
    return {"report": result.out_dir / "report.html", "table": result.out_dir / "table.md",
            "comparison": result.out_dir / "comparison.md", "untrained": floor, "result": result}


def _untrained_floor(cfg, test_cases: list, path: Path) -> dict[str, float]:
    """Test scores of a freshly initialised UNet (saved as a checkpoint, scored like the others)."""
    exp = resolve(cfg)
    m = exp.cfg.models[0]
    seed_everything(cfg.train.seed)
    model = build_network(exp, m)
    save_checkpoint({**checkpoint_meta(exp, m, model), "state_dict": plain_state_dict(model), "training": {"epoch": 0}}, path)
    rows, _ = score_run(path, test_cases, "volume", cfg.train.precision)
    return {k: sum(r[k] for r in rows) / len(rows) for k in ("dice_mean", "dice_WT")}


def cells_demo_config(data_root: Path, out: Path, epochs: int, seed: int) -> dict[str, Any]:
    """The microscopy demo: paper 004's unseen-type protocol on the synthetic cell phantom
    (train on ROUND and ELONGATED cells, test on CLUSTERED, touching ones), a boundary-class
    UNet, the plain loss against the phase-field + Allen–Cahn penalties."""
    base = [{"name": "ce", "weight": 1.0}, {"name": "dice", "weight": 1.0}]
    penalties = [{"name": "phase_field", "weight": 0.1, "eps": 1.0, "channels": "union", "start_epoch": 1},
                 {"name": "reaction_diffusion", "weight": 1.0, "channels": "union", "start_epoch": 1}]
    return {
        "name": "cells_demo",
        "output_dir": str(out / "runs"),
        "data": {
            "root": str(data_root), "format": "livecell", "format_options": {"targets": "boundary"},
            "cache_dir": str(out / "cache"), "modalities": ["grey"], "normalization": "zscore_all",
            "mode": "slices", "slices": "all", "spatial_size": [96, 96], "crop": "random", "samples_per_case": 2,
            "split": {"fractions": [0.8, 0.2, 0.0], "seed": seed,
                      "domains": {"train": ["ROUND", "ELONGATED"], "test": ["CLUSTERED"]}},
        },
        "models": [{"name": "unet", "kwargs": {"features": [16, 32, 64, 128, 256]}}],
        "loss": {"terms": base},
        "train": {"epochs": epochs, "batch_size": 8, "lr": 3e-3, "seed": seed, "monitor": "dice_cell",
                  "warmup_epochs": 0},
        "ablation": {"variants": [{"name": "plain"}, {"name": "pde_penalties", "loss.terms": base + penalties}]},
    }


def run_cells_demo(out: str | Path = "demo_cells_out", epochs: int = 8, n_per_type: int = 10, seed: int = 0,
                   progress: bool = True) -> dict[str, Any]:
    """Write the cell phantom (images + COCO json, three cell types), train on two types and
    segment the unseen third through ``pdeseg ablate`` (plain loss vs PDE penalties, paired
    tests); returns the report, table and result."""
    from pdeseg.data.phantoms.cells import write_cell_phantom
    from pdeseg.experiments.ablate import run_ablation

    out = Path(out)
    data_root = out / "data"
    if not (data_root / "annotations").is_dir():
        log.info("writing the synthetic cell phantom (%d images per cell type) to %s", n_per_type, data_root)
        write_cell_phantom(data_root, n_per_type=n_per_type, seed=seed)
    cfg = config_from_dict(cells_demo_config(data_root, out, epochs, seed))
    result = run_ablation(cfg, out / "ablate", None, [seed], progress=progress)
    return {"report": result.out_dir / "report.html", "table": result.out_dir / "results.md", "result": result}
