"""The one decode step: a model's logits become a :class:`Segmentation` (classes, optionally
probabilities and cells) here and nowhere else.

Every caller that turns logits into labels goes through :func:`decode` (one case) or
:func:`decode_batch` (a batch of slices, classes only): :class:`~pdeseg.inference.predict.Predictor`
(``predict``, the API, napari), the scoring of ``evaluate`` / validation / ``compare`` /
``ablate``, tiled prediction, ``crossval``'s rescoring and the figures. The steps, in order:

1. resample the logits to the output grid (``out_shape``: a model trained at a
   ``target_spacing``, or a cell model run at its training object size), trilinear /
   bilinear, before any decision (as nnU-Net resamples its softmax, not its labels);
2. classes by the head's rule (:func:`~pdeseg.nn.output.predicted_classes`: argmax, ``z > 0``
   or the nested-region rule); voxels outside ``valid`` set to background;
3. post-processing of the whole label map (:class:`~pdeseg.nn.postprocess.PostProcessing`);
4. the class probabilities (before post-processing), when asked for;
5. a cell model's cells, slice by slice along the last axis, by its representation
   (:mod:`pdeseg.data.pipeline.representations`; ids restart at 1 in each slice);
6. paste-back of a crop box into the full grid: background (class 0, background's
   probabilities, no cell) outside the box.

This module sits below inference orchestration: it imports :mod:`pdeseg.nn.output`, the
representations and the post-processing, and nothing from ``predict``, ``score`` or ``tiled``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from pdeseg.data.pipeline.preprocess import Box, box_slices
from pdeseg.data.pipeline.representations import Representation
from pdeseg.nn.output import OutputHead, background_logits, class_probabilities, extra_maps, predicted_classes
from pdeseg.nn.postprocess import PostProcessing


@dataclass
class Segmentation:
    """What :func:`decode` makes of one case's logits, on the output grid.

    Attributes:
        classes: ``(*spatial)`` uint8 post-processed class map.
        probabilities: ``(K, *spatial)`` float32 class probabilities, when asked for.
        instances: ``(*spatial)`` int32 cells (0 background) of a cell model, else None.
    """

    classes: np.ndarray
    probabilities: np.ndarray | None = None
    instances: np.ndarray | None = None


def decode(
    logits: torch.Tensor,
    head: OutputHead,
    *,
    regions: Mapping[str, Sequence[int]] | None = None,
    postprocessing: PostProcessing | None = None,
    representation: Representation | None = None,
    out_shape: Sequence[int] | None = None,
    box: Box | None = None,
    full_shape: Sequence[int] | None = None,
    valid: np.ndarray | None = None,
    with_probabilities: bool = False,
    with_cells: bool = True,
    min_size: int | None = None,
) -> Segmentation:
    """The segmentation of one case's logits (see the module docstring for the steps).

    Args:
        logits: ``(K + M, *S)`` float logits of one case (``K`` class channels of ``head``,
            then its ``M`` extra maps), on the model's grid.
        head: what the channels mean (:func:`~pdeseg.nn.output.head_of`).
        regions: the data set's regions (name -> class ids), for the post-processing rule
            on the innermost region.
        postprocessing: rules applied to the whole label map (None or off: none).
        representation: a cell model's representation (None: no cells).
        out_shape: the grid ``(*S')`` to resample the logits to (the box's shape when
            ``box`` is given); None: the logits' own grid.
        box: the crop box ``((a0, b0), ...)`` of ``full_shape`` that ``out_shape`` covers:
            the results are pasted into ``full_shape``, background outside.
        full_shape: the whole case's grid (needed with ``box``).
        valid: bool ``(*S')``: voxels outside are background before post-processing and
            cells (the padding of a tile window).
        with_probabilities: also return the class probabilities ``(K, *spatial)`` float32
            (before post-processing).
        with_cells: find the cells of a cell model (``representation``).
        min_size: drop cells under this many pixels (None: the representation's rule).

    Returns:
        a :class:`Segmentation` on ``full_shape`` (with ``box``), else on ``out_shape`` or
        the logits' grid.

    Raises:
        ValueError: ``box`` without ``full_shape``, or a ``valid`` mask of another shape.
    """
    if box is not None and full_shape is None:
        raise ValueError("decode: a crop box needs the full_shape to paste into")
    x = logits[None].float()
    if out_shape is not None and tuple(x.shape[2:]) != tuple(out_shape):
        mode = "trilinear" if len(out_shape) == 3 else "bilinear"
        x = F.interpolate(x, size=tuple(int(s) for s in out_shape), mode=mode, align_corners=False)
    classes = predicted_classes(x, head)[0].numpy().astype(np.uint8)
    if valid is not None:
        if tuple(valid.shape) != classes.shape:
            raise ValueError(f"decode: valid mask {tuple(valid.shape)} is not the output grid {classes.shape}")
        classes[~valid] = 0
    if postprocessing is not None and postprocessing.enabled:
        classes = postprocessing.apply(classes, head.num_classes, regions)
    probabilities = class_probabilities(x, head)[0].numpy().astype(np.float32) if with_probabilities else None
    cells = _cells(x[0], classes, head, representation, min_size) if with_cells else None
    if box is not None:
        classes, probabilities, cells = _paste(box, tuple(full_shape), head, classes, probabilities, cells)
    return Segmentation(classes, probabilities, cells)


def decode_batch(logits: torch.Tensor, head: OutputHead) -> torch.Tensor:
    """Classes ``(B, *S)`` int64 (on the logits' device) of a batch of logits ``(B, K + M, *S)``,
    by the head's rule: the decode of slices scored in batches (no resampling, no
    post-processing, no cells: those are whole-case steps of :func:`decode`)."""
    return predicted_classes(logits, head)


def _cells(
    logits: torch.Tensor, classes: np.ndarray, head: OutputHead, representation: Representation | None, min_size: int | None
) -> np.ndarray | None:
    """The instances ``(X, Y, Z)`` int32 of a cell model's output ``(K + M, X, Y, Z)`` on the
    classes' grid, slice by slice along the last axis; None without a representation."""
    if representation is None:
        return None
    rep = representation if min_size is None else replace(representation, min_size=int(min_size))
    cell = 1 - class_probabilities(logits[None], head)[0, 0].numpy()
    maps = extra_maps(logits[None], head)[0].numpy()
    out = np.zeros(classes.shape, np.int32)
    for z in range(classes.shape[-1]):
        out[..., z] = rep.instances(cell[..., z], classes[..., z], maps[..., z])
    return out


def cells(
    logits: torch.Tensor, classes: np.ndarray, head: OutputHead, representation: Representation | None, min_size: int | None = None
) -> np.ndarray | None:
    """The cells of given ``classes`` ``(X, Y, Z)`` from a cell model's logits ``(K + M, X, Y, Z)``
    on the same grid (the cell step of :func:`decode` alone, for callers that hold classes
    already); None without a representation."""
    return _cells(logits.float(), classes, head, representation, min_size)


def _paste(
    box: Box, shape: tuple[int, ...], head: OutputHead, classes: np.ndarray, probabilities: np.ndarray | None, found: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``classes`` (and probabilities, cells) of the box placed in a case of ``shape``: class 0,
    background's probabilities and no cell outside the box."""
    cut = box_slices(box)
    out = np.zeros(shape, np.uint8)
    out[cut] = classes
    probs = None
    if probabilities is not None:
        spatial = (1,) * len(shape)
        outside = class_probabilities(background_logits(head, head.channels, spatial)[None], head)[0]
        probs = np.empty((probabilities.shape[0], *shape), np.float32)
        probs[...] = outside.numpy().astype(np.float32)
        probs[(slice(None), *cut)] = probabilities
    pasted = None
    if found is not None:
        pasted = np.zeros(shape, np.int32)
        pasted[cut] = found
    return out, probs, pasted
