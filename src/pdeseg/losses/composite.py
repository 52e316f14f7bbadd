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
    """Weighted sum of loss terms over one or several heads.

    Args:
        terms: ``(name, weight, module)`` triples; a module is called as
            ``module(logits, target)``, or ``module(logits, target, aux=...)`` when it sets
            ``uses_aux = True``.

    Shapes:
        ``output`` as in the module docstring, ``target (B, *spatial)`` -> scalar.
    """

    def __init__(self, terms: Sequence[tuple[str, float, nn.Module]]):
        super().__init__()
        if not terms:
            raise ValueError("a loss needs at least one term")
        self.names = [n for n, _, _ in terms]
        self.weights = [float(w) for _, w, _ in terms]
        self.terms = nn.ModuleList([m for _, _, m in terms])

    def forward(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        aux: dict[str, Any] = {}
        if isinstance(output, Mapping):
            aux = {k: v for k, v in output.items() if k != "logits"}
            output = output["logits"]
        heads = list(output) if isinstance(output, (list, tuple)) else [output]
        total = heads[0].new_zeros((), dtype=torch.float32)
        for head_weight, logits in zip(deep_supervision_weights(len(heads)), heads):
            if head_weight == 0:
                # A zero-weight head stays in the graph with a zero contribution: its parameters
                # then get a (zero) gradient, which DistributedDataParallel needs from every
                # parameter at every step (the value of the loss does not change).
                total = total + 0.0 * logits.float().sum()
                continue
            y = _downsample_target(target, logits.shape[2:])
            loss = logits.new_zeros((), dtype=torch.float32)
            for weight, term in zip(self.weights, self.terms):
                if weight:
                    value = term(logits, y, aux=aux) if getattr(term, "uses_aux", False) else term(logits, y)
                    loss = loss + weight * value
            total = total + (loss if len(heads) == 1 else head_weight * loss)
        return total
