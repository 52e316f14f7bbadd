"""The cable-equation block of PDE-UNet (paper 000, eq. 2).

The 1D cable equation ``tau_m dv/dt = -v + lambda^2 d2v/dx2 + r I`` is discretised with
explicit Euler in time and central second differences in two space directions. Per
channel ``c`` one step reads

    u <- (1 - tau_c) u + a_c * d_xx u + b_c * d_yy u,    a_c = 1 / Phi_c^2,  b_c = 1 / Psi_c^2,

with ``d_xx u[i, k] = u[i, k-1] - 2 u[i, k] + u[i, k+1]`` (horizontal, along the last
axis, the paper's P1) and ``d_yy`` the vertical one (P2). The ``(1 - tau) u`` term is the
block's skip connection.

Stability (von Neumann): a Fourier mode is multiplied by
``g = 1 - tau - 4 a sin^2(kx/2) - 4 b sin^2(ky/2)``, so ``|g| <= 1`` for every mode iff
``tau >= 0`` and ``4a + 4b + tau <= 2``. We parametrise so that training cannot leave that
region (three unconstrained numbers per channel)::

    tau = T * sigmoid(r_tau)                      decay, in (0, T), T = 2 * margin
    s   = (2 * margin - tau) * sigmoid(r_s)       diffusion budget 4a + 4b, in (0, 2 margin - tau)
    a   = s * sigmoid(r_m) / 4,  b = s * (1 - sigmoid(r_m)) / 4

so that ``4a + 4b + tau = tau + s < 2 * margin <= 2``. ``Phi = a^-1/2`` and
``Psi = b^-1/2`` are derived. Boundary: replicate padding, i.e. a zero-flux (Neumann)
boundary; a constant image is a fixed point of the diffusion part.

Parameters added: 3 per channel (12 for the four BraTS modalities). The paper's Table 1
reports 256 extra parameters; its text does not say where they come from, so we keep
the three numbers per channel that eq. 2 names.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _logit(p: float) -> float:
    if not 0.0 < p < 1.0:
        raise ValueError(f"cannot initialise the cable block: fraction {p} is outside (0, 1)")
    return math.log(p / (1.0 - p))


def second_differences(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal and vertical second differences with a replicate (zero-flux) boundary.

    Args:
        u: ``(B, C, H, W)``.

    Returns:
        ``(d_xx u, d_yy u)``, each ``(B, C, H, W)``; ``d_xx`` acts along ``W``, ``d_yy``
        along ``H``.
    """
    p = F.pad(u, (1, 1, 1, 1), mode="replicate")
    centre = p[:, :, 1:-1, 1:-1]
    d_xx = p[:, :, 1:-1, :-2] - 2 * centre + p[:, :, 1:-1, 2:]
    d_yy = p[:, :, :-2, 1:-1] - 2 * centre + p[:, :, 2:, 1:-1]
    return d_xx, d_yy


class CableBlock(nn.Module):
    """Trainable explicit cable-equation steps applied channel-wise (see module docstring).

    Args:
        channels: number of input channels; each gets its own ``Phi, Psi, tau``.
        steps: number of explicit time steps (the paper uses one).
        init_phi, init_psi, init_tau: initial values; must satisfy the stability bound.
        margin: the bound used is ``4a + 4b + tau <= 2 * margin`` (``0 < margin <= 1``).

    Shapes:
        ``(B, C, H, W) -> (B, C, H, W)``.

    Raises:
        ValueError: for initial values outside the stable region or a bad ``steps``/``margin``.
    """

    #: Marker read by :func:`pdeseg.nn.params.parameter_groups`: these parameters are PDE
    #: coefficients (own learning-rate multiplier, no weight decay).
    pde_coefficients = True

    def __init__(
        self,
        channels: int,
        steps: int = 1,
        init_phi: float = 3.0,
        init_psi: float = 3.0,
        init_tau: float = 0.1,
        margin: float = 1.0,
    ):
        super().__init__()
        if steps < 1:
            raise ValueError(f"CableBlock needs steps >= 1, got {steps}")
        if not 0.0 < margin <= 1.0:
            raise ValueError(f"CableBlock margin must be in (0, 1], got {margin}")
        bound = 2.0 * margin
        a0, b0 = 1.0 / init_phi**2, 1.0 / init_psi**2
        s0 = 4 * a0 + 4 * b0
        if init_tau <= 0 or init_tau + s0 >= bound:
            raise ValueError(
                f"CableBlock initial values are unstable: need tau > 0 and 4/Phi^2 + 4/Psi^2 + tau < "
                f"{bound}, got Phi={init_phi}, Psi={init_psi}, tau={init_tau} (sum {init_tau + s0:.3f})"
            )
        self.channels, self.steps, self.bound = channels, steps, bound
        self.r_tau = nn.Parameter(torch.full((channels,), _logit(init_tau / bound)))
        self.r_s = nn.Parameter(torch.full((channels,), _logit(s0 / (bound - init_tau))))
        self.r_m = nn.Parameter(torch.full((channels,), _logit(a0 / (a0 + b0))))

    def coefficients(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(a, b, tau)``, each ``(C,)``, inside the stable region by construction."""
        tau = self.bound * torch.sigmoid(self.r_tau)
        s = (self.bound - tau) * torch.sigmoid(self.r_s)
        m = torch.sigmoid(self.r_m)
        return s * m / 4, s * (1 - m) / 4, tau

    def physical(self) -> dict[str, list[float]]:
        """The learned ``Phi``, ``Psi`` and ``tau`` per channel, as plain floats."""
        with torch.no_grad():
            a, b, tau = self.coefficients()
            return {"phi": a.rsqrt().tolist(), "psi": b.rsqrt().tolist(), "tau": tau.tolist()}

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if u.dim() != 4 or u.shape[1] != self.channels:
            raise ValueError(f"CableBlock expects (B, {self.channels}, H, W), got {tuple(u.shape)}")
        a, b, tau = (t.view(1, -1, 1, 1).to(u.dtype) for t in self.coefficients())
        for _ in range(self.steps):
            d_xx, d_yy = second_differences(u)
            u = (1 - tau) * u + a * d_xx + b * d_yy
        return u

    def extra_repr(self) -> str:
        return f"channels={self.channels}, steps={self.steps}, bound={self.bound}"
