"""Time steps for ``du/dt = S_k u + E(u)``: explicit Euler, semi-implicit and Crank–Nicolson.

``S_k u = sum_i k_i (u[x+e_i] - 2 u[x] + u[x-e_i]) / h_i**2`` is the stiff diffusion part
(3-point second differences, replicate boundary = zero flux, ``k_i >= 0`` per channel
and axis); ``E`` is everything else, always taken explicitly (learned stencil
corrections, first-order and mixed terms, the reaction ``N``). One step of size ``dt``:

* ``explicit``:        ``u' = u + dt (S_k u + E(u))``.
  Von Neumann: the diffusion part multiplies a Fourier mode by
  ``1 - dt sum_i 4 k_i sin^2(theta_i / 2) / h_i**2``, stable for every mode iff
  ``lambda = dt sum_i 2 k_i / h_i**2 <= 1`` (:func:`explicit_number`). It is a convex
  combination of neighbours (a maximum principle) under the same bound.
* ``semi_implicit``:   ``(I - dt S_k) u' = u + dt E(u)``.
* ``crank_nicolson``:  ``(I - dt S_k / 2) u' = (I + dt S_k / 2) u + dt E(u)``.
  Second order in time for the diffusion part (for ``E = 0``).

The implicit systems ``(I - c S_k) v = b`` (``c = dt`` or ``dt / 2``) are solved by
unrolled, differentiable iterations started from ``v = u``:

* ``jacobi``: ``v <- (b + c sum_i k_i (v[x+e_i] + v[x-e_i]) / h_i**2) / (1 + c sum_i 2 k_i / h_i**2)``.
  Every neighbour weight is ``>= 0`` and they sum to less than the diagonal, so the
  iteration matrix has infinity-norm ``lambda_c / (1 + lambda_c) < 1``
  (``lambda_c = c sum_i 2 k_i / h_i**2``): it converges for **any** ``dt`` (strict
  diagonal dominance). At the boundary the replicate neighbour is ``v[x]`` itself, kept
  on the right-hand side, which leaves the bound unchanged.
* ``gauss_seidel``: red-black ordering; a sweep updates the cells with even index sum
  by the Jacobi formula, then the odd ones using the new even values (same convergence
  guarantee, about twice the rate).

The residual ``r = (I - c S_k) v - b`` after the inner iterations is returned, so that a
loss can ask the network's features to satisfy the implicit step
(:class:`pdeseg.losses.pde.PDEConsistencyLoss`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pdeseg.nn.pde.stencils import neighbour_sums

SOLVERS = ("explicit", "semi_implicit", "crank_nicolson")
INNER_METHODS = ("jacobi", "gauss_seidel")


def _axis_weights(k: torch.Tensor, spacing: Sequence[float], spatial_dims: int) -> list[torch.Tensor]:
    """``k_i / h_i**2`` per axis, shaped to broadcast over ``(B, C, *S)``.

    ``k``: ``(C,)`` (isotropic) or ``(C, d)`` (one coefficient per axis)."""
    shape = (1, -1) + (1,) * spatial_dims
    if k.dim() == 1:
        return [(k / h**2).view(shape) for h in spacing]
    return [(k[:, i] / h**2).view(shape) for i, h in enumerate(spacing)]


def explicit_number(k: torch.Tensor, spacing: Sequence[float], dt: float) -> torch.Tensor:
    """``lambda = dt sum_i 2 k_i / h_i**2`` per channel: the explicit step is stable iff ``<= 1``."""
    return dt * sum(2 * w.flatten() for w in _axis_weights(k, spacing, 0))


def apply_diffusion(u: torch.Tensor, k: torch.Tensor, spacing: Sequence[float],
                    sums: list[torch.Tensor] | None = None) -> torch.Tensor:
    """``S_k u = sum_i k_i (u[x+e_i] - 2 u[x] + u[x-e_i]) / h_i**2`` (replicate boundary).

    Args:
        sums: ``neighbour_sums(u)`` when the caller already has them.

    Shapes:
        ``u (B, C, *S)``, ``k (C,)`` or ``(C, d)`` -> ``(B, C, *S)``.
    """
    weights = _axis_weights(k, spacing, u.dim() - 2)
    sums = neighbour_sums(u) if sums is None else sums
    return sum(w * (s - 2 * u) for w, s in zip(weights, sums))


def _parity(shape: Sequence[int], device) -> torch.Tensor:
    """Boolean ``(*shape)`` mask of the cells with an even index sum (the red cells)."""
    grids = torch.meshgrid(*(torch.arange(n, device=device) for n in shape), indexing="ij")
    return (sum(grids) % 2) == 0


def solve_implicit(
    b: torch.Tensor,
    k: torch.Tensor,
    spacing: Sequence[float],
    c: float,
    iterations: int = 1,
    method: str = "jacobi",
    start: torch.Tensor | None = None,
    start_sums: list[torch.Tensor] | None = None,
    with_residual: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Approximately solve ``(I - c S_k) v = b`` by unrolled Jacobi or red-black Gauss–Seidel.

    Args:
        b: right-hand side ``(B, C, *S)``.
        k: diffusion coefficients ``(C,)`` or ``(C, d)``, ``>= 0``.
        spacing: grid spacing per axis.
        c: ``dt`` (semi-implicit) or ``dt / 2`` (Crank–Nicolson), ``> 0``.
        iterations: inner iterations (sweeps), ``>= 1``.
        method: ``jacobi`` or ``gauss_seidel`` (red-black).
        start: initial iterate (default ``b``).
        start_sums: ``neighbour_sums(start)`` when the caller already has them.
        with_residual: compute the residual (one more stencil pass); ``None`` otherwise.

    Returns:
        ``(v, r)``: the iterate and its residual ``(I - c S_k) v - b``, both ``(B, C, *S)``.
    """
    if iterations < 1:
        raise ValueError(f"inner iterations must be >= 1, got {iterations}")
    if method not in INNER_METHODS:
        raise ValueError(f"unknown inner method {method!r}; choose one of {', '.join(INNER_METHODS)}")
    weights = [c * w for w in _axis_weights(k, spacing, b.dim() - 2)]
    diag = 1 + 2 * sum(weights)

    def jacobi(v: torch.Tensor, sums: list[torch.Tensor] | None = None) -> torch.Tensor:
        sums = neighbour_sums(v) if sums is None else sums
        return (b + sum(w * s for w, s in zip(weights, sums))) / diag

    v = b if start is None else start
    sums = start_sums if start is not None else None
    red = _parity(b.shape[2:], b.device) if method == "gauss_seidel" else None
    for _ in range(iterations):
        if red is None:
            v = jacobi(v, sums)
        else:
            v = torch.where(red, jacobi(v, sums), v)
            v = torch.where(red, v, jacobi(v))
        sums = None
    if not with_residual:
        return v, None
    residual = v - sum(w * (s - 2 * v) for w, s in zip(weights, neighbour_sums(v))) - b
    return v, residual
