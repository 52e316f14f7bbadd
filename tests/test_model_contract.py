"""The contract every registered model keeps: any spatial size in, logits of the same size
out; every parameter trained; parameter groups that spare norms, biases, PReLU slopes and
PDE coefficients from weight decay; registry entries that say what they support."""

import monai.networks.nets
import pytest
import torch
from torch import nn

from conftest import model_marks, tiny_model_kwargs
from pdeseg.inference.options import InferenceOptions
from pdeseg.losses.composite import main_logits
from pdeseg.nn.padding import crop_to, pad_to_multiple
from pdeseg.nn.params import NORM_LAYERS, parameter_groups
from pdeseg.nn.pde.cable import CableBlock
from pdeseg.nn.unet import UNet
from pdeseg.nn.models import MODELS, build_model, check_model

TINY = [4, 8, 16, 32, 64]
IN, OUT, BATCH = 3, 5, 2
ODD_SIZES = {2: (67, 93), 3: (33, 47, 29)}
CASES = [pytest.param(name, dim, marks=model_marks(name), id=f"{name}-{dim}d")
         for name, entry in MODELS.items() for dim in entry.dims]


def _build(name: str, dim: int, **extra) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, spatial_dims=dim, in_channels=IN, out_channels=OUT, **tiny_model_kwargs(name, TINY), **extra)


def _odd_input(dim: int) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(BATCH, IN, *ODD_SIZES[dim])


def _spared_from_decay(model: nn.Module) -> set[int]:
    """ids of the parameters that must not be decayed: norms, PReLU, ndim <= 1, PDE coefficients."""
    spared = set()
    for module in model.modules():
        if isinstance(module, CableBlock) or getattr(module, "pde_coefficients", False):
            spared |= {id(p) for p in module.parameters()}
        for p in module.parameters(recurse=False):
            if isinstance(module, (*NORM_LAYERS, nn.PReLU)) or p.ndim <= 1:
                spared.add(id(p))
    return spared


# --- shapes and gradients -------------------------------------------------------------


@pytest.mark.parametrize("name, dim", CASES)
def test_forward_at_odd_sizes_returns_logits_of_the_input_size(name, dim):
    x = _odd_input(dim)
    model = _build(name, dim)
    assert main_logits(model(x)).shape == (BATCH, OUT, *ODD_SIZES[dim])  # training output
    assert model.eval()(x).shape == (BATCH, OUT, *ODD_SIZES[dim])  # eval: logits alone


@pytest.mark.parametrize("name, dim", CASES)
def test_cross_entropy_gives_every_parameter_a_finite_gradient_at_odd_sizes(name, dim):
    model, x = _build(name, dim), _odd_input(dim)
    y = torch.randint(0, OUT, (BATCH, *ODD_SIZES[dim]))
    nn.functional.cross_entropy(main_logits(model(x)), y).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"


def test_wrong_number_of_dims_says_what_shape_is_expected():
    with pytest.raises(ValueError, match=r"expects input \(B, 3, D, H, W\)"):
        _build("unet", 3)(torch.randn(1, IN, 32, 32))
    with pytest.raises(ValueError, match=r"expects input \(B, 3, H, W\)"):
        _build("pde_unet", 2)(torch.randn(IN, 32, 32))


def test_pde_unet_runs_its_cable_block_on_the_unpadded_input():
    model, x = _build("pde_unet", 2), _odd_input(2)
    seen = []
    model.pde.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    model(x)
    assert seen == [tuple(x.shape)]


# --- padding ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape, multiple", [((2, 3, 67, 93), 16), ((1, 2, 33, 47, 29), 16), ((1, 1, 5, 9, 16), (4, 8, 16))])
def test_pad_then_crop_returns_the_input_exactly(shape, multiple):
    x = torch.randn(shape)
    padded, pads = pad_to_multiple(x, multiple)
    multiples = (multiple,) * (len(shape) - 2) if isinstance(multiple, int) else multiple
    assert all(s % m == 0 and s - m < n <= s for s, n, m in zip(padded.shape[2:], shape[2:], multiples))
    assert all(0 <= after - before <= 1 for before, after in pads)  # split as evenly as possible
    assert padded.sum() == pytest.approx(x.sum().item(), abs=1e-3)  # zeros added, nothing else
    assert torch.equal(crop_to(padded, pads), x)


def test_divisible_input_is_neither_padded_nor_copied():
    x = torch.randn(1, 2, 32, 48)
    padded, pads = pad_to_multiple(x, 16)
    assert padded is x and crop_to(padded, pads) is x


@pytest.mark.parametrize("dim, size", [(2, (32, 48)), (3, (16, 32, 16))])
def test_unet_at_divisible_sizes_is_bit_identical_to_the_unpadded_network(dim, size):
    model = _build("unet", dim).eval()
    x = torch.randn(BATCH, IN, *size)
    with torch.no_grad():
        assert torch.equal(model(x), model.forward_divisible(x))


def test_monai_baseline_at_divisible_sizes_is_bit_identical_to_monai():
    model = _build("monai_unet", 2).eval()
    x = torch.randn(BATCH, IN, 32, 48)
    with torch.no_grad():
        assert torch.equal(model(x), monai.networks.nets.UNet.forward(model, x))


def test_monai_baseline_keeps_monai_state_dict_keys():
    ours = _build("monai_unet", 2)
    theirs = monai.networks.nets.UNet(2, IN, OUT, channels=TINY, strides=(2, 2, 2, 2), num_res_units=2)
    assert list(ours.state_dict()) == list(theirs.state_dict())


# --- parameter groups ------------------------------------------------------------------


@pytest.mark.parametrize("name, dim", CASES)
def test_parameter_groups_cover_each_parameter_once_and_spare_norms_biases_prelu_and_pde(name, dim):
    model = _build(name, dim)
    groups = parameter_groups(model, lr=1e-3, weight_decay=0.05, pde_lr_mult=10.0)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
    assert [g["name"] for g in groups] == [n for n in ("decay", "no_decay", "pde") if n in {g["name"] for g in groups}]
    spared = _spared_from_decay(model)
    for g in groups:
        assert set(g) == {"name", "params", "lr", "weight_decay"}
        in_group = {id(p) for p in g["params"]}
        assert g["weight_decay"] == (0.05 if g["name"] == "decay" else 0.0)
        assert (in_group & spared) == (set() if g["name"] == "decay" else in_group)
    torch.optim.AdamW(groups).step()  # a torch optimizer takes the groups as they are


def test_prelu_slopes_and_instance_norm_weights_are_not_decayed():
    model = _build("unet", 2, activation="prelu", norm="instance")
    groups = {g["name"]: {id(p) for p in g["params"]} for g in parameter_groups(model, 1e-3, 0.1)}
    slopes = {id(m.weight) for m in model.modules() if isinstance(m, nn.PReLU)}
    norms = {id(p) for m in model.modules() if isinstance(m, nn.InstanceNorm2d) for p in m.parameters()}
    assert len(slopes) == 18 and len(norms) == 36
    assert slopes | norms <= groups["no_decay"]
    assert {id(m.weight) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))} == groups["decay"]


class _Nested(nn.Module):
    """A PDE block two levels down, as ``self.block.inner``, beside an ordinary conv."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3)
        self.block = nn.Module()
        self.block.inner = CableBlock(2)


def test_pde_coefficients_nested_in_a_submodule_land_in_the_pde_group():
    model = _Nested()
    groups = {g["name"]: g for g in parameter_groups(model, lr=1e-3, weight_decay=0.1, pde_lr_mult=100.0)}
    assert list(groups) == ["decay", "no_decay", "pde"]
    assert {id(p) for p in groups["pde"]["params"]} == {id(p) for p in model.block.inner.parameters()}
    assert groups["pde"]["lr"] == pytest.approx(0.1) and groups["pde"]["weight_decay"] == 0.0
    assert groups["no_decay"]["params"] == [model.conv.bias]


def test_parameter_groups_unwrap_a_data_parallel_wrapper():
    model = _Nested()
    wrapped = parameter_groups(nn.DataParallel(model), 1e-3)
    assert [[id(p) for p in g["params"]] for g in wrapped] == [[id(p) for p in g["params"]] for g in parameter_groups(model, 1e-3)]


def test_a_model_with_its_own_parameter_groups_is_asked():
    class Custom(nn.Linear):
        def parameter_groups(self, lr, weight_decay, pde_lr_mult):
            return [{"name": "all", "params": self.parameters(), "lr": lr, "weight_decay": weight_decay}]

    groups = parameter_groups(Custom(2, 2), 1e-3, 0.1)
    assert [g["name"] for g in groups] == ["all"] and len(groups[0]["params"]) == 2

    class Incomplete(nn.Linear):
        def parameter_groups(self, lr, weight_decay, pde_lr_mult):
            return [{"name": "w", "params": [self.weight], "lr": lr, "weight_decay": weight_decay}]

    with pytest.raises(ValueError, match="exactly once"):
        parameter_groups(Incomplete(2, 2), 1e-3)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"lr": 0.0}, "lr must be"), ({"lr": 1e-3, "weight_decay": -0.1}, "weight_decay must be"),
     ({"lr": 1e-3, "pde_lr_mult": 0.0}, "pde_lr_mult must be")],
)
def test_parameter_groups_reject_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        parameter_groups(_Nested(), **kwargs)


# --- registry --------------------------------------------------------------------------


def test_check_model_accepts_what_the_constructors_accept():
    check_model("unet", 3, {"features": TINY, "norm": "instance"})
    check_model("pde_unet", 2, {"spatial_dims": 2, "init_tau": 0.2, "activation": "prelu"})  # UNet options too
    check_model("monai_unet", 3, {"num_res_units": 1})


def test_check_model_names_a_misspelt_keyword_and_lists_the_accepted_ones():
    with pytest.raises(ValueError, match=r"'featurs'.*did you mean 'features'.*accepts: activation, dropout"):
        check_model("unet", 2, {"featurs": TINY})
    with pytest.raises(ValueError, match=r"'num_res_units'.*accepts:.*init_phi"):
        check_model("pde_unet", 2, {"num_res_units": 2})


def test_check_model_rejects_an_unsupported_spatial_dims_naming_the_supported_ones():
    with pytest.raises(ValueError, match="supports spatial_dims 2, got spatial_dims=3"):
        check_model("pde_unet", 3, {})


def test_check_model_rejects_an_unknown_name_listing_the_registered_ones():
    with pytest.raises(ValueError, match="monai_unet, monai_vnet, pde3d_unet, pde_unet, unet, unet3d"):
        check_model("vnet9000", 2, {})


def test_registry_dims_are_what_the_models_build_for():
    assert {name: entry.dims for name, entry in MODELS.items()} == {
        "unet": (2, 3), "pde_unet": (2,), "monai_unet": (2, 3), "unet3d": (2, 3), "monai_dynunet": (2, 3),
        "monai_vnet": (3,), "monai_swinunetr": (2, 3), "monai_segresnet": (2, 3), "monai_attentionunet": (2, 3),
        "pde3d_unet": (2, 3),
    }
    assert MODELS["unet"].build is UNet


@pytest.mark.parametrize("name, dim", CASES)
def test_checkpoint_round_trip_through_the_predictor_gives_identical_logits(name, dim, tmp_path):
    """Save as training does, load as inference does (registry + spec, no training code)."""
    from pdeseg.checkpoint import plain_state_dict, save_checkpoint
    from pdeseg.config import TaskSpec
    from pdeseg.inference.predict import Predictor

    model = _build(name, dim)
    with torch.no_grad():  # move BatchNorm statistics away from their initial values
        model.train()(_odd_input(dim) * 3 + 1)
    model.eval()
    spec = TaskSpec(format="brats", modalities=["flair", "t1", "t1ce"], normalization="zscore",
                    mode="slices" if dim == 2 else "whole", spatial_dims=dim, num_classes=OUT,
                    class_names=[f"c{i}" for i in range(OUT)])
    kwargs = {"spatial_dims": dim, "in_channels": IN, "out_channels": OUT, **tiny_model_kwargs(name, TINY)}
    save_checkpoint({"model": {"name": name, "kwargs": kwargs}, "preprocessing": spec.model_dump(mode="json"),
                     "state_dict": plain_state_dict(model)}, tmp_path / "m.pt")
    predictor = Predictor.from_checkpoint(tmp_path / "m.pt", InferenceOptions(device="cpu", precision="32"))
    x = _odd_input(dim)
    if dim == 2:  # the predictor runs 2D models channels-last; compare like with like
        model = model.to(memory_format=torch.channels_last)
        ref_in = x.contiguous(memory_format=torch.channels_last)
    else:
        ref_in = x
    with torch.no_grad():
        assert torch.equal(predictor.logits(x), model(ref_in))
