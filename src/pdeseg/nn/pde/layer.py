"""A learnable PDE layer: ``K`` time steps of ``du/dt = D_phi[u] + N_psi(u)`` on feature maps.

Paper 001 evolves intermediate features ``u`` (``(B, C, *S)``, each channel a field) by

    du/dt = D_phi[u] + N_psi(u),

``D_phi`` a differential operator built from moment-constrained kernels
(:mod:`pdeseg.nn.pde.moments`) and ``N_psi`` a learned pointwise response. Per channel
``c`` (coefficients per channel; kernels shared by ``groups`` of channels):

* ``operator='isotropic'``:   ``D u = k_c sum_i d_ii u``;
* ``operator='anisotropic'``: ``D u = sum_i k_{c,i} d_ii u`` (axis-aligned diffusion);
* ``operator='general'``:     ``D u = sum_i k_{c,i} d_ii u + sum_i a_{c,i} d_i u
  + sum_{i<j} m_{c,ij} d_ij u`` (PDE-Net's learned derivative terms: advection and
  mixed second derivatives beside the diffusion),

each ``d^alpha`` a trainable moment-constrained kernel of size 3 or 5 and accuracy
``order``, scaled by the grid spacing ``h`` of the feature map (physical units). The
diffusion coefficients are positive by parametrisation, through the per-channel
**diffusion number** ``lambda = dt sum_i 2 k_i / h_i**2``:

    explicit:  lambda = margin * sigmoid(r)     (< margin < 1: the von Neumann bound)
    implicit:  lambda = softplus(r)             (any positive value)
    k_i = lambda w_i h_i**2 / (2 dt),  w = softmax(r_axes)  (isotropic: w_i ∝ 1 / h_i**2)

``N_psi`` is a 1x1(x1) convolution (``reaction='linear'``), a two-layer 1x1 MLP
(``'mlp'``) or absent; its last layer starts at zero.

**Time stepping** (:mod:`pdeseg.nn.pde.solvers`): ``steps`` steps of size ``dt``. The
explicit solver takes the whole right-hand side explicitly. The semi-implicit and
Crank–Nicolson solvers split the operator (IMEX): the 3-point diffusion ``S_k`` (the
stiff part, whose system is strictly diagonally dominant) is implicit and solved by
``inner_iterations`` Jacobi or red-black Gauss–Seidel sweeps; the learned stencil's
deviation from it, the advection/mixed terms and ``N_psi`` are explicit.

**Stability guarantee, stated exactly.** For the explicit solver the bound
``lambda < margin <= 1`` is enforced for the diffusion with its fixed moments (the free
moments at 0, which is how they start); learned free moments and the ``general``
operator's advection/mixed terms are first-order corrections outside that guarantee.
The implicit solvers are unconditionally convergent in their inner iterations.

**Residual form.** Every step is ``u + dt * (...)``; with ``N_psi = 0`` and the initial
``lambda = init_strength`` (default 0.1) the layer starts close to the identity.

**As a regulariser only** (``embed=False``; ablation 2): the layer returns ``u``
unchanged; it evolves a copy with frozen coefficients and reports how far ``u`` is
from being left unchanged by the PDE (a smoothness prior on the features).

Computation is in float32 with autocast disabled (stencils and iterations are
sensitive to bf16 rounding); the output is cast back to the input's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pdeseg.nn.pde.moments import MomentKernels, unit
from pdeseg.nn.pde.solvers import INNER_METHODS, SOLVERS, apply_diffusion, solve_implicit
from pdeseg.nn.pde.stencils import check_spacing, neighbour_sums, replicate_pad

OPERATORS = ("isotropic", "anisotropic", "general")
REACTIONS = ("linear", "mlp", "none")


class PDECoefficients(nn.Module):
    """The operator's per-channel coefficients (the parametrisation in the module docstring).

    Shapes:
        :meth:`diffusion`: ``(C, d)``, ``k_{c,i} >= 0``; ``advection``: ``(C, d)`` and
        ``mixed``: ``(C, d (d - 1) / 2)`` (parameters, ``None`` unless ``operator='general'``).
    """

    pde_coefficients = True

    def __init__(self, channels: int, spacing: tuple[float, ...], dt: float, operator: str, explicit: bool,
                 init_strength: float, margin: float):
        super().__init__()
        d = len(spacing)
        self.spacing, self.dt, self.operator, self.explicit, self.margin = spacing, dt, operator, explicit, margin
        if explicit:
            if not 0 < init_strength < margin:
                raise ValueError(f"init_strength must be in (0, margin={margin}) for the explicit solver, got {init_strength}")
            raw = math.log(init_strength / (margin - init_strength))  # logit(init / margin)
        else:
            if not init_strength > 0:
                raise ValueError(f"init_strength must be > 0, got {init_strength}")
            raw = math.log(math.expm1(init_strength))  # softplus^-1
        self.r_strength = nn.Parameter(torch.full((channels,), raw))
        # isotropic start: w_i ∝ 1 / h_i^2 gives every axis the same k
        start = torch.log(torch.tensor([1.0 / h**2 for h in spacing]))
        self.r_axes = nn.Parameter(start.repeat(channels, 1)) if operator != "isotropic" else None
        general = operator == "general"
        self.register_parameter("advection", nn.Parameter(torch.zeros(channels, d)) if general else None)
        self.register_parameter("mixed", nn.Parameter(torch.zeros(channels, d * (d - 1) // 2)) if general else None)
        self.register_buffer("inv_h2", torch.tensor([1.0 / h**2 for h in spacing]))

    def strength(self) -> torch.Tensor:
        """``lambda = dt sum_i 2 k_i / h_i**2`` per channel, ``(C,)``."""
        if self.explicit:
            return self.margin * torch.sigmoid(self.r_strength)
        return F.softplus(self.r_strength)

    def diffusion(self) -> torch.Tensor:
        """``k``, ``(C, d)``."""
        lam = self.strength()
        if self.r_axes is None:
            w = self.inv_h2 / self.inv_h2.sum()
            w = w.expand(lam.shape[0], -1)
        else:
            w = torch.softmax(self.r_axes, dim=1)
        return lam[:, None] * w / (2 * self.dt * self.inv_h2)


class PDELayer(nn.Module):
    """``steps`` time steps of a learned PDE on feature maps (see the module docstring).

    Args:
        channels: feature channels ``C``.
        spatial_dims: 2 or 3.
        steps: time steps ``K`` (paper default 2).
        dt: step size.
        solver: ``explicit``, ``semi_implicit`` or ``crank_nicolson``.
        operator: ``isotropic``, ``anisotropic`` or ``general``.
        kernel_size: taps per axis of the learned stencils (3 or 5).
        order: accuracy order of the moment constraint (``1 .. kernel_size - 1``).
        inner_iterations: Jacobi / Gauss–Seidel sweeps per implicit step (paper: 1).
        inner_method: ``jacobi`` or ``gauss_seidel`` (red-black).
        spacing: grid spacing of the feature map per axis (physical units).
        reaction: ``linear`` (1x1 conv), ``mlp`` (1x1 conv, LeakyReLU, 1x1 conv) or ``none``.
        groups: channel groups that share a kernel bank (must divide ``C``).
        init_strength: initial diffusion number ``lambda`` (< ``margin`` when explicit).
        margin: the explicit solver's bound ``lambda < margin`` (``0 < margin <= 1``).
        embed: ``False`` turns the layer into a regulariser only (identity output, frozen
            coefficients, residual reported).
        fused: take each step as one depthwise stencil (:meth:`fused_step`) where the
            solver allows it (explicit, or Jacobi inner iterations); ``False`` always takes
            the step term by term (:meth:`reference_step`). Same values to float rounding.

    Shapes:
        ``forward``: ``(B, C, *S) -> ((B, C, *S), residual)``; ``residual`` is a scalar
        tensor: the mean over steps of ``mean(r**2) / (mean(b**2) + 1e-6)`` where ``r`` is
        the implicit system's residual after the inner iterations and ``b`` its
        right-hand side (0 for the explicit solver, and when gradients are off: the
        residual pass is skipped at inference); with ``embed=False``,
        ``mean((Phi(u) - u)**2) / (mean(u**2) + 1e-6)``.

    Raises:
        ValueError: an unknown solver, operator, reaction or inner method, a bad number.
    """

    def __init__(
        self,
        channels: int,
        spatial_dims: int = 3,
        steps: int = 2,
        dt: float = 1.0,
        solver: str = "semi_implicit",
        operator: str = "isotropic",
        kernel_size: int = 3,
        order: int = 2,
        inner_iterations: int = 1,
        inner_method: str = "jacobi",
        spacing: Sequence[float] | None = None,
        reaction: str = "linear",
        groups: int = 1,
        init_strength: float = 0.1,
        margin: float = 0.9,
        embed: bool = True,
        fused: bool = True,
    ):
        super().__init__()
        for name, value, allowed in (("solver", solver, SOLVERS), ("operator", operator, OPERATORS),
                                     ("reaction", reaction, REACTIONS), ("inner_method", inner_method, INNER_METHODS)):
            if value not in allowed:
                raise ValueError(f"unknown PDE {name} {value!r}; choose one of {', '.join(allowed)}")
        if steps < 1 or inner_iterations < 1:
            raise ValueError(f"steps and inner_iterations must be >= 1, got {steps} and {inner_iterations}")
        if not dt > 0:
            raise ValueError(f"dt must be > 0, got {dt}")
        if not 0 < margin <= 1:
            raise ValueError(f"margin must be in (0, 1], got {margin}")
        if channels % groups:
            raise ValueError(f"groups={groups} must divide the {channels} channels")
        d = spatial_dims
        self.channels, self.spatial_dims, self.steps, self.dt = channels, d, int(steps), float(dt)
        self.solver, self.operator, self.embed = solver, operator, bool(embed)
        self.inner_iterations, self.inner_method = int(inner_iterations), inner_method
        self.fused = bool(fused) and inner_method == "jacobi"
        self.spacing = check_spacing(spacing, d)
        derivatives = [unit(i, d, 2) for i in range(d)]
        if operator == "general":
            derivatives += [unit(i, d) for i in range(d)]
            derivatives += [tuple(1 if a in (i, j) else 0 for a in range(d)) for i in range(d) for j in range(i + 1, d)]
        self.stencils = MomentKernels(d, derivatives, kernel_size, order, groups, self.spacing)
        self.coefficients = PDECoefficients(channels, self.spacing, self.dt, operator, solver == "explicit",
                                            init_strength, margin)
        conv = nn.Conv3d if d == 3 else nn.Conv2d
        if reaction == "linear" and embed:
            self.reaction = conv(channels, channels, 1)
        elif reaction == "mlp" and embed:
            self.reaction = nn.Sequential(conv(channels, channels, 1), nn.LeakyReLU(0.01), conv(channels, channels, 1))
        else:
            self.reaction = None
        if self.reaction is not None:
            last = self.reaction[-1] if isinstance(self.reaction, nn.Sequential) else self.reaction
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        if not embed:
            for p in self.parameters():
                p.requires_grad_(False)

    def rhs_terms(self, u: torch.Tensor, k: torch.Tensor,
                  kernels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(D_learned u, other(u))``: the learned-stencil diffusion and the explicit extra
        terms (advection, mixed, reaction), each ``(B, C, *S)``, the second ``None`` when the
        layer has none; ``kernels`` from ``self.stencils.kernels()``."""
        d = self.spatial_dims
        terms = self.stencils(u, kernels)  # (B, C, T, *S)
        view = (1, -1) + (1,) * d
        diffusion = sum(k[:, i].view(view) * terms[:, :, i] for i in range(d))
        extra = []
        adv, mixed = self.coefficients.advection, self.coefficients.mixed
        if adv is not None:
            extra += [adv[:, i].view(view) * terms[:, :, d + i] for i in range(d)]
            extra += [mixed[:, j].view(view) * terms[:, :, 2 * d + j] for j in range(mixed.shape[1])]
        if self.reaction is not None:
            extra.append(self.reaction(u))
        return diffusion, sum(extra) if extra else None

    def step(self, u: torch.Tensor, k: torch.Tensor | None = None,
             kernels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step; returns ``(u_next, relative squared residual)``: :meth:`fused_step`
        when the layer is ``fused``, else :meth:`reference_step`."""
        if self.fused:
            return self.fused_step(u, k, kernels)
        return self.reference_step(u, k, kernels)

    def step_kernels(self, k: torch.Tensor, kernels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-channel stencils of one step, float64 ``(C, n, ..., n)`` (``n`` the kernel size).

        Every part of a step is linear in ``u`` except the reaction ``N_psi`` (a pointwise
        term, added separately), and every linear part is a per-channel stencil with the same
        replicate boundary, so a step is one depthwise correlation. With ``delta`` the
        identity stencil, ``L = sum_i k_i q_ii (+ sum_i a_i q_i + sum_ij m_ij q_ij)`` the
        learned operator, ``S`` the 3-point diffusion ``S_k`` and ``N`` its neighbour part
        (``S = N - 2 sum_i w_i delta``, ``w_i = k_i / h_i**2``, ``N u = sum_i w_i (u[x+e_i] +
        u[x-e_i])``):

        * ``explicit``: ``u' = [delta + dt L] u + dt N_psi(u)``;
        * implicit (share ``s`` = 1 or 1/2, ``c = s dt``): ``b = [delta + dt (L - s S)] u +
          dt N_psi(u)``; a Jacobi sweep is ``v' = (b + c N v) / diag``, ``diag = 1 + 2 c
          sum_i w_i``, so the first one, from ``v = u``, is ``[(delta + dt (L - s S) + c N) /
          diag] u + dt N_psi(u) / diag``. The residual of a sweep is ``diag v' - c N v' - b =
          c N (v - v')``.

        Returns:
            ``{"step": ...}`` (explicit), or ``{"b": ..., "v": ..., "w": (C, d), "diag": (C,),
            "c": c}`` (implicit; ``w`` and ``diag`` float64).
        """
        d, n = self.spatial_dims, kernels.shape[-1]
        channels = k.shape[0]
        q = kernels[torch.arange(channels, device=kernels.device) // (channels // kernels.shape[0])]  # (C, T, n..)
        view = (-1,) + (1,) * d
        kd = k.double()
        learned = sum(kd[:, i].view(view) * q[:, i] for i in range(d))
        adv, mixed = self.coefficients.advection, self.coefficients.mixed
        if adv is not None:
            learned = learned + sum(adv[:, i].double().view(view) * q[:, d + i] for i in range(d))
            learned = learned + sum(mixed[:, j].double().view(view) * q[:, 2 * d + j] for j in range(mixed.shape[1]))
        centre = (n // 2,) * d
        delta = torch.zeros((n,) * d, dtype=torch.float64, device=kd.device)
        delta[centre] = 1.0
        delta = delta.expand(channels, *delta.shape)
        if self.solver == "explicit":
            return {"step": delta + self.dt * learned}
        w = kd / torch.tensor([h**2 for h in self.spacing], dtype=torch.float64, device=kd.device)  # (C, d)
        neighbours = torch.zeros((channels,) + (n,) * d, dtype=torch.float64, device=kd.device)
        for i in range(d):
            for step_ in (-1, 1):
                at = list(centre)
                at[i] += step_
                neighbours[(slice(None), *at)] += w[:, i]
        diffusion = neighbours - 2 * w.sum(1).view(view) * delta
        share, c = (1.0, self.dt) if self.solver == "semi_implicit" else (0.5, 0.5 * self.dt)
        b = delta + self.dt * (learned - share * diffusion)
        diag = 1 + 2 * c * w.sum(1)
        return {"b": b, "v": (b + c * neighbours) / diag.view(view), "w": w, "diag": diag, "c": c}

    def fused_step(self, u: torch.Tensor, k: torch.Tensor | None = None,
                   kernels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step as one depthwise correlation with the stencils of :meth:`step_kernels`
        (plus, when the residual is wanted or several sweeps are asked for, the neighbour sums
        of the sweeps), instead of the few dozen small operations of :meth:`reference_step`;
        the same values up to float rounding. Jacobi sweeps only (red-black Gauss–Seidel is
        not a correlation)."""
        k = self.coefficients.diffusion() if k is None else k
        kernels = self.stencils.kernels() if kernels is None else kernels
        parts = self.step_kernels(k, kernels)
        conv = F.conv3d if self.spatial_dims == 3 else F.conv2d
        channels, pad = u.shape[1], kernels.shape[-1] // 2

        def correlate(x: torch.Tensor, stencil: torch.Tensor) -> torch.Tensor:
            """``x`` correlated with a per-channel stencil ``(C, n, ..., n)``."""
            weight = stencil.to(x.dtype).reshape(channels, 1, *stencil.shape[1:])
            return conv(replicate_pad(x, pad), weight, groups=channels)

        reaction = self.reaction(u) if self.reaction is not None else None
        dt = self.dt
        if self.solver == "explicit":
            out = correlate(u, parts["step"])
            return (out if reaction is None else out + dt * reaction), u.new_zeros(())
        with_residual = torch.is_grad_enabled() and self.embed
        view = (1, -1) + (1,) * self.spatial_dims
        inv_diag = (1 / parts["diag"]).to(u.dtype).view(view)
        if not with_residual and self.inner_iterations == 1:
            v = correlate(u, parts["v"])
            return (v if reaction is None else v + dt * inv_diag * reaction), u.new_zeros(())
        b = correlate(u, parts["b"])
        if reaction is not None:
            b = b + dt * reaction
        cw = [(parts["c"] * parts["w"][:, i]).to(u.dtype).view(view) for i in range(self.spatial_dims)]
        v, sums = u, neighbour_sums(u)
        for sweep in range(self.inner_iterations):
            previous = sums
            v = (b + sum(a * s for a, s in zip(cw, sums))) * inv_diag
            if sweep + 1 == self.inner_iterations and not with_residual:
                return v, u.new_zeros(())
            sums = neighbour_sums(v)
        r = sum(a * (p - s) for a, p, s in zip(cw, previous, sums))  # c N (v_previous - v)
        return v, r.pow(2).mean() / (b.pow(2).mean() + 1e-6)

    def reference_step(self, u: torch.Tensor, k: torch.Tensor | None = None,
                       kernels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step term by term (the learned stencils, the diffusion, the neighbour sums
        of the Jacobi or Gauss–Seidel sweeps, each its own operation); returns ``(u_next,
        relative squared residual)``. ``k`` and ``kernels`` are computed when not given."""
        k = self.coefficients.diffusion() if k is None else k
        kernels = self.stencils.kernels() if kernels is None else kernels
        diffusion, extra = self.rhs_terms(u, k, kernels)
        rhs = diffusion if extra is None else diffusion + extra
        dt = self.dt
        if self.solver == "explicit":
            return u + dt * rhs, u.new_zeros(())
        # IMEX: S_k u implicit, the rest explicit. Semi-implicit: b = u + dt (rhs - S_k u);
        # Crank–Nicolson: b = u + dt/2 S_k u + dt (rhs - S_k u) = u + dt (rhs - S_k u / 2)
        sums = neighbour_sums(u)  # shared by S_k u and the first sweep (which starts at u)
        s_u = apply_diffusion(u, k, self.spacing, sums)
        implicit_share, c = (1.0, dt) if self.solver == "semi_implicit" else (0.5, 0.5 * dt)
        b = u + dt * (rhs - implicit_share * s_u)
        # the implicit residual feeds the consistency loss: not needed without gradients, nor
        # for a regulariser-only layer, which reports its own fixed-point residual instead
        with_residual = torch.is_grad_enabled() and self.embed
        v, r = solve_implicit(b, k, self.spacing, c, self.inner_iterations, self.inner_method, start=u,
                              start_sums=sums, with_residual=with_residual)
        return v, (r.pow(2).mean() / (b.pow(2).mean() + 1e-6)) if with_residual else u.new_zeros(())

    def evolve(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``steps`` steps from ``u``; returns ``(u_K, mean residual over steps)``."""
        residuals = []
        k, kernels = self.coefficients.diffusion(), self.stencils.kernels()  # once for all steps
        for _ in range(self.steps):
            u, r = self.step(u, k, kernels)
            residuals.append(r)
        return u, torch.stack(residuals).mean()

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if u.dim() != self.spatial_dims + 2 or u.shape[1] != self.channels:
            raise ValueError(f"PDELayer expects (B, {self.channels}, {self.spatial_dims} spatial dims), got {tuple(u.shape)}")
        dtype = u.dtype
        with torch.autocast(u.device.type, enabled=False):
            x = u.float()
            evolved, residual = self.evolve(x)
            if not self.embed:
                residual = (evolved - x).pow(2).mean() / (x.pow(2).mean() + 1e-6)
                return u, residual
            return evolved.to(dtype), residual

    def describe(self) -> dict:
        """Learned coefficients as plain numbers (per-channel means and ranges) for reports."""
        with torch.no_grad():
            k = self.coefficients.diffusion()
            lam = self.coefficients.strength()
            out = {"solver": self.solver, "operator": self.operator, "steps": self.steps, "dt": self.dt,
                   "spacing": list(self.spacing), "lambda_mean": float(lam.mean()), "lambda_max": float(lam.max()),
                   "k_mean_per_axis": k.mean(0).tolist()}
            if self.coefficients.advection is not None:
                out["advection_abs_mean"] = float(self.coefficients.advection.abs().mean())
                out["mixed_abs_mean"] = float(self.coefficients.mixed.abs().mean())
        return out

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, steps={self.steps}, dt={self.dt}, solver={self.solver}, "
                f"operator={self.operator}, inner={self.inner_method}x{self.inner_iterations}, embed={self.embed}")
