"""The 0.2 layout of pdeseg.data (readers/, phantoms/, pipeline/): the old module paths, kept
through 0.3, are gone, and the new paths hold what they used to re-export."""

from __future__ import annotations

import importlib
import importlib.util

import pytest

#: Old path (removed after 0.3) -> the module that replaced it.
MOVED = {
    "brats": "readers.brats", "msd": "readers.msd", "lgg": "readers.lgg", "livecell": "readers.livecell",
    "dsb": "readers.dsb", "image_sets": "readers.image_sets", "cells": "readers.cells", "nifti": "readers.nifti",
    "phantom": "phantoms.brats", "phantom_cells": "phantoms.cells", "phantom_msd": "phantoms.msd",
    "cache": "pipeline.cache", "sampling": "pipeline.sampling", "preprocess": "pipeline.preprocess",
    "transforms": "pipeline.transforms", "splits": "pipeline.splits", "objects": "pipeline.label_geometry",
    "setup": "pipeline.prepare",
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_module_path_is_removed_and_the_new_one_imports(old):
    assert importlib.util.find_spec(f"pdeseg.data.{old}") is None, f"pdeseg.data.{old} is back"
    importlib.import_module(f"pdeseg.data.{MOVED[old]}")


def test_the_old_name_of_task_spec_is_removed():
    import pdeseg.config

    assert not hasattr(pdeseg.config, "PreprocessSpec") and hasattr(pdeseg.config, "TaskSpec")
