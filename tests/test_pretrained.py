"""Shipped pretrained models (issue 35): the model table and cards, half-precision weights, the
CLI / API surfaces (``pdeseg models``, ``predict --model``, ``pdeseg.load(name)``, ``train --init``)
and object-size rescaling (``--diameter``, the automatic estimate). A tiny cell model trained in
seconds (``cell_checkpoint``) is packed by ``scripts/make_pretrained.py``'s code into a model
folder; the real shipped weights are checked against their cards only where they and the shared
data are installed."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import yaml
from scipy import ndimage
from torch import nn

from cell_model import cell_data
from conftest import shared_data
from pdeseg import pretrained
from pdeseg.cli import main
from pdeseg.config import TaskSpec
from pdeseg.errors import CheckpointError, ConfigError
from pdeseg.inference.options import InferenceOptions
from pdeseg.pretrained import CARD, PRETRAINED, SPLIT, WEIGHTS, Pretrained


@pytest.fixture(scope="module")
def packed(cell_checkpoint, tmp_path_factory):
    """The tiny cell model packed as a shipped model folder (held-out split: its val images)."""
    from pdeseg.pretrained.pack import pack

    out = tmp_path_factory.mktemp("packed") / "tinycells"
    card = pack(cell_checkpoint, out, name="tinycells", data_root=cell_data(cell_checkpoint), split="val")
    return out, card


@pytest.fixture
def in_table(packed, monkeypatch):
    """The packed model listed in the table as ``tinycells``."""
    folder, _ = packed
    monkeypatch.setitem(PRETRAINED, "tinycells", Pretrained("tinycells", "tiny test cells", folder))
    return folder


# --- the table and the cards -------------------------------------------------------------------------------------


def test_every_listed_model_has_a_complete_card_and_ships_no_stray_weights():
    for name, entry in PRETRAINED.items():
        card = pretrained.read_card(name)
        assert card["name"] == name
        assert card["recreate"] and all(c.startswith(("pdeseg ", "python ")) for c in card["recreate"])
        assert card["training_data"]["licence"] and card["weights_licence"]
        if entry.installed:  # shipped weights always come with their measured fields and split
            assert card["held_out"]["scores"] and card["weights"]["sha256"] and (entry.path / SPLIT).is_file()
            assert entry.weights.stat().st_size <= 10 * 2**20


def test_a_model_without_weights_is_listed_as_not_installed_and_refused_by_name(monkeypatch, tmp_path, capsys, caplog):
    folder = tmp_path / "nothing"
    folder.mkdir()
    (folder / CARD).write_text((PRETRAINED["nuclei"].path / CARD).read_text())
    monkeypatch.setitem(PRETRAINED, "absent", Pretrained("absent", "a model whose weights are missing", folder))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "absent" in out and "[weights not installed]" in out and "unet" in out  # the networks still listed
    assert main(["models", "absent"]) == 0
    out = capsys.readouterr().out
    assert "training_data" in out and "weights: not installed" in out
    with pytest.raises(CheckpointError, match="not installed.*pdeseg train --config configs/pretrained_nuclei.yaml"):
        pretrained.resolve("absent")
    caplog.set_level(logging.ERROR)
    assert main(["predict", "--model", "absent", "--input", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "not installed" in caplog.text


def test_unknown_model_names_exit_2_naming_the_shipped_ones(tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    assert main(["predict", "--model", "nucleus", "--input", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "nuclei" in caplog.text and "hippocampus" in caplog.text
    assert main(["models", "nucleus"]) == 2
    with pytest.raises(CheckpointError, match="neither a checkpoint file nor a shipped model"):
        pretrained.resolve("nucleus")
    with pytest.raises(SystemExit) as exc:  # --model and --checkpoint exclude each other
        main(["predict", "--model", "nuclei", "--checkpoint", "x.pt", "--input", ".", "--output", "o"])
    assert exc.value.code == 2


# --- packing: half precision, card fields ------------------------------------------------------------------------


def test_packed_weights_are_float16_and_load_as_float32_with_weights_only(packed, cell_checkpoint):
    from pdeseg.checkpoint import load_checkpoint

    folder, card = packed
    raw = torch.load(folder / WEIGHTS, weights_only=True)
    assert {v.dtype for v in raw["state_dict"].values() if v.is_floating_point()} == {torch.float16}
    assert "optimizer" not in raw and raw["object_diameter"] > 0
    loaded = load_checkpoint(folder / WEIGHTS)
    assert {v.dtype for v in loaded["state_dict"].values() if v.is_floating_point()} == {torch.float32}
    check = card["weights"]["half_precision_check"]
    assert card["weights"]["dtype"] == "float16" and check["label_agreement"] >= 0.999 and check["max_prob_diff"] <= 0.02
    assert (folder / WEIGHTS).stat().st_size < 0.6 * cell_checkpoint.stat().st_size  # float16 and no optimiser
    written = yaml.safe_load((folder / CARD).read_text())
    assert written["held_out"]["scores"]["dice_cell"] == card["held_out"]["scores"]["dice_cell"]
    assert written["inputs"]["object_diameter_px"] == pytest.approx(raw["object_diameter"], abs=0.01)
    assert (folder / SPLIT).is_file()


def test_the_packed_card_scores_are_those_evaluate_gives_the_shipped_file(packed, cell_checkpoint, tmp_path):
    from pdeseg.inference.evaluate import evaluate_checkpoint

    folder, card = packed
    options = InferenceOptions(device="cpu", precision="32", diameter="off")  # as the card is measured
    summary = evaluate_checkpoint(folder / WEIGHTS, tmp_path / "eval", options,
                                  data_root=str(cell_data(cell_checkpoint)), split="val", progress=False)
    for metric, value in card["held_out"]["scores"].items():
        assert summary["metrics"][metric]["mean"] == pytest.approx(value, abs=0.005), metric


# --- using a shipped model: API, CLI -----------------------------------------------------------------------------


def test_load_by_name_and_by_folder_gives_a_segmenter(in_table, cell_checkpoint):
    import pdeseg

    image = np.random.default_rng(0).normal(size=(1, 48, 40)).astype(np.float32)
    by_name = pdeseg.load("tinycells", device="cpu", precision="32", diameter="off")
    by_folder = pdeseg.load(str(in_table), device="cpu", precision="32", diameter="off")
    full = pdeseg.load(cell_checkpoint, device="cpu", precision="32")
    assert by_name.classes == full.classes and by_name.spec == full.spec
    _, p16 = by_name.predict(image, probabilities=True)
    _, p32 = full.predict(image, probabilities=True)
    assert np.abs(p16 - p32).max() < 0.02 and np.array_equal(by_name.predict(image), by_folder.predict(image))
    assert by_name.predict(image, cells=True).shape == (48, 40)


def test_predict_model_writes_instances(in_table, cell_checkpoint, tmp_path):
    images = cell_data(cell_checkpoint)
    out = tmp_path / "out"
    assert main(["predict", "--model", "tinycells", "--input", str(images), "--output", str(out), "--device", "cpu",
                 "--no-progress", "--diameter", "off"]) == 0
    assert list(out.rglob("*_instances.tif"))


def test_a_cell_model_segments_a_plain_folder_of_images_or_one_image_file(in_table, cell_checkpoint, tmp_path, caplog):
    """A user's own images need no data-set layout: a folder of image files, or one file, is
    segmented by any 2D cell model (its own format, LIVECell here, would need a COCO json), and
    the masks may not be written among the images (they would be read as images next time)."""
    import shutil

    plain = tmp_path / "my images"
    plain.mkdir()
    sources = sorted((cell_data(cell_checkpoint) / "images").rglob("*.tif"))[:2]
    for src in sources:
        shutil.copy(src, plain / src.name)
    args = ["--model", "tinycells", "--device", "cpu", "--no-progress", "--diameter", "off"]
    assert main(["predict", *args, "--input", str(plain), "--output", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{src.stem}{end}" for src in sources for end in ("_instances.tif", "_mask.png"))
    assert main(["predict", *args, "--input", str(plain / sources[0].name), "--output", str(tmp_path / "one")]) == 0
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == [f"{sources[0].stem}_instances.tif",
                                                                  f"{sources[0].stem}_mask.png"]
    caplog.clear()
    assert main(["predict", *args, "--input", str(plain), "--output", str(plain)]) == 2
    assert "is the folder of the images to segment" in caplog.text
    assert sorted(p.name for p in plain.iterdir()) == sorted(src.name for src in sources)  # nothing written there


def test_evaluate_takes_a_shipped_model_and_writes_outside_the_package(in_table, cell_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--model", "tinycells", "--data", str(cell_data(cell_checkpoint)), "--split", "all",
                 "--device", "cpu", "--no-progress", "--diameter", "off"]) == 0
    assert (tmp_path / "eval_tinycells_all_volume" / "summary.json").is_file()
    assert main(["evaluate", "--model", "nosuchmodel", "--no-progress"]) == 2


# --- fine-tuning ---------------------------------------------------------------------------------------------------


def _tiny_cfg(tmp_path, cell_checkpoint, **changes) -> dict:
    cfg = yaml.safe_load((cell_checkpoint.parent / "config.yaml").read_text())
    cfg["output_dir"] = str(tmp_path / "runs")
    cfg["name"] = "finetune"
    cfg["train"]["epochs"] = 1
    cfg.pop("num_classes", None)  # the data's (the saved config is the resolved one)
    for key, value in changes.items():
        section, field = key.split(".")
        cfg[section][field] = value
    return cfg


def test_train_init_starts_from_the_weights(in_table, cell_checkpoint, tmp_path):
    import pdeseg
    from pdeseg.checkpoint import load_checkpoint

    cfg = _tiny_cfg(tmp_path, cell_checkpoint)
    cfg["train"].update(init="tinycells", lr=1e-9, warmup_epochs=0)  # a step too small to move the weights visibly
    result = pdeseg.train(cfg, tmp_path / "run", progress=False)
    start = load_checkpoint(in_table / WEIGHTS)["state_dict"]
    tuned = load_checkpoint(result.run_dir / "best.pt")
    assert tuned["config"]["train"]["init"] == "tinycells"
    key = next(k for k, v in start.items() if v.is_floating_point() and v.dim() == 4)
    assert torch.allclose(tuned["state_dict"][key], start[key], atol=1e-3)


def test_train_init_without_config_fine_tunes_with_the_models_own_config(in_table, cell_checkpoint, tmp_path, capsys):
    from pdeseg.checkpoint import load_checkpoint

    out = tmp_path / "runs"
    assert main(["train", "--init", "tinycells", "--data", str(cell_data(cell_checkpoint)), "--out", str(out),
                 "--set", "train.epochs=1", "--no-progress"]) == 0
    config = out / "tiny_cells_finetune.yaml"
    assert str(config.resolve()) in capsys.readouterr().out
    tuned = load_checkpoint(out / "tiny_cells_finetune" / "unet" / "best.pt")
    assert tuned["config"]["train"]["init"] == "tinycells"
    assert tuned["preprocessing"] == load_checkpoint(in_table / WEIGHTS)["preprocessing"]  # the model's task spec


@pytest.mark.parametrize("change,message", [
    ({"models": [{"name": "unet", "kwargs": {"features": [4, 8, 16, 32, 64]}}]}, "model kwarg features"),
    ({"data.format_options": {"targets": "semantic"}}, "instance_targets"),
    ({"data.normalization": "minmax"}, "normalization"),
])
def test_train_init_refuses_another_network_or_task(in_table, cell_checkpoint, tmp_path, caplog, change, message):
    cfg = _tiny_cfg(tmp_path, cell_checkpoint)
    for key, value in change.items():
        if "." in key:
            section, field = key.split(".")
            cfg[section][field] = value
        else:
            cfg[key] = value
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    caplog.set_level(logging.ERROR)
    assert main(["train", "--config", str(path), "--init", "tinycells", "--no-progress"]) == 2
    assert message in caplog.text and "train.init" in caplog.text
    assert not (tmp_path / "runs" / "finetune" / "unet" / "best.pt").exists()


def test_check_compatible_names_the_model(packed):
    from pdeseg.checkpoint import load_checkpoint, preprocessing_spec
    from pdeseg.pretrained.init import check_compatible

    folder, _ = packed
    ckpt = load_checkpoint(folder / WEIGHTS)
    with pytest.raises(ConfigError, match="'unet' network, the config trains 'pde_unet'"):
        check_compatible(ckpt, folder, preprocessing_spec(ckpt), "pde_unet", ckpt["model"]["kwargs"])


# --- object size -------------------------------------------------------------------------------------------------

#: Diameter of the synthetic nuclei at scale 1 (px), the "training" object size of the stand-in model.
DIAMETER = 14.0


class _Threshold(nn.Module):
    """A stand-in cell network for the size machinery: cell where the normalised intensity is
    above 0 (semantic representation: cells are the connected components). Its cells are exact at
    every scale, so the test measures the estimate and the mapping back, not a network."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-4 * (x[:, :1] - 0.8), 4 * (x[:, :1] - 0.8)], dim=1)  # about half the disks' height


def _nuclei(scale: float, seed: int = 0) -> tuple[np.ndarray, int]:
    """A 160x160 fluorescence-like image of separate disks of diameter DIAMETER, resized by ``scale``
    (bilinear), and the number of disks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:160, :160]
    image, centres = np.zeros((160, 160)), []
    while len(centres) < 25:
        c = rng.uniform(12, 148, 2)
        if all(np.hypot(*(c - o)) > DIAMETER * 1.6 for o in centres):
            centres.append(c)
            image[np.hypot(yy - c[0], xx - c[1]) <= DIAMETER / 2] = 1.0
    image = ndimage.gaussian_filter(image, 1.0) * 200 + 20 + rng.normal(0, 3, image.shape)
    return ndimage.zoom(image, scale, order=1).astype(np.float32), len(centres)


def _size_segmenter(diameter):
    from pdeseg.api import Segmenter
    from pdeseg.inference.predict import Predictor

    spec = TaskSpec(format="livecell", modalities=["grey"], normalization="zscore_all", mode="slices", spatial_dims=2,
                    spatial_size=[64, 64], num_classes=2, output="softmax", class_names=["background", "cell"],
                    instance_targets="semantic", maps=[])
    predictor = Predictor(_Threshold(), spec, torch.device("cpu"), InferenceOptions(device="cpu", precision="32",
                                                                                    diameter=diameter))
    predictor.object_diameter = DIAMETER
    return Segmenter(predictor)


@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0])
def test_auto_size_estimate_recovers_the_rescale_factor_and_maps_cells_back(scale):
    """The estimate is the median equivalent diameter of the first pass's cells: within 10 % of
    the true factor at x0.5 and x2 (the disks' pixelation at x0.5 is the main error)."""
    from pdeseg.inference.size import median_diameter

    image, n = _nuclei(scale)
    seg = _size_segmenter("auto")
    cells = seg.predict(image[None], cells=True)
    estimate = seg.predictor.last_diameter
    assert estimate / DIAMETER == pytest.approx(scale, rel=0.10)
    assert cells.shape == image.shape  # mapped back to the input's grid
    assert int(cells.max()) == n
    assert median_diameter(cells) == pytest.approx(DIAMETER * scale, rel=0.12)


def test_an_explicit_diameter_rescales_to_the_training_size(monkeypatch):
    from pdeseg.inference import size

    seen = []
    original = size.rescale_planes
    monkeypatch.setattr(size, "rescale_planes", lambda image, f: seen.append((image.shape, f)) or original(image, f))
    image, n = _nuclei(2.0)
    cells = _size_segmenter(2 * DIAMETER).predict(image[None], cells=True)
    assert seen and seen[0][1] == pytest.approx(0.5) and cells.shape == image.shape and int(cells.max()) == n
    seen.clear()
    _size_segmenter("off").predict(image[None], cells=True)
    assert not seen  # off: the image's own scale


def test_diameter_is_refused_for_models_that_cannot_use_it(cell_checkpoint):
    import pdeseg

    with pytest.raises(ConfigError, match="does not state the object size"):
        pdeseg.load(cell_checkpoint, device="cpu", diameter=20).predict(np.zeros((1, 32, 32), np.float32))
    with pytest.raises(ConfigError, match="diameter must be"):
        InferenceOptions(diameter=-3)
    assert InferenceOptions(diameter="12").diameter == 12.0


def test_equivalent_diameter_of_a_disk_and_a_stack():
    from pdeseg.inference.size import equivalent_diameters, median_diameter

    yy, xx = np.mgrid[:64, :64]
    disk = (np.hypot(yy - 32, xx - 32) <= 10).astype(np.int32)
    assert equivalent_diameters(disk)[0] == pytest.approx(20, rel=0.03)
    stack = np.stack([disk, 2 * disk], -1)  # ids restart per plane: two objects
    assert equivalent_diameters(stack).size == 2 and median_diameter(np.zeros((4, 4), int)) is None
    assert math.isclose(float(equivalent_diameters(np.ones((2, 2), int))[0]), math.sqrt(16 / math.pi))


# --- the shipped models against their cards (only where installed, with the shared data) --------------------------

SHARED = {"nuclei": "dsb2018", "hippocampus": "msd_hippocampus/Task04_Hippocampus"}


@pytest.mark.shared_data
@pytest.mark.parametrize("name", list(SHARED))
def test_each_shipped_model_reproduces_its_card(name, tmp_path):
    from pdeseg.inference.evaluate import evaluate_checkpoint

    entry = PRETRAINED[name]
    if not entry.installed:
        pytest.skip(f"the weights of {name!r} are not installed ({entry.weights})")
    root = shared_data(SHARED[name])
    card = pretrained.read_card(name)
    held = card["held_out"]
    summary = evaluate_checkpoint(entry.weights, tmp_path / "eval", InferenceOptions(device="cpu", precision="32",
                                                                                      diameter="off"),
                                  data_root=str(root), split=held["scored_on"], progress=False)
    assert summary["cases"] == held["cases"]
    for metric, value in held["scores"].items():
        assert summary["metrics"][metric]["mean"] == pytest.approx(value, abs=0.005), metric


def test_the_shipped_models_segment_an_array_without_data_or_training():
    """In a fresh clone: pdeseg.load(NAME).predict(array) gives a label map (hippocampus) and cells
    (nuclei) from the package's own weights, nothing downloaded, no shared data needed."""
    import pdeseg

    for name in ("hippocampus", "nuclei"):
        if not PRETRAINED[name].installed:
            pytest.skip(f"the weights of {name!r} are not installed")
    rng = np.random.default_rng(0)
    hippo = pdeseg.load("hippocampus", device="cpu")
    labels = hippo.predict(rng.normal(300, 60, (1, 35, 51, 35)).astype(np.float32))
    assert labels.shape == (35, 51, 35) and labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2}
    nuclei = pdeseg.load("nuclei", device="cpu")
    image = np.full((1, 96, 96), 20.0, np.float32)
    yy, xx = np.mgrid[:96, :96]
    for cy, cx in ((24, 24), (24, 70), (70, 30), (68, 72)):  # four bright disks 18 px across
        image[0][(yy - cy) ** 2 + (xx - cx) ** 2 <= 81] = 200.0
    cells = nuclei.predict(image, cells=True)
    assert cells.shape == (96, 96) and 3 <= len(np.unique(cells[cells > 0])) <= 5


def test_the_napari_model_list_offers_installed_models_after_the_checkpoint_entry(monkeypatch, tmp_path):
    from pdeseg.napari_plugin._segment import CHECKPOINT_FILE, model_choices

    (tmp_path / WEIGHTS).write_bytes(b"")
    monkeypatch.setitem(PRETRAINED, "here", Pretrained("here", "installed", tmp_path))
    monkeypatch.setitem(PRETRAINED, "gone", Pretrained("gone", "not installed", tmp_path / "nothing"))
    choices = model_choices()
    assert choices[0] == CHECKPOINT_FILE and "here" in choices and "gone" not in choices
