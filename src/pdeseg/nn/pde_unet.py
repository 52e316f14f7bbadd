"""PDE-UNet (paper 000): the cable-equation block in front of the paper's UNet.

The cable block sees the input at its own size, so its replicate (zero-flux) boundary is
the image's real edge; the UNet then pads to its size multiple and crops its logits back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pdeseg.nn.padding import check_input
from pdeseg.nn.pde.cable import CableBlock
from pdeseg.nn.unet import UNet


class PDEUNet(nn.Module):
    """``UNet(CableBlock(x))``: trainable cable-equation preprocessing of every modality.

    Args:
        spatial_dims: must be 2 (the cable block is the paper's 2D stencil).
        in_channels, out_channels, features: as for :class:`~pdeseg.nn.unet.UNet`.
        pde_steps: explicit steps of the cable block.
        init_phi, init_psi, init_tau: initial cable coefficients (see :class:`CableBlock`).
        unet_options: the UNet's variant options (``activation``, ``norm``, ``dropout``,
            ``dropout_blocks``).

    Shapes:
        ``(B, in_channels, H, W) -> (B, out_channels, H, W)`` logits, any ``H, W``.

    Raises:
        ValueError: for ``spatial_dims != 2`` or bad cable/UNet options; in ``forward``,
            for an input that is not ``(B, in_channels, H, W)``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 4,
        out_channels: int = 4,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        pde_steps: int = 1,
        init_phi: float = 3.0,
        init_psi: float = 3.0,
        init_tau: float = 0.1,
        **unet_options,
    ):
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"PDEUNet's cable block is 2D; got spatial_dims={spatial_dims}")
        self.in_channels = in_channels
        self.pde = CableBlock(in_channels, pde_steps, init_phi, init_psi, init_tau)
        self.unet = UNet(spatial_dims, in_channels, out_channels, features, **unet_options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)`` logits; the cable block
        runs on the unpadded input, the UNet pads and crops.

        Raises:
            ValueError: for an input that is not ``(B, in_channels, H, W)``.
        """
        check_input(x, 2, self.in_channels, "PDEUNet")
        return self.unet(self.pde(x))
