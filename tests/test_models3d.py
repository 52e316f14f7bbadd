"""The 3D models: paper 001's UNet backbone (``unet3d``) and the MONAI baselines (DynUNet,
VNet, SwinUNETR, SegResNet, Attention U-Net): shapes at odd sizes, deep supervision as a
list the composite loss takes, parameter counts, padding and the registry entries."""

import math

import monai.networks.nets as mn
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import model_marks, tiny_model_kwargs
from pdeseg.losses.composite import CompositeLoss
from pdeseg.losses.segmentation import CrossEntropyLoss, SoftDiceLoss
from pdeseg.nn.baselines import MonaiAttentionUnet, MonaiDynUNet, MonaiSegResNet, MonaiVNet
from pdeseg.nn.padding import crop_scaled, pad_to_multiple
from pdeseg.nn.unet3d import UNet3D
from pdeseg.nn.models import MODELS, build_model, check_model, count_parameters

NEW = ("unet3d", "monai_dynunet", "monai_vnet", "monai_swinunetr", "monai_segresnet", "monai_attentionunet")
SMALL = (4, 8, 16)
ODD = {2: (19, 23), 3: (19, 23, 17)}
C, K = 2, 3
CASES = [pytest.param(name, dim, marks=model_marks(name), id=f"{name}-{dim}d") for name in NEW for dim in MODELS[name].dims]


def _small(name: str, dim: int, **extra) -> nn.Module:
    torch.manual_seed(0)
    kwargs = {**tiny_model_kwargs(name, SMALL), **extra}
    return build_model(name, spatial_dims=dim, in_channels=C, out_channels=K, **kwargs)


def _heads_and_target(name: str, dim: int, **extra):
    model = _small(name, dim, deep_supervision=True, **extra).train()
    torch.manual_seed(1)
    x = torch.randn(2, C, *ODD[dim])
    return model, x, torch.randint(0, K, (2, *ODD[dim]))


# --- shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, dim", CASES)
def test_eval_maps_odd_sizes_to_logits_of_the_same_size(name, dim):
    model = _small(name, dim).eval()
    with torch.no_grad():
        out = model(torch.randn(1, C, *ODD[dim]))
    assert isinstance(out, torch.Tensor) and out.shape == (1, K, *ODD[dim])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["unet3d", "monai_dynunet"])
@pytest.mark.parametrize("dim", [2, 3])
def test_deep_supervision_returns_full_then_lower_heads_at_their_own_cropped_sizes(name, dim):
    model, x, y = _heads_and_target(name, dim, features=(4, 8, 16, 32))  # 4 levels: 2 heads below full
    out = model(x)
    assert isinstance(out, list) and len(out) == 3
    assert [tuple(o.shape) for o in out] == [(2, K, *(math.ceil(s / 2**i) for s in ODD[dim])) for i in range(3)]
    loss = CompositeLoss([("ce", 1.0, CrossEntropyLoss()), ("dice", 1.0, SoftDiceLoss())])(out, y)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():  # the zero-weight lowest head too (DDP needs it)
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    lowest = model.aux_heads[-1] if name == "unet3d" else model.deep_supervision_heads[-1]
    assert all(p.grad.abs().max() == 0 for p in lowest.parameters())  # weight 0: no training signal


@pytest.mark.parametrize("name", ["unet3d", "monai_dynunet"])
def test_deep_supervision_heads_leave_the_main_output_alone_and_vanish_in_eval(name):
    model, x, _ = _heads_and_target(name, 3)
    train_main = model(x)[0]
    plain = _small(name, 3)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k in plain.state_dict()})
    with torch.no_grad():
        assert torch.allclose(train_main, plain.train()(x), atol=1e-6)  # instance norm: no running stats
        out = model.eval()(x)
    assert isinstance(out, torch.Tensor) and torch.allclose(out, train_main, atol=1e-6)


def test_default_ds_heads_are_every_decoder_level_below_full_resolution():
    assert UNet3D(features=(4, 8, 16, 32, 64), deep_supervision=True).ds_heads == 3
    assert len(build_model("monai_dynunet", features=(4, 8, 16, 32, 64), deep_supervision=True).deep_supervision_heads) == 3
    assert len(UNet3D(features=(4, 8, 16, 32, 64), deep_supervision=True, ds_heads=1).aux_heads) == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [({"features": (4,)}, "at least 2"), ({"features": (4, 8), "deep_supervision": True}, "at least 3 levels"),
     ({"deep_supervision": True, "ds_heads": 4}, "from 1 to 3"), ({"ds_heads": 2}, "only with deep_supervision"),
     ({"activation": "gelu"}, "unknown activation"), ({"norm": "group"}, "unknown normalisation")],
)
def test_unet3d_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNet3D(**kwargs)


def test_wrong_input_layout_says_what_is_expected():
    with pytest.raises(ValueError, match=r"expects input \(B, 2, D, H, W\)"):
        _small("unet3d", 3)(torch.randn(1, C, 16, 16))
    with pytest.raises(ValueError, match=r"MonaiSegResNet .*expects input \(B, 2, D, H, W\)"):
        _small("monai_segresnet", 3)(torch.randn(1, 3, 16, 16, 16))


def test_an_input_one_block_wide_still_leaves_two_bottleneck_voxels():
    """8^3 with 4 levels pads to 8x8x16: instance norm at the bottleneck needs >1 voxel."""
    model = _small("unet3d", 3, features=(4, 8, 16, 32)).train()
    assert model(torch.randn(1, C, 8, 8, 8)).shape == (1, K, 8, 8, 8)
    padded, pads = pad_to_multiple(torch.randn(1, 1, 8, 8, 8), 8, min_blocks=2)
    assert padded.shape[2:] == (8, 8, 16) and pads == ((0, 0), (0, 0), (4, 4))


# --- parameter counts -------------------------------------------------------------------


def _unet3d_formula(dim: int, cin: int, k: int, f: list[int], heads: int = 0, norm_params: int = 4) -> int:
    """The module docstring's count: n = 3**dim conv taps, t = 2**dim transposed taps."""
    n, t = 3**dim, 2**dim
    total = n * cin * f[0] + n * f[0] ** 2 + norm_params * f[0]
    total += sum(n * f[i - 1] * f[i] + n * f[i] ** 2 + norm_params * f[i] for i in range(1, len(f)))
    total += sum(t * f[i + 1] * f[i] + 3 * n * f[i] ** 2 + norm_params * f[i] for i in range(len(f) - 1))
    return total + (f[0] + 1) * k + sum((f[i] + 1) * k for i in range(1, heads + 1))


@pytest.mark.parametrize("dim", [2, 3])
def test_unet3d_parameter_count_matches_the_formula(dim):
    f = [3, 5, 7, 11]
    assert count_parameters(UNet3D(dim, 2, 3, f)) == _unet3d_formula(dim, 2, 3, f)
    assert count_parameters(UNet3D(dim, 2, 3, f, deep_supervision=True)) == _unet3d_formula(dim, 2, 3, f, heads=2)
    assert count_parameters(UNet3D(dim, 2, 3, f, norm="batch")) == _unet3d_formula(dim, 2, 3, f)
    assert count_parameters(UNet3D(dim, 2, 3, f, norm="none")) == _unet3d_formula(dim, 2, 3, f, norm_params=2)
    # 3D, 1 -> 2 channels, widths (2, 4): worked by hand
    # enc 27*1*2 + 27*4 + 8 = 170; 27*2*4 + 27*16 + 16 = 664; up 8*4*2 = 64; dec 27*4*2 + 27*4 + 8 = 332; head 6
    assert count_parameters(UNet3D(3, 1, 2, (2, 4))) == 170 + 664 + 64 + 332 + 6


def test_unet3d_has_dynunets_parameter_count_layer_for_layer():
    """Written independently, the same architecture: kernel 3, strides 1-2-2-..., instance
    norm, no conv biases, 1x1 heads with bias."""
    for f in ([4, 8, 16], [32, 64, 128, 256, 320]):
        ours = count_parameters(UNet3D(3, 4, 3, f, deep_supervision=True))
        theirs = count_parameters(build_model("monai_dynunet", spatial_dims=3, in_channels=4, out_channels=3,
                                              features=f, deep_supervision=True))
        assert ours == theirs
    shapes = sorted(tuple(p.shape) for p in UNet3D(3, 4, 3, [4, 8, 16]).parameters())
    dyn = build_model("monai_dynunet", spatial_dims=3, in_channels=4, out_channels=3, features=[4, 8, 16])
    assert shapes == sorted(tuple(p.shape) for p in dyn.parameters())


# --- padding and MONAI fidelity -----------------------------------------------------------


@pytest.mark.parametrize("n", range(5, 41))
@pytest.mark.parametrize("factor", [2, 4, 8])
def test_cropped_heads_overlap_the_input_and_the_nearest_target_sample_is_within_one_head_voxel(n, factor):
    multiple = 16
    _, pads = pad_to_multiple(torch.zeros(1, 1, n), multiple)
    (before, after) = pads[0]
    coarse = torch.arange((n + before + after) // factor, dtype=torch.float32)[None, None]
    kept = crop_scaled(coarse, pads, factor)[0, 0].long()
    assert len(kept) == math.ceil(n / factor)
    target = F.interpolate(torch.arange(n, dtype=torch.float32)[None, None], size=len(kept), mode="nearest")[0, 0]
    for j, (head_voxel, sample) in enumerate(zip(kept.tolist(), target.tolist())):
        lo, hi = head_voxel * factor - before, (head_voxel + 1) * factor - before  # footprint in input coords
        assert lo < n and hi > 0, f"head voxel {j} lies wholly in the padding"
        assert lo - factor <= sample < hi, f"target sample {sample} far from head voxel {j}'s footprint [{lo}, {hi})"


def test_divisible_input_is_not_padded_and_heads_are_not_cropped():
    x = torch.randn(1, 1, 16, 32)
    padded, pads = pad_to_multiple(x, 8, min_blocks=2)
    assert padded is x
    head = torch.randn(1, 1, 4, 8)
    assert crop_scaled(head, pads, 4) is head


@pytest.mark.parametrize(
    "ours, theirs, kwargs, size",
    [
        (MonaiDynUNet, mn.DynUNet, dict(kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2], filters=[4, 8, 16]), (8, 16, 8)),
        (MonaiSegResNet, mn.SegResNet, dict(init_filters=8), (16, 8, 8)),
        (MonaiAttentionUnet, mn.AttentionUnet, dict(channels=[4, 8, 16], strides=[2, 2]), (8, 8, 12)),
    ],
    ids=["dynunet", "segresnet", "attentionunet"],
)
def test_monai_baselines_keep_monai_keys_and_outputs_at_divisible_sizes(ours, theirs, kwargs, size):
    torch.manual_seed(0)
    a = ours(spatial_dims=3, in_channels=C, out_channels=K, **kwargs).eval()
    b = theirs(spatial_dims=3, in_channels=C, out_channels=K, **kwargs).eval()
    assert list(a.state_dict()) == list(b.state_dict())
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, C, *size)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_vnet_takes_any_channel_count_up_to_16_by_appending_zero_channels():
    torch.manual_seed(0)
    ours = MonaiVNet(spatial_dims=3, in_channels=3, out_channels=K).eval()
    assert ours.network_channels == 4 and ours.in_tr.conv_block.conv.in_channels == 4
    theirs = mn.VNet(spatial_dims=3, in_channels=4, out_channels=K).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(1, 3, 32, 16, 16)  # divisible by 16, two blocks: no spatial padding
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(torch.cat([x, torch.zeros(1, 1, 32, 16, 16)], dim=1)))
    with pytest.raises(ValueError, match="1 to 16 input channels"):
        MonaiVNet(in_channels=17)


def test_dynunet_needs_a_first_stride_of_one():
    with pytest.raises(ValueError, match="first stride of 1"):
        MonaiDynUNet(3, 1, 2, kernel_size=[3, 3, 3], strides=[2, 2, 2], upsample_kernel_size=[2, 2])


# --- registry -------------------------------------------------------------------------------


def test_check_model_knows_the_new_entries_and_their_width_knobs():
    check_model("unet3d", 3, {"features": [8, 16], "activation": "relu", "norm": "batch", "deep_supervision": True, "ds_heads": 1})
    check_model("monai_dynunet", 2, {"features": [8, 16, 32], "deep_supervision": True, "ds_heads": 1})
    check_model("monai_swinunetr", 3, {"feature_size": 12})
    check_model("monai_segresnet", 3, {"init_filters": 16})
    check_model("monai_attentionunet", 3, {"features": [8, 16, 32]})
    check_model("monai_vnet", 3, {})
    with pytest.raises(ValueError, match="did you mean 'feature_size'"):
        check_model("monai_swinunetr", 3, {"features": [8, 16]})
    with pytest.raises(ValueError, match="'features'.*it accepts: in_channels, out_channels, spatial_dims"):
        check_model("monai_vnet", 3, {"features": [8, 16]})


@pytest.mark.parametrize("name", NEW)
def test_check_model_rejects_dims_the_model_does_not_support(name):
    with pytest.raises(ValueError, match=r"supports spatial_dims (2 or 3|3), got spatial_dims=1"):
        check_model(name, 1, {})
    if name == "monai_vnet":
        with pytest.raises(ValueError, match="supports spatial_dims 3, got spatial_dims=2"):
            check_model(name, 2, {})


def test_ds_heads_without_deep_supervision_is_refused_by_the_dynunet_builder_too():
    with pytest.raises(ValueError, match="only with deep_supervision"):
        build_model("monai_dynunet", features=SMALL, ds_heads=1)


# --- end to end -------------------------------------------------------------------------------


def test_unet3d_with_deep_supervision_trains_and_validates_through_the_3d_pipeline(phantom_root, tmp_path):
    """The trainer takes the list of heads (loss, float cast, main logits for the training
    metrics); validation runs the sliding window in eval mode, where the model returns a tensor."""
    from conftest import tiny_config_dict
    from pdeseg.config import config_from_dict
    from pdeseg.training.run import train_model

    d = tiny_config_dict(phantom_root, tmp_path, epochs=1)
    d["data"].update({"mode": "patches", "spatial_size": [16, 16, 16], "samples_per_case": 2})
    d["models"] = [{"name": "unet3d", "kwargs": {"features": [4, 8, 16, 32], "deep_supervision": True}}]
    cfg = config_from_dict(d)
    result = train_model(cfg, cfg.models[0], tmp_path / "run", progress=False)
    assert len(result.history) == 1 and 0 <= result.history[-1]["val_dice_WT"] <= 1
