import pytest
import torch

from conftest import model_marks, tiny_model_kwargs
from pdeseg.losses.composite import main_logits
from pdeseg.nn.params import parameter_groups
from pdeseg.nn.models import MODELS, build_model, count_parameters

TINY = [8, 16, 32, 64, 128]
#: Every registered model that runs on 2D slices (all but 3D-only ones).
MODELS_2D = [pytest.param(name, marks=model_marks(name), id=name) for name in sorted(MODELS) if 2 in MODELS[name].dims]


def _build_2d(name: str, in_channels: int = 4, out_channels: int = 4):
    return build_model(name, spatial_dims=2, in_channels=in_channels, out_channels=out_channels, **tiny_model_kwargs(name, TINY))


def test_paper_unet_has_exactly_the_papers_parameter_count():
    assert count_parameters(build_model("unet")) == 7_766_372


def test_pde_unet_adds_three_parameters_per_modality():
    assert count_parameters(build_model("pde_unet")) - count_parameters(build_model("unet")) == 3 * 4


@pytest.mark.parametrize("name", MODELS_2D)
@pytest.mark.parametrize("size", [(32, 48), (80, 16)])
def test_2d_shapes_at_non_square_sizes(name, size):
    model = _build_2d(name, in_channels=3, out_channels=5)
    out = main_logits(model(torch.randn(2, 3, *size)))  # the training output's logits
    assert out.shape == (2, 5, *size)


def test_unet_3d_shapes():
    model = build_model("unet", spatial_dims=3, in_channels=2, out_channels=3, features=TINY)
    assert model(torch.randn(1, 2, 16, 32, 48)).shape == (1, 3, 16, 32, 48)


@pytest.mark.parametrize("name", MODELS_2D)
def test_models_accept_sizes_not_divisible_by_16(name):
    assert main_logits(_build_2d(name)(torch.randn(1, 4, 30, 37))).shape == (1, 4, 30, 37)


def test_pde_unet_is_2d_only():
    with pytest.raises(ValueError, match="2D"):
        build_model("pde_unet", spatial_dims=3)


def test_unknown_model_lists_registered_names():
    with pytest.raises(KeyError, match="pde_unet"):
        build_model("vnet9000")


@pytest.mark.parametrize("name", MODELS_2D)
def test_every_parameter_gets_a_finite_gradient(name):
    torch.manual_seed(0)
    model = _build_2d(name)
    x = torch.randn(2, 4, 32, 32)
    y = torch.randint(0, 4, (2, 32, 32))
    loss = torch.nn.functional.cross_entropy(main_logits(model(x)), y)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"


def test_pde_block_gets_its_own_learning_rate_group():
    model = build_model("pde_unet", features=TINY)
    groups = parameter_groups(model, 1e-3, weight_decay=0.01, pde_lr_mult=100.0)
    assert [g["name"] for g in groups] == ["decay", "no_decay", "pde"]
    assert [g["lr"] for g in groups] == [1e-3, 1e-3, pytest.approx(0.1)]
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0, 0.0]
    assert {id(p) for p in groups[2]["params"]} == {id(p) for p in model.pde.parameters()}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert [g["name"] for g in parameter_groups(build_model("unet", features=TINY), 1e-3, 0.01, 100.0)] == ["decay", "no_decay"]
