"""Optimizer parameter groups that a model declares: which weights decay, which do not,
and which are PDE coefficients with their own learning rate.

The rule (first match wins):

1. ``pde``: every parameter of a module, at any depth, whose class sets the marker
   ``pde_coefficients = True`` (e.g. :class:`~pdeseg.nn.pde.cable.CableBlock`), including
   its submodules' parameters. Learning rate ``lr * pde_lr_mult``, no weight decay. These
   are a handful of physical coefficients behind a reparametrisation (the cable block's
   ``tau = T sigmoid(r_tau)``): decay would pull the raw numbers toward 0, i.e. toward an
   arbitrary mid-range ``tau``, not toward "no PDE"; and so few numbers barely move at the
   network's rate, hence the multiplier.
2. ``no_decay``: parameters of normalisation layers (BatchNorm*, SyncBatchNorm,
   InstanceNorm*, GroupNorm, LayerNorm, RMSNorm), PReLU slopes, and every parameter with
   ``ndim <= 1`` (biases). Learning rate ``lr``, no weight decay. Shrinking a norm's scale
   or shift, or a bias, changes what the layer computes without limiting capacity
   (a following norm undoes the scale), and decaying a PReLU slope turns it into a ReLU.
3. ``decay``: every other weight (convolution and linear kernels), at ``lr`` with
   ``weight_decay``.

A model with its own ``parameter_groups(lr, weight_decay, pde_lr_mult)`` method is asked
instead, so an unusual network can state its own split.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

#: Normalisation layers whose affine parameters are never decayed (lazy variants subclass these).
NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.GroupNorm,
    nn.LayerNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
#: Group names, in the order the groups are returned.
GROUP_NAMES = ("decay", "no_decay", "pde")


def parameter_groups(
    model: nn.Module, lr: float, weight_decay: float = 0.0, pde_lr_mult: float = 1.0
) -> list[dict[str, Any]]:
    """Torch optimizer parameter groups following the module docstring's rule.

    Args:
        model: the network; a ``DistributedDataParallel`` or ``DataParallel`` wrapper is
            unwrapped (its ``.module``).
        lr: base learning rate, ``> 0``.
        weight_decay: decay of the ``decay`` group, ``>= 0``.
        pde_lr_mult: learning-rate multiplier of the ``pde`` group, ``> 0``.

    Returns:
        Dicts with keys ``name``, ``params`` (list of parameters), ``lr`` and
        ``weight_decay``, in the order decay, no_decay, pde; empty groups are left out.
        Every parameter of the model appears exactly once. Pass the list straight to
        ``torch.optim.AdamW`` (or any optimizer); each group's own ``lr`` and
        ``weight_decay`` override the optimizer's defaults.

    Raises:
        ValueError: for ``lr <= 0``, ``weight_decay < 0`` or ``pde_lr_mult <= 0`` (or
            non-finite values), or when a model's own ``parameter_groups`` does not cover
            each parameter exactly once.
    """
    _check_arguments(lr, weight_decay, pde_lr_mult)
    model = _unwrap(model)
    own = getattr(model, "parameter_groups", None)
    if callable(own):
        groups = [dict(g, params=list(g["params"])) for g in own(lr, weight_decay, pde_lr_mult)]
        _check_cover(model, groups)
        return groups
    kind = _classify(model)
    settings = {
        "decay": (lr, weight_decay),
        "no_decay": (lr, 0.0),
        "pde": (lr * pde_lr_mult, 0.0),
    }
    groups = []
    for name in GROUP_NAMES:
        params = [p for p in model.parameters() if kind[id(p)] == name]
        if params:
            group_lr, group_wd = settings[name]
            groups.append({"name": name, "params": params, "lr": group_lr, "weight_decay": group_wd})
    return groups


def _check_arguments(lr: float, weight_decay: float, pde_lr_mult: float) -> None:
    """Raise ValueError for a non-positive ``lr``/``pde_lr_mult`` or a negative ``weight_decay``."""
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"parameter_groups: lr must be a finite number > 0, got {lr!r}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"parameter_groups: weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if not (math.isfinite(pde_lr_mult) and pde_lr_mult > 0):
        raise ValueError(f"parameter_groups: pde_lr_mult must be a finite number > 0, got {pde_lr_mult!r}")


def _unwrap(model: nn.Module) -> nn.Module:
    """The network inside a (Distributed)DataParallel wrapper, or ``model`` itself."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


def _classify(model: nn.Module) -> dict[int, str]:
    """Map ``id(parameter)`` to its group name: ``pde``, ``no_decay`` or ``decay``."""
    kind: dict[int, str] = {}
    for module in model.modules():
        if getattr(module, "pde_coefficients", False) is True:
            kind.update((id(p), "pde") for p in module.parameters())
    for module in model.modules():
        no_decay_module = isinstance(module, (*NORM_LAYERS, nn.PReLU))
        for p in module.parameters(recurse=False):
            if id(p) not in kind:
                kind[id(p)] = "no_decay" if no_decay_module or p.ndim <= 1 else "decay"
    return kind


def _check_cover(model: nn.Module, groups: list[dict[str, Any]]) -> None:
    """Raise ValueError unless ``groups`` holds each parameter of ``model`` exactly once."""
    seen = [id(p) for g in groups for p in g["params"]]
    expected = {id(p) for p in model.parameters()}
    if len(seen) != len(set(seen)) or set(seen) != expected:
        raise ValueError(
            f"{type(model).__name__}.parameter_groups must list each of its {len(expected)} parameters exactly "
            f"once; its groups hold {len(seen)} entries ({len(set(seen) & expected)} distinct model parameters)"
        )
