"""A small trained cell model for the tiled / OME / napari tests: a tiny boundary-class UNet
trained for 2 short epochs on the synthetic cell phantom (contrast inversion on, so it also finds
bright nuclei on a dark background). Made once per test session (about 10 s on 2 cores)."""

from __future__ import annotations

from pathlib import Path

TINY = [8, 16, 32, 64, 128]


def train_cell_model(out: Path, epochs: int = 2) -> Path:
    """Train and return the path of ``best.pt``."""
    import pdeseg
    from pdeseg.data.phantoms.cells import write_cell_phantom

    data = out / "cells"
    write_cell_phantom(data, n_per_type=4, seed=0)
    cfg = {
        "name": "tiny_cells",
        "data": {"root": str(data), "format": "livecell", "format_options": {"targets": "boundary"},
                 "cache_dir": str(out / "cache"), "modalities": ["grey"], "normalization": "zscore_all",
                 "mode": "slices", "slices": "all", "spatial_size": [64, 64], "crop": "random", "samples_per_case": 2,
                 "split": {"fractions": [0.75, 0.25, 0.0], "seed": 0},
                 "augment": {"enabled": True, "invert_prob": 0.5, "flip_prob": 0.5}},
        "models": [{"name": "unet", "kwargs": {"features": TINY}}],
        "train": {"epochs": epochs, "batch_size": 8, "lr": 3e-3, "seed": 0, "precision": "32", "monitor": "dice_cell",
                  "warmup_epochs": 0},
    }
    result = pdeseg.train(cfg, out / "run", progress=False)
    return Path(result.run_dir) / "best.pt"


def cell_data(checkpoint: Path) -> Path:
    """The phantom data set the model of :func:`train_cell_model` was trained on (``<out>/cells``;
    the checkpoint is ``<out>/run/<config name>/<model>/best.pt``)."""
    return Path(checkpoint).parents[3] / "cells"
