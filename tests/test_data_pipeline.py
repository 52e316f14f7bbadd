import os

import numpy as np
import pytest
import torch

from pdeseg.config import AugmentConfig
from pdeseg.data.brats import find_cases
from pdeseg.data.cache import cache_case, cache_cases
from pdeseg.data.preprocess import brain_mask, normalize
from pdeseg.data.slices import SliceDataset, fit_slice, pad_to_multiple, select_slices, unpad
from pdeseg.data.transforms import build_train_transform


@pytest.fixture
def cached(phantom_root, tmp_path):
    return cache_cases(find_cases(phantom_root), tmp_path / "cache", ["flair", "t1", "t1ce", "t2"], progress=False)


def test_zscore_inside_brain_mask_and_zero_outside():
    rng = np.random.default_rng(0)
    image = np.zeros((2, 10, 10, 4), np.float32)
    image[:, 2:8, 2:8] = rng.normal(100, 20, (2, 6, 6, 4))
    mask = brain_mask(image)
    out = normalize(image, mask, "zscore")
    assert np.allclose(out[:, mask].mean(axis=1), 0, atol=1e-5) and np.allclose(out[:, mask].std(axis=1), 1, atol=1e-4)
    assert (out[:, ~mask] == 0).all()
    mm = normalize(image, mask, "minmax")
    assert mm.min() == 0 and mm.max() == pytest.approx(1)


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
    assert item["image"].shape == (4, 48, 48) and item["label"].shape == (48, 48)  # 40 padded to 48 (divisor 16)
    assert item["label"].dtype == torch.int64
    with pytest.raises(ValueError, match="no cases"):
        SliceDataset([], "middle")
    odd = type(cached[0])(cached[0].case_id + "_big", cached[0].path, {**cached[0].meta, "shape": [48, 32, 16]})
    with pytest.raises(ValueError, match="different slice sizes"):
        SliceDataset([cached[0], odd], "middle")
    assert len(SliceDataset([cached[0], odd], "middle", spatial_size=[32, 32])) == 2


@pytest.mark.parametrize("shape", [(37, 53), (182, 218), (16, 16)])
def test_pad_to_multiple_round_trip(shape):
    x = torch.randn(2, 3, *shape)
    padded, pads = pad_to_multiple(x, 16)
    assert padded.shape[-2] % 16 == 0 and padded.shape[-1] % 16 == 0
    assert torch.equal(unpad(padded, pads), x)


def test_fit_slice_resize_keeps_labels_integral():
    image, label = torch.randn(2, 50, 70), torch.randint(0, 4, (50, 70))
    im, lab = fit_slice(image, label, [32, 32], resize=True)
    assert im.shape == (2, 32, 32) and set(lab.unique().tolist()) <= {0, 1, 2, 3}


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
