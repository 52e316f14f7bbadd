"""The 0.2 layout of pdeseg.data (readers/, phantoms/, pipeline/): every old module path still
imports for one release and hands out the same objects as its new module, old names included."""

from __future__ import annotations

import importlib

import pytest

MOVED = {
    "brats": "readers.brats", "msd": "readers.msd", "lgg": "readers.lgg", "livecell": "readers.livecell",
    "dsb": "readers.dsb", "image_sets": "readers.image_sets", "cells": "readers.cells", "nifti": "readers.nifti",
    "phantom": "phantoms.brats", "phantom_cells": "phantoms.cells", "phantom_msd": "phantoms.msd",
    "cache": "pipeline.cache", "sampling": "pipeline.sampling", "preprocess": "pipeline.preprocess",
    "transforms": "pipeline.transforms", "splits": "pipeline.splits", "objects": "pipeline.label_geometry",
    "setup": "pipeline.prepare",
}

#: Names imported through the old paths (by pdeseg.experiments and by code written before 0.2).
USED = {
    "setup": ["PreparedData", "prepare_data", "subsample_training", "draw_split", "steps_per_epoch"],
    "cache": ["CachedCase", "cache_case", "source_key"],
    "sampling": ["case_volume", "evaluation_slices", "select_slices", "SliceDataset"],
    "splits": ["kfold_splits", "save_split", "load_split"],
    "preprocess": ["Preprocessing", "nonzero_mask", "normalize"],
    "phantom": ["MODALITIES", "make_phantom_case", "write_phantom_dataset", "write_lgg_phantom_dataset", "_smooth_noise"],
    "phantom_cells": ["write_cell_phantom", "CELL_TYPES"],
    "phantom_msd": ["write_msd_phantom_dataset"],
    "objects": ["instances_from_mask", "boundary_targets", "predicted_instances"],
    "cells": ["ImageCase", "CellDataError", "label_image_reader"],
    "brats": ["find_cases", "load_case", "CLASS_NAMES"],
}

#: Renamed: (old module, old name) -> (new module, new name).
RENAMED = {
    ("setup", "cached_cases"): ("pipeline.prepare", "load_cached_cases"),
    ("cache", "cache_cases"): ("pipeline.cache", "write_cache"),
    ("cache", "_case_seed"): ("pipeline.cache", "_case_id_seed"),
    ("phantom", "_case_seed"): ("phantoms.brats", "phantom_case_seed"),
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_module_path_reexports_the_new_module(old):
    shim = importlib.import_module(f"pdeseg.data.{old}")
    new = importlib.import_module(f"pdeseg.data.{MOVED[old]}")
    assert "Moved to" in shim.__doc__ and MOVED[old] in shim.__doc__
    public = getattr(new, "__all__", None) or [n for n in vars(new) if not n.startswith("_")]
    missing = [n for n in public if getattr(shim, n, None) is not getattr(new, n)]
    assert not missing, f"pdeseg.data.{old} lacks {missing}"
    for name in USED.get(old, []):
        assert getattr(shim, name) is getattr(new, name), name


@pytest.mark.parametrize("old,name", sorted(RENAMED))
def test_old_names_are_the_new_functions(old, name):
    new_module, new_name = RENAMED[(old, name)]
    target = getattr(importlib.import_module(f"pdeseg.data.{new_module}"), new_name)
    assert getattr(importlib.import_module(f"pdeseg.data.{old}"), name) is target


def test_preprocess_spec_is_task_spec():
    from pdeseg.config import PreprocessSpec, TaskSpec

    assert PreprocessSpec is TaskSpec


def test_the_old_phantom_seed_still_draws_the_same_cases():
    from pdeseg.data.phantom import _case_seed
    from pdeseg.data.phantoms.brats import phantom_case_seed

    assert _case_seed(3, 1) == phantom_case_seed(3, 1)
