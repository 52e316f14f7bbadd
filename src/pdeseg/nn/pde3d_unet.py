"""PDE3D-UNet (paper 001): the 3D UNet backbone with learnable PDE layers in its encoder.

``input -> encoder stages -> PDE layer(s) -> bottleneck -> decoder + skips -> logits``.
The backbone is :class:`~pdeseg.nn.unet3d.UNet3D` (same options, same parameter
layout); :class:`~pdeseg.nn.pde.layer.PDELayer` s are inserted at ``pde_positions``:

* an int ``k`` (``0 .. L - 2``): after encoder stage ``k``; the evolved features feed
  both the skip connection of level ``k`` and the next stage;
* ``"bottleneck"``: on the bottleneck's input only (paper 001's schematic), i.e. the
  output of stage ``L - 2`` on its way down; the level ``L - 2`` skip is unchanged.

A layer at level ``k`` runs on a grid with spacing ``spacing * 2**k`` (the encoder halves
the resolution per level), so its stencils are in the data's physical units.

In training mode the network returns ``{"logits": ..., "pde_residual": r}``, ``r`` the
mean over layers of each layer's residual (see :class:`PDELayer`), for
:class:`~pdeseg.losses.pde.PDEConsistencyLoss`; ``logits`` is a tensor or, with deep
supervision, the list of heads. In eval mode it returns the logits alone, like every
model, so inference is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pdeseg.nn.padding import check_input
from pdeseg.nn.pde.layer import PDELayer
from pdeseg.nn.pde.stencils import check_spacing
from pdeseg.nn.unet3d import UNet3D


class PDE3DUNet(UNet3D):
    """:class:`UNet3D` with PDE layers (see the module docstring).

    Args:
        spatial_dims, in_channels, out_channels, features, activation, norm,
        deep_supervision, ds_heads: as for :class:`UNet3D`.
        pde_positions: where layers sit: ints ``0 .. L - 2`` and/or ``"bottleneck"``.
        spacing: voxel spacing of the input (per spatial axis; default 1). Set it to the
            data's (or ``data.target_spacing``) on anisotropic data.
        pde_steps, pde_dt, pde_solver, pde_operator, pde_kernel_size, pde_order,
        pde_inner_iterations, pde_inner_method, pde_reaction, pde_groups,
        pde_init_strength, pde_embed: the :class:`PDELayer` options ``steps``, ``dt``,
        ``solver``, ``operator``, ``kernel_size``, ``order``, ``inner_iterations``,
        ``inner_method``, ``reaction``, ``groups``, ``init_strength``, ``embed``.

    Shapes:
        as :class:`UNet3D`; in training the output is wrapped in a dict (module docstring).

    Raises:
        ValueError: a bad position (naming the allowed ones) or PDE option.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (32, 64, 128, 256, 320),
        activation: str = "leakyrelu",
        norm: str = "instance",
        deep_supervision: bool = False,
        ds_heads: int | None = None,
        pde_positions: Sequence[int | str] = ("bottleneck",),
        spacing: Sequence[float] | None = None,
        pde_steps: int = 2,
        pde_dt: float = 1.0,
        pde_solver: str = "semi_implicit",
        pde_operator: str = "isotropic",
        pde_kernel_size: int = 3,
        pde_order: int = 2,
        pde_inner_iterations: int = 1,
        pde_inner_method: str = "jacobi",
        pde_reaction: str = "linear",
        pde_groups: int = 1,
        pde_init_strength: float = 0.1,
        pde_embed: bool = True,
    ):
        super().__init__(spatial_dims, in_channels, out_channels, features, activation, norm, deep_supervision, ds_heads)
        levels = len(self.features)
        allowed = [*range(levels - 1), "bottleneck"]
        positions = [p if p == "bottleneck" or not str(p).isdigit() else int(p) for p in pde_positions]
        if not positions or any(p not in allowed for p in positions) or len(set(map(str, positions))) != len(positions):
            raise ValueError(f"pde_positions must be distinct entries of {allowed} (ints: after that encoder stage), got {list(pde_positions)}")
        h = check_spacing(spacing, spatial_dims)
        self.spacing = h
        self.pde = nn.ModuleDict()
        for p in positions:
            level = levels - 2 if p == "bottleneck" else int(p)
            self.pde[str(p)] = PDELayer(
                self.features[level], spatial_dims, pde_steps, pde_dt, pde_solver, pde_operator, pde_kernel_size,
                pde_order, pde_inner_iterations, pde_inner_method, [x * 2**level for x in h], pde_reaction,
                pde_groups, pde_init_strength, embed=pde_embed,
            )

    def forward(self, x: torch.Tensor):
        """Logits (eval), or ``{"logits", "pde_residual"}`` (training); see the module docstring."""
        check_input(x, self.spatial_dims, self.in_channels, "PDE3DUNet")
        residuals: list[torch.Tensor] = []

        def hook(position, y):
            layer = self.pde[str(position)] if str(position) in self.pde else None
            if layer is None:
                return y
            y, r = layer(y)
            residuals.append(r)
            return y

        out = self._run(x, hook)
        if not self.training:
            return out
        return {"logits": out, "pde_residual": torch.stack(residuals).mean()}

    def features_around(self, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """For each PDE layer, its input and output features on ``x`` (eval, no grad);
        used to show what a layer does. ``{position: (before, after)}``, each ``(B, C, *S_k)``."""
        seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

        def hook(position, y):
            key = str(position)
            if key not in self.pde:
                return y
            out, _ = self.pde[key](y)
            seen[key] = (y.detach(), out.detach())
            return out

        with torch.no_grad():
            self._run(x, hook)
        return seen
