"""The generic spine: layering, one-line config errors at the CLI, progress off a terminal,
and the same pipeline in 3D (patches, sliding window) as in 2D."""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from conftest import TINY_FEATURES, tiny_config_dict
from pdeseg.cli import main
from pdeseg.inference.options import InferenceOptions

SRC = Path(__file__).resolve().parents[1] / "src" / "pdeseg"


def _pdeseg_imports(path: Path) -> set[str]:
    """Every ``pdeseg...`` module a file imports (top level or inside functions), as
    ``scripts/import_graph.py`` (the graph a reader can print) reads them."""
    return _import_graph().pdeseg_imports(path)


@functools.cache
def _import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", SRC.parents[1] / "scripts" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_import_layering():
    assert _pdeseg_imports(SRC / "errors.py") == set(), "errors.py is a leaf: it imports nothing from pdeseg"
    assert _pdeseg_imports(SRC / "config.py") == {"pdeseg.errors"}, "config.py imports nothing from pdeseg but errors"
    lower = ("nn", "losses", "metrics", "data")
    upper = ("pdeseg.training", "pdeseg.inference", "pdeseg.experiments", "pdeseg.viz", "pdeseg.build", "pdeseg.cli")
    for package in lower:
        for path in (SRC / package).rglob("*.py"):
            bad = sorted(m for m in _pdeseg_imports(path) if m.startswith(upper))
            assert not bad, f"{path.relative_to(SRC)} imports {bad}"
    for path in (SRC / "inference").rglob("*.py"):
        bad = sorted(m for m in _pdeseg_imports(path) if m.startswith(("pdeseg.training", "pdeseg.experiments")))
        assert not bad, f"{path.relative_to(SRC)} imports {bad}"
    for package in ("data",):
        for path in (SRC / package).rglob("*.py"):
            assert not any(m.startswith("pdeseg.metrics") for m in _pdeseg_imports(path)), f"{path.name} imports metrics"
    for path in (SRC / "viz").rglob("*.py"):  # drawing takes arrays and never runs a model
        bad = sorted(m for m in _pdeseg_imports(path) if m.startswith(("pdeseg.inference", "pdeseg.checkpoint")))
        assert not bad, f"{path.relative_to(SRC)} imports {bad}"
    decode = _pdeseg_imports(SRC / "inference" / "decode.py")  # the decode step sits below inference orchestration
    assert not [m for m in decode if m.startswith("pdeseg.inference")], f"inference/decode.py imports {sorted(decode)}"


BAD_VALUES = [
    ("data.spatial_size=[a, b]", "data.spatial_size[0] = 'a'"),
    ("data.spatial_size=[64.5, 64]", "data.spatial_size[0] = 64.5"),
    ("data.split.fractions=[0.8, x, 0.1]", "data.split.fractions[1] = 'x'"),
    ("data.split.fractions=[0.8, 0.3, 0.1]", "sum to 1"),
    ("train.epochs=0", "train.epochs = 0"),
    ("train.lr=-1e-3", "train.lr = '-1e-3'"),
    ("train.precision=fp8", "train.precision = 'fp8'"),
    ("train.monitor=dice_men", "train.monitor 'dice_men' is not a validation metric"),
    ("train.device=gpu", "train.device = 'gpu'"),
    ("models=[{name: unet, kwargs: {featurs: [8,16,32,64,128]}}]", "featurs"),
    ("models=[{name: pde_unet}]", None),  # valid: the control row
    ("data.format=nifti", "data.format 'nifti' is not a registered data format"),
    ("data.modalities=[flair, dwi]", "data.modalities ['dwi'] are not brats channels"),
    ("data.mode=patches", "mode: patches needs spatial_size"),
    ("data.max_cases=3", "use data.train_cases"),
    ("loss.terms=[{name: dice, epsilon: 1}]", "unknown option(s) ['epsilon']"),
    ("bogus.key=1", "unknown key bogus"),
    ("train.device=cuda", "CUDA is not available"),
    ("data.format_options={label_convention: 2023}", "label_convention must be one of"),
]


@pytest.mark.parametrize("override,expected", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_config_values_exit_2_with_one_line(tmp_path, caplog, override, expected):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"name": "x", "output_dir": str(tmp_path / "runs")}))
    caplog.set_level(logging.ERROR)
    code = main(["train", "--config", str(cfg), "--data", str(tmp_path / "nowhere"), "--no-progress",
                 "--set", "train.lr=1e-3", "train.weight_decay=1e-4", override])  # 1e-3: YAML reads a string
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert code == 2 and len(errors) == 1 and "\n" not in errors[0], errors
    if expected is None:  # every value valid: it gets as far as the (missing) data folder
        assert "data folder not found" in errors[0]
    else:
        assert expected in errors[0], errors[0]
    assert not (tmp_path / "runs").exists(), "nothing is written for a bad config"


def test_bad_config_files_exit_2(tmp_path, caplog):
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\x89PNG\x00\xff\xfe")
    for path, text in ((listing, "top level must be a mapping"), (binary, "not a text file"),
                       (tmp_path / "missing.yaml", "config file not found")):
        caplog.clear()
        assert main(["train", "--config", str(path)]) == 2
        assert text in caplog.text and str(path.name) in caplog.text


def test_internal_bugs_show_their_traceback(monkeypatch):
    import pdeseg.cli as cli
    import pdeseg.cli.checkpoints as checkpoints

    def broken(args):
        raise RuntimeError("a bug, not a user mistake")

    monkeypatch.setattr(checkpoints, "cmd_models", broken)  # where the models parser takes its handler from
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["models"])


def test_progress_off_a_terminal_logs_lines_not_frames(caplog):
    from pdeseg.progress import track

    caplog.set_level(logging.INFO, logger="pdeseg.progress")
    bar = track(range(5), "caching cases", "case", terminal=False, interval=0.0)
    for i in bar:
        bar.set_postfix(loss=f"{i:.1f}")
    lines = [r.getMessage() for r in caplog.records]
    assert lines and all("\r" not in line for line in lines)
    assert lines[-1].startswith("caching cases: 5/5 (100%)") and "loss 4.0" in lines[-1]
    assert list(track(range(3), "x", enabled=False)) == [0, 1, 2]


def test_3d_patches_train_evaluate_and_predict_in_the_input_geometry(phantom_root, tmp_path):
    """The same spine in 3D: random patches, sliding-window validation and prediction."""
    from pdeseg.build import resolve
    from pdeseg.config import config_from_dict
    from pdeseg.inference.evaluate import evaluate_checkpoint
    from pdeseg.inference.folder import predict_folder
    from pdeseg.training.run import train_model

    d = tiny_config_dict(phantom_root, tmp_path, epochs=2)
    d["data"].update({"mode": "patches", "spatial_size": [16, 16, 16], "samples_per_case": 2})
    d["models"] = [{"name": "unet", "kwargs": {"features": TINY_FEATURES}}]
    cfg = config_from_dict(d)
    assert resolve(cfg).spec.spatial_dims == 3
    result = train_model(cfg, cfg.models[0], tmp_path / "run", progress=False)
    assert len(result.history) == 2 and 0 <= result.history[-1]["val_dice_WT"] <= 1
    summary = evaluate_checkpoint(tmp_path / "run" / "best.pt", tmp_path / "eval", split="test", with_hd95=True, progress=False)
    assert summary["cases"] == 2 and "hd95_WT" in summary["metrics"]
    out = predict_folder(tmp_path / "run" / "best.pt", phantom_root, tmp_path / "pred", progress=False).written
    ref = nib.load(str(next(phantom_root.iterdir()) / f"{next(phantom_root.iterdir()).name}_flair.nii.gz"))
    seg = nib.load(str(out[0]))
    assert seg.shape == ref.shape and np.allclose(seg.affine, ref.affine)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 4}
    with pytest.raises(ValueError, match="slice model"):
        evaluate_checkpoint(tmp_path / "run" / "best.pt", tmp_path / "eval2", scope="slices", progress=False)


def test_one_checkpoint_scores_the_same_through_evaluate_and_compare(phantom_root, tmp_path):
    """One scoring path: evaluate on the cache grid (reads the files into its cache) and compare's
    scorer (the training cache) agree exactly."""
    from pdeseg.build import resolve
    from pdeseg.config import config_from_dict
    from pdeseg.data.pipeline.prepare import prepare_data
    from pdeseg.experiments.compare import score_run
    from pdeseg.inference.evaluate import evaluate_checkpoint
    from pdeseg.training.run import train_model

    cfg = config_from_dict(tiny_config_dict(phantom_root, tmp_path, epochs=1))
    train_model(cfg, cfg.models[0], tmp_path / "run", progress=False)
    exp = resolve(cfg)
    data = prepare_data(exp.cfg.data, exp.spec, tmp_path / "run" / "split.json", progress=False)
    rows, _ = score_run(tmp_path / "run" / "best.pt", data.cases("test"), "volume", "32")
    summary = evaluate_checkpoint(tmp_path / "run" / "best.pt", tmp_path / "eval", InferenceOptions(precision="32"),
                                  split="test", progress=False, grid="cache")  # the input grid scores predict's files
    for key in ("dice_mean", "dice_WT", "dice_ET", "accuracy"):
        assert summary["metrics"][key]["mean"] == pytest.approx(np.mean([r[key] for r in rows]), abs=0), key


def test_resume_with_a_changed_epoch_count_is_refused_clearly(phantom_root, tmp_path):
    from pdeseg.config import config_from_dict
    from pdeseg.errors import RunFolderError
    from pdeseg.training.run import train_model

    cfg = config_from_dict(tiny_config_dict(phantom_root, tmp_path, epochs=2))
    train_model(cfg, cfg.models[0], tmp_path / "run", progress=False, stop_after=1)
    longer = config_from_dict(tiny_config_dict(phantom_root, tmp_path, epochs=5))
    with pytest.raises(RunFolderError, match="planned for 2 epochs.*train.epochs=2"):
        train_model(longer, longer.models[0], tmp_path / "run", resume=True, progress=False)


@pytest.mark.parametrize("value", ["-1", "0", "two"])
def test_predict_batch_size_must_be_positive(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--checkpoint", "x.pt", "--input", "in", "--output", "out", "--batch-size", value])
    assert exit_info.value.code == 2 and "--batch-size" in capsys.readouterr().err
