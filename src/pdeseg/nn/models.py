"""The model table: registry name -> network constructor (explicit; no filesystem scanning).

A checkpoint stores the model's registry name and keyword arguments, so
``build_model(name, **kwargs)`` rebuilds it without any training code. Command-line choices
and ``pdeseg.list_models()`` come from :data:`MODELS`; :func:`check_model` checks a config's
model entry without building it.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from pdeseg.nn.pde3d_unet import PDE3DUNet
from pdeseg.nn.pde_unet import PDEUNet
from pdeseg.nn.unet import UNet
from pdeseg.nn.unet3d import UNet3D


@dataclass(frozen=True)
class ModelEntry:
    """A registered model.

    Attributes:
        build: the constructor; ``build(**kwargs)`` returns the network.
        description: one line for listings.
        dims: the ``spatial_dims`` values the model supports, e.g. ``(2, 3)``.
    """

    build: Callable[..., nn.Module]
    description: str
    dims: tuple[int, ...]


def _monai_unet(
    spatial_dims: int = 2,
    in_channels: int = 4,
    out_channels: int = 4,
    features=(32, 64, 128, 256, 512),
    num_res_units: int = 2,
) -> nn.Module:
    """MONAI's residual UNet with our widths (stride 2 per level), padding and cropping
    internally so that any spatial size works (:class:`pdeseg.nn.baselines.MonaiUNet`)."""
    from pdeseg.nn.baselines import MonaiUNet  # imports MONAI: only when asked for

    return MonaiUNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(features),
        strides=(2,) * (len(features) - 1),
        num_res_units=num_res_units,
    )


def _monai_dynunet(
    spatial_dims: int = 3,
    in_channels: int = 1,
    out_channels: int = 2,
    features: Sequence[int] = (32, 64, 128, 256, 320),
    deep_supervision: bool = False,
    ds_heads: int | None = None,
) -> nn.Module:
    """MONAI's DynUNet with kernel 3 everywhere, stride 1 then 2 per level (``len(features)``
    levels) and MONAI's defaults otherwise (instance norm, LeakyReLU 0.01, no residual
    blocks). ``deep_supervision`` adds ``ds_heads`` heads (default ``len(features) - 2``,
    every decoder level below full resolution), returned in training as a list like
    ``unet3d``'s (:class:`pdeseg.nn.baselines.MonaiDynUNet`)."""
    from pdeseg.nn.baselines import MonaiDynUNet  # imports MONAI: only when asked for

    levels = len(features)
    if levels < 3:
        raise ValueError(f"monai_dynunet needs at least 3 feature widths (MONAI's DynUNet minimum), got {list(features)}")
    if ds_heads is not None and not deep_supervision:
        raise ValueError("ds_heads applies only with deep_supervision=True")
    strides = (1,) + (2,) * (levels - 1)
    return MonaiDynUNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=(3,) * levels,
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=tuple(features),
        deep_supervision=deep_supervision,
        deep_supr_num=(levels - 2 if ds_heads is None else ds_heads) if deep_supervision else 1,
    )


def _monai_vnet(spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2) -> nn.Module:
    """MONAI's VNet with MONAI's defaults (fixed widths 16-256, 5x5x5 kernels, ELU,
    BatchNorm, dropout 0.5 in the two lowest levels); any 1-16 input channels and any size
    (:class:`pdeseg.nn.baselines.MonaiVNet`). VNet has no width option. 3D only: MONAI's
    VNet always uses 3D dropout, which on 2D batches drops whole samples."""
    from pdeseg.nn.baselines import MonaiVNet  # imports MONAI: only when asked for

    return MonaiVNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels)


def _monai_swinunetr(
    spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2, feature_size: int = 24
) -> nn.Module:
    """MONAI's SwinUNETR with its defaults (patch 2, window 7, depths 2-2-2-2); width
    ``feature_size`` (a multiple of 12; MONAI's default 24). Pads to multiples of 32
    (:class:`pdeseg.nn.baselines.MonaiSwinUNETR`). Needs ``einops``."""
    from pdeseg.nn.baselines import MonaiSwinUNETR  # imports MONAI: only when asked for

    try:
        import einops  # noqa: F401
    except ImportError:
        raise ImportError("monai_swinunetr needs the einops package (pip install einops)") from None
    return MonaiSwinUNETR(
        in_channels=in_channels, out_channels=out_channels, feature_size=feature_size, spatial_dims=spatial_dims
    )


def _monai_segresnet(
    spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2, init_filters: int = 8
) -> nn.Module:
    """MONAI's SegResNet with its defaults (blocks 1-2-2-4 down, group norm with 8 groups,
    no VAE branch); width ``init_filters`` (a multiple of 8), doubled per level
    (:class:`pdeseg.nn.baselines.MonaiSegResNet`)."""
    from pdeseg.nn.baselines import MonaiSegResNet  # imports MONAI: only when asked for

    return MonaiSegResNet(
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, init_filters=init_filters
    )


def _monai_attentionunet(
    spatial_dims: int = 3,
    in_channels: int = 1,
    out_channels: int = 2,
    features: Sequence[int] = (16, 32, 64, 128, 256),
) -> nn.Module:
    """MONAI's Attention U-Net with widths ``features`` (stride 2 per level, kernel 3)
    (:class:`pdeseg.nn.baselines.MonaiAttentionUnet`)."""
    from pdeseg.nn.baselines import MonaiAttentionUnet  # imports MONAI: only when asked for

    return MonaiAttentionUnet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(features),
        strides=(2,) * (len(features) - 1),
    )


MODELS: dict[str, ModelEntry] = {
    "unet": ModelEntry(UNet, "paper-000 UNet: 32-64-128-256 + 512 bottleneck, BatchNorm, transposed conv", (2, 3)),
    "pde_unet": ModelEntry(PDEUNet, "PDE-UNet: trainable cable-equation block (eq. 2) then the UNet", (2,)),
    "monai_unet": ModelEntry(_monai_unet, "MONAI's residual UNet (external baseline), same widths", (2, 3)),
    "unet3d": ModelEntry(
        UNet3D, "paper-001 backbone: depth-configurable UNet, strided conv, InstanceNorm, deep supervision", (2, 3)
    ),
    "pde3d_unet": ModelEntry(
        PDE3DUNet, "paper-001 PDE3D-UNet: unet3d + learnable PDE layers (moment kernels, explicit/implicit/CN)", (2, 3)
    ),
    "monai_dynunet": ModelEntry(_monai_dynunet, "MONAI's DynUNet (nnU-Net-like), kernel 3, deep supervision", (2, 3)),
    "monai_vnet": ModelEntry(_monai_vnet, "MONAI's V-Net (fixed widths 16-256, 5x5x5 kernels)", (3,)),
    "monai_swinunetr": ModelEntry(_monai_swinunetr, "MONAI's SwinUNETR (Swin transformer encoder, CNN decoder)", (2, 3)),
    "monai_segresnet": ModelEntry(_monai_segresnet, "MONAI's SegResNet (residual encoder, group norm)", (2, 3)),
    "monai_attentionunet": ModelEntry(_monai_attentionunet, "MONAI's Attention U-Net (gated skips)", (2, 3)),
}


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model.

    Args:
        name: a key of :data:`MODELS`.
        **kwargs: the constructor's keyword arguments.

    Returns:
        The network (logits out).

    Raises:
        KeyError: for an unknown name (the message lists the known ones).
    """
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered models: {', '.join(sorted(MODELS))}")
    return MODELS[name].build(**kwargs)


def check_model(name: str, spatial_dims: int, kwargs: Mapping[str, Any]) -> None:
    """Check, without building anything, that ``build_model(name, spatial_dims=..., **kwargs)``
    asks for something the model supports.

    Args:
        name: registry name.
        spatial_dims: 2 or 3, the data's dimensionality.
        kwargs: constructor keyword arguments (may repeat ``spatial_dims``, with the same
            value).

    Raises:
        ValueError: for an unknown model (listing the registered ones), a ``spatial_dims``
            the model does not support (naming the supported ones), or keyword arguments
            its constructor does not accept (naming them and listing the accepted ones).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(sorted(MODELS))}")
    entry = MODELS[name]
    if spatial_dims not in entry.dims:
        supported = " or ".join(str(d) for d in entry.dims)
        raise ValueError(f"model {name!r} supports spatial_dims {supported}, got spatial_dims={spatial_dims!r}")
    if "spatial_dims" in kwargs and kwargs["spatial_dims"] != spatial_dims:
        raise ValueError(
            f"model {name!r}: kwargs spatial_dims={kwargs['spatial_dims']!r} contradicts spatial_dims={spatial_dims!r}"
        )
    accepted = _accepted_keywords(entry.build)
    bad = sorted(k for k in kwargs if k not in accepted)
    if bad:
        hints = [f"{m[0]!r} for {k!r}" for k in bad if (m := difflib.get_close_matches(k, accepted, n=1))]
        hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
        raise ValueError(
            f"model {name!r} does not accept keyword argument(s) {', '.join(map(repr, bad))}{hint}; "
            f"it accepts: {', '.join(sorted(accepted))}"
        )


def _accepted_keywords(build: Callable[..., nn.Module]) -> set[str]:
    """Keyword names ``build`` accepts, from its signature. PDEUNet forwards its
    ``**unet_options`` to UNet, so its set is the union of both signatures."""
    names = _named_parameters(build)
    if build is PDEUNet:
        names |= _named_parameters(UNet)
    return names


def _named_parameters(func: Callable[..., Any]) -> set[str]:
    """Names that can be passed by keyword (``**kwargs`` itself excluded)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in inspect.signature(func).parameters.values() if p.kind in kinds}


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable, unless ``trainable_only=False``) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
