import os

import numpy as np
import pytest
import torch

from pdeseg.config import AugmentConfig
from pdeseg.data.pipeline.cache import cache_case, write_cache
from pdeseg.data.pipeline.preprocess import nonzero_mask, normalize
from pdeseg.data.pipeline.sampling import PatchDataset, SliceDataset, VolumeDataset, fit_spatial, select_slices
from pdeseg.data.pipeline.transforms import build_train_transform
from pdeseg.data.readers.brats import find_cases


@pytest.fixture
def cached(phantom_root, tmp_path):
    return write_cache(find_cases(phantom_root), tmp_path / "cache", ["flair", "t1", "t1ce", "t2"], progress=False)


def test_zscore_inside_brain_mask_and_zero_outside():
    rng = np.random.default_rng(0)
    image = np.zeros((2, 10, 10, 4), np.float32)
    image[:, 2:8, 2:8] = rng.normal(100, 20, (2, 6, 6, 4))
    mask = nonzero_mask(image)
    out = normalize(image, "zscore")
    assert np.allclose(out[:, mask].mean(axis=1), 0, atol=1e-5) and np.allclose(out[:, mask].std(axis=1), 1, atol=1e-4)
    assert (out[:, ~mask] == 0).all()
    mm = normalize(image, "minmax")
    assert mm.min() == 0 and mm.max() == pytest.approx(1)
    full = normalize(image, "zscore_all")  # every voxel counts: the zero background too
    assert abs(full.mean()) < 1e-5 and (full[:, ~mask] != 0).all()


def test_ct_window_clips_then_standardises_inside_the_window():
    ct = np.array([[[-1000.0, -50.0, 0.0, 50.0, 100.0, 2000.0]]])  # air, soft tissue, bone
    out = normalize(ct, "ct", [-100, 200])
    inside = np.array([-50.0, 0.0, 50.0, 100.0])
    assert out[0, 0, 1:5] == pytest.approx((inside - inside.mean()) / inside.std(), rel=1e-5)
    assert out[0, 0, 0] == pytest.approx((-100 - inside.mean()) / inside.std(), rel=1e-5)  # clipped to the window
    assert out[0, 0, 5] == pytest.approx((200 - inside.mean()) / inside.std(), rel=1e-5)


def test_cache_layout_reuse_and_invalidation(phantom_root, tmp_path, cached):
    c = cached[0]
    assert c.image.shape == (16, 4, 32, 32) and c.image.dtype == np.float16
    assert c.label.shape == (16, 32, 32) and c.label.dtype == np.uint8
    assert set(c.slices("tumour")) <= set(c.slices("brain"))
    case = find_cases(phantom_root)[0]
    assert cache_case(case, tmp_path / "cache", ["flair", "t1", "t1ce", "t2"]).path == c.path  # reused
    assert cache_case(case, tmp_path / "cache", ["flair", "t1ce"]).path != c.path  # other settings, other entry
    st = case.images["t2"].stat()
    os.utime(case.images["t2"], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # "edited" file
    try:
        assert cache_case(case, tmp_path / "cache", ["flair", "t1", "t1ce", "t2"]).path != c.path
    finally:
        os.utime(case.images["t2"], ns=(st.st_atime_ns, st.st_mtime_ns))


def test_slice_selections(cached):
    c = cached[0]
    tumour = c.slices("tumour")
    assert select_slices(c, "middle") == [8]
    assert select_slices(c, "tumour_middle") == [tumour[len(tumour) // 2]]
    assert select_slices(c, "range", [5, 150]) == list(range(5, 16))
    assert select_slices(c, "all") == list(range(16))
    with pytest.raises(ValueError, match="slice_range"):
        select_slices(c, "range")


def test_augmented_items_are_plain_tensors(cached):
    ds = SliceDataset(cached, "tumour", transform=build_train_transform(AugmentConfig(), (32, 32)))
    item = ds[0]
    assert type(item["image"]) is torch.Tensor and type(item["label"]) is torch.Tensor  # not MONAI MetaTensor


def test_slice_dataset_items(cached):
    ds = SliceDataset(cached, "middle", spatial_size=[48, 40])
    assert len(ds) == len(cached)
    item = ds[0]
    assert item["image"].shape == (4, 48, 40) and item["label"].shape == (48, 40)  # no padding to a multiple: models pad
    assert item["label"].dtype == torch.int64
    with pytest.raises(ValueError, match="no cases"):  # DataError is a ValueError
        SliceDataset([], "middle")
    odd = type(cached[0])(cached[0].case_id + "_big", cached[0].path, {**cached[0].meta, "shape": [48, 32, 16]})
    with pytest.raises(ValueError, match="different slice sizes"):
        SliceDataset([cached[0], odd], "middle")
    assert len(SliceDataset([cached[0], odd], "middle", spatial_size=[32, 32])) == 2


def test_fit_spatial_resize_keeps_labels_integral_and_crops_in_3d():
    image, label = torch.randn(2, 50, 70), torch.randint(0, 4, (50, 70))
    im, lab = fit_spatial(image, label, [32, 32], resize=True)
    assert im.shape == (2, 32, 32) and set(lab.unique().tolist()) <= {0, 1, 2, 3}
    vol, vlab = torch.arange(5 * 7 * 9.0).reshape(1, 5, 7, 9), torch.ones(5, 7, 9, dtype=torch.long)
    out, olab = fit_spatial(vol, vlab, [3, 9, 9])
    assert out.shape == (1, 3, 9, 9) and olab.shape == (3, 9, 9)
    assert torch.equal(out[0, :, 1:8], vol[0, 1:4])  # centre crop along x, zero pad along y
    assert out[0, :, 0].abs().sum() == 0 and olab[:, 0].sum() == 0


def test_patches_and_volumes_are_3d_and_deterministic(cached):
    ds = PatchDataset(cached, [16, 16, 8], samples_per_case=3, foreground_prob=1.0, seed=5)
    assert len(ds) == 3 * len(cached)
    item = ds[4]
    assert item["image"].shape == (4, 16, 16, 8) and item["label"].shape == (16, 16, 8)
    assert item["label"].sum() > 0  # centred on a labelled voxel
    assert torch.equal(ds[4]["image"], item["image"])  # a function of (seed, epoch, index)
    ds.set_epoch(1)
    assert not torch.equal(ds[4]["image"], item["image"])
    big = PatchDataset(cached[:1], [40, 40, 20], samples_per_case=1)  # larger than the 32x32x16 case: padded
    assert big[0]["image"].shape == (4, 40, 40, 20)
    whole = VolumeDataset(cached)[0]
    assert whole["image"].shape == (4, 32, 32, 16) and whole["label"].shape == (32, 32, 16)


def test_augmentation_moves_image_and_label_together():
    aug = AugmentConfig(flip_prob=0.5, affine_prob=1.0, rotate_deg=30, shift_frac=0.1, intensity_prob=0.0)
    transform = build_train_transform(aug, (64, 64))
    label = torch.zeros(1, 64, 64)
    label[0, 10:30, 20:34] = 2
    image = (label > 0).float().repeat(2, 1, 1)  # the image is bright exactly where the label is
    for seed in range(5):
        transform.set_random_state(seed)
        out = transform({"image": image.clone(), "label": label.clone()})
        img, lab = torch.as_tensor(out["image"])[0], torch.as_tensor(out["label"])[0]
        assert set(lab.unique().tolist()) <= {0.0, 2.0}
        agree = ((img > 0.5) == (lab > 0)).float().mean()
        assert agree > 0.98, f"seed {seed}: image and label disagree on {1 - agree:.1%} of pixels"
        assert not torch.equal(lab, label[0]) or seed == 0


def test_damaged_cache_entries_are_named_and_rebuilt(phantom_root, tmp_path, caplog):
    case = find_cases(phantom_root)[0]
    mods = ["flair", "t1", "t1ce", "t2"]
    entry = cache_case(case, tmp_path / "c", mods)
    good = np.asarray(entry.image).copy()
    image_file = entry.path / "image.npy"
    image_file.write_bytes(image_file.read_bytes()[: 1000])  # truncated: "mmap length is greater than file size"
    rebuilt = cache_case(case, tmp_path / "c", mods)
    assert rebuilt.path == entry.path and np.array_equal(np.asarray(rebuilt.image), good)
    assert str(entry.path) in caplog.text and "rebuilding" in caplog.text
    (entry.path / "meta.json").write_text("{not json")
    assert cache_case(case, tmp_path / "c", mods).meta["case_id"] == case.case_id


def test_blank_or_constant_channels_and_labels_on_an_empty_image_are_warned(caplog):
    from pdeseg.data.pipeline.cache import warn_about_signal

    image = np.random.default_rng(0).normal(size=(3, 8, 8, 4)).astype(np.float32)
    image[1] = 0
    image[2] = 7.0
    label = np.zeros((8, 8, 4), np.uint8)
    found = warn_about_signal("P1", image, label, ["flair", "t1", "t2"])
    assert len(found) == 2 and "t1 is blank" in found[0] and "t2 is constant (7)" in found[1]
    label[2:4, 2:4, 1] = 1
    found = warn_about_signal("P2", np.zeros_like(image), label, ["flair", "t1", "t2"])
    assert any("zero everywhere the label" in f for f in found)
    assert warn_about_signal("P3", image[:1], label, ["flair"]) == []
    assert "P1: channel t1 is blank" in caplog.text


def test_unwritable_cache_folder_is_a_data_error(phantom_root, tmp_path):
    from pdeseg.errors import DataError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataError, match="cache folder"):
        cache_case(find_cases(phantom_root)[0], blocker / "cache", ["flair"])
