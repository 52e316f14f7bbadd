"""External baseline networks, adapted only where our conventions need it.

MONAI's residual UNet downsamples with strided convolutions and concatenates skips, so it
fails unless every spatial size is divisible by the product of its strides.
:class:`MonaiUNet` adds the same pad-and-crop as our own networks (see
:mod:`pdeseg.nn.padding`) and nothing else: its constructor and its ``state_dict`` keys
are MONAI's.
"""

from __future__ import annotations

import math

import torch
from monai.networks.nets import UNet as _MonaiBaseUNet

from pdeseg.nn.padding import check_input, crop_to, pad_to_multiple


class MonaiUNet(_MonaiBaseUNet):
    """``monai.networks.nets.UNet`` that accepts any spatial size.

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
        ``len(channels) - 1``); inputs must be multiples of it to run unpadded."""
        used = list(self.strides)[: len(self.channels) - 1]
        per_dim = [[s] * self.dimensions if isinstance(s, int) else list(s) for s in used]
        return tuple(math.prod(level[d] for level in per_dim) for d in range(self.dimensions))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad ``x`` to :meth:`size_multiple`, run MONAI's UNet, crop the logits back.

        Args:
            x: ``(B, in_channels, *spatial)``.

        Returns:
            ``(B, out_channels, *spatial)`` logits; identical to MONAI's UNet when the
            sizes are already multiples (no padding or copy then).

        Raises:
            ValueError: for an input with the wrong number of dims or channels.
        """
        check_input(x, self.dimensions, self.in_channels, "MonaiUNet")
        padded, pads = pad_to_multiple(x, self.size_multiple())
        return crop_to(super().forward(padded), pads)
