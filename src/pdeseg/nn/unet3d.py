"""A configurable-depth 3D (or 2D) UNet in the backbone form of paper 001 (PDE3D-UNet).

Paper 001 builds on a 3D U-Net with 3x3x3 convolutions, instance norm and ReLU, trained
with deep supervision at the decoder levels. :class:`UNet3D` is that backbone in the form
nnU-Net made standard for 3D segmentation:

* ``L = len(features)`` levels. Level ``k`` runs at ``1/2**k`` of the input resolution
  with ``features[k]`` channels; the last level is the bottleneck.
* Every level is one block ``(conv k3 -> norm -> activation) x 2``. On levels ``k >= 1``
  the block's first convolution has stride 2: downsampling is a **strided convolution**
  (learned, as in nnU-Net), not max pooling. Convolutions feeding a norm carry no bias
  (the norm's shift replaces it); with ``norm='none'`` they do.
* Decoder level ``k`` (``L - 2`` down to 0): a 2x transposed convolution (kernel 2,
  stride 2, no bias) from ``features[k + 1]`` to ``features[k]`` channels, concatenation
  with the encoder output of level ``k`` (skip first), then a block ``2 features[k] ->
  features[k]``.
* A 1x1 convolution ``head`` (with bias) on decoder level 0, and with deep supervision one
  more 1x1 head (``aux_heads``) on each decoder level ``1 .. ds_heads``.

With ``norm='instance'``, ``activation='leakyrelu'`` and no deep supervision the network
is layer for layer MONAI's ``DynUNet`` with kernel 3, strides ``(1, 2, 2, ...)`` and
``res_block=False``, and has the same parameter count (written independently; the tests
compare the counts). Parameters, with ``C`` input channels, ``K`` classes, ``f_k`` the
widths, ``n = 27`` in 3D (9 in 2D) and ``t = 8`` in 3D (4 in 2D)::

    encoder   n C f_0 + n f_0^2 + 4 f_0  +  sum_{k>=1} (n f_{k-1} f_k + n f_k^2 + 4 f_k)
    decoder   sum_{k<L-1} (t f_{k+1} f_k + 3 n f_k^2 + 4 f_k)
    heads     (f_0 + 1) K  +  sum_{k=1..ds_heads} (f_k + 1) K

(``4 f`` counts the two norms' weights and shifts per block; ``norm='none'`` replaces
them by the two convolutions' biases, ``2 f``.)

The network accepts any spatial size: ``forward`` zero-pads to a multiple of
``2**(L-1)`` (centred, see :mod:`pdeseg.nn.padding`; at least two bottleneck voxels, since
instance norm is undefined on one) and crops the outputs back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pdeseg.nn.layers import ACTIVATIONS, NORMS, conv, conv_transpose
from pdeseg.nn.layers import activation as make_activation
from pdeseg.nn.layers import norm as make_norm
from pdeseg.nn.padding import check_input, crop_scaled, crop_to, pad_to_multiple

#: The coarsest feature map of a padded input holds at least this many voxels.
MIN_BOTTLENECK_VOXELS = 2


class ConvBlock(nn.Sequential):
    """``(conv k3 -> norm -> activation) x 2``; the first convolution has stride ``stride``.

    Shapes:
        ``(B, in_channels, *S) -> (B, out_channels, *ceil(S / stride))``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        activation: str = "leakyrelu",
        norm: str = "instance",
    ):
        conv_t = conv(spatial_dims)
        bias = norm == "none"
        layers: list[nn.Module] = []
        for cin, s in ((in_channels, stride), (out_channels, 1)):
            layers.append(conv_t(cin, out_channels, kernel_size=3, stride=s, padding=1, bias=bias))
            if norm != "none":
                layers.append(make_norm(norm, spatial_dims, out_channels))
            layers.append(make_activation(activation, out_channels))
        super().__init__(*layers)


class UNet3D(nn.Module):
    """Configurable-depth UNet (paper 001's backbone) returning logits; see the module docstring.

    Args:
        spatial_dims: 3 for volumes, 2 for slices.
        in_channels: input channels (modalities).
        out_channels: classes (logit channels, no activation).
        features: widths of the ``L >= 2`` levels, full resolution first, the bottleneck
            last; nnU-Net's 3D default ``(32, 64, 128, 256, 320)``.
        activation: ``leakyrelu`` (slope 0.01, nnU-Net's) or ``relu`` (paper 001's);
            ``prelu`` also works.
        norm: ``instance`` (with affine weights, paper 001's), ``batch`` or ``none``.
        deep_supervision: in training mode, also return lower-resolution logits.
        ds_heads: how many decoder levels below full resolution get a head, from 1 up to
            ``L - 2``; ``None`` (default) means all ``L - 2``. :class:`~pdeseg.losses.
            composite.CompositeLoss` weights the heads ``1/2**i`` and the lowest one 0
            (nnU-Net's rule), so the default trains the same heads as nnU-Net. Only with
            ``deep_supervision=True``.

    Shapes:
        input ``(B, in_channels, *S)`` with ``spatial_dims`` spatial dims of any size.
        Output in eval mode, or without deep supervision: ``(B, out_channels, *S)``.
        In training mode with deep supervision: a list of ``1 + ds_heads`` tensors, entry
        ``i`` being ``(B, out_channels, *ceil(S / 2**i))``, the full-resolution logits first
        (see :func:`pdeseg.nn.padding.crop_scaled` for how the heads are cropped).

    Raises:
        ValueError: for fewer than 2 or non-positive widths, an unknown activation or
            norm, a ``ds_heads`` out of range or given without deep supervision, or (in
            ``forward``) an input with the wrong number of dims or channels.
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
    ):
        super().__init__()
        widths = [int(f) for f in features]
        if len(widths) < 2 or any(f < 1 for f in widths):
            raise ValueError(f"UNet3D needs at least 2 positive feature widths (levels), got {list(features)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        if norm not in NORMS:
            raise ValueError(f"unknown normalisation {norm!r}; choose one of {', '.join(NORMS)}")
        conv(spatial_dims)  # fails early for spatial_dims other than 2 or 3
        levels = len(widths)
        if deep_supervision:
            n_heads = levels - 2 if ds_heads is None else ds_heads
            if levels < 3:
                raise ValueError(f"deep supervision needs at least 3 levels (a decoder level below full resolution), got features {widths}")
            if not isinstance(n_heads, int) or not 1 <= n_heads <= levels - 2:
                raise ValueError(f"ds_heads must be an int from 1 to {levels - 2} for {levels} levels, got {ds_heads!r}")
        elif ds_heads is not None:
            raise ValueError("ds_heads applies only with deep_supervision=True")
        else:
            n_heads = 0

        self.spatial_dims, self.in_channels, self.out_channels = spatial_dims, in_channels, out_channels
        self.features, self.deep_supervision, self.ds_heads = tuple(widths), bool(deep_supervision), n_heads
        block = {"activation": activation, "norm": norm}
        self.encoder = nn.ModuleList(
            ConvBlock(spatial_dims, in_channels if k == 0 else widths[k - 1], widths[k], 1 if k == 0 else 2, **block)
            for k in range(levels)
        )
        up_t = conv_transpose(spatial_dims)
        # upsamples[k] / decoder[k] produce decoder level k (k = 0 is full resolution)
        self.upsamples = nn.ModuleList(
            up_t(widths[k + 1], widths[k], kernel_size=2, stride=2, bias=False) for k in range(levels - 1)
        )
        self.decoder = nn.ModuleList(ConvBlock(spatial_dims, 2 * widths[k], widths[k], **block) for k in range(levels - 1))
        conv_t = conv(spatial_dims)
        self.head = conv_t(widths[0], out_channels, kernel_size=1)
        # aux_heads[i] sits on decoder level i + 1
        self.aux_heads = nn.ModuleList(conv_t(widths[k], out_channels, kernel_size=1) for k in range(1, n_heads + 1))

    def size_multiple(self) -> tuple[int, ...]:
        """Per spatial dim, ``2**(L-1)``: the body needs sizes divisible by it."""
        return (2 ** (len(self.features) - 1),) * self.spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits for an input of any spatial size (a list of them in training with deep
        supervision; see the class docstring for the shapes).

        Args:
            x: ``(B, in_channels, *S)``.

        Returns:
            ``(B, out_channels, *S)``, or ``[full, level_1, ..., level_n]`` in training
            with deep supervision.

        Raises:
            ValueError: if ``x`` does not have ``spatial_dims`` spatial dims and
                ``in_channels`` channels.
        """
        check_input(x, self.spatial_dims, self.in_channels, "UNet3D")
        return self._run(x, None)

    def _run(self, x: torch.Tensor, hook) -> torch.Tensor | list[torch.Tensor]:
        """The network body. ``hook(position, y) -> y``, when given, may transform the
        features at ``position``: an int ``k`` (encoder stage ``k``'s output, which feeds both
        its skip connection and the next stage) or ``"bottleneck"`` (the bottleneck's input
        only; the skip of the stage before keeps its features). Subclasses use it to insert
        layers (:class:`pdeseg.nn.pde3d_unet.PDE3DUNet`)."""
        y, pads = pad_to_multiple(x, self.size_multiple(), min_blocks=MIN_BOTTLENECK_VOXELS)
        skips = []
        last = len(self.encoder) - 1
        for k, stage in enumerate(self.encoder):
            if hook is not None and k == last:
                y = hook("bottleneck", y)
            y = stage(y)
            if hook is not None and k < last:
                y = hook(k, y)
            skips.append(y)
        y = skips.pop()  # the bottleneck's output
        with_heads = self.deep_supervision and self.training
        lower: list[torch.Tensor] = []
        for k in reversed(range(len(self.decoder))):
            y = self.decoder[k](torch.cat([skips[k], self.upsamples[k](y)], dim=1))
            if with_heads and 1 <= k <= self.ds_heads:
                lower.append(crop_scaled(self.aux_heads[k - 1](y), pads, 2**k))
        logits = crop_to(self.head(y), pads)
        if not with_heads:
            return logits
        return [logits, *reversed(lower)]
