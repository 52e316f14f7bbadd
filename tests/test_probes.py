"""Probes: the bad inputs of issue 22, each run through the real command line
(:func:`pdeseg.cli.main`) on small shared phantoms.

Every probe asserts what the README promises for a user's mistake: exit code 2 (or the
documented behaviour, e.g. 1 when some outputs were written), one error line that names the
file, key or id, and no file or folder left behind. The phantoms, one trained checkpoint and
the configs are made once per module; each refusal happens before any training, so the whole
module runs in seconds.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_config_dict
from pdeseg.cli import main
from pdeseg.config import config_from_dict

# --------------------------------------------------------------------------------------
# shared phantoms and helpers
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("probes")


@pytest.fixture(scope="module")
def brats_cfg(phantom_root, work) -> dict:
    """The tiny BraTS-phantom config (one unet), outputs and cache below ``work``."""
    d = tiny_config_dict(phantom_root, work / "runs", epochs=1)
    d["models"] = d["models"][:1]
    d["data"]["cache_dir"] = str(work / "cache")
    return d


@pytest.fixture(scope="module")
def checkpoint(brats_cfg, work) -> Path:
    """One trained tiny checkpoint (1 epoch), for the evaluate and predict probes."""
    cfg = write_cfg(work / "train_ok.yaml", brats_cfg)
    assert main(["train", "--config", str(cfg), "--no-progress"]) == 0
    return work / "runs" / "tiny" / "unet" / "best.pt"


@pytest.fixture(scope="module")
def msd_task(work) -> Path:
    from pdeseg.data.phantoms.msd import write_msd_phantom_dataset

    return write_msd_phantom_dataset(work / "msd_task", n_cases=3, seed=0, shape=(16, 16, 16))


@pytest.fixture(scope="module")
def cells(work) -> Path:
    from pdeseg.data.phantoms.cells import write_cell_phantom

    return write_cell_phantom(work / "cells", n_per_type=2, seed=0)


def write_cfg(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def tree(folder: Path, skip: tuple[str, ...] = ()) -> set[Path]:
    """Every path below ``folder`` (folders and files), leaving out the top-level ``skip`` ones."""
    if not folder.exists():
        return set()
    return {p for p in folder.rglob("*") if p.relative_to(folder).parts[0] not in skip}


def run_cli(argv: list[str], caplog, watch: Path, skip: tuple[str, ...] = ()) -> tuple[int, list[str], set[Path]]:
    """``main(argv)``: its exit code, its ERROR lines, and the paths it created below ``watch``."""
    before = tree(watch, skip)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        code = main(argv)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    return code, errors, tree(watch, skip) - before


def refused(argv, caplog, watch: Path, *names: str, skip: tuple[str, ...] = ()) -> str:
    """Assert exit 2, one error line naming every one of ``names``, nothing created."""
    code, errors, created = run_cli([str(a) for a in argv], caplog, watch, skip)
    assert code == 2, (code, errors)
    assert len(errors) == 1, errors
    for name in names:
        assert name in errors[0], (name, errors[0])
    assert "Traceback" not in errors[0]
    assert not created, sorted(map(str, created))
    return errors[0]


def usage_error(argv, capsys, *names: str) -> str:
    """Assert argparse refuses ``argv`` with exit 2 and a line naming every one of ``names``."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    for name in names:
        assert name in err, (name, err)
    return err


def variant(base: dict, path: Path, **sections) -> Path:
    """A copy of ``base`` with top-level sections (dicts merged one level deep) replaced."""
    data = json.loads(json.dumps(base))
    for key, value in sections.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    return write_cfg(path, data)


# --------------------------------------------------------------------------------------
# 1. every value checked before any data are read or any folder is made
# --------------------------------------------------------------------------------------


def test_nested_options_take_scientific_notation_as_numbers(brats_cfg):
    from pdeseg.build import resolve

    d = json.loads(json.dumps(brats_cfg))
    d["models"][0]["kwargs"]["dropout"] = "1e-1"
    d["loss"] = {"terms": [{"name": "ce", "weight": "1e0"}, {"name": "dice", "eps": "1e-5"}]}
    d["ablation"] = {"variants": [{"name": "1e-3", "train.lr": "1e-3"}, {"name": "b", "dropout": "2E-1"}]}
    cfg = config_from_dict(d)
    assert cfg.models[0].kwargs["dropout"] == 0.1 and cfg.loss.terms[1].options == {"eps": 1e-5}
    assert cfg.ablation.variants[0] == {"name": "1e-3", "train.lr": 1e-3}  # a name stays text
    assert cfg.ablation.variants[1]["dropout"] == 0.2
    resolve(cfg)  # the model and the loss accept the numbers


@pytest.mark.parametrize("edit, names", [
    ({"models": [{"name": "unet", "kwargs": {"dropout": 1.5}}]}, ["dropout", "1.5"]),
    ({"loss": {"terms": [{"name": "ce", "class_weights": [1, 2]}]}}, ["loss.terms[0]", "class_weights", "4 classes"]),
    ({"loss": {"terms": [{"name": "dice", "eps": -1e-5}]}}, ["loss.terms[0]", "eps"]),
    ({"train": {"precision": "16-mixed"}}, ["16-mixed"]),
    ({"train": {"device": "cuda"}}, ["cuda", "not available"]),
])
def test_bad_values_are_refused_before_any_data_are_read(edit, names, brats_cfg, work, caplog):
    if "train" in edit and torch.cuda.is_available():
        pytest.skip("CUDA is present here")
    cfg = variant(brats_cfg, work / "bad.yaml", **edit)
    shutil.rmtree(work / "cache", ignore_errors=True)  # the cache too stays untouched
    refused(["train", "--config", cfg, "--no-progress"], caplog, work, *names, skip=("bad.yaml",))


@pytest.mark.parametrize("argv, names", [
    (["train", "--config", "c.yaml", "--stop-after", "0"], ["--stop-after", ">= 1"]),
    (["train", "--config", "c.yaml", "--stop-after", "-1"], ["--stop-after", ">= 1"]),
    (["train", "--config", "c.yaml", "--folds", "0"], ["--folds", "whole number >= 2"]),
    (["train", "--config", "c.yaml", "--folds", "1"], ["--folds", "whole number >= 2"]),
    (["evaluate", "--checkpoint", "x.pt", "--figures", "-1"], ["--figures", ">= 0"]),
    (["compare", "--config", "c.yaml", "--out", "o", "--seeds", "0"], ["--seeds", ">= 1"]),
    (["ablate", "--config", "c.yaml", "--out", "o", "--first-seed", "-2"], ["--first-seed", ">= 0"]),
    (["robustness", "--config", "c.yaml", "--out", "o", "--noise-seed", "-1"], ["--noise-seed", ">= 0"]),
    (["phantom", "--out", "o", "--cases", "0"], ["--cases", ">= 1"]),
    (["phantom", "--out", "o", "--shape", "0", "16", "16"], ["--shape", ">= 1"]),
    (["phantom", "--out", "o", "--format", "msd", "--spacing", "1", "0", "1"], ["--spacing", "> 0"]),
])
def test_option_ranges_are_checked_by_the_parser(argv, names, capsys):
    usage_error(argv, capsys, *names)


def test_folds_zero_and_one_get_one_message(capsys):
    assert (usage_error(["train", "--config", "c.yaml", "--folds", "0"], capsys).split(": ", 2)[-1].split(",")[0]
            == usage_error(["train", "--config", "c.yaml", "--folds", "1"], capsys).split(": ", 2)[-1].split(",")[0])


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
@pytest.mark.parametrize("command", ["compare", "robustness", "ablate"])
def test_studies_check_the_device_before_any_folder_or_data(command, brats_cfg, work, caplog):
    cfg = variant(brats_cfg, work / "study_cuda.yaml", train={"device": "cuda"})
    shutil.rmtree(work / "cache", ignore_errors=True)
    grid = ["--grid", "dropout=0,0.1"] if command == "ablate" else []
    refused([command, "--config", cfg, "--out", work / "study_cuda", "--seeds", "1", *grid, "--no-progress"], caplog, work,
            "cuda", "not available")


def test_ablate_refuses_a_model_outside_the_config_and_repeated_grid_values(brats_cfg, work, caplog):
    cfg = write_cfg(work / "ablate.yaml", brats_cfg)
    out = work / "ablation"
    refused(["ablate", "--config", cfg, "--out", out, "--model", "pde_unet", "--grid", "dropout=0,0.1"], caplog, work,
            "--model pde_unet", "unet")
    refused(["ablate", "--config", cfg, "--out", out, "--grid", "dropout=0,0.0"], caplog, work, "dropout=0,0.0", "twice")
    refused(["ablate", "--config", cfg, "--out", out, "--grid", "dropout=0,1.5"], caplog, work, "dropout", "1.5")


@pytest.mark.parametrize("argv, names", [
    (["--shape", "8", "8", "8"], ["phantom", "shape", ">= 16"]),
    (["--format", "lgg", "--shape", "8", "8", "8"], ["phantom", "shape"]),
    (["--format", "msd", "--shape", "8", "8", "8"], ["phantom", "shape"]),
])
def test_phantom_sizes_it_cannot_make_are_refused(argv, names, work, caplog):
    refused(["phantom", "--out", work / "ph_bad", *argv], caplog, work, *names)


def test_phantom_below_a_file_is_refused(work, caplog):
    (work / "a_file").write_text("x")
    refused(["phantom", "--out", work / "a_file" / "ph"], caplog, work, "--out", "a_file", "is a file")


# --------------------------------------------------------------------------------------
# 2. readers account for every file and entry
# --------------------------------------------------------------------------------------


def _msd_copy(msd_task: Path, dest: Path) -> Path:
    shutil.rmtree(dest, ignore_errors=True)
    return Path(shutil.copytree(msd_task, dest))


def _msd_cfg(work: Path, root: Path, **options) -> Path:
    return write_cfg(work / "msd.yaml", {
        "name": "msdprobe", "output_dir": str(work / "runs"),
        "data": {"root": str(root), "format": "msd", "format_options": options, "cache_dir": str(work / "cache"),
                 "mode": "slices", "slices": "all", "normalization": "zscore_all",
                 "split": {"fractions": [0.34, 0.33, 0.33], "seed": 0}},
        "models": [{"name": "unet", "kwargs": {"features": [8, 16, 32, 64, 128]}}],
        "train": {"epochs": 1, "batch_size": 4, "precision": "32"}})


@pytest.mark.parametrize("breakage, names", [
    ("image_missing", ["dataset.json", "hippophantom_002", "does not exist"]),
    ("label_without_image", ["labelsTr/hippophantom_009.nii.gz", "no image"]),
    ("num_training", ["numTraining is 7", "3 case(s)"]),
    ("not_listed", ["hippophantom_003", "not in the training list"]),
])
def test_msd_declared_and_on_disk_must_agree(breakage, names, msd_task, work, caplog):
    root = _msd_copy(msd_task, work / "msd_broken")
    meta = json.loads((root / "dataset.json").read_text())
    if breakage == "image_missing":
        (root / "imagesTr" / "hippophantom_002.nii.gz").unlink()
        (root / "labelsTr" / "hippophantom_002.nii.gz").unlink()
    elif breakage == "label_without_image":
        shutil.copy(root / "labelsTr" / "hippophantom_001.nii.gz", root / "labelsTr" / "hippophantom_009.nii.gz")
    elif breakage == "num_training":
        meta["numTraining"] = 7
    else:
        meta["training"] = meta["training"][:2]
        meta["numTraining"] = 3
    (root / "dataset.json").write_text(json.dumps(meta))
    cfg = _msd_cfg(work, root)
    refused(["train", "--config", cfg, "--no-progress"], caplog, work, *names, skip=("msd.yaml", "msd_broken"))


def test_msd_on_disk_option_reads_what_is_there_and_logs_the_rest(msd_task, work, caplog):
    from pdeseg.data.readers.msd import find_msd_cases

    root = _msd_copy(msd_task, work / "msd_partial")
    (root / "imagesTr" / "hippophantom_002.nii.gz").unlink()
    with caplog.at_level(logging.WARNING):
        cases = find_msd_cases(root, None, True, None, "on_disk")
    assert [c.case_id for c in cases] == ["hippophantom_001", "hippophantom_003"]
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "hippophantom_002" in logged and "numTraining is 3" in logged


def _coco_copy(cells: Path, dest: Path, edit) -> Path:
    shutil.rmtree(dest, ignore_errors=True)
    root = Path(shutil.copytree(cells, dest))
    path = root / "annotations" / "livecell_coco_train.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return root


def _move_first_polygon(data: dict, dx: float, dy: float) -> None:
    ann = data["annotations"][0]
    ann["segmentation"] = [[v + (dx if i % 2 == 0 else dy) for i, v in enumerate(part)] for part in ann["segmentation"]]


@pytest.mark.parametrize("edit, names", [
    (lambda d: _move_first_polygon(d, 500, 0), ["annotation 1 ", "covers no pixel", "empty_annotations"]),
    (lambda d: _move_first_polygon(d, -300, -300), ["annotation 1 ", "covers no pixel", "x -"]),
    (lambda d: d["annotations"][2].update(category_id=7), ["annotation 3 ", "category_id 7"]),
])
def test_coco_annotations_that_cannot_be_a_cell_are_named(edit, names, cells, work, caplog):
    root = _coco_copy(cells, work / "cells_broken", edit)
    cfg = write_cfg(work / "cells.yaml", {
        "name": "cellprobe", "output_dir": str(work / "runs"),
        "data": {"root": str(root), "format": "livecell", "cache_dir": str(work / "cache_cells"), "mode": "slices",
                 "slices": "all", "normalization": "zscore_all", "split": {"fractions": [0.5, 0.25, 0.25], "seed": 0}},
        "models": [{"name": "unet", "kwargs": {"features": [8, 16, 32, 64, 128]}}],
        "train": {"epochs": 1, "batch_size": 4, "precision": "32"}})
    refused(["train", "--config", cfg, "--no-progress"], caplog, work, "livecell_coco_train.json", *names,
            skip=("cells.yaml", "cells_broken", "cache_cells"))


def test_coco_skip_option_leaves_empty_annotations_out_and_logs_them(cells, work, caplog):
    from pdeseg.data.readers.livecell import find_livecell_cases

    root = _coco_copy(cells, work / "cells_skip", lambda d: _move_first_polygon(d, 500, 0))
    first = find_livecell_cases(root)[0]
    with pytest.raises(Exception, match="annotation 1 .*covers no pixel"):
        first.load(["grey"])
    skipping = find_livecell_cases(root, empty_annotations="skip")[0]
    assert skipping.convention != first.convention  # the cache tells the two apart
    with caplog.at_level(logging.WARNING):
        loaded = skipping.load(["grey"])
    assert loaded.label is not None and "annotation 1 " in " ".join(r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------------------
# 3. ensembles agree on the post-processing
# --------------------------------------------------------------------------------------


def test_ensemble_members_with_different_postprocessing_are_refused(checkpoint, phantom_root, work, caplog):
    other = work / "other" / "best.pt"
    other.parent.mkdir(exist_ok=True)
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["config"]["postprocess"]["min_component_fraction"] = 0.2
    torch.save(ckpt, other)
    case = sorted(p for p in phantom_root.iterdir() if p.is_dir())[0]
    line = refused(["predict", "--checkpoint", checkpoint, other, "--input", case, "--output", work / "pred_ens"],
                   caplog, work, "postprocess.min_component_fraction", str(other), str(checkpoint))
    assert "--no-postprocess" in line
    code, _, created = run_cli(["predict", "--checkpoint", str(checkpoint), str(other), "--input", str(case),
                                "--output", str(work / "pred_ens"), "--no-postprocess", "--no-progress"], caplog, work)
    assert code == 0 and created


# --------------------------------------------------------------------------------------
# 4. refusals leave nothing behind; exit codes mean what the README says
# --------------------------------------------------------------------------------------


def test_crossval_with_more_folds_than_cases_leaves_no_cv_folder(brats_cfg, work, caplog):
    cfg = write_cfg(work / "cv.yaml", brats_cfg)
    refused(["train", "--config", cfg, "--folds", "9", "--no-progress"], caplog, work, "--folds", skip=("cache",))
    assert not (work / "runs" / "tiny" / "unet" / "cv9").exists()


def test_refused_robustness_study_leaves_no_folder(brats_cfg, work, caplog):
    cfg = variant(brats_cfg, work / "rob.yaml", data={**brats_cfg["data"], "split": {"fractions": [0.75, 0.25, 0.0]}})
    refused(["robustness", "--config", cfg, "--out", work / "study", "--seeds", "1", "--no-progress"], caplog, work,
            "no test cases", skip=("cache", "rob.yaml"))


def test_dangling_symlink_run_folder_is_named_as_such(brats_cfg, work, caplog):
    out = work / "linked_runs"
    out.mkdir(exist_ok=True)
    (out / "tiny").symlink_to(work / "nowhere")
    cfg = variant(brats_cfg, work / "link.yaml", output_dir=str(out))
    line = refused(["train", "--config", cfg, "--no-progress"], caplog, work, "symbolic link", "nowhere",
                   skip=("link.yaml",))
    assert "is a file" not in line


def test_evaluate_out_that_cannot_be_written_is_refused_before_scoring(checkpoint, work, caplog):
    (work / "blocker").write_text("x")
    refused(["evaluate", "--checkpoint", checkpoint, "--out", work / "blocker" / "eval", "--no-progress"], caplog, work,
            "--out", "blocker", "is a file")
    link = work / "eval_link"
    link.symlink_to(work / "gone")
    refused(["evaluate", "--checkpoint", checkpoint, "--out", link / "eval", "--no-progress"], caplog, work,
            "--out", "eval_link", "symbolic link")


def test_crossval_against_a_table_without_shared_metrics_is_refused(work, caplog):
    cv = work / "fake_cv"
    cv.mkdir(exist_ok=True)
    (cv / "folds.json").write_text(json.dumps([{"train": ["a"], "val": [], "test": ["b"]}]))
    table = work / "other.csv"
    table.write_text("case,fold,accuracy\nb,0,0.9\n")
    refused(["crossval", str(cv), "--name", "again", "--against", table, "--no-progress"], caplog, work,
            "other.csv", "none of the compared metrics")
    assert not (cv / "again").exists()


def test_predict_exits_1_when_a_write_fails_after_some_cases_were_written(checkpoint, phantom_root, work, caplog,
                                                                          monkeypatch):
    from pdeseg.data.formats import DataFormat

    original, calls = DataFormat.write_prediction, []

    def full_disk_after_one(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DataFormat, "write_prediction", full_disk_after_one)
    code, errors, created = run_cli(["predict", "--checkpoint", str(checkpoint), "--input", str(phantom_root),
                                     "--output", str(work / "pred_full"), "--no-progress"], caplog, work)
    assert code == 1
    assert len([p for p in created if p.name.endswith("_seg.nii.gz")]) == 1
    assert len(errors) == 1 and "No space left" in errors[0] and "stopped after writing 1 of 6" in errors[0]


def test_a_start_that_fails_before_its_first_checkpoint_leaves_no_run_folder(brats_cfg, work, caplog, monkeypatch):
    from pdeseg.errors import DataError
    from pdeseg.training import run

    def fails(self, stop_after=None):
        assert (self.run_dir / "config.yaml").is_file()  # the run folder had its files when the fault came
        raise DataError("a fault in the first epoch")

    monkeypatch.setattr(run.Trainer, "fit", fails)
    cfg = variant(brats_cfg, work / "fault.yaml", output_dir=str(work / "fault_runs"))
    refused(["train", "--config", cfg, "--no-progress"], caplog, work, "a fault in the first epoch",
            skip=("cache", "fault.yaml"))
