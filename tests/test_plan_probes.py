"""Probes of issue 32 for ``pdeseg plan``: a data set that cannot train is refused before a
plan is written, in one line that says why (exit 2): no foreground in any label, or fewer
cases than the plan's split needs (the minimum is named). Nothing is written, the data set's
files are unchanged."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pdeseg.cli import main
from test_output_ownership import checksums


def _task(root: Path, n_cases: int, empty_labels: bool = False) -> Path:
    from pdeseg.data.phantoms.msd import write_msd_phantom_dataset

    task = write_msd_phantom_dataset(root, n_cases=n_cases, seed=0, shape=(16, 16, 16))
    if empty_labels:
        for f in (task / "labelsTr").glob("*.nii.gz"):
            img = nib.load(f)
            nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), f)
    return task


@pytest.mark.parametrize("n_cases,empty,words", [(1, False, "a plan needs at least 3"),
                                                 (2, False, "a plan needs at least 3"),
                                                 (4, True, "holds any foreground")])
def test_plan_refuses_data_that_cannot_train(n_cases, empty, words, tmp_path, caplog):
    task = _task(tmp_path / "Task", n_cases, empty)
    before = checksums(task)
    out = tmp_path / "plan.yaml"
    caplog.clear()
    with caplog.at_level(logging.INFO):
        code = main(["plan", "--data", str(task), "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                     "--device", "cpu", "--time-budget", "1m", "--no-progress"])
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert code == 2 and len(errors) == 1, (code, errors)
    assert words in errors[0] and str(task) in errors[0], errors[0]
    assert not out.exists() and checksums(task) == before
