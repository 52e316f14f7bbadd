"""How network logits become class probabilities and labels: the one place that knows
about the three heads.

* ``softmax``: ``K = C`` channels, ``P = softmax(z)``, label = argmax.
* ``sigmoid``: one channel for a binary task, ``P = [1 - sigmoid(z), sigmoid(z)]``, label =
  ``z > 0``.
* ``regions``: one sigmoid channel per region of a *nested* chain of regions (BraTS
  ``WT ⊃ TC ⊃ ET``), each region one class larger than the next, the outermost every class
  but background. Channel ``k`` is the probability of region ``k`` *given* region ``k - 1``
  (``q_k = sigmoid(z_k)``), so the region probabilities

      ``m_k = P(R_k) = q_1 q_2 ... q_k``

  are nested by construction (``m_1 >= m_2 >= ...``), and the class probabilities are a proper
  distribution: ``P(background) = 1 - m_1``, ``P(own class of R_k) = m_k - m_{k+1}`` (the
  own class of ``R_k`` is the one class in ``R_k`` but not in ``R_{k+1}``; the innermost
  region's own class is all of it). The label map is rebuilt the BraTS way, region by region:
  each voxel takes the own class of the innermost region with ``m_k > 0.5`` (background where
  ``m_1 <= 0.5``). This is not the argmax of the class probabilities (``m = (0.6, 0.35, 0.2)``
  is ED by regions, but its class probabilities 0.4, 0.25, 0.15, 0.2 make background the
  argmax); it is what the region losses train.
  Because ``m_k`` is a sum of class probabilities, averaging class probabilities (test-time
  augmentation, ensembles) averages region probabilities, and the rule applies unchanged.

A head may also carry **extra maps** (``maps``: per-pixel regression outputs of a cell
representation, e.g. Cellpose-style flows, see :mod:`pdeseg.data.pipeline.representations`):
``M`` more channels after the ``K`` class-logit channels. Every function here reads the
class channels only (:func:`class_logits`); :func:`extra_maps` returns the others, and
:func:`map_flip_signs` says how each map changes when the input is mirrored.

Losses, metrics, prediction and figures all go through these functions with the run's
:class:`OutputHead` (or, for the first two heads, with none: a one-channel logits tensor is a
sigmoid head, more channels a softmax head).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from pdeseg.config import OUTPUTS


@dataclass(frozen=True)
class OutputHead:
    """What a network's logit channels mean.

    Attributes:
        kind: ``softmax``, ``sigmoid`` or ``regions``.
        num_classes: ``C``, the classes of the label maps.
        regions: ``regions`` only: the nested chain, outermost first, as class-id tuples.
        region_names: their names (``WT``, ``TC``, ``ET``).
        levels: ``regions`` only: the class of each depth, ``levels[0]`` background and
            ``levels[k]`` the own class of region ``k`` (1-based), a tuple of ``K + 1`` ids.
        maps: names of the extra regression maps after the class logits (none by default).
    """

    kind: str
    num_classes: int
    regions: tuple[tuple[int, ...], ...] = ()
    region_names: tuple[str, ...] = ()
    levels: tuple[int, ...] = ()
    maps: tuple[str, ...] = ()

    @property
    def class_channels(self) -> int:
        """Class-logit channels ``K``."""
        return {"softmax": self.num_classes, "sigmoid": 1, "regions": len(self.regions)}[self.kind]

    @property
    def channels(self) -> int:
        """All output channels: ``K`` class logits, then the extra maps."""
        return self.class_channels + len(self.maps)


HeadLike = OutputHead | str | None


def make_head(output: str, num_classes: int, regions: Mapping[str, Sequence[int]] | None = None) -> OutputHead:
    """The :class:`OutputHead` of ``output`` for ``num_classes`` classes and the data set's
    ``regions`` (name -> class ids; used by ``regions`` only, sorted outermost first).

    Raises:
        ValueError: an unknown ``output``; sigmoid with ``num_classes != 2``; ``regions``
            whose regions are missing or do not form a chain in which each region holds one
            class more than the next and the outermost all but one class.
    """
    if output == "softmax":
        return OutputHead("softmax", num_classes)
    if output == "sigmoid":
        if num_classes != 2:
            raise ValueError(f"a sigmoid head is for 2 classes, got num_classes={num_classes}")
        return OutputHead("sigmoid", 2)
    if output != "regions":
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    if not regions:
        raise ValueError("output: regions needs a data set that defines regions (e.g. BraTS WT, TC, ET); this one defines none")
    named = sorted(((name, tuple(sorted(set(int(c) for c in ids)))) for name, ids in regions.items()), key=lambda r: -len(r[1]))
    sets = [set(ids) for _, ids in named]
    everything = set(range(num_classes))
    outer_missing = everything - sets[0]
    if not sets[0] <= everything or len(outer_missing) != 1:
        raise ValueError(f"output: regions needs an outermost region with every class but background; "
                         f"{named[0][0]} holds {sorted(sets[0])} of classes 0..{num_classes - 1}")
    levels = [outer_missing.pop()]
    for (name, _ids), (inner_name, _), s, inner in zip(named, named[1:], sets, sets[1:]):
        if not inner < s or len(s - inner) != 1:
            raise ValueError(f"output: regions needs nested regions, each one class larger than the next; "
                             f"{inner_name} {sorted(inner)} is not {name} {sorted(s)} less one class")
        levels.append(next(iter(s - inner)))
    if len(sets) > 1 and len(sets[-1]) != 1 or len(sets) == 1 and len(sets[0]) != 1:
        raise ValueError(f"output: regions needs an innermost region of one class; {named[-1][0]} holds {sorted(sets[-1])}")
    levels.append(next(iter(sets[-1])))
    if len(levels) != num_classes:
        raise ValueError(f"output: regions {', '.join(n for n, _ in named)} cover {len(levels)} of {num_classes} classes")
    return OutputHead("regions", num_classes, tuple(ids for _, ids in named), tuple(n for n, _ in named), tuple(levels))


def head_of(spec: Any) -> OutputHead:
    """The head of a task spec (anything with ``output``, ``num_classes``, ``regions`` and
    optionally ``maps``)."""
    head = make_head(getattr(spec, "output", "softmax"), spec.num_classes, getattr(spec, "regions", None))
    maps = tuple(getattr(spec, "maps", None) or ())
    return replace(head, maps=maps) if maps else head


def class_logits(output: torch.Tensor, head: HeadLike) -> torch.Tensor:
    """The class-logit channels ``(B, K, *S)`` of an output ``(B, K + M, *S)``."""
    return output[:, :head.class_channels] if isinstance(head, OutputHead) and head.maps else output


def extra_maps(output: torch.Tensor, head: OutputHead) -> torch.Tensor:
    """The extra maps ``(B, M, *S)`` of an output ``(B, K + M, *S)`` (``M = 0``: empty)."""
    return output[:, head.class_channels:]


def map_flip_signs(head: OutputHead, dims: Sequence[int]) -> torch.Tensor:
    """``(M,)`` signs of the extra maps of an output mirrored along tensor dims ``dims`` (2
    and up are spatial): a map named ``flow_k`` is a vector component along spatial axis
    ``k`` and changes sign when that axis is mirrored; every other map is a scalar field."""
    signs = torch.ones(len(head.maps))
    for i, name in enumerate(head.maps):
        if name.startswith("flow_") and int(name[5:]) + 2 in tuple(dims):
            signs[i] = -1.0
    return signs


def mean_output(outputs: Sequence[tuple[torch.Tensor, Sequence[int]]], head: OutputHead) -> torch.Tensor:
    """The output whose class probabilities are the mean of those of ``outputs`` and whose extra
    maps are their mean, each ``(output (B, K + M, *S), dims it was mirrored along)``, already
    mirrored back: vector maps are turned back too (:func:`map_flip_signs`). For test-time
    augmentation, ensembles and several slice axes."""
    probs = maps = None
    for out, dims in outputs:
        p = class_probabilities(out, head)
        probs = p if probs is None else probs.add_(p)
        if head.maps:
            m = extra_maps(out, head).float() * map_flip_signs(head, dims).to(out.device).view(1, -1, *[1] * (out.dim() - 2))
            maps = m if maps is None else maps.add_(m)
    n = len(outputs)
    logits = logits_from_probabilities(probs / n, head)
    return torch.cat([logits, maps / n], dim=1) if head.maps else logits


def _resolve(head: HeadLike, logits_or_probs: torch.Tensor) -> OutputHead:
    """The head meant: as given, by name (with the tensor's channels as classes), or from the
    channel count (1: sigmoid, more: softmax)."""
    if isinstance(head, OutputHead):
        return head
    k = logits_or_probs.shape[1]
    if head is None:
        return OutputHead("sigmoid", 2) if k == 1 else OutputHead("softmax", k)
    return make_head(head, k)


def output_channels(num_classes: int, output: str = "softmax", regions: Mapping[str, Sequence[int]] | None = None) -> int:
    """Logit channels of a head: ``num_classes`` for softmax, 1 for a binary sigmoid, one per
    region for ``regions``.

    Raises:
        ValueError: see :func:`make_head`.
    """
    return make_head(output, num_classes, regions).channels


def _float(logits: torch.Tensor) -> torch.Tensor:
    return logits if logits.dtype == torch.float64 else logits.float()  # bf16/fp16 autocast outputs promoted


def log_region_probabilities(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Region-head logits ``(B, K, *S)`` -> ``(log m, log(1 - m))``, each ``(B, K, *S)``, in log
    space so that a confident region never rounds to 0 or 1 and every gradient stays finite:
    ``log m_k = sum_{j<=k} log sigmoid(z_j)`` and, since ``1 - m_k = (1 - m_{k-1}) + m_{k-1}
    (1 - q_k)`` (a sum of positive terms), ``log(1 - m_k) = logaddexp(log(1 - m_{k-1}),
    log m_{k-1} + log sigmoid(-z_k))`` with ``log(1 - m_1) = log sigmoid(-z_1)``."""
    z = _float(logits)
    log_q, log_not_q = F.logsigmoid(z), F.logsigmoid(-z)
    log_m = log_q.cumsum(dim=1)
    nots = [log_not_q[:, 0]]
    for k in range(1, z.shape[1]):
        nots.append(torch.logaddexp(nots[-1], log_m[:, k - 1] + log_not_q[:, k]))
    return log_m, torch.stack(nots, dim=1)


def region_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Region-head logits ``(B, K, *S)`` -> nested region probabilities ``m (B, K, *S)``."""
    return torch.sigmoid(_float(logits)).cumprod(dim=1)


def class_probabilities(logits: torch.Tensor, head: HeadLike = None) -> torch.Tensor:
    """``(B, K, *S)`` logits -> ``(B, C, *S)`` class probabilities summing to 1 over ``C``.

    Sigmoid head: ``[1 - sigmoid(z), sigmoid(z)]``; softmax head: ``softmax(z)``; region
    head: the chain of the module docstring.
    """
    h = _resolve(head, logits)
    z = _float(class_logits(logits, h))
    if h.kind == "sigmoid":
        p = torch.sigmoid(z)
        return torch.cat([1 - p, p], dim=1)
    if h.kind == "softmax":
        return z.softmax(dim=1)
    m = region_probabilities(z)
    ones = torch.ones_like(m[:, :1])
    outer = torch.cat([ones, m], dim=1)  # m_0 = 1
    inner = torch.cat([m, torch.zeros_like(ones)], dim=1)  # m_{K+1} = 0
    per_level = outer - inner  # (B, K + 1, *S): P(level k)
    out = torch.empty_like(per_level)
    out[:, list(h.levels)] = per_level
    return out


def regions_from_class_probabilities(probs: torch.Tensor, head: OutputHead) -> torch.Tensor:
    """``(B, C, *S)`` class probabilities -> ``(B, K, *S)`` region probabilities (sums over
    each region's classes)."""
    return torch.stack([probs[:, list(ids)].sum(dim=1) for ids in head.regions], dim=1)


#: Logit of "certainly not" in :func:`background_logits` (sigmoid(-30) ~ 1e-13).
CERTAIN = 30.0


def background_logits(head: HeadLike, channels: int, spatial: Sequence[int]) -> torch.Tensor:
    """Logits ``(channels, *spatial)`` that say "background" with certainty: class 0 at 0 and
    every other class at ``-CERTAIN`` (softmax), or every channel at ``-CERTAIN`` (a sigmoid
    or region head, where background is "no region"). For regions a prediction skips (an
    input that is all zero outside the body); their probabilities are background to ~1e-13.
    """
    kind = head.kind if isinstance(head, OutputHead) else ("sigmoid" if channels == 1 else "softmax")
    out = torch.full((channels, *spatial), -CERTAIN)
    if kind == "softmax":
        out[0] = 0.0
    if isinstance(head, OutputHead) and head.maps:  # extra maps: 0 (no distance, no flow)
        out[head.class_channels:] = 0.0
    return out


def logits_from_probabilities(probs: torch.Tensor, head: HeadLike = "softmax") -> torch.Tensor:
    """Inverse of :func:`class_probabilities`: ``(B, C, *S)`` class probabilities -> logits of
    the head (``log p`` for softmax, ``(B, C, *S)``; ``log(p1 / p0)`` for a binary sigmoid
    head, ``(B, 1, *S)``; for a region head ``z_k = logit(m_k / m_{k-1})``, ``(B, K, *S)``), so
    that ``class_probabilities`` of the result gives ``probs`` back (up to the clamp of
    probabilities at the smallest float32 number, which keeps every logit finite).

    Raises:
        ValueError: an unknown head, or a sigmoid head with ``C != 2``.
    """
    h = _resolve(head, probs)
    tiny = torch.finfo(torch.float32).tiny
    if h.kind == "regions":
        m = regions_from_class_probabilities(probs.float(), h).clamp(tiny, 1.0)
        prev = torch.cat([torch.ones_like(m[:, :1]), m[:, :-1]], dim=1)
        q = (m / prev.clamp_min(tiny)).clamp(tiny, 1.0)
        return q.log() - (1 - q).clamp_min(tiny).log()
    logp = probs.float().clamp_min(tiny).log()
    if h.kind == "softmax":
        return logp
    if probs.shape[1] != 2:
        raise ValueError(f"a sigmoid head has 2 class probabilities, got {probs.shape[1]}")
    return logp[:, 1:2] - logp[:, 0:1]


def labels_from_region_probabilities(m: torch.Tensor, head: OutputHead, threshold: float = 0.5) -> torch.Tensor:
    """Nested region probabilities ``(B, K, *S)`` -> ``(B, *S)`` int64 labels: the own class of
    the innermost region above ``threshold`` (background where none is)."""
    depth = (m > threshold).long()
    depth = depth.cumprod(dim=1).sum(dim=1)  # innermost k with every region up to k above threshold
    return torch.tensor(head.levels, device=m.device)[depth]


def predicted_classes(logits: torch.Tensor, head: HeadLike = None) -> torch.Tensor:
    """``(B, K, *S)`` logits -> ``(B, *S)`` int64 labels (``z > 0`` for a sigmoid head, argmax
    for softmax, the region rule of the module docstring for a region head)."""
    h = _resolve(head, logits)
    logits = class_logits(logits, h)
    if h.kind == "sigmoid":
        return (logits[:, 0] > 0).long()
    if h.kind == "softmax":
        return logits.argmax(dim=1)
    return labels_from_region_probabilities(region_probabilities(logits), h)
