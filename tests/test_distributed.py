"""Scale-out: two CPU processes (gloo), launched by torchrun exactly as on a GPU cluster."""

import json
import subprocess
import sys

import yaml

from conftest import tiny_config_dict


def test_torchrun_two_processes_keep_identical_replicas(phantom_root, tmp_path):
    cfg = tiny_config_dict(phantom_root, tmp_path / "runs", epochs=2)
    cfg["models"] = cfg["models"][1:]  # pde_unet
    cfg["train"]["device"] = "cpu"
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           "-m", "pdeseg", "train", "--config", str(path), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "runs" / "tiny" / "pde_unet"
    replicas = json.loads((run_dir / "replicas.json").read_text())
    assert replicas["world_size"] == 2
    assert replicas["identical"] and replicas["digests"][0] == replicas["digests"][1]
    assert (run_dir / "best.pt").is_file() and (run_dir / "last.pt").is_file()
    assert not (run_dir / ".pdeseg.lock").exists(), "rank 0's run-folder lock is released when training returns"
    assert "joined process group: rank 1 of 2 (gloo)" in proc.stderr
