"""Cropping cases to their non-zero box (issue 36): the box, the preprocessing shared by the
cache and prediction, the cache entries, the config's default, and prediction pasted back on
the input grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pdeseg.config import TaskSpec, config_from_dict
from pdeseg.errors import ConfigError
from pdeseg.data.case import LoadedCase
from pdeseg.data.pipeline.cache import cache_case
from pdeseg.data.pipeline.preprocess import Preprocessing, box_slices, nonzero_box, nonzero_mask
from pdeseg.data.readers.brats import find_cases
from pdeseg.inference.options import InferenceOptions
from pdeseg.inference.predict import Predictor

MODALITIES = ["flair", "t1", "t1ce", "t2"]
CLASSES = ["background", "NCR", "ED", "ET"]


def _head(shape=(13, 11, 9), box=((3, 10), (2, 8), (1, 7)), channels=4, seed=0) -> np.ndarray:
    """Random positive intensities inside ``box``, exactly 0 outside (a skull-stripped scan)."""
    image = np.zeros((channels, *shape), np.float32)
    inside = np.random.default_rng(seed).uniform(1, 5, size=(channels, *(b - a for a, b in box))).astype(np.float32)
    image[(slice(None), *box_slices(box))] = inside
    return image


def test_nonzero_box_margin_clipping_label_and_empty():
    mask = np.zeros((10, 8, 6), bool)
    mask[3:5, 2:7, 1] = True
    assert nonzero_box(mask) == ((3, 5), (2, 7), (1, 2))
    assert nonzero_box(mask, margin=2) == ((1, 7), (0, 8), (0, 4))  # clipped at the array's ends
    label = np.zeros(mask.shape, np.uint8)
    label[8, 1, 5] = 2  # a labelled voxel outside the image's box widens it: truth is never cut
    assert nonzero_box(mask, 0, label) == ((3, 9), (1, 7), (1, 6))
    assert nonzero_box(np.zeros((4, 5), bool)) == ((0, 4), (0, 5))  # nothing set: the whole array


@pytest.mark.parametrize("normalization", ["zscore", "zscore_all", "minmax"])
def test_crop_keeps_every_value_inside_the_box(normalization):
    image = _head()
    image[:, 3, 2, 1] = 0  # a zero inside the box stays
    plain = Preprocessing(tuple(MODALITIES), normalization).prepare(image, (1.0, 1.0, 1.0))
    cropped = Preprocessing(tuple(MODALITIES), normalization, crop_nonzero=True).prepare(image, (1.0, 1.0, 1.0))
    assert plain.box is None and cropped.box == ((3, 10), (2, 8), (1, 7))
    assert cropped.image.shape == (4, 7, 6, 6) and cropped.shape == (13, 11, 9)
    np.testing.assert_array_equal(cropped.image, plain.image[(slice(None), *box_slices(cropped.box))])
    np.testing.assert_array_equal(cropped.mask, nonzero_mask(image)[box_slices(cropped.box)])


def test_an_image_without_zero_background_is_not_cropped():
    image = np.random.default_rng(0).uniform(1, 2, size=(1, 37, 23, 1)).astype(np.float32)  # a 2D microscopy image
    prepared = Preprocessing(("grey",), "scale255", crop_nonzero=True, crop_margin=4).prepare(image, (1.0, 1.0, 1.0))
    assert prepared.box == ((0, 37), (0, 23), (0, 1))
    assert prepared.image.shape == image.shape


def test_crop_settings_are_part_of_the_cache_key(phantom_root, tmp_path):
    case = find_cases(phantom_root)[0]
    plain = cache_case(case, tmp_path, Preprocessing(tuple(MODALITIES)))
    cropped = cache_case(case, tmp_path, Preprocessing(tuple(MODALITIES), crop_nonzero=True))
    wider = cache_case(case, tmp_path, Preprocessing(tuple(MODALITIES), crop_nonzero=True, crop_margin=2))
    assert len({plain.path, cropped.path, wider.path}) == 3
    assert plain.meta["crop_box"] is None and plain.meta["shape"] == plain.meta["source_shape"]
    box = cropped.meta["crop_box"]
    assert cropped.meta["shape"] == [b - a for a, b in box] != cropped.meta["source_shape"]
    loaded = case.load(MODALITIES)
    cut = box_slices(tuple(map(tuple, box)))
    assert not loaded.image[:, ~np.pad(np.ones([b - a for a, b in box], bool),
                                       [(a, n - b) for (a, b), n in zip(box, loaded.image.shape[1:])])].any()
    np.testing.assert_array_equal(np.asarray(cropped.label).transpose(1, 2, 0), loaded.label[cut])  # every label voxel
    assert int(np.asarray(cropped.label).astype(bool).sum()) == int((loaded.label > 0).sum())
    assert all(w >= c for w, c in zip(wider.meta["shape"], cropped.meta["shape"]))


def _cfg(**data):
    return config_from_dict({"data": {"root": "", **data}})


def test_crop_is_off_by_default_and_applies_to_volumes_only():
    from pdeseg.build import crop_nonzero

    assert not crop_nonzero(_cfg(mode="patches", spatial_size=[8, 8, 8]).data, 3)  # not shown to keep quality in training
    assert crop_nonzero(_cfg(mode="patches", spatial_size=[8, 8, 8], crop_nonzero=True).data, 3)
    assert crop_nonzero(_cfg(mode="slices", spatial_size=[64, 64], crop_nonzero=True).data, 3)
    assert not crop_nonzero(_cfg(mode="slices", spatial_size=[64, 64], crop_nonzero=True).data, 2)  # 2D images stay whole
    assert TaskSpec(format="brats", modalities=MODALITIES, normalization="zscore", mode="slices", spatial_dims=2,
                    num_classes=4, class_names=CLASSES).crop_nonzero is False  # a checkpoint from before: not cropped


def test_predict_crop_flags():
    from pdeseg.cli import build_parser
    from pdeseg.cli.inference_options import _inference_options

    def crop(*flags):
        return _inference_options(build_parser().parse_args(["predict", "--checkpoint", "c", "--input", "i",
                                                             "--output", "o", *flags])).crop

    assert crop() is None and crop("--crop") is True and crop("--no-crop") is False
    with pytest.raises(SystemExit):
        crop("--crop", "--no-crop")


def test_crop_without_a_sample_size_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="crop_nonzero: true .* needs a spatial_size"):
        _cfg(mode="slices", crop_nonzero=True)
    with pytest.raises(ConfigError, match="crop"):
        InferenceOptions(crop="yes")


class _Pointwise(nn.Module):
    """A 1x1 convolution: its logits at a voxel depend on that voxel only, so a crop cannot
    change them; its bias makes an all-zero input foreground (so pasting shows)."""

    def __init__(self, dims: int):
        super().__init__()
        torch.manual_seed(0)
        self.conv = (nn.Conv3d if dims == 3 else nn.Conv2d)(4, 4, 1)
        with torch.no_grad():
            self.conv.bias.copy_(torch.tensor([-5.0, 5.0, 0.0, 0.0]))
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return self.conv(x)


def _loaded(image: np.ndarray) -> LoadedCase:
    import nibabel as nib

    return LoadedCase(case=None, image=image, label=None, affine=np.eye(4), header=nib.Nifti1Header(),
                      convention="brats2020", modalities=tuple(MODALITIES))


@pytest.mark.parametrize("mode", ["patches", "slices"])
def test_prediction_is_cropped_and_pasted_back_on_the_input_grid(mode):
    dims = 3 if mode == "patches" else 2
    spec = TaskSpec(format="brats", modalities=MODALITIES, normalization="zscore", mode=mode, spatial_dims=dims,
                    spatial_size=[5, 4, 3] if dims == 3 else [8, 8], num_classes=4, class_names=CLASSES,
                    crop_nonzero=True)
    image = _head()
    loaded = _loaded(image)
    net = _Pointwise(dims).eval()
    options = InferenceOptions(precision="32", skip_empty=False, postprocess=False)
    cropped = Predictor(net, spec, torch.device("cpu"), options)
    seg = cropped.segment(loaded, cropped.preprocess(loaded), with_probabilities=True)
    assert seg.classes.shape == image.shape[1:] and seg.probabilities.shape == (4, *image.shape[1:])
    inside = box_slices(((3, 10), (2, 8), (1, 7)))
    outside = np.ones(image.shape[1:], bool)
    outside[inside] = False
    assert not seg.classes[outside].any()  # background outside the box, though the net says class 1 on zeros
    np.testing.assert_allclose(seg.probabilities[0][outside], 1.0, atol=1e-6)
    seen = [c[2:] for c in net.calls]
    assert all(s[0] <= 7 and s[1] <= 6 for s in seen)  # the network never saw the zero background
    whole = Predictor(net, spec, torch.device("cpu"), options.replace(crop=False))  # the option turns it off
    assert whole.preprocessing.crop_nonzero is False
    full = whole.segment(loaded, whole.preprocess(loaded), with_probabilities=True)
    np.testing.assert_array_equal(seg.classes[inside], full.classes[inside])  # pointwise: same inside the box
    np.testing.assert_allclose(seg.probabilities[(slice(None), *inside)], full.probabilities[(slice(None), *inside)],
                               atol=1e-6)
    assert (full.classes[outside] == 1).all()


def test_a_caller_s_uncropped_image_is_segmented_whole():
    spec = TaskSpec(format="brats", modalities=MODALITIES, normalization="zscore", mode="patches", spatial_dims=3,
                    spatial_size=[5, 4, 3], num_classes=4, class_names=CLASSES, crop_nonzero=True)
    image = _head()
    p = Predictor(_Pointwise(3).eval(), spec, torch.device("cpu"), InferenceOptions(precision="32", postprocess=False))
    normalised, _, _ = Preprocessing(tuple(MODALITIES)).apply(image, (1.0, 1.0, 1.0))
    assert p.segment(_loaded(image), normalised).classes.shape == image.shape[1:]


def test_a_perturbed_copy_of_a_cropped_case_keeps_its_box(phantom_root, tmp_path):
    from pdeseg.experiments.robustness import preprocessed_case

    case = find_cases(phantom_root)[0]
    prep = Preprocessing(tuple(MODALITIES), crop_nonzero=True)
    template = cache_case(case, tmp_path, prep)
    loaded = case.load(MODALITIES)
    noisy = loaded.image + np.random.default_rng(0).normal(size=loaded.image.shape).astype(np.float32)  # no zero left
    copy = preprocessed_case(template, noisy, loaded.spacing, prep)
    z, _, x, y = copy.image.shape  # the cache's (Z, C, X, Y)
    assert [x, y, z] == template.meta["shape"] != list(loaded.image.shape[1:])


def test_brats_models_are_cropped_at_inference_by_default_and_others_are_not():
    """A skull-stripped format (``crop_at_inference``) crops any of its models unless asked not to;
    a format without zero background keeps the whole case unless asked to crop."""
    brats = TaskSpec(format="brats", modalities=MODALITIES, normalization="zscore", mode="slices", spatial_dims=2,
                     spatial_size=[8, 8], num_classes=4, class_names=CLASSES)  # trained without the crop
    net = _Pointwise(2).eval()
    cpu = torch.device("cpu")
    assert Predictor(net, brats, cpu, InferenceOptions(precision="32")).preprocessing.crop_nonzero is True
    assert Predictor(net, brats, cpu, InferenceOptions(precision="32", crop=False)).preprocessing.crop_nonzero is False
    msd = TaskSpec(format="msd", modalities=["MRI"], normalization="zscore", mode="patches", spatial_dims=3,
                   spatial_size=[8, 8, 8], num_classes=3, class_names=["background", "a", "b"])
    assert Predictor(net, msd, cpu, InferenceOptions(precision="32")).preprocessing.crop_nonzero is False
    assert Predictor(net, msd, cpu, InferenceOptions(precision="32", crop=True)).preprocessing.crop_nonzero is True
