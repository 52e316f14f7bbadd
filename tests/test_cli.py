import subprocess
import sys

import yaml

from conftest import tiny_config_dict
from pdeseg.cli import main


def test_models_lists_parameter_counts(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "unet" in out and "7,766,372" in out and "7,766,384" in out and "monai_unet" in out


def test_phantom_command_writes_brats_layout(tmp_path, capsys):
    assert main(["phantom", "--out", str(tmp_path), "--cases", "2", "--shape", "24", "24", "16"]) == 0
    names = sorted(p.name for p in (tmp_path / "Phantom_001").iterdir())
    assert names == [f"Phantom_001_{m}.nii.gz" for m in ("flair", "seg", "t1", "t1ce", "t2")]


def test_bad_data_folder_exits_with_clear_message(tmp_path, caplog):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"name": "x"}))
    assert main(["train", "--config", str(cfg), "--data", str(tmp_path / "nowhere"), "--no-progress"]) == 2
    assert "data folder not found" in caplog.text
    assert main(["train", "--config", str(cfg), "--no-progress"]) == 2
    assert "data.root is not set" in caplog.text


def test_cli_train_evaluate_predict_round_trip(phantom_root, tmp_path):
    cfg = tiny_config_dict(phantom_root, tmp_path / "runs", epochs=1)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = lambda *a: subprocess.run([sys.executable, "-m", "pdeseg", *a], capture_output=True, text=True, timeout=300)  # noqa: E731
    r = run("train", "--config", str(path), "--model", "unet", "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = tmp_path / "runs" / "tiny" / "unet" / "best.pt"
    r = run("evaluate", "--checkpoint", str(ckpt), "--split", "test", "--hd95", "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "hd95_WT" in r.stdout and "dice_mean" in r.stdout
    r = run("predict", "--checkpoint", str(ckpt), "--input", str(phantom_root), "--output", str(tmp_path / "seg"), "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(list((tmp_path / "seg").glob("*_seg.nii.gz"))) == 6


def test_repeated_set_flags_add_up_rather_than_replace_each_other():
    """``--set a=1 --set b=2`` keeps both overrides (argparse's default kept only the last one, silently)."""
    from pdeseg.cli import build_parser

    for command in (["train", "--config", "c.yaml"], ["compare", "--config", "c.yaml", "--out", "o"]):
        args = build_parser().parse_args([*command, "--set", "train.epochs=16", "--set", "data.modalities=[red]", "x=1"])
        assert args.set == ["train.epochs=16", "data.modalities=[red]", "x=1"], command
