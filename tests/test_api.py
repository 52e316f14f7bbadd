"""The Python front door (pdeseg.load / Segmenter / create_model / list_models / train): the
README's example runs as written, predictions on arrays and on files agree, mistakes are
named, and importing pdeseg is cheap and leaves the matplotlib backend alone."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pdeseg
from pdeseg.errors import ConfigError, DataError

README = Path(__file__).resolve().parents[1] / "README.md"
MARK = "# pdeseg Python API example"


def readme_example() -> str:
    """The README's Python API example: the ```python block whose first line is MARK."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    found = [b for b in blocks if b.startswith(MARK + "\n")]
    assert len(found) == 1, f"README.md must hold one ```python block starting with {MARK!r}"
    return found[0]


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """Run the README example once in an empty folder: ``(folder, namespace, printed text)``."""
    where = tmp_path_factory.mktemp("readme_api")
    namespace: dict = {"__name__": "__readme__"}
    printed = io.StringIO()
    cwd = os.getcwd()
    os.chdir(where)
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(readme_example(), str(README), "exec"), namespace)
    finally:
        os.chdir(cwd)
    return where, namespace, printed.getvalue()


def test_readme_example_trains_loads_and_predicts(example):
    where, ns, printed = example
    seg, volume = ns["seg"], ns["volume"]
    assert (where / "api_demo" / "runs" / "api_demo" / "unet" / "best.pt").is_file()  # as pdeseg train --out writes it
    assert isinstance(seg, pdeseg.Segmenter)
    assert seg.modalities == ["flair", "t1", "t1ce", "t2"] and seg.spatial_dims == 2
    assert seg.classes == ["background", "NCR", "ED", "ET"]
    assert seg.spec.mode == "slices" and seg.model is seg.predictor.model
    k = len(seg.classes)
    labels, labels2d, probs = ns["labels"], ns["labels2d"], ns["probs"]
    assert volume.shape == (4, 32, 32, 16)
    assert labels.shape == volume.shape[1:] and labels.dtype == np.uint8
    assert labels2d.shape == volume.shape[1:3] and labels2d.dtype == np.uint8
    assert 0 <= labels.min() and labels.max() < k and labels2d.max() < k
    assert probs.shape == (k, 32, 32) and probs.dtype == np.float32
    assert np.abs(probs.sum(axis=0) - 1).max() < 1e-4 and probs.min() >= 0
    assert ns["labels_case"].shape == (32, 32, 16) and ns["labels_case"].dtype == np.uint8
    assert sum(p.numel() for p in ns["net"].parameters()) > 0
    assert "(32, 32, 16) (32, 32) (4, 32, 32)" in printed
    assert "['flair', 't1', 't1ce', 't2'] ['background', 'NCR', 'ED', 'ET'] 2" in printed
    assert f"{len(pdeseg.list_models())} registered models" in printed


def test_two_dimensional_image_matches_its_slice_of_the_volume(example):
    """A slice model segments a 2D image as the same slice of a volume (same normalisation)."""
    _, ns, _ = example
    seg, volume = ns["seg"], ns["volume"]
    one = volume[..., 8]
    labels, probs = seg.predict(one, probabilities=True)
    labels3, probs3 = seg.predict(one[..., None], probabilities=True)
    np.testing.assert_array_equal(labels, labels3[..., 0])
    np.testing.assert_array_equal(probs, probs3[..., 0])
    assert (probs.argmax(axis=0) == labels).all()  # no post-processing rules in the config


def test_predict_on_a_path_equals_predict_on_the_array_read_from_it(example):
    where, ns, _ = example
    seg = ns["seg"]
    folder = where / "api_demo" / "data" / "Phantom_002"
    case = seg.read(folder)
    assert case.image.shape == (4, 32, 32, 16) and case.image.dtype == np.float32
    from_path, probs_path = seg.predict(folder, probabilities=True)
    from_array, probs_array = seg.predict(case.image, spacing=case.spacing, probabilities=True)
    np.testing.assert_array_equal(from_path, from_array)
    np.testing.assert_array_equal(probs_path, probs_array)
    # one file of the case stands for the case; the spacing does not matter without target_spacing
    np.testing.assert_array_equal(seg.predict(str(folder / "Phantom_002_t1.nii.gz")), from_path)
    np.testing.assert_array_equal(seg.predict(case.image), from_path)


def test_predict_names_what_it_expects(example):
    where, ns, _ = example
    seg = ns["seg"]
    with pytest.raises(DataError, match=r"reads C = 4 channels \(flair, t1, t1ce, t2, in that order\).*got an array "
                                        r"with 3 channel\(s\), shape \(3, 32, 32\)"):
        seg.predict(np.zeros((3, 32, 32), np.float32))
    with pytest.raises(DataError, match=r"2D model expects an array shaped \(C, X, Y\) .* got shape \(4, 32\)"):
        seg.predict(np.zeros((4, 32), np.float32))
    with pytest.raises(DataError, match="NaN or infinite"):
        seg.predict(np.full((4, 8, 8), np.nan, np.float32))
    with pytest.raises(DataError, match=r"spacing must be 2 positive numbers"):
        seg.predict(np.zeros((4, 8, 8), np.float32), spacing=(1.0, 0.0))
    with pytest.raises(DataError, match="real-valued"):
        seg.predict(np.array([["a"]]))
    with pytest.raises(DataError, match="no such file"):
        seg.predict(where / "nothing_here")
    with pytest.raises(DataError, match="holds 4 brats cases"):
        seg.predict(where / "api_demo" / "data")


def _volume_segmenter(**spec_changes):
    """A Segmenter around an untrained 3D UNet (whole-volume mode), no checkpoint needed."""
    import torch

    from pdeseg.config import TaskSpec
    from pdeseg.inference.options import InferenceOptions
    from pdeseg.inference.predict import Predictor

    spec = TaskSpec(format="brats", modalities=["flair", "t1"], normalization="zscore", mode="whole",
                    spatial_dims=3, num_classes=2, class_names=["background", "tumour"], **spec_changes)
    net = pdeseg.create_model("unet", spatial_dims=3, in_channels=2, out_channels=2, features=[2, 4, 4, 4, 4])
    return pdeseg.Segmenter(Predictor(net, spec, torch.device("cpu"), InferenceOptions(precision="32")))


def test_a_volume_model_takes_volumes_only_and_asks_for_the_spacing_it_resamples_to():
    seg = _volume_segmenter()
    image = np.random.default_rng(0).uniform(0, 100, (2, 16, 16, 8)).astype(np.float32)
    labels, probs = seg.predict(image, probabilities=True)
    assert labels.shape == (16, 16, 8) and probs.shape == (2, 16, 16, 8)
    assert np.abs(probs.sum(axis=0) - 1).max() < 1e-4
    with pytest.raises(DataError, match=r"3D model expects an array shaped \(C, X, Y, Z\).*got shape \(2, 16, 16\)"):
        seg.predict(image[..., 0])
    resampling = _volume_segmenter(target_spacing=[2.0, 2.0, 2.0])
    with pytest.raises(DataError, match=r"trained resampled to \[2.0, 2.0, 2.0\] mm; pass .*spacing=\(s, s, s\)"):
        resampling.predict(image)
    labels = resampling.predict(image, spacing=(1.0, 1.0, 1.0))  # resampled to 8x8x4 and back to the input's grid
    assert labels.shape == (16, 16, 8)


def test_create_model_and_list_models():
    names = pdeseg.list_models()
    assert "unet" in names and "pde_unet" in names and names == sorted(names)
    with pytest.raises(ConfigError, match=r"unknown model 'unett'; registered models: .*\bunet\b"):
        pdeseg.create_model("unett")
    with pytest.raises(ConfigError, match="did you mean 'features'"):
        pdeseg.create_model("unet", featurs=[4, 8, 16, 32, 64])
    with pytest.raises(ConfigError, match="supports spatial_dims 2"):
        pdeseg.create_model("pde_unet", spatial_dims=3)
    with pytest.raises(ConfigError, match="5 feature widths"):
        pdeseg.create_model("unet", features=[4, 8])
    import torch

    net = pdeseg.create_model("unet", in_channels=1, out_channels=3, features=[4, 8, 16, 32, 64]).eval()
    assert net(torch.zeros(1, 1, 32, 32)).shape == (1, 3, 32, 32)


def test_train_refuses_what_it_cannot_train(tmp_path):
    with pytest.raises(ConfigError, match="config must be"):
        pdeseg.train(42, tmp_path / "run")
    with pytest.raises(ConfigError, match="config file not found"):
        pdeseg.train(tmp_path / "missing.yaml", tmp_path / "run")
    with pytest.raises(ConfigError, match="names model 'unet' twice"):
        pdeseg.train({"models": [{"name": "unet"}, {"name": "unet", "kwargs": {"dropout": 0.1}}]}, tmp_path / "run")
    assert not (tmp_path / "run").exists()



def test_train_writes_the_run_folders_pdeseg_train_writes(phantom_root, tmp_path, monkeypatch):
    """pdeseg.train(config, out) and pdeseg train --config --out go through one code path
    (training.run.train_models): the same run folder <out>/<config name>/<model>/ for every model."""
    import yaml

    from pdeseg.cli import main
    from pdeseg.training import run
    from pdeseg.training.trainer import TrainResult

    seen: list[Path] = []

    def fake_train_model(cfg, model_cfg, run_dir, **kwargs):
        seen.append(Path(run_dir))
        return TrainResult(Path(run_dir), 0.5, 1, [])

    monkeypatch.setattr(run, "train_model", fake_train_model)
    config = {"name": "same", "data": {"root": str(phantom_root), "cache_dir": str(tmp_path / "cache")},
              "models": [{"name": "unet"}, {"name": "pde_unet"}], "train": {"epochs": 1, "device": "cpu"}}
    results = pdeseg.train(config, tmp_path / "api", progress=False)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "cli"), "--no-progress"]) == 0
    api, cli = seen[:2], seen[2:]
    assert [p.relative_to(tmp_path / "api") for p in api] == [p.relative_to(tmp_path / "cli") for p in cli] \
        == [Path("same/unet"), Path("same/pde_unet")]
    assert {name: r.run_dir for name, r in results.items()} == dict(zip(["unet", "pde_unet"], api))


_IMPORTS = r"""
import sys
import matplotlib
before = matplotlib.get_backend()
import pdeseg
light = sorted(m for m in ("torch", "matplotlib.pyplot", "monai") if m in sys.modules)
pdeseg.Segmenter, pdeseg.load  # the API module itself stays light too
light_api = sorted(m for m in ("torch", "matplotlib.pyplot", "monai") if m in sys.modules)
import pdeseg.viz.figures, pdeseg.viz.cells, pdeseg.viz.pde_effect, pdeseg.viz.overlays, pdeseg.viz.report, pdeseg.cli
from pdeseg.viz.figures import plot_epoch_metrics
plot_epoch_metrics([{"epoch": 1, "train_loss": 1.0, "val_loss": 0.9}, {"epoch": 2, "train_loss": 0.5}], sys.argv[1])
print(before, matplotlib.get_backend(), light, light_api)
"""


def test_import_pdeseg_is_light_and_keeps_the_matplotlib_backend(tmp_path):
    """A notebook's backend (here the sentinel ``template``) survives importing pdeseg and its
    figure modules and writing a figure; ``import pdeseg`` imports neither torch nor pyplot."""
    env = {**os.environ, "MPLBACKEND": "template"}
    out = subprocess.run([sys.executable, "-c", _IMPORTS, str(tmp_path / "curves.png")], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[-2] == "template template [] []"
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
