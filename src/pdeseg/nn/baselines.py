"""External baseline networks (MONAI), adapted only where our conventions need it.

MONAI's networks downsample 4 or 5 times and concatenate skips, so most of them fail
unless every spatial size is divisible by the product of their strides (SwinUNETR checks
and refuses; the others fail where an upsampled map meets its skip). Each class here is the MONAI class with
one addition, :class:`AnySizeMixin`: ``forward`` zero-pads the input to the network's
:meth:`~AnySizeMixin.size_multiple` (see :mod:`pdeseg.nn.padding`), runs MONAI's
``forward`` and crops the logits back. The constructors are MONAI's (same arguments, same
defaults) and so are the ``state_dict`` keys, so MONAI weights load unchanged; the only
other changes are the ones a class's docstring names (VNet's input channels, DynUNet's
deep-supervision output).

The classes and the multiple each pads to:

* :class:`MonaiUNet` (``UNet``, residual units): the product of the strides it uses;
* :class:`MonaiDynUNet` (``DynUNet``, nnU-Net-like): the product of the strides;
* :class:`MonaiVNet` (``VNet``): 16 (four 2x downsamplings);
* :class:`MonaiSwinUNETR` (``SwinUNETR``): ``patch_size ** 5``, 32 by default;
* :class:`MonaiSegResNet` (``SegResNet``): ``2 ** (len(blocks_down) - 1)``, 8 by default;
* :class:`MonaiAttentionUnet` (``AttentionUnet``): the product of the strides.

All pad with ``min_blocks=2``: an input that would shrink to a single voxel at the coarsest
level gets one more multiple along its last dim, since instance and group norm are
undefined (or constant) on one voxel.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.nets import AttentionUnet as _MonaiAttentionUnet
from monai.networks.nets import DynUNet as _MonaiDynUNet
from monai.networks.nets import SegResNet as _MonaiSegResNet
from monai.networks.nets import SwinUNETR as _MonaiSwinUNETR
from monai.networks.nets import UNet as _MonaiBaseUNet
from monai.networks.nets import VNet as _MonaiVNet

from pdeseg.nn.padding import Pads, check_input, crop_scaled, crop_to, pad_to_multiple

#: The coarsest feature map of a padded input holds at least this many voxels.
MIN_BLOCKS = 2


def _per_dim_product(strides: Sequence[int | Sequence[int]], spatial_dims: int) -> tuple[int, ...]:
    """Per spatial dim, the product of ``strides`` (each an int or one int per dim)."""
    per_level = [[s] * spatial_dims if isinstance(s, int) else list(s) for s in strides]
    return tuple(math.prod(level[d] for level in per_level) for d in range(spatial_dims))


class AnySizeMixin:
    """Pad-and-crop for a MONAI network; put it first among the bases,
    ``class MonaiX(AnySizeMixin, X)``.

    The constructor passes every argument on to the MONAI class and records
    ``input_dims`` (its ``spatial_dims``) and ``input_channels`` (its ``in_channels``)
    from them, since not every MONAI network keeps both. A subclass defines
    :meth:`size_multiple`.
    """

    input_dims: int
    input_channels: int

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        mro = type(self).__mro__
        monai_class = mro[mro.index(AnySizeMixin) + 1]
        bound = inspect.signature(monai_class.__init__).bind(self, *args, **kwargs)
        bound.apply_defaults()
        self.input_dims = int(bound.arguments["spatial_dims"])
        self.input_channels = int(bound.arguments["in_channels"])

    def size_multiple(self) -> tuple[int, ...]:
        """Per spatial dim, the multiple every input size must have for MONAI's forward."""
        raise NotImplementedError

    def pad(self, x: torch.Tensor) -> tuple[torch.Tensor, Pads]:
        """Check ``x`` and zero-pad it to :meth:`size_multiple` (``min_blocks=2``).

        Raises:
            ValueError: for an input without ``input_dims`` spatial dims and
                ``input_channels`` channels.
        """
        check_input(x, self.input_dims, self.input_channels, type(self).__name__)
        return pad_to_multiple(x, self.size_multiple(), min_blocks=MIN_BLOCKS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad ``x``, run the MONAI network, crop its logits back.

        Args:
            x: ``(B, in_channels, *spatial)``, any spatial sizes.

        Returns:
            ``(B, out_channels, *spatial)`` logits; identical to the MONAI network's output
            when the sizes are already multiples (no padding or copy then).

        Raises:
            ValueError: for an input with the wrong number of dims or channels.
        """
        padded, pads = self.pad(x)
        return crop_to(super().forward(padded), pads)


class MonaiUNet(AnySizeMixin, _MonaiBaseUNet):
    """``monai.networks.nets.UNet`` (residual units, strided convolutions) for any spatial size.

    Takes MONAI's constructor arguments unchanged (``spatial_dims``, ``in_channels``,
    ``out_channels``, ``channels``, ``strides``, ...).

    Shapes:
        ``(B, in_channels, *spatial) -> (B, out_channels, *spatial)`` logits, any sizes.

    Raises:
        ValueError: in ``forward``, for an input without ``spatial_dims`` spatial dims and
            ``in_channels`` channels.
    """

    def size_multiple(self) -> tuple[int, ...]:
        """Per spatial dim, the product of the strides the network uses (its first
        ``len(channels) - 1``)."""
        return _per_dim_product(list(self.strides)[: len(self.channels) - 1], self.dimensions)


class MonaiDynUNet(AnySizeMixin, _MonaiDynUNet):
    """``monai.networks.nets.DynUNet`` for any spatial size, with deep supervision as a list.

    Takes MONAI's constructor arguments unchanged (``spatial_dims``, ``in_channels``,
    ``out_channels``, ``kernel_size``, ``strides``, ``upsample_kernel_size``, ``filters``,
    ``deep_supervision``, ``deep_supr_num``, ...), except that the first stride must be 1
    in every dim, so that the main output has the input's resolution.

    Deep supervision: MONAI's DynUNet returns, in training, one stacked tensor
    ``(B, 1 + deep_supr_num, K, *spatial)`` with every head upsampled to full resolution.
    This class returns instead what :class:`~pdeseg.losses.composite.CompositeLoss` and
    :class:`~pdeseg.nn.unet3d.UNet3D` use: a list ``[main, head_1, ..., head_n]``, each head
    at its own resolution (``head_k`` after the first ``k + 1`` strides, e.g. ``1/2**k``
    with strides ``(1, 2, 2, ...)``), cropped like the main output (see
    :func:`pdeseg.nn.padding.crop_scaled`); the loss downsamples the target to each head
    (nnU-Net's way) rather than upsampling the heads, which saves memory and keeps the
    low-resolution heads as the network computed them. In eval mode, or without deep
    supervision, ``forward`` returns the main logits only.

    Shapes:
        ``(B, in_channels, *spatial) -> (B, out_channels, *spatial)``; in training with
        deep supervision a list whose entry ``k`` is ``(B, out_channels, *ceil(spatial /
        f_k))``, ``f_k`` the product of the first ``k + 1`` strides.

    Raises:
        ValueError: at construction for a first stride other than 1 (and whatever MONAI
            rejects); in ``forward`` for an input with the wrong number of dims or channels.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if any(s != 1 for s in _per_dim_product(self.strides[:1], self.spatial_dims)):
            raise ValueError(
                f"MonaiDynUNet needs a first stride of 1 (full-resolution logits), got strides {list(self.strides)}"
            )

    def size_multiple(self) -> tuple[int, ...]:
        """Per spatial dim, the product of all strides."""
        return _per_dim_product(self.strides, self.spatial_dims)

    def head_factors(self) -> list[tuple[int, ...]]:
        """Per deep-supervision head (``deep_supr_num`` of them, highest resolution first),
        its downsampling factor per spatial dim."""
        return [_per_dim_product(self.strides[: k + 1], self.spatial_dims) for k in range(1, self.deep_supr_num + 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits for an input of any spatial size; a list of heads in training with deep
        supervision (see the class docstring).

        Args:
            x: ``(B, in_channels, *spatial)``.

        Raises:
            ValueError: for an input with the wrong number of dims or channels.
        """
        padded, pads = self.pad(x)
        # MONAI's forward minus its stacking: the skip layers also fill self.heads
        main = crop_to(self.output_block(self.skip_layers(padded)), pads)
        heads = []
        if self.deep_supervision:
            if self.training:
                heads = [crop_scaled(h, pads, f) for h, f in zip(self.heads, self.head_factors())]
            for k in range(len(self.heads)):  # drop MONAI's references to this pass's graph
                self.heads[k] = _EMPTY
        return [main, *heads] if heads else main


_EMPTY = torch.empty(0)


class MonaiVNet(AnySizeMixin, _MonaiVNet):
    """``monai.networks.nets.VNet`` for any spatial size and any 1-16 input channels.

    Takes MONAI's constructor arguments unchanged (``spatial_dims``, ``in_channels``,
    ``out_channels``, ``act``, ``dropout_prob``, ..., ``dropout_dim``, ``bias``). MONAI's
    VNet widens its input to 16 channels by repeating it and therefore needs an
    ``in_channels`` that divides 16. Here any ``in_channels`` from 1 to 16 works: the MONAI
    network is built for the next divisor of 16 (1, 2, 4, 8, 16; e.g. 4 for 3 channels),
    and ``forward`` appends zero channels to the input. Those constant channels add nothing
    to the first convolution and nothing to the repeated residual, so the network is
    MONAI's VNet on the given channels; the only cost is unused first-layer weights. The
    ``state_dict`` is that of MONAI's VNet with the widened ``in_channels``.

    VNet has no width option: its stages are 16-32-64-128-256 features, 5x5(x5) kernels.
    Use it for 3D: MONAI's VNet does not pass ``dropout_dim`` on to its blocks, which
    always use ``Dropout3d``; on a 2D batch ``(B, C, H, W)`` that layer takes ``B`` for the
    channel axis and drops whole samples (MONAI 1.6).

    Shapes:
        ``(B, in_channels, *spatial) -> (B, out_channels, *spatial)`` logits, any sizes.

    Raises:
        ValueError: at construction for ``in_channels`` outside 1-16; in ``forward`` for an
            input with the wrong number of dims or channels.
    """

    #: MONAI's VNet input transition always has this many channels.
    WIDTH = 16

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 1, **kwargs: Any):
        if not isinstance(in_channels, int) or not 1 <= in_channels <= self.WIDTH:
            raise ValueError(f"MonaiVNet takes 1 to {self.WIDTH} input channels, got in_channels={in_channels!r}")
        widened = next(d for d in (1, 2, 4, 8, 16) if d >= in_channels)
        super().__init__(spatial_dims=spatial_dims, in_channels=widened, out_channels=out_channels, **kwargs)
        self.input_channels = in_channels  # what callers pass; the network sees `widened`
        self.network_channels = widened

    def size_multiple(self) -> tuple[int, ...]:
        """Four 2x downsamplings: 16 per spatial dim."""
        return (16,) * self.input_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad ``x`` spatially and with zero channels, run MONAI's VNet, crop the logits.

        Args:
            x: ``(B, in_channels, *spatial)``.

        Returns:
            ``(B, out_channels, *spatial)`` logits.

        Raises:
            ValueError: for an input with the wrong number of dims or channels.
        """
        padded, pads = self.pad(x)
        extra = self.network_channels - self.input_channels
        if extra:
            padded = torch.cat([padded, padded.new_zeros(padded.shape[0], extra, *padded.shape[2:])], dim=1)
        return crop_to(_MonaiVNet.forward(self, padded), pads)


class MonaiSwinUNETR(AnySizeMixin, _MonaiSwinUNETR):
    """``monai.networks.nets.SwinUNETR`` for any spatial size.

    Takes MONAI's constructor arguments unchanged (``in_channels``, ``out_channels``,
    ``patch_size``, ``depths``, ``num_heads``, ``window_size``, ``feature_size`` (a
    multiple of 12), ..., ``spatial_dims``). MONAI 1.5 dropped the ``img_size`` argument;
    the input size is free as long as it is a multiple of ``patch_size ** 5``, which the
    padding provides. Needs the ``einops`` package.

    Shapes:
        ``(B, in_channels, *spatial) -> (B, out_channels, *spatial)`` logits, any sizes.

    Raises:
        ValueError: in ``forward``, for an input with the wrong number of dims or channels.
    """

    def size_multiple(self) -> tuple[int, ...]:
        """``patch_size ** 5`` per spatial dim (the patch embedding, then four merges)."""
        return (self.patch_size**5,) * self.input_dims


class MonaiSegResNet(AnySizeMixin, _MonaiSegResNet):
    """``monai.networks.nets.SegResNet`` for any spatial size.

    Takes MONAI's constructor arguments unchanged (``spatial_dims``, ``init_filters``,
    ``in_channels``, ``out_channels``, ``blocks_down``, ...). With the default group norm
    (8 groups), ``init_filters`` must be a multiple of 8.

    Shapes:
        ``(B, in_channels, *spatial) -> (B, out_channels, *spatial)`` logits, any sizes.

    Raises:
        ValueError: in ``forward``, for an input with the wrong number of dims or channels.
    """

    def size_multiple(self) -> tuple[int, ...]:
        """``2 ** (len(blocks_down) - 1)`` per spatial dim."""
        return (2 ** (len(self.blocks_down) - 1),) * self.input_dims


class MonaiAttentionUnet(AnySizeMixin, _MonaiAttentionUnet):
    """``monai.networks.nets.AttentionUnet`` for any spatial size.

    Takes MONAI's constructor arguments unchanged (``spatial_dims``, ``in_channels``,
    ``out_channels``, ``channels``, ``strides``, ...).

    Shapes:
        ``(B, in_channels, *spatial) -> (B, out_channels, *spatial)`` logits, any sizes.

    Raises:
        ValueError: in ``forward``, for an input with the wrong number of dims or channels.
    """

    def size_multiple(self) -> tuple[int, ...]:
        """Per spatial dim, the product of the strides."""
        return _per_dim_product(self.strides, self.dimensions)
