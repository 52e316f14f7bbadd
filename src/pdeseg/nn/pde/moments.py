"""Moment-constrained finite-difference kernels (PDE-Net's constraint; paper 001).

**Moments.** For a 1D stencil of ``n`` (odd) taps centred at ``c = (n - 1) / 2``, let
``A[i, k] = (k - c)**i / i!``. The moment tensor of an ``n**d`` kernel ``q`` is

    M[b_1, ..., b_d] = sum_k q[k_1, ..., k_d] prod_j A[b_j, k_j]       (M = A q A^T in 2D),

and ``q`` is recovered by applying ``A^-1`` along every axis (``q = A^-1 M A^-T``).

**Why moments.** We apply kernels as **cross-correlation** (``F.conv*``, no flip):
``(q * u)(x) = sum_k q[k] u(x + (k - c) h)``. Taylor-expanding ``u`` around ``x`` gives

    (q * u)(x) = sum_b M[b] h^b D^b u(x),        h^b = prod_j h_j**b_j,

so the kernel approximates ``D^a u`` (times ``h^a``) when ``M[a] = 1`` and ``M[b] = 0``
for the other low moments. Fixing ``M[a] = 1`` and ``M[b] = 0`` for every other ``b``
with ``|b| <= |a| + r - 1`` makes ``(q * u) / h^a`` exact on polynomials of degree
``|a| + r - 1`` and accurate to ``O(h^r)`` on smooth fields (order ``r``); the moments
with ``|b| >= |a| + r`` stay free and trainable.

**Parametrisation.** ``M = M_fixed + mask * M_free``: ``M_fixed`` holds the constrained
values, ``mask`` is 1 on the free moments, ``M_free`` is the trainable tensor. The fixed
moments hold exactly whatever the optimiser does (no projection step). With
``M_free = 0`` the kernel is the standard central difference: ``[1, -2, 1]`` for
``d_xx`` (``n = 3``), ``[-1, 16, -30, 16, -1] / 12`` for ``n = 5``, order 4.

**Orders.** With ``n`` taps per axis and ``|a| <= 2``, orders ``1 <= r <= n - 1`` are
attainable (a moment with an index ``>= n`` is a combination of lower ones of the same
parity, which the constraint already zeroes); larger ``r`` is refused.

**Spacing.** :meth:`MomentKernels.kernels` divides kernel ``a`` by ``h^a``, so that on
an anisotropic grid (e.g. 0.8 x 0.8 x 2.5 mm) the output is in physical units.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pdeseg.nn.pde.stencils import check_spacing, replicate_pad

Multi = tuple[int, ...]


def moment_basis(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The ``n x n`` matrix ``A[i, k] = (k - c)**i / i!`` with ``c = (n - 1) / 2``.

    Raises:
        ValueError: ``n`` not an odd number >= 3.
    """
    if n < 3 or n % 2 == 0:
        raise ValueError(f"kernel size must be odd and >= 3, got {n}")
    c = (n - 1) / 2
    return torch.tensor([[(k - c) ** i / math.factorial(i) for k in range(n)] for i in range(n)], dtype=dtype)


def moments_of(q: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """Moment tensor of kernels ``q`` with shape ``(..., n, ..., n)`` (``spatial_dims`` trailing axes)."""
    a = moment_basis(q.shape[-1], q.dtype).to(q.device)
    return _apply(q, a, spatial_dims)


def kernel_of(m: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """Kernels of moment tensors ``m`` (``(..., n, ..., n)``): ``A^-1`` along every axis."""
    a_inv = torch.linalg.inv(moment_basis(m.shape[-1], torch.float64)).to(m.device, m.dtype)
    return _apply(m, a_inv, spatial_dims)


def _apply(t: torch.Tensor, mat: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """``out[..., i_1..i_d] = sum_k t[..., k_1..k_d] prod_j mat[i_j, k_j]``."""
    out = t
    first = t.dim() - spatial_dims
    for axis in range(first, t.dim()):
        out = torch.tensordot(out, mat, dims=([axis], [1]))
        out = torch.movedim(out, out.dim() - 1, axis)  # a non-negative source axis: ONNX export needs it
    return out


def constraint(alpha: Multi, order: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M_fixed, mask)`` for ``D^alpha`` of accuracy ``order`` on an ``n**d`` kernel.

    ``M_fixed[alpha] = 1``; ``M_fixed[b] = 0`` and ``mask[b] = 0`` for every other ``b``
    with ``|b| <= |alpha| + order - 1``; ``mask = 1`` on the free moments.

    Raises:
        ValueError: an even or too small ``n``, an order outside ``1 .. n - 1``, a
            derivative of order > 2 or an entry >= n.
    """
    d = len(alpha)
    if n < 3 or n % 2 == 0:
        raise ValueError(f"kernel size must be odd and >= 3, got {n}")
    if not 1 <= order <= n - 1:
        raise ValueError(f"accuracy order must be from 1 to {n - 1} for a kernel of size {n}, got {order}")
    if sum(alpha) > 2 or sum(alpha) < 0 or any(a < 0 or a >= n for a in alpha):
        raise ValueError(f"derivative {alpha} not supported: orders 0..2 only")
    fixed = torch.zeros((n,) * d, dtype=torch.float64)
    mask = torch.ones((n,) * d, dtype=torch.float64)
    limit = sum(alpha) + order - 1
    for b in itertools.product(range(n), repeat=d):
        if sum(b) <= limit:
            mask[b] = 0.0
    fixed[alpha] = 1.0
    return fixed, mask


def unit(axis: int, spatial_dims: int, times: int = 1) -> Multi:
    """The multi-index ``times * e_axis``."""
    return tuple(times if j == axis else 0 for j in range(spatial_dims))


class MomentKernels(nn.Module):
    """A bank of ``T`` trainable kernels, kernel ``t`` approximating ``D^{alpha_t}``.

    Args:
        spatial_dims: 2 or 3.
        derivatives: the multi-indices ``alpha_t`` (each of length ``spatial_dims``,
            ``1 <= |alpha| <= 2``).
        size: taps per axis (3 or 5).
        order: accuracy order ``r`` (``1 .. size - 1``).
        groups: independent kernel banks over channel groups (1: every channel shares
            the bank).
        spacing: grid spacing per axis (physical units); kernel ``t`` is divided by
            ``h^{alpha_t}``.

    Shapes:
        :meth:`forward`: ``(B, C, *S) -> (B, C, T, *S)`` with ``C`` divisible by
        ``groups``; output ``[:, c, t]`` is ``D^{alpha_t} u_c`` for the group of ``c``.
    """

    #: PDE coefficients for :func:`pdeseg.nn.params.parameter_groups` (own lr, no decay).
    pde_coefficients = True

    def __init__(
        self,
        spatial_dims: int,
        derivatives: Sequence[Multi],
        size: int = 3,
        order: int = 2,
        groups: int = 1,
        spacing: Sequence[float] | None = None,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if groups < 1:
            raise ValueError(f"groups must be >= 1, got {groups}")
        alphas = [tuple(int(x) for x in a) for a in derivatives]
        if not alphas or any(len(a) != spatial_dims or not 1 <= sum(a) <= 2 for a in alphas):
            raise ValueError(f"derivatives must be {spatial_dims}-tuples of total order 1 or 2, got {derivatives}")
        self.spatial_dims, self.size, self.order, self.groups = spatial_dims, size, order, groups
        self.derivatives = alphas
        self.spacing = check_spacing(spacing, spatial_dims)
        fixed, masks = zip(*(constraint(a, order, size) for a in alphas))
        # float64 buffers: the kernels are computed in float64 (A^-1 of a 5-tap basis has
        # entries near 10, so float32 would blur the fixed moments at the 1e-6 level) and
        # cast to the features' dtype only for the convolution
        self.register_buffer("m_fixed", torch.stack(fixed))  # (T, n, ..., n)
        self.register_buffer("mask", torch.stack(masks))
        scale = torch.tensor([math.prod(h**a for h, a in zip(self.spacing, al)) for al in alphas], dtype=torch.float64)
        self.register_buffer("scale", scale)  # h^alpha per kernel
        self.m_free = nn.Parameter(torch.zeros(groups, *self.m_fixed.shape))
        self.register_buffer("a_inv", torch.linalg.inv(moment_basis(size)), persistent=False)  # A^-1, float64

    def moments(self) -> torch.Tensor:
        """``M = M_fixed + mask * M_free`` in float64, ``(groups, T, n, ..., n)``."""
        return self.m_fixed.double() + self.mask.double() * self.m_free.double()

    def kernels(self, physical: bool = True) -> torch.Tensor:
        """The kernels ``q = A^-1 M A^-T`` in float64, ``(groups, T, n, ..., n)``; divided by
        ``h^alpha`` when ``physical``."""
        q = _apply(self.moments(), self.a_inv.double(), self.spatial_dims)
        if physical:
            q = q / self.scale.double().view(1, -1, *(1,) * self.spatial_dims)
        return q

    def standard_kernels(self, physical: bool = True) -> torch.Tensor:
        """The kernels with every free moment at 0 (the central differences), ``(T, n, ..., n)``."""
        q = kernel_of(self.m_fixed.double(), self.spatial_dims)
        return q / self.scale.double().view(-1, *(1,) * self.spatial_dims) if physical else q

    def forward(self, u: torch.Tensor, kernels: torch.Tensor | None = None) -> torch.Tensor:
        """Apply every kernel to every channel (cross-correlation, replicate boundary).

        Args:
            u: ``(B, C, *S)``.
            kernels: ``(groups, T, n, ..., n)`` to use instead of :meth:`kernels`.

        Returns:
            ``(B, C, T, *S)``.
        """
        b, c = u.shape[:2]
        spatial = u.shape[2:]
        g, d = self.groups, self.spatial_dims
        if c % g:
            raise ValueError(f"MomentKernels: {c} channels are not divisible into {g} groups")
        q = self.kernels() if kernels is None else kernels
        t = q.shape[1]
        # a depthwise convolution (groups = C), channel c using bank c // (C / groups): on CPUs
        # this is several times faster than folding the channels into the batch
        bank = torch.arange(c, device=u.device) // (c // g)
        weight = q.to(u.dtype)[bank].reshape(c * t, 1, *q.shape[2:])
        conv = F.conv3d if d == 3 else F.conv2d
        y = conv(replicate_pad(u, self.size // 2), weight, groups=c)  # (B, C*T, *S)
        return y.reshape(b, c, t, *spatial)

    def extra_repr(self) -> str:
        return (f"spatial_dims={self.spatial_dims}, derivatives={self.derivatives}, size={self.size}, "
                f"order={self.order}, groups={self.groups}, spacing={self.spacing}")
