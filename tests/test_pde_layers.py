"""Paper 001's PDE machinery: moment-constrained kernels, solvers, the PDE layer, PDE3D-UNet."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from pdeseg.nn.params import parameter_groups
from pdeseg.nn.pde.layer import PDELayer
from pdeseg.nn.pde.moments import MomentKernels, constraint, kernel_of, moment_basis, moments_of, unit
from pdeseg.nn.pde.solvers import apply_diffusion, explicit_number, solve_implicit
from pdeseg.nn.pde3d_unet import PDE3DUNet
from pdeseg.nn.unet3d import UNet3D

torch.set_default_dtype(torch.float32)


def _randomise(mk: MomentKernels, seed: int = 0, scale: float = 0.5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        mk.m_free.copy_(scale * torch.randn(mk.m_free.shape, generator=g))


def _all_alphas(d: int) -> list[tuple[int, ...]]:
    return [a for a in itertools.product(range(3), repeat=d) if 1 <= sum(a) <= 2]


# --------------------------------------------------------------------------------------
# moments
# --------------------------------------------------------------------------------------


def test_moment_basis_and_round_trip():
    a = moment_basis(3)
    assert torch.allclose(a, torch.tensor([[1.0, 1, 1], [-1, 0, 1], [0.5, 0, 0.5]], dtype=torch.float64))
    q = torch.randn(2, 5, 5, 5, dtype=torch.float64)
    assert torch.allclose(kernel_of(moments_of(q, 3), 3), q, atol=1e-10)


def test_standard_kernels_are_the_central_differences():
    mk = MomentKernels(2, [unit(0, 2, 2), unit(1, 2), (1, 1)], size=3, order=2)
    q = mk.kernels()[0].detach().float()
    assert torch.allclose(q[0], torch.tensor([[0.0, 1, 0], [0, -2, 0], [0, 1, 0]]), atol=1e-6)
    assert torch.allclose(q[1], torch.tensor([[0.0, 0, 0], [-0.5, 0, 0.5], [0, 0, 0]]), atol=1e-6)
    assert torch.allclose(q[2], torch.tensor([[0.25, 0, -0.25], [0, 0, 0], [-0.25, 0, 0.25]]), atol=1e-6)
    five = MomentKernels(3, [unit(2, 3, 2)], size=5, order=4).kernels()[0, 0, 2, 2].detach().float()
    assert torch.allclose(five, torch.tensor([-1.0, 16, -30, 16, -1]) / 12, atol=1e-6)


def test_order_out_of_range_is_refused():
    with pytest.raises(ValueError, match="accuracy order"):
        constraint((2, 0), 3, 3)
    with pytest.raises(ValueError, match="odd"):
        MomentKernels(2, [unit(0, 2, 2)], size=4)


@pytest.mark.parametrize("d", [2, 3])
def test_fixed_moments_survive_optimiser_steps(d):
    mk = MomentKernels(d, _all_alphas(d), size=5, order=2, groups=2)
    opt = torch.optim.Adam(mk.parameters(), lr=0.3)
    u = torch.randn(1, 4, *(9,) * d)
    for _ in range(5):
        opt.zero_grad()
        mk(u).pow(2).mean().backward()
        opt.step()
    assert mk.m_free.abs().max() > 0.5  # the free moments did move
    m = moments_of(mk.kernels(physical=False).double(), d)
    fixed = mk.mask == 0
    target = mk.m_fixed.double().expand_as(m)
    assert (m - target)[fixed.expand_as(m)].abs().max() < 1e-6


def _grid(shape, spacing):
    """Coordinate arrays ``x_i = j h_i`` of the grid."""
    axes = [torch.arange(n, dtype=torch.float64) * h for n, h in zip(shape, spacing)]
    grids = torch.meshgrid(*axes, indexing="ij")
    return grids


@pytest.mark.parametrize("d,size,order", [(2, 3, 2), (2, 5, 4), (3, 3, 2), (3, 5, 3), (2, 5, 1)])
def test_exact_on_polynomials_up_to_the_order(d, size, order):
    """With random free moments, kernel a is exact on every monomial of degree <= |a| + r - 1
    (away from the replicate boundary), on an anisotropic grid."""
    spacing = (0.7, 1.3, 2.0)[:d]
    alphas = _all_alphas(d)
    mk = MomentKernels(d, alphas, size=size, order=order, spacing=spacing).double()
    _randomise(mk, 1)
    shape = (11,) * d
    x = _grid(shape, spacing)
    inner = (slice(None), slice(None)) + (slice(size, -size),) * d
    for t, a in enumerate(alphas):
        for p in itertools.product(range(sum(a) + order), repeat=d):
            if sum(p) > sum(a) + order - 1:
                continue
            u = math.prod(xi**pi for xi, pi in zip(x, p))
            # analytic D^a of prod x_i^p_i
            coef, deriv = 1.0, []
            for xi, pi, ai in zip(x, p, a):
                if ai > pi:
                    coef = 0.0
                    deriv.append(torch.zeros_like(xi))
                    continue
                coef *= math.factorial(pi) / math.factorial(pi - ai)
                deriv.append(xi ** (pi - ai))
            expected = coef * math.prod(deriv)
            got = mk(u[None, None])[:, :, t]
            err = (got[inner] - expected[None, None][inner]).abs().max().item()
            assert err < 1e-8 * max(1.0, expected.abs().max().item()), (a, p, err)


@pytest.mark.parametrize("size,order", [(3, 2), (5, 4), (5, 2)])
def test_converges_at_the_order_on_a_smooth_field(size, order):
    """Error of d_xx and d_xy on sin fields halves 2**r-fold per grid refinement."""
    errors = {}
    for n in (32, 64):
        h = 2 * math.pi / n
        mk = MomentKernels(2, [(2, 0), (1, 1)], size=size, order=order, spacing=(h, h)).double()
        _randomise(mk, 2, 0.3)
        x = torch.arange(n, dtype=torch.float64) * h
        gx, gy = torch.meshgrid(x, x, indexing="ij")
        u = torch.sin(gx) * torch.sin(2 * gy)
        out = mk(u[None, None])[0, 0]
        inner = (slice(size, -size),) * 2
        errors[n] = [(out[0] - (-torch.sin(gx) * torch.sin(2 * gy)))[inner].abs().max().item(),
                     (out[1] - 2 * torch.cos(gx) * torch.cos(2 * gy))[inner].abs().max().item()]
    for e_coarse, e_fine in zip(errors[32], errors[64]):
        assert math.log2(e_coarse / e_fine) > order - 0.3


# --------------------------------------------------------------------------------------
# solvers
# --------------------------------------------------------------------------------------


def _heat(u, k, spacing, dt, steps, solver, iterations=1):
    for _ in range(steps):
        if solver == "explicit":
            u = u + dt * apply_diffusion(u, k, spacing)
        elif solver == "semi_implicit":
            u, _ = solve_implicit(u, k, spacing, dt, iterations, start=u)
        else:
            b = u + 0.5 * dt * apply_diffusion(u, k, spacing)
            u, _ = solve_implicit(b, k, spacing, 0.5 * dt, iterations, start=u)
    return u


@pytest.mark.parametrize("d", [2, 3])
def test_implicit_solvers_are_stable_at_ten_times_the_explicit_limit(d):
    torch.manual_seed(0)
    spacing = (1.0, 0.5, 2.0)[:d]
    k = torch.tensor([1.0, 0.3])
    limit = 1.0 / explicit_number(k, spacing, 1.0).max().item()  # dt with lambda = 1
    dt = 10 * limit
    u0 = torch.randn(1, 2, *(12,) * d, dtype=torch.float64)
    top = u0.abs().max()
    blown = _heat(u0, k.double(), spacing, dt, 20, "explicit")
    assert blown.abs().max() > 1e6 * top  # explicit blows up, as von Neumann says
    below = _heat(u0, k.double(), spacing, 0.9 * limit, 20, "explicit")
    assert below.abs().max() <= top + 1e-9  # and is a maximum-principle step under the limit
    for method in ("jacobi", "gauss_seidel"):
        u = u0
        for _ in range(20):
            u, _ = solve_implicit(u, k.double(), spacing, dt, 1, method, start=u)
        assert u.abs().max() <= top + 1e-9  # semi-implicit: a maximum principle, any dt
    cn = _heat(u0, k.double(), spacing, dt, 20, "crank_nicolson", iterations=100)
    assert cn.norm() <= u0.norm() + 1e-9  # Crank–Nicolson: |g| <= 1 for every mode


def test_inner_iterations_converge_and_gauss_seidel_is_faster():
    torch.manual_seed(1)
    b = torch.randn(1, 1, 16, 16, dtype=torch.float64)
    k = torch.tensor([2.0], dtype=torch.float64)
    res = {}
    for method in ("jacobi", "gauss_seidel"):
        res[method] = [solve_implicit(b, k, (1.0, 1.0), 5.0, n, method)[1].norm().item() for n in (1, 10, 40)]
        assert res[method][0] > res[method][1] > res[method][2]
    assert res["gauss_seidel"][2] < res["jacobi"][2]


def test_crank_nicolson_is_second_order_in_time():
    """Heat equation on the replicate (Neumann) grid against its exact Fourier solution:
    the cosine mode ``cos(pi m (j + 1/2) / N)`` decays like ``exp(mu t)``, ``mu`` the discrete
    Laplacian's eigenvalue, so the error is the time discretisation's alone."""
    n, m, k, t_end = 32, 3, 1.0, 2.0
    j = torch.arange(n, dtype=torch.float64)
    mode = torch.cos(math.pi * m * (j + 0.5) / n)
    mu = -4 * math.sin(math.pi * m / (2 * n)) ** 2
    exact = math.exp(k * mu * t_end) * mode
    kk = torch.tensor([k], dtype=torch.float64)
    errors = {}
    for solver in ("semi_implicit", "crank_nicolson"):
        errors[solver] = []
        for steps in (10, 20, 40):
            u = _heat(mode.view(1, 1, n, 1), kk, (1.0, 1.0), t_end / steps, steps, solver, iterations=200)
            errors[solver].append((u.flatten() - exact).abs().max().item())
    cn, si = errors["crank_nicolson"], errors["semi_implicit"]
    assert all(math.log2(a / b) > 1.9 for a, b in zip(cn, cn[1:]))  # second order
    assert all(0.8 < math.log2(a / b) < 1.2 for a, b in zip(si, si[1:]))  # first order


# --------------------------------------------------------------------------------------
# the layer
# --------------------------------------------------------------------------------------

SOLVERS = ("explicit", "semi_implicit", "crank_nicolson")
OPERATORS = ("isotropic", "anisotropic", "general")


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("solver", SOLVERS)
def test_layer_starts_near_identity(d, solver):
    torch.manual_seed(0)
    layer = PDELayer(4, d, solver=solver)
    smooth = torch.nn.functional.avg_pool3d if d == 3 else torch.nn.functional.avg_pool2d
    u = smooth(torch.randn(2, 4, *(16,) * d), 5, 1, 2) * 10
    out, r = layer(u)
    assert out.shape == u.shape
    assert (out - u).norm() / u.norm() < 0.1
    const = torch.full((1, 4, *(6,) * d), 3.0)
    assert torch.allclose(layer(const)[0], const, atol=1e-5)  # zero flux: a constant stays


def test_explicit_layer_cannot_leave_the_stable_region():
    layer = PDELayer(3, 3, solver="explicit", operator="anisotropic", spacing=(0.8, 0.8, 2.5))
    with torch.no_grad():
        layer.coefficients.r_strength.fill_(50.0)
        layer.coefficients.r_axes.normal_(0, 10)
    lam = explicit_number(layer.coefficients.diffusion(), layer.spacing, layer.dt)
    assert (lam < 0.9 + 1e-6).all() and torch.allclose(lam, layer.coefficients.strength())


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("solver,operator", list(itertools.product(SOLVERS, OPERATORS)))
def test_gradients_reach_every_pde_parameter(d, solver, operator):
    torch.manual_seed(0)
    layer = PDELayer(4, d, solver=solver, operator=operator, kernel_size=5, order=2, groups=2,
                     spacing=(1.0, 2.0, 1.5)[:d])
    u = torch.randn(2, 4, *(7,) * d, requires_grad=True)
    out, r = layer(u)
    (out.pow(2).mean() + r).backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if name != "reaction.bias":
            assert p.grad.abs().sum() > 0, name
    assert torch.isfinite(u.grad).all()


def test_regulariser_only_layer_leaves_features_and_reports_a_residual():
    layer = PDELayer(4, 3, embed=False)
    assert not any(p.requires_grad for p in layer.parameters())
    u = torch.randn(1, 4, 8, 8, 8, requires_grad=True)
    out, r = layer(u)
    assert out is u and r > 0
    r.backward()
    assert u.grad.abs().sum() > 0  # the penalty reaches the features


def test_bad_layer_options_are_refused():
    with pytest.raises(ValueError, match="solver"):
        PDELayer(4, 3, solver="rk4")
    with pytest.raises(ValueError, match="groups"):
        PDELayer(4, 3, groups=3)
    with pytest.raises(ValueError, match="init_strength"):
        PDELayer(4, 3, solver="explicit", init_strength=0.95)


# --------------------------------------------------------------------------------------
# PDE3D-UNet
# --------------------------------------------------------------------------------------


def test_pde3d_unet_outputs_and_residual():
    torch.manual_seed(0)
    net = PDE3DUNet(3, 2, 3, features=(4, 8, 16), deep_supervision=True, pde_positions=[0, "bottleneck"],
                    spacing=(1.0, 1.0, 2.0))
    assert net.pde["0"].spacing == (1.0, 1.0, 2.0) and net.pde["bottleneck"].spacing == (2.0, 2.0, 4.0)
    x = torch.randn(2, 2, 13, 10, 9)
    out = net.train()(x)
    assert set(out) == {"logits", "pde_residual"} and len(out["logits"]) == 2
    assert out["logits"][0].shape == (2, 3, 13, 10, 9) and out["pde_residual"].dim() == 0
    (out["logits"][0].mean() + out["logits"][1].mean() + out["pde_residual"]).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    assert net.eval()(x).shape == (2, 3, 13, 10, 9)
    seen = net.features_around(x)
    assert set(seen) == {"0", "bottleneck"} and seen["0"][0].shape == (2, 4, 16, 12, 12)


def test_regulariser_only_model_computes_the_backbone():
    torch.manual_seed(0)
    net = PDE3DUNet(3, 1, 2, features=(4, 8, 16), pde_embed=False).eval()
    backbone = UNet3D(3, 1, 2, features=(4, 8, 16)).eval()
    missing = backbone.load_state_dict(net.state_dict(), strict=False)
    assert not missing.missing_keys
    x = torch.randn(1, 1, 8, 8, 8)
    assert torch.equal(net(x), backbone(x))


def test_pde3d_unet_positions_and_parameter_groups():
    with pytest.raises(ValueError, match="pde_positions"):
        PDE3DUNet(3, 1, 2, features=(4, 8, 16), pde_positions=[2])
    net = PDE3DUNet(2, 1, 2, features=(4, 8, 16), pde_positions=["0", "bottleneck"])
    groups = {g["name"]: g for g in parameter_groups(net, 1e-3, 1e-4, 10.0)}
    pde = {id(p) for p in groups["pde"]["params"]}
    for layer in net.pde.values():
        assert {id(p) for p in layer.coefficients.parameters()} | {id(p) for p in layer.stencils.parameters()} <= pde
    assert groups["pde"]["weight_decay"] == 0 and groups["pde"]["lr"] == pytest.approx(1e-2)


@pytest.mark.parametrize("d,solver,operator,kernel,sweeps,reaction,groups", [
    (3, "semi_implicit", "isotropic", 3, 1, "linear", 1),  # PDE3D-UNet's default
    (3, "crank_nicolson", "anisotropic", 5, 3, "mlp", 2),
    (3, "explicit", "general", 3, 1, "linear", 1),
    (2, "semi_implicit", "general", 5, 2, "none", 2),
    (2, "explicit", "anisotropic", 5, 1, "mlp", 1),
])
def test_the_fused_step_equals_the_step_term_by_term(d, solver, operator, kernel, sweeps, reaction, groups):
    """In float64 the one-stencil step and the term-by-term step agree to rounding: the
    output, the implicit residual, and the gradients of the input and of every parameter."""
    torch.manual_seed(0)
    layer = PDELayer(4, d, steps=2, solver=solver, operator=operator, kernel_size=kernel, order=2 if kernel == 3 else 3,
                     inner_iterations=sweeps, reaction=reaction, groups=groups, spacing=(1.0, 1.5, 2.0)[:d],
                     init_strength=0.3).double()
    with torch.no_grad():  # away from the initial (near-identity) coefficients and zero reaction
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    u = torch.randn((2, 4) + ((7, 6, 5) if d == 3 else (9, 7)), dtype=torch.float64, requires_grad=True)
    results = []
    for fused in (True, False):
        layer.fused = fused
        layer.zero_grad()
        u.grad = None
        y, r = layer.evolve(u)
        (y.pow(2).sum() + 10 * r).backward()
        results.append([y.detach(), r.detach(), u.grad.clone()] + [p.grad.clone() for p in layer.parameters()
                                                                    if p.grad is not None])
    assert len(results[0]) == len(results[1]) > 3
    for a, b in zip(*results):
        assert float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) < 1e-9
    if solver != "explicit":
        assert float(results[1][1]) > 0  # the residual is compared where there is one


def test_the_default_pde3d_unet_gives_the_same_logits_and_gradients_fused_or_not():
    """float32, as trained: the default model's logits agree to 1e-6 and every gradient to
    1e-5 (relative to the largest entry) whichever way its PDE layer takes a step."""
    from pdeseg.nn.models import build_model

    torch.manual_seed(0)
    model = build_model("pde3d_unet", spatial_dims=3, in_channels=1, out_channels=3, features=[8, 16, 32, 64])
    x = torch.randn(2, 1, 24, 32, 24)
    out = []
    for fused in (True, False):
        for layer in model.modules():
            if hasattr(layer, "fused"):
                layer.fused = fused
        model.zero_grad()
        result = model(x)
        logits = result["logits"]
        logits = logits[0] if isinstance(logits, (list, tuple)) else logits
        (logits.pow(2).mean() + result["pde_residual"]).backward()
        out.append((logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (a, ga), (b, gb) = out
    assert float((a - b).abs().max() / b.abs().max()) < 1e-6
    assert all(float((x - y).abs().max() / y.abs().max().clamp_min(1e-12)) < 1e-5 for x, y in zip(ga, gb))


def test_red_black_sweeps_are_not_fused():
    assert PDELayer(4, 3).fused and not PDELayer(4, 3, inner_method="gauss_seidel").fused
    assert not PDELayer(4, 3, fused=False).fused
