"""The paper's UNet (Ronneberger et al. 2015, as configured in PDE-UNet, paper 000).

Encoder: four double-conv blocks (32, 64, 128, 256 features) each followed by 2x max
pooling; a 512-feature bottleneck; decoder: transposed-conv 2x upsampling, concatenation
with the named skip of the same level, double-conv; a 1x1 convolution head. Each
double conv is ``(conv3x3 with bias -> norm -> activation) x 2``, optionally followed by
dropout.

With 4 input modalities, 4 classes and the defaults (BatchNorm, ReLU, no dropout) this
network has exactly 7,766,372 parameters, the count the paper's Table 1 gives.

The network accepts any spatial size: :meth:`UNet.forward` zero-pads the input to a
multiple of :data:`SIZE_MULTIPLE` (four 2x poolings) and crops the logits back (see
:mod:`pdeseg.nn.padding`); sizes that are already multiples run unchanged.

Paper 003's variants are constructor options: ``activation`` (relu, prelu, leakyrelu),
``norm`` (batch, instance, none) and ``dropout`` (rate) in the blocks named by
``dropout_blocks`` (:data:`BLOCKS`; the number of dropout layers is their count).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pdeseg.nn.layers import activation as make_activation
from pdeseg.nn.layers import conv, conv_transpose, max_pool
from pdeseg.nn.layers import norm as make_norm
from pdeseg.nn.padding import check_input, crop_to, pad_to_multiple

#: Block names, encoder to decoder; ``dropout_blocks`` picks among them.
BLOCKS = ("enc1", "enc2", "enc3", "enc4", "bottleneck", "up4", "up3", "up2", "up1")
#: Where dropout goes when ``dropout > 0`` and ``dropout_blocks`` is not given.
DEFAULT_DROPOUT_BLOCKS = ("enc4", "bottleneck")
#: Four 2x poolings: the network body needs spatial sizes divisible by 2**4.
SIZE_MULTIPLE = 2**4


class DoubleConv(nn.Sequential):
    """``(conv k3 + bias -> norm -> activation) x 2`` then ``Dropout(dropout)`` if
    ``dropout > 0``; keeps the spatial size. ``norm='none'`` leaves no module in the tree."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        activation: str = "relu",
        norm: str = "batch",
        dropout: float = 0.0,
    ):
        conv_t = conv(spatial_dims)
        layers: list[nn.Module] = []
        for cin in (in_channels, out_channels):
            layers.append(conv_t(cin, out_channels, kernel_size=3, padding=1, bias=True))
            if norm != "none":
                layers.append(make_norm(norm, spatial_dims, out_channels))
            layers.append(make_activation(activation, out_channels))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


class UpBlock(nn.Module):
    """Transposed-conv 2x upsampling, concatenation with the skip, double conv."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, **block):
        super().__init__()
        self.up = conv_transpose(spatial_dims)(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(spatial_dims, 2 * out_channels, out_channels, **block)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """Four-level UNet returning logits.

    Args:
        spatial_dims: 2 for slices, 3 for volumes.
        in_channels: number of input channels (modalities).
        out_channels: number of classes (logits out, no activation).
        features: five feature widths, encoder levels 1-4 then the bottleneck.
        activation: ``relu``, ``prelu`` or ``leakyrelu``.
        norm: ``batch``, ``instance`` or ``none``.
        dropout: dropout rate (0 for none), applied at the end of each block in
            ``dropout_blocks``.
        dropout_blocks: names from :data:`BLOCKS` (default :data:`DEFAULT_DROPOUT_BLOCKS`
            when ``dropout > 0``).

    Shapes:
        input ``(B, in_channels, *spatial)`` with ``spatial_dims`` spatial dims of any size;
        output ``(B, out_channels, *spatial)``.

    Raises:
        ValueError: for a wrong ``features`` length, an unknown option or block name, a
            dropout rate outside ``[0, 1)``, or (in ``forward``) an input with the wrong
            number of dims or channels.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 4,
        out_channels: int = 4,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        activation: str = "relu",
        norm: str = "batch",
        dropout: float = 0.0,
        dropout_blocks: Sequence[str] | None = None,
    ):
        super().__init__()
        if len(features) != 5:
            raise ValueError(f"UNet needs 5 feature widths (4 levels + bottleneck), got {list(features)}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be a rate in [0, 1), got {dropout!r}")
        chosen = tuple(dropout_blocks) if dropout_blocks is not None else (DEFAULT_DROPOUT_BLOCKS if dropout > 0 else ())
        unknown = [b for b in chosen if b not in BLOCKS]
        if unknown:
            raise ValueError(f"unknown dropout_blocks {unknown}; blocks are {', '.join(BLOCKS)}")
        make_activation(activation, 1), make_norm(norm, spatial_dims, 1)  # fail early on unknown names

        def block(name: str) -> dict:
            return {"activation": activation, "norm": norm, "dropout": float(dropout) if name in chosen else 0.0}

        f1, f2, f3, f4, f5 = (int(f) for f in features)
        self.spatial_dims, self.in_channels = spatial_dims, in_channels
        self.enc1 = DoubleConv(spatial_dims, in_channels, f1, **block("enc1"))
        self.enc2 = DoubleConv(spatial_dims, f1, f2, **block("enc2"))
        self.enc3 = DoubleConv(spatial_dims, f2, f3, **block("enc3"))
        self.enc4 = DoubleConv(spatial_dims, f3, f4, **block("enc4"))
        self.pool = max_pool(spatial_dims)(kernel_size=2)
        self.bottleneck = DoubleConv(spatial_dims, f4, f5, **block("bottleneck"))
        self.up4 = UpBlock(spatial_dims, f5, f4, **block("up4"))
        self.up3 = UpBlock(spatial_dims, f4, f3, **block("up3"))
        self.up2 = UpBlock(spatial_dims, f3, f2, **block("up2"))
        self.up1 = UpBlock(spatial_dims, f2, f1, **block("up1"))
        self.head = conv(spatial_dims)(f1, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for an input of any spatial size.

        Pads ``x`` with zeros to multiples of :data:`SIZE_MULTIPLE`, runs
        :meth:`forward_divisible` and crops the logits back; no padding or copy happens
        when the sizes are already multiples.

        Args:
            x: ``(B, in_channels, *spatial)``.

        Returns:
            ``(B, out_channels, *spatial)`` logits.

        Raises:
            ValueError: if ``x`` does not have ``spatial_dims`` spatial dims and
                ``in_channels`` channels.
        """
        check_input(x, self.spatial_dims, self.in_channels, "UNet")
        padded, pads = pad_to_multiple(x, SIZE_MULTIPLE)
        return crop_to(self.forward_divisible(padded), pads)

    def forward_divisible(self, x: torch.Tensor) -> torch.Tensor:
        """The network body, without the padding path.

        Args:
            x: ``(B, in_channels, *spatial)`` with every spatial size a multiple of
                :data:`SIZE_MULTIPLE`.

        Returns:
            ``(B, out_channels, *spatial)`` logits.

        Raises:
            ValueError: for a spatial size that is not a multiple of :data:`SIZE_MULTIPLE`
                (call :meth:`forward` instead, which pads).
        """
        if any(s % SIZE_MULTIPLE for s in x.shape[2:]):
            raise ValueError(
                f"UNet.forward_divisible needs spatial sizes divisible by {SIZE_MULTIPLE}, got shape "
                f"{tuple(x.shape)}; UNet.forward accepts any size"
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
