"""The training loss: a weighted sum of registered terms, with deep supervision.

``L = sum_t w_t * term_t(logits, target)`` over the config's ``loss.terms``. A model may
return, in training, several outputs:

* a tensor ``(B, K, *spatial)``: one head;
* a list/tuple of tensors, full resolution first (deep supervision, nnU-Net style): head
  ``i`` is weighted ``1 / 2**i``, the lowest-resolution head 0, weights normalised to sum
  to 1, each against the target downsampled (nearest) to that head's size (the zero-weight
  head still gets a zero gradient, so that DDP sees every parameter used);
* a mapping with ``"logits"`` (a tensor or such a list) and auxiliary entries (e.g. PDE
  residuals) that terms declaring ``uses_aux = True`` receive as ``aux``.

A term may have a warm-up schedule ``(start_epoch, ramp_epochs)``: after
:meth:`CompositeLoss.set_epoch` its weight is ``w_t * warmup_factor(epoch, start, ramp)``
(see :func:`warmup_factor`), and a term whose factor is 0 is not computed at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def deep_supervision_weights(n: int) -> list[float]:
    """Weights of ``n`` heads, full resolution first: ``1/2**i``, the last (lowest
    resolution) 0 when ``n > 1``, normalised to sum 1."""
    if n < 1:
        raise ValueError("need at least one output")
    raw = [0.5**i for i in range(n)]
    if n > 1:
        raw[-1] = 0.0
    total = sum(raw)
    return [r / total for r in raw]


def warmup_factor(epoch: int, start_epoch: int = 0, ramp_epochs: int = 0) -> float:
    """The factor on a term's weight in ``epoch`` (counted from 0) under a warm-up schedule.

    ``0`` before ``start_epoch``; from ``start_epoch`` on ``min(1, (epoch - start_epoch + 1) /
    ramp_epochs)``, or ``1`` when ``ramp_epochs`` is 0. E.g. ``start_epoch=5, ramp_epochs=4``:
    0 in epochs 0-4, 0.25, 0.5, 0.75 in epochs 5-7, 1 from epoch 8 on.
    """
    if epoch < start_epoch:
        return 0.0
    if ramp_epochs <= 0:
        return 1.0
    return min(1.0, (epoch - start_epoch + 1) / ramp_epochs)


def main_logits(output: Any) -> torch.Tensor:
    """The full-resolution logits of a model's output (tensor, list of heads, or mapping)."""
    if isinstance(output, Mapping):
        output = output["logits"]
    if isinstance(output, (list, tuple)):
        return output[0]
    return output


def _downsample_target(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(target.shape[1:]) == tuple(size):
        return target
    return F.interpolate(target[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


class CompositeLoss(nn.Module):
    """Weighted sum of loss terms over one or several heads, each term's weight optionally on a
    warm-up schedule.

    Args:
        terms: ``(name, weight, module)`` triples; a module is called as
            ``module(logits, target)``, or ``module(logits, target, aux=...)`` when it sets
            ``uses_aux = True``.
        schedules: one ``(start_epoch, ramp_epochs)`` pair per term (see :func:`warmup_factor`),
            or None: no schedule. The factors apply once :meth:`set_epoch` has been called;
            until then (and for terms without a schedule) the weights are the given ones.
        class_channels: the output's class-logit channels when extra maps follow them (a cell
            representation's regression channels; terms with ``uses_maps = True`` get them
            with their targets), else None.

    Shapes:
        ``output`` as in the module docstring, ``target (B, *spatial)`` -> scalar.
    """

    def __init__(self, terms: Sequence[tuple[str, float, nn.Module]], schedules: Sequence[tuple[int, int]] | None = None,
                 class_channels: int | None = None):
        super().__init__()
        self.class_channels = class_channels  # the output's class-logit channels (None: all of them)
        if not terms:
            raise ValueError("a loss needs at least one term")
        self.names = [n for n, _, _ in terms]
        self.weights = [float(w) for _, w, _ in terms]
        self.terms = nn.ModuleList([m for _, _, m in terms])
        if schedules is None:
            schedules = [(0, 0)] * len(terms)
        if len(schedules) != len(terms):
            raise ValueError(f"{len(schedules)} schedules for {len(terms)} loss terms")
        self.schedules = [(int(s), int(r)) for s, r in schedules]
        bad = [(n, s) for n, s in zip(self.names, self.schedules) if min(s) < 0]
        if bad:
            raise ValueError(f"start_epoch and ramp_epochs must be >= 0, got {bad}")
        self.epoch: int | None = None

    def set_epoch(self, epoch: int) -> None:
        """Use the scheduled weights of ``epoch`` (0-based); a function of ``epoch`` alone, so a
        fresh loss set to epoch ``k`` equals one stepped through epochs ``0 .. k``."""
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def factors(self) -> list[float]:
        """Each term's current schedule factor (all 1 before :meth:`set_epoch`)."""
        if self.epoch is None:
            return [1.0] * len(self.schedules)
        return [warmup_factor(self.epoch, s, r) for s, r in self.schedules]

    def scheduled_factors(self) -> dict[str, float]:
        """``{term label: current factor}`` for the terms that have a schedule; a label is the
        term's name, with ``_<index>`` appended when two terms share a name."""
        out = {}
        for i, (name, schedule, factor) in enumerate(zip(self.names, self.schedules, self.factors())):
            if schedule != (0, 0):
                out[name if self.names.count(name) == 1 else f"{name}_{i}"] = factor
        return out

    def forward(self, output: Any, target: torch.Tensor, maps: torch.Tensor | None = None) -> torch.Tensor:
        """The weighted loss of ``output`` against the class ``target`` and, for a head with
        extra maps (a cell representation's regression channels), their targets ``maps (B, M,
        *spatial)``: terms that set ``uses_maps = True`` get the whole output and ``maps``;
        every other term the class logits only."""
        aux: dict[str, Any] = {}
        if isinstance(output, Mapping):
            aux = {k: v for k, v in output.items() if k != "logits"}
            output = output["logits"]
        heads = list(output) if isinstance(output, (list, tuple)) else [output]
        weights = [w * f for w, f in zip(self.weights, self.factors())]
        total = heads[0].new_zeros((), dtype=torch.float32)
        for head_weight, logits in zip(deep_supervision_weights(len(heads)), heads):
            if head_weight == 0:
                # A zero-weight head stays in the graph with a zero contribution: its parameters
                # then get a (zero) gradient, which DistributedDataParallel needs from every
                # parameter at every step (the value of the loss does not change).
                total = total + 0.0 * logits.float().sum()
                continue
            y = _downsample_target(target, logits.shape[2:])
            m = maps
            if maps is not None and tuple(maps.shape[2:]) != tuple(logits.shape[2:]):  # a deep-supervision head
                m = F.interpolate(maps.float(), size=tuple(logits.shape[2:]), mode="bilinear" if maps.dim() == 4 else "trilinear")
            classes = logits[:, :self.class_channels] if self.class_channels else logits
            if not any(weights):  # every term off: 0, still a function of the logits (a zero gradient)
                loss = 0.0 * logits.float().sum()
            else:
                loss = logits.new_zeros((), dtype=torch.float32)
                for weight, term in zip(weights, self.terms):
                    if not weight:  # a term weighted 0 (or not yet switched on) is not computed
                        continue
                    if getattr(term, "uses_maps", False):
                        value = term(logits, y, m)
                    elif getattr(term, "uses_aux", False):
                        value = term(classes, y, aux=aux)
                    else:
                        value = term(classes, y)
                    loss = loss + weight * value
            total = total + (loss if len(heads) == 1 else head_weight * loss)
        return total
