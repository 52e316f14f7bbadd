"""PDE loss terms (TV, PDE consistency) and the named-variant ablation plan of paper 001."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from pdeseg.config import load_config
from pdeseg.errors import ConfigError
from pdeseg.experiments.ablate import config_variants, variant_config
from pdeseg.losses.composite import CompositeLoss
from pdeseg.losses.pde import PDEConsistencyLoss, TotalVariationLoss, total_variation
from pdeseg.losses.segmentation import SoftDiceLoss
from pdeseg.nn.pde.stencils import forward_gradient, laplacian
from pdeseg.nn.pde3d_unet import PDE3DUNet

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _disk(n: int, radius: float, width: float) -> tuple[torch.Tensor, float]:
    h = 3.0 / n
    x = (torch.arange(n, dtype=torch.float64) + 0.5) * h - 1.5
    gx, gy = torch.meshgrid(x, x, indexing="ij")
    r = torch.sqrt(gx**2 + gy**2)
    return 0.5 * (1 + torch.tanh((radius - r) / width)), h


def test_tv_of_a_smooth_disk_tends_to_its_perimeter():
    errors = []
    for n, width in ((150, 0.08), (1200, 0.02)):  # thinner profiles, resolved by more cells
        p, h = _disk(n, 1.0, width)
        tv = total_variation(p[None, None], (h, h), eps=1e-9).item()
        errors.append(abs(tv - 2 * math.pi) / (2 * math.pi))
    assert errors[-1] < 0.02 and errors[-1] < errors[0]


def test_tv_is_zero_on_constants_and_scales_with_spacing():
    assert total_variation(torch.full((1, 1, 5, 6, 7), 0.3), eps=0.01).item() == pytest.approx(0.0, abs=1e-12)
    ramp = torch.arange(10.0).view(1, 1, 10, 1).expand(1, 1, 10, 4)
    # |grad| = 1/h on 9 of 10 rows, times the cell area h^2 over 36 cells: 36 h
    assert total_variation(ramp, (2.0, 2.0)).item() == pytest.approx(36 * 2.0)


def test_tv_loss_gradient_matches_finite_differences():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    loss = TotalVariationLoss(eps=0.05)
    assert torch.autograd.gradcheck(lambda z: loss(z, None), (logits,))


def test_stencils_on_known_fields():
    x = torch.arange(8, dtype=torch.float64)
    u = (x**2).view(1, 1, 8, 1).expand(1, 1, 8, 3)
    lap = laplacian(u, (0.5, 1.0))[0, 0]
    assert torch.allclose(lap[1:-1], torch.full((6, 3), 2 / 0.25, dtype=torch.float64))
    gx, gy = forward_gradient(u, (0.5, 1.0))
    assert torch.allclose(gx[0, 0, :-1, 0], (2 * x[:-1] + 1) / 0.5) and gx[0, 0, -1].abs().sum() == 0
    assert gy.abs().sum() == 0


def test_consistency_term_reads_the_model_residual_and_is_zero_without_one():
    torch.manual_seed(0)
    net = PDE3DUNet(3, 1, 2, features=(4, 8, 16), deep_supervision=True).train()
    x, y = torch.randn(2, 1, 8, 8, 8), torch.randint(0, 2, (2, 8, 8, 8))
    out = net(x)
    term = PDEConsistencyLoss()
    assert term(out["logits"][0], y, aux={"pde_residual": out["pde_residual"]}) == out["pde_residual"]
    assert term(out["logits"][0], y).item() == 0.0
    composite = CompositeLoss([("dice", 1.0, SoftDiceLoss()), ("pde_consistency", 1000.0, term)])
    plain = CompositeLoss([("dice", 1.0, SoftDiceLoss())])
    # the deep-supervision weights sum to 1, so the residual enters once, with its weight
    diff = composite(out, y) - plain(out["logits"], y)
    assert diff.item() == pytest.approx(1000.0 * out["pde_residual"].item(), rel=1e-4)
    composite(out, y).backward()
    assert net.pde["bottleneck"].coefficients.r_strength.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def msd_task(tmp_path_factory) -> Path:
    from pdeseg.data.phantoms.msd import write_msd_phantom_dataset

    return write_msd_phantom_dataset(tmp_path_factory.mktemp("msd") / "task", n_cases=3, kind="mri", shape=(16, 16, 16), n_test=0)


def test_shipped_ablation_config_names_the_paper_plan(msd_task):
    cfg = load_config(CONFIGS / "pde3d_ablation_hippocampus.yaml", [f"data.root={msd_task}"])
    variants = config_variants(cfg)
    assert [v.name for v in variants][:3] == ["backbone", "pde_loss_only", "pde_layers"]
    exp, model = variant_config(cfg, cfg.models[0].name, variants[0])
    assert model.name == "unet3d" and exp.cfg.ablation is None
    exp, model = variant_config(cfg, cfg.models[0].name, variants[1])
    assert model.name == "pde3d_unet" and model.kwargs["pde_embed"] is False
    assert model.kwargs["features"] == [24, 48, 96, 192]  # the config's pde3d_unet kwargs carry over
    assert [t.name for t in exp.cfg.loss.terms] == ["ce", "dice", "pde_consistency", "tv"]
    solvers = {v.name: variant_config(cfg, "unet3d", v)[1].kwargs.get("pde_solver") for v in variants[2:]}
    assert solvers["explicit"] == "explicit" and solvers["crank_nicolson"] == "crank_nicolson"
    steps = {v.name: variant_config(cfg, "unet3d", v)[1].kwargs.get("pde_steps") for v in variants}
    assert steps["K1"] == 1 and steps["K4"] == 4 and steps["pde_layers"] == 2


def test_bad_ablation_sections_are_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ablation:\n  variants:\n    - {name: a, model: unet3d}\n    - {model: unet3d}\n")
    with pytest.raises(ConfigError, match="needs a non-empty name"):
        load_config(bad)
    bad.write_text("ablation:\n  variants:\n    - {name: a}\n    - {name: a}\n")
    with pytest.raises(ConfigError, match="repeated: a"):
        load_config(bad)
    cfg = load_config(CONFIGS / "pde3d_hippocampus.yaml")
    with pytest.raises(ConfigError, match="no variants"):
        config_variants(cfg)


def test_a_subset_of_named_variants_runs_in_the_given_order(msd_task):
    cfg = load_config(CONFIGS / "pde3d_ablation_hippocampus.yaml", [f"data.root={msd_task}"])
    chosen = config_variants(cfg, ["pde_layers", "K1", "explicit"])
    assert [v.name for v in chosen] == ["pde_layers", "K1", "explicit"]
    with pytest.raises(ConfigError, match="unknown: K3"):
        config_variants(cfg, ["pde_layers", "K3"])


# --------------------------------------------------------------------------------------
# paper 004's penalties (phase field, reaction-diffusion)
# --------------------------------------------------------------------------------------


def test_phase_field_energy_of_a_disk_tends_to_c_w_times_its_perimeter():
    from pdeseg.losses.pde import phase_field_energy

    target = math.sqrt(2) / 6 * 2 * math.pi  # c_W x perimeter of the unit disk
    errors = []
    for n, eps in ((300, 0.05), (1200, 0.0125)):
        h = 3.0 / n
        x = (torch.arange(n, dtype=torch.float64) + 0.5) * h - 1.5
        gx, gy = torch.meshgrid(x, x, indexing="ij")
        d = 1.0 - torch.sqrt(gx**2 + gy**2)  # signed distance to the circle, inside positive
        p = 0.5 * (1 + torch.tanh(d / (math.sqrt(2) * eps)))  # the optimal profile
        errors.append(abs(phase_field_energy(p[None, None], eps, (h, h)).item() - target) / target)
    assert errors[-1] < 0.02 and errors[-1] < errors[0]


def test_allen_cahn_residual_vanishes_on_its_standing_front_and_not_on_a_step():
    from pdeseg.losses.pde import reaction_diffusion_residual

    d, h = 0.5, 0.01
    x = torch.arange(-300, 300, dtype=torch.float64) * h
    front = 0.5 * (1 + torch.tanh(x / (2 * math.sqrt(2 * d))))
    step = (x > 0).double()
    inner = slice(5, -5)
    res_front = reaction_diffusion_residual(front.view(1, 1, -1, 1), d, 0.5, spacing=(h, 1.0))[0, 0, inner]
    res_step = reaction_diffusion_residual(step.view(1, 1, -1, 1), d, 0.5, spacing=(h, 1.0))[0, 0, inner]
    assert res_front.abs().max() < 1e-4
    assert res_step.abs().max() > 1e3 * res_front.abs().max()


@pytest.mark.parametrize("term", ["phase_field", "reaction_diffusion_ac", "reaction_diffusion_kpp"])
def test_penalty_gradients_match_finite_differences(term):
    from pdeseg.losses.pde import PhaseFieldLoss, ReactionDiffusionLoss

    loss = {"phase_field": PhaseFieldLoss(eps=1.5),
            "reaction_diffusion_ac": ReactionDiffusionLoss(diffusion=0.7, a=0.3),
            "reaction_diffusion_kpp": ReactionDiffusionLoss(diffusion=0.7, a=2.0, reaction="fisher_kpp")}[term]
    torch.manual_seed(0)
    logits = torch.randn(1, 2, 4, 5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: loss(z, None), (logits,))


def test_bad_penalty_options_are_refused():
    from pdeseg.losses.pde import PhaseFieldLoss, ReactionDiffusionLoss

    with pytest.raises(ValueError, match="eps"):
        PhaseFieldLoss(eps=0)
    with pytest.raises(ValueError, match="threshold"):
        ReactionDiffusionLoss(a=1.5)
    with pytest.raises(ValueError, match="unknown reaction"):
        ReactionDiffusionLoss(reaction="gray_scott")


def test_union_channels_penalise_the_cell_not_its_boundary_class():
    """With ``channels: union`` a 3-class (background / interior / boundary) output is
    penalised through 1 - P(background): the same value as a 2-class output with that
    foreground probability, whatever the split between interior and boundary."""
    import torch

    from pdeseg.losses.pde import PhaseFieldLoss, ReactionDiffusionLoss, TotalVariationLoss

    torch.manual_seed(0)
    logits3 = torch.randn(2, 3, 16, 16)
    p3 = torch.softmax(logits3, 1)
    fg = 1 - p3[:, :1]
    logits2 = torch.cat([torch.log(p3[:, :1]), torch.log(fg)], 1)  # softmax gives (P(bg), 1 - P(bg))
    for loss in (PhaseFieldLoss(1.0, channels="union"), ReactionDiffusionLoss(channels="union"),
                 TotalVariationLoss(channels="union")):
        two = type(loss)(**({"eps": loss.eps} if hasattr(loss, "eps") else {}))
        assert torch.allclose(loss(logits3, None), two(logits2, None), atol=1e-6)
    shuffled = torch.stack([logits3[:, 0], logits3[:, 2], logits3[:, 1]], 1)  # swap interior and boundary
    assert torch.allclose(PhaseFieldLoss(channels="union")(logits3, None), PhaseFieldLoss(channels="union")(shuffled, None))
    # per class (the default), interior and boundary are penalised on their own: a different value
    assert not torch.allclose(PhaseFieldLoss()(logits3, None), PhaseFieldLoss(channels="union")(logits3, None))
    with pytest.raises(ValueError, match="channels"):
        PhaseFieldLoss(channels="cells")
