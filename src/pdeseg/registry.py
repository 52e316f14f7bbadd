"""Name -> constructor tables (explicit; no filesystem scanning): models, loss terms, and the
data formats (which live in :mod:`pdeseg.data.formats` and are re-exported here).

A checkpoint stores the model's registry name and keyword arguments, so
``build_model(name, **kwargs)`` rebuilds it without any training code. A config's
``loss.terms: [{name, weight, ...options}]`` picks entries of :data:`LOSSES`. Command-line
choices come from these tables.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from pdeseg.data.formats import FORMATS  # noqa: F401  (re-exported: the data-format registry)
from pdeseg.losses.segmentation import CrossEntropyLoss, SoftDiceLoss
from pdeseg.nn.pde_unet import PDEUNet
from pdeseg.nn.unet import UNet


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


MODELS: dict[str, ModelEntry] = {
    "unet": ModelEntry(UNet, "paper-000 UNet: 32-64-128-256 + 512 bottleneck, BatchNorm, transposed conv", (2, 3)),
    "pde_unet": ModelEntry(PDEUNet, "PDE-UNet: trainable cable-equation block (eq. 2) then the UNet", (2,)),
    "monai_unet": ModelEntry(_monai_unet, "MONAI's residual UNet (external baseline), same widths", (2, 3)),
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


@dataclass(frozen=True)
class LossEntry:
    """A registered loss term.

    Attributes:
        build: the constructor; its keyword arguments are the term's options in a config.
        description: one line for listings.
    """

    build: Callable[..., nn.Module]
    description: str


LOSSES: dict[str, LossEntry] = {
    "ce": LossEntry(CrossEntropyLoss, "cross-entropy (binary CE for a one-channel sigmoid head); option class_weights"),
    "dice": LossEntry(SoftDiceLoss, "soft Dice with squared denominators (paper 000 eq. 4); options eps, include_background"),
}
