"""The paper's UNet (Ronneberger et al. 2015, as configured in PDE-UNet, paper 000).

Encoder: four double-conv blocks (32, 64, 128, 256 features) each followed by 2x max
pooling; a 512-feature bottleneck; decoder: transposed-conv 2x upsampling, concatenation
with the named skip of the same level, double-conv; a 1x1 convolution head. Each
double conv is ``(conv3x3 with bias -> BatchNorm -> ReLU) x 2``.

With 4 input modalities, 4 classes and the default features this network has exactly
7,766,372 parameters, the count the paper's Table 1 gives.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pdeseg.nn.layers import batch_norm, conv, conv_transpose, max_pool


class DoubleConv(nn.Sequential):
    """``(conv k3 + bias -> BatchNorm -> ReLU) x 2``; keeps the spatial size."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int):
        conv_t, bn_t = conv(spatial_dims), batch_norm(spatial_dims)
        super().__init__(
            conv_t(in_channels, out_channels, kernel_size=3, padding=1, bias=True),
            bn_t(out_channels),
            nn.ReLU(inplace=True),
            conv_t(out_channels, out_channels, kernel_size=3, padding=1, bias=True),
            bn_t(out_channels),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """Transposed-conv 2x upsampling, concatenation with the skip, double conv."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int):
        super().__init__()
        self.up = conv_transpose(spatial_dims)(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(spatial_dims, 2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """Four-level UNet returning logits.

    Args:
        spatial_dims: 2 for slices, 3 for volumes.
        in_channels: number of input channels (modalities).
        out_channels: number of classes (logits out, no activation).
        features: five feature widths, encoder levels 1-4 then the bottleneck.

    Shapes:
        input ``(B, in_channels, *spatial)`` with every spatial size divisible by 16;
        output ``(B, out_channels, *spatial)``.

    Raises:
        ValueError: for a wrong ``features`` length or spatial sizes not divisible by 16.
    """

    divisor = 16

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 4,
        out_channels: int = 4,
        features: Sequence[int] = (32, 64, 128, 256, 512),
    ):
        super().__init__()
        if len(features) != 5:
            raise ValueError(f"UNet needs 5 feature widths (4 levels + bottleneck), got {list(features)}")
        f1, f2, f3, f4, f5 = (int(f) for f in features)
        self.spatial_dims = spatial_dims
        self.enc1 = DoubleConv(spatial_dims, in_channels, f1)
        self.enc2 = DoubleConv(spatial_dims, f1, f2)
        self.enc3 = DoubleConv(spatial_dims, f2, f3)
        self.enc4 = DoubleConv(spatial_dims, f3, f4)
        self.pool = max_pool(spatial_dims)(kernel_size=2)
        self.bottleneck = DoubleConv(spatial_dims, f4, f5)
        self.up4 = UpBlock(spatial_dims, f5, f4)
        self.up3 = UpBlock(spatial_dims, f4, f3)
        self.up2 = UpBlock(spatial_dims, f3, f2)
        self.up1 = UpBlock(spatial_dims, f2, f1)
        self.head = conv(spatial_dims)(f1, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bad = [s for s in x.shape[2:] if s % self.divisor]
        if x.dim() != self.spatial_dims + 2 or bad:
            raise ValueError(
                f"UNet expects (B, C, *spatial) with {self.spatial_dims} spatial dims divisible by "
                f"{self.divisor}; got shape {tuple(x.shape)} (pad the input, e.g. with "
                "pdeseg.inference.pad_to_multiple)"
            )
        s1 = self.enc1(x)
        s2 = self.enc2(self.pool(s1))
        s3 = self.enc3(self.pool(s2))
        s4 = self.enc4(self.pool(s3))
        b = self.bottleneck(self.pool(s4))
        y = self.up4(b, s4)
        y = self.up3(y, s3)
        y = self.up2(y, s2)
        y = self.up1(y, s1)
        return self.head(y)
