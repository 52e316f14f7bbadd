"""Dimension-generic layer lookups, so that 2D and 3D networks share one code path."""

from __future__ import annotations

from torch import nn

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_BATCH_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def _lookup(table: dict[int, type], spatial_dims: int, what: str) -> type:
    if spatial_dims not in table:
        raise ValueError(f"{what}: spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return table[spatial_dims]


def conv(spatial_dims: int) -> type:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return _lookup(_CONV, spatial_dims, "conv")


def conv_transpose(spatial_dims: int) -> type:
    """``nn.ConvTranspose2d`` or ``nn.ConvTranspose3d``."""
    return _lookup(_CONV_T, spatial_dims, "conv_transpose")


def max_pool(spatial_dims: int) -> type:
    """``nn.MaxPool2d`` or ``nn.MaxPool3d``."""
    return _lookup(_POOL, spatial_dims, "max_pool")


def batch_norm(spatial_dims: int) -> type:
    """``nn.BatchNorm2d`` or ``nn.BatchNorm3d``."""
    return _lookup(_BATCH_NORM, spatial_dims, "batch_norm")


ACTIVATIONS = ("relu", "prelu", "leakyrelu")
NORMS = ("batch", "instance", "none")


def activation(name: str, channels: int) -> nn.Module:
    """``relu``, ``prelu`` (one learned slope per channel, initialised at 0.25) or
    ``leakyrelu`` (slope 0.01)."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "prelu":
        return nn.PReLU(num_parameters=channels)
    if name == "leakyrelu":
        return nn.LeakyReLU(0.01, inplace=True)
    raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")


def norm(name: str, spatial_dims: int, channels: int) -> nn.Module:
    """``batch`` (BatchNorm), ``instance`` (InstanceNorm with affine weights) or ``none``
    (identity)."""
    if name == "batch":
        return batch_norm(spatial_dims)(channels)
    if name == "instance":
        return _lookup({2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}, spatial_dims, "norm")(channels, affine=True)
    if name == "none":
        return nn.Identity()
    raise ValueError(f"unknown normalisation {name!r}; choose one of {', '.join(NORMS)}")
