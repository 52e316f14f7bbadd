import math

import pytest
import torch

from pdeseg.nn.pde.cable import CableBlock, second_differences


def test_one_step_matches_hand_computed_stencil():
    block = CableBlock(1, steps=1, init_phi=2.0, init_psi=4.0, init_tau=0.3)
    a, b, tau = (float(t.detach()) for t in block.coefficients())
    assert a == pytest.approx(1 / 4, rel=1e-5) and b == pytest.approx(1 / 16, rel=1e-5) and tau == pytest.approx(0.3, rel=1e-5)
    u = torch.tensor([[1.0, 2.0, 4.0], [0.0, 5.0, 1.0], [3.0, 1.0, 2.0]])[None, None]
    out = block(u)[0, 0].detach()
    # centre (1, 1): horizontal neighbours 0 and 1, vertical neighbours 2 and 1
    centre = (1 - 0.3) * 5 + (1 / 4) * (0 - 10 + 1) + (1 / 16) * (2 - 10 + 1)
    assert float(out[1, 1]) == pytest.approx(centre, rel=1e-5)
    # corner (0, 0) with replicate boundary: left neighbour = itself, top neighbour = itself
    corner = (1 - 0.3) * 1 + (1 / 4) * (1 - 2 + 2) + (1 / 16) * (1 - 2 + 0)
    assert float(out[0, 0]) == pytest.approx(corner, rel=1e-5)


def test_second_differences_direction():
    u = torch.arange(16.0).view(1, 1, 4, 4) ** 2  # u = (4i + k)^2
    d_xx, d_yy = second_differences(u)
    assert float(d_xx[0, 0, 1, 1]) == pytest.approx(2.0)  # along k: second difference of (c + k)^2 is 2
    assert float(d_yy[0, 0, 1, 1]) == pytest.approx(32.0)  # along i: step 4 -> 2 * 16


def test_constant_image_only_decays_zero_flux_boundary():
    block = CableBlock(2, steps=3)
    u = torch.full((1, 2, 8, 8), 3.0)
    _, _, tau = block.coefficients()
    expected = 3.0 * (1 - tau) ** 3
    out = block(u)
    for c in range(2):
        assert torch.allclose(out[0, c], expected[c].expand(8, 8), atol=1e-6)


@pytest.mark.parametrize("r_tau", [-30.0, 0.0, 30.0])
@pytest.mark.parametrize("r_s", [-30.0, 30.0])
@pytest.mark.parametrize("r_m", [-30.0, 0.0, 30.0])
def test_no_growth_over_many_steps_at_the_parameter_bounds(r_tau, r_s, r_m):
    block = CableBlock(1, steps=200)
    with torch.no_grad():
        block.r_tau.fill_(r_tau)
        block.r_s.fill_(r_s)
        block.r_m.fill_(r_m)
    a, b, tau = (float(t.detach()) for t in block.coefficients())
    assert tau >= 0 and 4 * a + 4 * b + tau <= 2 + 1e-6
    torch.manual_seed(0)
    u = torch.randn(1, 1, 24, 24, dtype=torch.float64)
    checker = (-1.0) ** torch.arange(24, dtype=torch.float64)
    u = u + 5 * checker[:, None] * checker[None, :]  # the highest-frequency mode, the first to blow up
    out = block.double()(u)
    assert torch.isfinite(out).all()
    assert out.abs().max() <= u.abs().max() * (1 + 1e-9)


def test_unstable_initial_values_are_rejected():
    with pytest.raises(ValueError, match="unstable"):
        CableBlock(1, init_phi=1.0, init_psi=1.0, init_tau=0.5)


def test_physical_values_round_trip():
    block = CableBlock(3, init_phi=3.0, init_psi=5.0, init_tau=0.2)
    phys = block.physical()
    assert phys["phi"] == pytest.approx([3.0] * 3, rel=1e-4)
    assert phys["psi"] == pytest.approx([5.0] * 3, rel=1e-4)
    assert phys["tau"] == pytest.approx([0.2] * 3, rel=1e-4)
    assert not math.isnan(sum(phys["phi"]))


def test_cable_block_declares_its_parameters_as_pde_coefficients():
    from pdeseg.nn.params import parameter_groups

    block = CableBlock(2)
    assert CableBlock.pde_coefficients is True
    groups = parameter_groups(block, lr=1e-3, weight_decay=0.1, pde_lr_mult=10.0)
    assert [(g["name"], len(g["params"]), g["weight_decay"]) for g in groups] == [("pde", 3, 0.0)]
