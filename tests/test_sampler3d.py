"""The 3D data path: foreground locations in the cache, class-balanced patch sampling, 3D augmentation."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

import pdeseg.data.pipeline.cache as cache_mod
from pdeseg.config import AugmentConfig, config_from_dict
from pdeseg.errors import ConfigError
from pdeseg.data.phantoms.brats import write_phantom_dataset
from pdeseg.data.pipeline.cache import cache_case, foreground_locations
from pdeseg.data.pipeline.sampling import PatchDataset
from pdeseg.data.pipeline.transforms import build_train_transform
from pdeseg.data.readers.brats import find_cases

MODS = ["flair", "t1", "t1ce", "t2"]
SHAPE = (48, 48, 32)
PATCH = (16, 16, 8)
DRAWS = 400


def _case_with_label(root, prefix: str, raw_label: np.ndarray, seed: int):
    """A phantom BraTS case whose segmentation file is replaced by ``raw_label`` (BraTS raw values)."""
    folder = write_phantom_dataset(root, n_cases=1, seed=seed, shape=SHAPE, prefix=prefix)[0]
    affine = nib.load(str(folder / f"{folder.name}_flair.nii.gz")).affine
    nib.save(nib.Nifti1Image(raw_label.astype(np.int16), affine), folder / f"{folder.name}_seg.nii.gz")
    return find_cases(root)[0]


@pytest.fixture(scope="module")
def two_class(tmp_path_factory):
    """One case: class 1 a big box (8960 voxels), class 2 a 2x2x2 cube (8 voxels); both at
    least half a patch from every border, so a drawn centre is the patch's centre."""
    root = tmp_path_factory.mktemp("two_class")
    label = np.zeros(SHAPE, np.int16)
    label[10:26, 10:38, 6:26] = 1
    label[32:34, 30:32, 12:14] = 2
    case = _case_with_label(root / "data", "Two", label, seed=1)
    return case, cache_case(case, root / "cache", MODS)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One case whose only foreground is a 3x3x3 cube of class 1 (27 of 73728 voxels)."""
    root = tmp_path_factory.mktemp("tiny")
    label = np.zeros(SHAPE, np.int16)
    label[20:23, 24:27, 14:17] = 1
    case = _case_with_label(root / "data", "Tiny", label, seed=2)
    return case, cache_case(case, root / "cache", MODS)


def _centre_classes(ds: PatchDataset) -> np.ndarray:
    """Class of the centre voxel of every item of ``ds``."""
    c = tuple(p // 2 for p in PATCH)
    return np.array([int(ds[i]["label"][c]) for i in range(len(ds))])


def _within(share: float, p: float, n: int, sds: float = 4.0) -> bool:
    return abs(share - p) <= sds * math.sqrt(p * (1 - p) / n)


def test_foreground_locations_are_stored_per_class_and_deterministic(two_class, monkeypatch, tmp_path):
    case, entry = two_class
    fg = np.load(entry.path / "fg_locations.npy")
    assert fg.dtype == np.int32 and fg.ndim == 2 and fg.shape[1] == 4
    assert entry.meta["fg_classes"] == [1, 2] and entry.meta["fg_counts"] == [8960, 8]  # fewer than the cap: all kept
    assert entry.meta["fg_per_class"] == cache_mod.FG_LOCATIONS_PER_CLASS
    label = np.asarray(entry.label).transpose(1, 2, 0)  # (Z, X, Y) cache -> (X, Y, Z)
    assert (label[fg[:, 1], fg[:, 2], fg[:, 3]] == fg[:, 0]).all()
    small = entry.foreground(2)
    assert small.shape == (8, 3) and set(map(tuple, small.tolist())) == {
        (x, y, z) for x in (32, 33) for y in (30, 31) for z in (12, 13)}
    assert entry.foreground(3).shape == (0, 3)

    # a cap below the class size keeps a uniform sample without repeats, the same one every time
    loc, classes, counts = foreground_locations(label, case.case_id, per_class=500)
    assert classes == [1, 2] and counts == [500, 8] and loc.shape == (508, 4)
    assert len({tuple(r) for r in loc[:500].tolist()}) == 500 and (label[loc[:, 1], loc[:, 2], loc[:, 3]] == loc[:, 0]).all()
    assert np.array_equal(foreground_locations(label, case.case_id, per_class=500)[0], loc)
    assert not np.array_equal(foreground_locations(label, "another-case", per_class=500)[0], loc)
    # spread over the box, not its first rows: the sample's mean is near the box's centre
    assert np.allclose(loc[:500, 1:].mean(axis=0), [17.5, 23.5, 15.5], atol=2.0)

    # the cache uses the module's cap
    monkeypatch.setattr(cache_mod, "FG_LOCATIONS_PER_CLASS", 300)
    capped = cache_case(case, tmp_path / "cache", MODS)
    assert capped.meta["fg_counts"] == [300, 8] and capped.meta["fg_per_class"] == 300
    assert cache_mod.entry_problem(capped.path) is None


@pytest.mark.parametrize("damage", ["truncate", "delete", "wrong_class", "outside", "meta_counts"])
def test_damaged_fg_locations_are_named_and_rebuilt(two_class, tmp_path, caplog, damage):
    case, _ = two_class
    entry = cache_case(case, tmp_path / "cache", MODS)
    good = np.load(entry.path / "fg_locations.npy")
    path = entry.path / "fg_locations.npy"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "delete":
        path.unlink()
    elif damage in ("wrong_class", "outside"):
        bad = good.copy()
        if damage == "wrong_class":
            bad[-1, 0] = 1
        else:
            bad[0, 1] = SHAPE[0]
        np.save(path, bad)
    else:
        meta = json.loads((entry.path / "meta.json").read_text())
        meta["fg_counts"] = [8960, 7]
        (entry.path / "meta.json").write_text(json.dumps(meta))
    assert cache_mod.entry_problem(entry.path) is not None
    rebuilt = cache_case(case, tmp_path / "cache", MODS)
    assert rebuilt.path == entry.path and np.array_equal(np.load(path), good)
    assert str(entry.path) in caplog.text and "rebuilding" in caplog.text and "fg_locations" in caplog.text


def test_foreground_rate_matches_foreground_prob(two_class, tiny):
    _, entry = two_class
    fraction = sum(entry.meta["fg_counts"]) / np.prod(SHAPE)  # 8968 / 73728, about 0.12
    for prob in (0.0, 0.5, 1.0):
        ds = PatchDataset([entry], PATCH, samples_per_case=DRAWS, foreground_prob=prob, seed=11)
        share = float((_centre_classes(ds) > 0).mean())
        # a random centre lands on foreground with the volume fraction (the boxes are inside the
        # region a centre can reach unshifted), a foreground centre always
        expected = prob + (1 - prob) * fraction
        assert (share == 1.0) if prob == 1.0 else _within(share, expected, DRAWS), (prob, share, expected)

    _, small = tiny
    fraction = 27 / np.prod(SHAPE)
    none = PatchDataset([small], PATCH, samples_per_case=DRAWS, foreground_prob=0.0, seed=11)
    assert float((_centre_classes(none) > 0).mean()) <= fraction + 3 / DRAWS  # near 0.0004: at most a hit or so
    half = PatchDataset([small], PATCH, samples_per_case=DRAWS, foreground_prob=0.5, seed=11)
    assert _within(float((_centre_classes(half) > 0).mean()), 0.5 + 0.5 * fraction, DRAWS)


def test_classes_are_centres_equally_often_whatever_their_size(two_class):
    _, entry = two_class
    ds = PatchDataset([entry], PATCH, samples_per_case=DRAWS, foreground_prob=1.0, seed=4)
    centres = _centre_classes(ds)
    assert set(centres.tolist()) == {1, 2}
    assert _within(float((centres == 2).mean()), 0.5, DRAWS), np.bincount(centres)  # 8 voxels vs 8960
    # "any": labelled voxels uniformly, so the 8-voxel class is almost never a centre
    any_voxel = PatchDataset([entry], PATCH, samples_per_case=DRAWS, foreground_prob=1.0, seed=4, foreground_sampling="any")
    assert (_centre_classes(any_voxel) == 2).sum() <= 3
    with pytest.raises(ConfigError, match="foreground_sampling"):
        PatchDataset([entry], PATCH, foreground_sampling="largest")


def test_draws_are_a_function_of_seed_epoch_and_index(two_class):
    _, entry = two_class
    aug = AugmentConfig(affine_prob=1.0, gamma=0.3, noise_std=0.1, intensity_prob=1.0)

    def dataset(seed):
        return PatchDataset([entry], PATCH, samples_per_case=6, foreground_prob=0.5, seed=seed,
                            transform=build_train_transform(aug, PATCH, 3))

    ds = dataset(7)
    ds.set_epoch(3)
    forward = [ds[i] for i in range(6)]
    fresh = dataset(7)  # a resumed run: a new object, items asked for in another order
    fresh.set_epoch(3)
    backward = {i: fresh[i] for i in reversed(range(6))}
    for i, item in enumerate(forward):
        assert torch.equal(item["image"], backward[i]["image"]) and torch.equal(item["label"], backward[i]["label"])
    assert not all(torch.equal(forward[0]["image"], forward[i]["image"]) for i in range(1, 6))
    ds.set_epoch(4)
    assert not torch.equal(ds[0]["image"], forward[0]["image"])
    other = dataset(8)
    other.set_epoch(3)
    assert not torch.equal(other[0]["image"], forward[0]["image"])


@pytest.mark.parametrize("dims", [3, 2])
def test_elastic_deformation_keeps_shapes_and_label_values(dims):
    size = (32, 32, 16) if dims == 3 else (64, 64)
    aug = AugmentConfig(flip_prob=0.0, affine_prob=0.0, intensity_prob=0.0, elastic=True, elastic_prob=1.0)
    transform = build_train_transform(aug, size, dims)
    label = torch.zeros(1, *size)
    box = (slice(None),) + tuple(slice(s // 4, s // 2) for s in size)
    label[box] = 2
    label[(slice(None),) + tuple(slice(s // 2, s // 2 + 3) for s in size)] = 3
    image = torch.cat([label, -label]).float() + 0.1
    changed = 0
    for seed in range(4):
        transform.set_random_state(seed)
        out = transform({"image": image.clone(), "label": label.clone()})
        img, lab = torch.as_tensor(out["image"]), torch.as_tensor(out["label"])
        assert img.shape == image.shape and lab.shape == label.shape
        assert set(lab.unique().tolist()) <= {0.0, 2.0, 3.0}  # nearest neighbour, border padding: no new values
        agree = ((img[0] > 1.1) == (lab[0] > 0)).float().mean()  # image and label deformed together
        assert agree > 0.97, f"seed {seed}: {1 - agree:.1%} of voxels disagree"
        changed += not torch.equal(lab, label)
    assert changed >= 3  # it does deform


def test_patches_with_all_3d_augmentations_are_well_formed(two_class):
    _, entry = two_class
    aug = AugmentConfig(affine_prob=1.0, elastic=True, elastic_prob=1.0, gamma=0.3, noise_std=0.1, intensity_prob=1.0)
    ds = PatchDataset([entry], PATCH, samples_per_case=3, foreground_prob=1.0, seed=0, transform=build_train_transform(aug, PATCH, 3))
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (4, *PATCH) and item["image"].dtype == torch.float32
        assert item["label"].shape == PATCH and item["label"].dtype == torch.int64
        assert set(item["label"].unique().tolist()) <= {0, 1, 2} and torch.isfinite(item["image"]).all()


def test_gamma_and_noise_change_the_image_only():
    aug = AugmentConfig(flip_prob=0.0, affine_prob=0.0, brightness=0.0, contrast=0.0, gamma=0.4, noise_std=0.2,
                        intensity_prob=1.0)
    transform = build_train_transform(aug, (16, 16, 8), 3)
    image, label = torch.randn(2, 16, 16, 8), torch.randint(0, 3, (1, 16, 16, 8)).float()
    transform.set_random_state(0)
    out = transform({"image": image.clone(), "label": label.clone()})
    assert torch.equal(torch.as_tensor(out["label"]), label) and not torch.allclose(torch.as_tensor(out["image"]), image)
    off = build_train_transform(AugmentConfig(), (16, 16, 8), 3)
    names = [type(t).__name__ for t in off.transforms]
    assert not {"RandAdjustContrastd", "RandGaussianNoised", "Rand3DElasticd"} & set(names)  # off by default


def test_foreground_sampling_config():
    assert config_from_dict({}).data.foreground_sampling == "classes"
    assert config_from_dict({"data": {"foreground_sampling": "any"}}).data.foreground_sampling == "any"
    with pytest.raises(ConfigError, match="foreground_sampling"):
        config_from_dict({"data": {"foreground_sampling": "largest"}})


def test_slice_augmentation_is_drawn_per_item_whatever_the_read_order(phantom_root, tmp_path):
    """Slices (like patches) draw their augmentation from (seed, epoch, index): the same item
    comes back the same when read in another order, and changes with the epoch."""
    from pdeseg.build import resolve
    from pdeseg.config import config_from_dict
    from pdeseg.data.pipeline.prepare import prepare_data
    from pdeseg.data.pipeline.sampling import training_dataset
    from conftest import tiny_config_dict

    d = tiny_config_dict(phantom_root, tmp_path)
    d["data"]["augment"] = {"enabled": True, "flip_prob": 0.5, "affine_prob": 1.0, "intensity_prob": 1.0}
    cfg = config_from_dict(d)
    exp = resolve(cfg)
    data = prepare_data(cfg.data, exp.spec, progress=False)
    ds = training_dataset(data.cases("train"), exp.spec, cfg.data, seed=3)
    ds.set_epoch(1)
    forward = [ds[i]["image"] for i in range(4)]
    backward = [ds[i]["image"] for i in reversed(range(4))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward))
    ds.set_epoch(2)
    assert not torch.equal(ds[0]["image"], forward[0])
