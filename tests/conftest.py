"""Shared fixtures: a tiny phantom BraTS set on disk and a tiny, fast experiment config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pdeseg.config import config_from_dict
from pdeseg.data.phantoms.brats import write_phantom_dataset

# the real samples live beside the checkout (../shared/data); PDESEG_SHARED_DATA points elsewhere
SHARED_DATA = Path(os.environ.get("PDESEG_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
TINY_FEATURES = [8, 16, 32, 64, 128]
#: Width keyword of the registered models that do not take per-level ``features``: the
#: smallest valid value (VNet has no width option at all).
_OTHER_WIDTHS = {"monai_swinunetr": {"feature_size": 12}, "monai_segresnet": {"init_filters": 8}, "monai_vnet": {}}


def tiny_model_kwargs(name: str, features=TINY_FEATURES) -> dict:
    """Keyword arguments that make the registered model ``name`` small: ``features`` for the
    models with per-level widths, the smallest valid width for the others."""
    return dict(_OTHER_WIDTHS.get(name, {"features": list(features)}))


def model_marks(name: str) -> list:
    """pytest marks for a registered model: SwinUNETR is skipped where ``einops`` is missing
    (a dependency of the package since SwinUNETR joined; an old environment may lack it)."""
    if name == "monai_swinunetr":
        try:
            import einops  # noqa: F401
        except ImportError:
            return [pytest.mark.skip(reason="monai_swinunetr needs einops (pip install -e . installs it)")]
    return []


def shared_data(sub: str) -> Path:
    """Path of a folder in ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / sub
    if not path.is_dir():
        pytest.skip(f"real sample data not present at {path} (only on the project's machines; set PDESEG_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom")
    write_phantom_dataset(root, n_cases=6, seed=3, shape=(32, 32, 16))
    return root


def ce_dice(ce: float = 1.0, dice: float = 1.0):
    """CE + soft Dice with these weights, composed from the loss registry as a config would."""
    from pdeseg.build import build_loss

    return build_loss(config_from_dict({"loss": {"terms": [{"name": "ce", "weight": ce}, {"name": "dice", "weight": dice}]}}).loss)


def tiny_config_dict(root: Path, out: Path, **train) -> dict:
    return {
        "name": "tiny",
        "output_dir": str(out),
        "data": {
            "root": str(root),
            "cache_dir": str(out / "cache"),
            "slices": "tumour",
            "split": {"fractions": [0.5, 0.25, 0.25], "seed": 0},
        },
        "models": [{"name": "unet", "kwargs": {"features": TINY_FEATURES}},
                   {"name": "pde_unet", "kwargs": {"features": TINY_FEATURES}}],
        "train": {"epochs": 2, "batch_size": 4, "lr": 3e-3, "precision": "32", "seed": 0, **train},
    }


@pytest.fixture
def tiny_config(phantom_root, tmp_path):
    return config_from_dict(tiny_config_dict(phantom_root, tmp_path))


@pytest.fixture(scope="session")
def cell_checkpoint(tmp_path_factory) -> Path:
    """A tiny boundary-class UNet trained for 2 epochs on the cell phantom (tests/cell_model.py)."""
    from cell_model import train_cell_model

    return train_cell_model(tmp_path_factory.mktemp("cell_model"))


# --- test lanes: `pytest -m "not slow"` is the quick lane (CONTRIBUTING.md) -----------------------------------
# Tests that train or take seconds are listed in tests/slow_tests.txt (one `file::test` or a whole `file` per line,
# parameters ignored), so that the lanes are kept in one place rather than in marks across every test file.
_SLOW_LIST = Path(__file__).with_name("slow_tests.txt")


def _slow_entries() -> set[str]:
    if not _SLOW_LIST.is_file():
        return set()
    lines = (line.split("#", 1)[0].strip() for line in _SLOW_LIST.read_text(encoding="utf-8").splitlines())
    return {line for line in lines if line}


def pytest_collection_modifyitems(config, items):
    slow = _slow_entries()
    for item in items:
        path = Path(str(item.fspath)).name
        test = item.nodeid.split("::", 1)[1].split("[", 1)[0] if "::" in item.nodeid else ""
        if path in slow or f"{path}::{test}" in slow:
            item.add_marker(pytest.mark.slow)
