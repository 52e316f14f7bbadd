"""How network logits become class probabilities and labels: the one place that knows
about softmax (``C`` channels) versus sigmoid (one channel for a binary task).

A logits tensor ``(B, K, *spatial)`` with ``K == 1`` is a sigmoid head for two classes
(``p(foreground) = sigmoid(z)``); with ``K >= 2`` a softmax head over ``K`` classes. Losses,
metrics, prediction and figures all go through these functions, so binary tasks need
no special cases elsewhere.
"""

from __future__ import annotations

import torch


def output_channels(num_classes: int, output: str = "softmax") -> int:
    """Logit channels of a head: ``num_classes`` for softmax, 1 for a binary sigmoid.

    Raises:
        ValueError: sigmoid with ``num_classes != 2``, or an unknown ``output``.
    """
    if output == "softmax":
        return num_classes
    if output == "sigmoid":
        if num_classes != 2:
            raise ValueError(f"a sigmoid head is for 2 classes, got num_classes={num_classes}")
        return 1
    raise ValueError(f"output must be softmax or sigmoid, got {output!r}")


def num_classes_of(logits: torch.Tensor) -> int:
    """Classes represented by ``logits (B, K, ...)``: 2 for ``K == 1``, else ``K``."""
    return 2 if logits.shape[1] == 1 else logits.shape[1]


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """``(B, K, *S)`` logits -> ``(B, C, *S)`` class probabilities summing to 1 over ``C``.

    Sigmoid head: ``[1 - sigmoid(z), sigmoid(z)]``; softmax head: ``softmax(z)``.
    """
    if logits.dtype != torch.float64:
        logits = logits.float()  # at least float32 (bf16/fp16 autocast outputs are promoted)
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=1)
    return logits.softmax(dim=1)


def logits_from_probabilities(probs: torch.Tensor, output: str = "softmax") -> torch.Tensor:
    """Inverse of :func:`class_probabilities`: ``(B, C, *S)`` class probabilities -> logits of
    the head ``output`` (``log p`` for softmax, ``(B, C, *S)``; ``log(p1 / p0)`` for a binary
    sigmoid head, ``(B, 1, *S)``), so that ``class_probabilities`` of the result gives ``probs``
    back (up to the clamp of probabilities at the smallest float32 number, which keeps every
    logit finite).

    Raises:
        ValueError: an unknown ``output``, or a sigmoid head with ``C != 2``.
    """
    logp = probs.float().clamp_min(torch.finfo(torch.float32).tiny).log()
    if output == "softmax":
        return logp
    if output == "sigmoid":
        if probs.shape[1] != 2:
            raise ValueError(f"a sigmoid head has 2 class probabilities, got {probs.shape[1]}")
        return logp[:, 1:2] - logp[:, 0:1]
    raise ValueError(f"output must be softmax or sigmoid, got {output!r}")


def predicted_classes(logits: torch.Tensor) -> torch.Tensor:
    """``(B, K, *S)`` logits -> ``(B, *S)`` int64 labels (``z > 0`` for a sigmoid head,
    argmax otherwise)."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(dim=1)
