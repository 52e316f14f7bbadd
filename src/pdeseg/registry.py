"""Name -> constructor tables for models and losses (explicit; no filesystem scanning).

A checkpoint stores the model's registry name and keyword arguments, so
``build_model(name, **kwargs)`` rebuilds it without any training code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its constructor, one line of description, input size divisor."""

    build: Callable[..., nn.Module]
    description: str
    divisor: int = 16


def _unet(**kw) -> nn.Module:
    from pdeseg.nn.unet import UNet

    return UNet(**kw)


def _pde_unet(**kw) -> nn.Module:
    from pdeseg.nn.pde_unet import PDEUNet

    return PDEUNet(**kw)


def _monai_unet(
    spatial_dims: int = 2,
    in_channels: int = 4,
    out_channels: int = 4,
    features=(32, 64, 128, 256, 512),
    num_res_units: int = 2,
) -> nn.Module:
    from monai.networks.nets import UNet as MonaiUNet

    return MonaiUNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(features),
        strides=(2,) * (len(features) - 1),
        num_res_units=num_res_units,
    )


MODELS: dict[str, ModelEntry] = {
    "unet": ModelEntry(_unet, "paper-000 UNet: 32-64-128-256 + 512 bottleneck, BatchNorm, transposed conv"),
    "pde_unet": ModelEntry(_pde_unet, "PDE-UNet: trainable cable-equation block (eq. 2) then the UNet"),
    "monai_unet": ModelEntry(_monai_unet, "MONAI's residual UNet (external baseline), same widths"),
}


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model.

    Raises:
        KeyError: for an unknown name (the message lists the known ones).
    """
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered models: {', '.join(sorted(MODELS))}")
    return MODELS[name].build(**kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
