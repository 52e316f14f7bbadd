"""Paper 003's UNet variants: activation, normalisation and dropout change the module tree as configured."""

import pytest
import torch
from torch import nn

from pdeseg.nn.unet import BLOCKS, UNet
from pdeseg.nn.models import build_model, count_parameters

TINY = [8, 16, 32, 64, 128]


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("activation", ["relu", "prelu", "leakyrelu"])
@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_every_variant_builds_and_trains_a_step(activation, norm, dropout):
    torch.manual_seed(0)
    model = UNet(in_channels=2, out_channels=4, features=TINY, activation=activation, norm=norm, dropout=dropout)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(2, 2, 32, 32), torch.randint(0, 4, (2, 32, 32))
    before = [p.detach().clone() for p in model.parameters()]
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters())), "a parameter did not move"


def test_activation_option_sets_every_activation():
    relu = UNet(features=TINY)
    prelu = UNet(features=TINY, activation="prelu")
    leaky = UNet(features=TINY, activation="leakyrelu")
    assert _count(relu, nn.ReLU) == 18 and _count(relu, nn.PReLU) == 0  # 9 blocks x 2 convs
    assert _count(prelu, nn.PReLU) == 18 and _count(prelu, nn.ReLU) == 0
    assert _count(leaky, nn.LeakyReLU) == 18
    # one learned slope per channel of every conv
    extra = count_parameters(prelu) - count_parameters(relu)
    assert extra == 2 * sum([8, 16, 32, 64, 128, 64, 32, 16, 8])


def test_norm_option_sets_or_removes_normalisation():
    assert _count(UNet(features=TINY), nn.BatchNorm2d) == 18
    inst = UNet(features=TINY, norm="instance")
    assert _count(inst, nn.InstanceNorm2d) == 18 and _count(inst, nn.BatchNorm2d) == 0
    bare = UNet(features=TINY, norm="none")
    assert _count(bare, nn.BatchNorm2d) + _count(bare, nn.InstanceNorm2d) + _count(bare, nn.Identity) == 0


def test_dropout_goes_exactly_into_the_named_blocks_at_the_given_rate():
    assert _count(UNet(features=TINY), nn.Dropout) == 0
    default = UNet(features=TINY, dropout=0.2)
    assert [n for n, m in default.named_modules() if isinstance(m, nn.Dropout)] == ["enc4.6", "bottleneck.6"]
    model = UNet(features=TINY, dropout=0.1, dropout_blocks=["enc1", "up2", "up1"])
    drops = {n: m.p for n, m in model.named_modules() if isinstance(m, nn.Dropout)}
    assert drops == {"enc1.6": 0.1, "up2.conv.6": 0.1, "up1.conv.6": 0.1}
    every = UNet(features=TINY, dropout=0.5, dropout_blocks=BLOCKS)
    assert _count(every, nn.Dropout) == len(BLOCKS)


def test_dropout_is_active_in_training_and_off_in_eval():
    torch.manual_seed(0)
    model = UNet(features=TINY, dropout=0.5, dropout_blocks=BLOCKS)
    x = torch.randn(1, 4, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"activation": "gelu"}, "unknown activation"),
        ({"norm": "group"}, "unknown normalisation"),
        ({"dropout": 1.0}, r"\[0, 1\)"),
        ({"dropout": 0.1, "dropout_blocks": ["decoder"]}, "unknown dropout_blocks"),
    ],
)
def test_bad_variant_options_are_rejected_with_the_choices(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNet(features=TINY, **kwargs)


def test_pde_unet_passes_variant_options_to_its_unet():
    model = build_model("pde_unet", features=TINY, activation="prelu", norm="none", dropout=0.1)
    assert _count(model.unet, nn.PReLU) == 18 and _count(model, nn.BatchNorm2d) == 0 and _count(model, nn.Dropout) == 2
