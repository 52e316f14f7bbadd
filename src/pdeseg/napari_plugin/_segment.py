"""What the napari widget computes, without Qt: a layer's pixels in, labels (and class
probabilities) out, in the layer's own axis order. Kept apart from the widget so that it is
the same code whether napari is there or not.

A layer is read as the checkpoint's data format would read a file: an RGB(A) layer gives
``grey`` (the mean of red, green and blue) or its colour channels, a grey one its intensity
(:func:`pdeseg.data.readers.cells.image_channels`). 2D models take a 2D image or a stack of
planes ``(Z, Y, X)`` segmented plane by plane; 3D models take a stack. Cell models give cells
(the watershed ``pdeseg predict`` writes as ``_instances.tif``), other models classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from pdeseg.errors import DataError

#: 2D images with more pixels than this are segmented tile by tile (bounded memory, progress
#: per tile; no probability maps).
TILED_ABOVE_PIXELS = 4096 * 4096

Progress = Callable[[float, str], None]

#: The widget's model-list entry that means "the checkpoint file given below it" (the default).
CHECKPOINT_FILE = "checkpoint file ..."


def model_choices() -> list[str]:
    """The widget's model list: :data:`CHECKPOINT_FILE` first, then the shipped models whose
    weights are installed (:data:`pdeseg.pretrained.PRETRAINED`, ``pdeseg models``)."""
    from pdeseg.pretrained import installed_models

    return [CHECKPOINT_FILE, *installed_models()]


@dataclass
class Segmentation:
    """The result for one layer.

    Attributes:
        labels: cell ids (uint32) or classes (uint8), shaped like the layer (without RGB axis).
        instances: cells (True) or classes.
        probabilities: ``{class name: float32 map shaped like labels}`` (foreground classes),
            or empty.
        note: something the user should be told (e.g. no probability maps when tiled).
    """

    labels: np.ndarray
    instances: bool
    probabilities: dict[str, np.ndarray]
    note: str = ""


def layer_channels(data, rgb: bool, modalities: Sequence[str], name: str, spatial_dims: int) -> tuple[np.ndarray, int]:
    """``(C, *plane, [Z])`` float32 raw intensities of a layer and how many planes it has.

    Returns:
        ``(image (C, Y, X) for one 2D image, or (C, Y, X, Z) for a stack; planes (0 for 2D))``.

    Raises:
        DataError: a layer of a dimensionality the model cannot take (the message says which).
    """
    from pdeseg.data.readers.cells import image_channels

    shape = tuple(int(s) for s in data.shape)
    plane_dims = len(shape) - (1 if rgb else 0)
    takes = ("a 2D image (Y, X), an RGB image (Y, X, 3|4) or a stack of planes (Z, Y, X)" if spatial_dims == 2
             else "a 3D stack (Z, Y, X)")
    if plane_dims not in ((2, 3) if spatial_dims == 2 else (3,)) or (rgb and plane_dims == 3):
        raise DataError(f"layer {name!r} is {plane_dims}D{' RGB' if rgb else ''} with shape {shape}; this "
                        f"{spatial_dims}D model takes {takes}")
    pixels = np.asarray(data)
    if plane_dims == 2:
        return image_channels(pixels, modalities, name), 0
    planes = [image_channels(pixels[z], modalities, name) for z in range(pixels.shape[0])]
    return np.stack(planes, axis=-1), len(planes)


def segment_layer(segmenter, data, *, rgb: bool = False, name: str = "image", scale: Sequence[float] | None = None,
                  probabilities: bool = False, progress: Progress | None = None) -> Segmentation:
    """Segment one napari layer's pixels (see the module docstring).

    Args:
        segmenter: a :class:`pdeseg.Segmenter`.
        data: the layer's data (numpy or a lazy array).
        rgb: the layer is RGB(A) (last axis colour).
        name: the layer's name (for messages).
        scale: the layer's scale (stack: ``(z, y, x)``), passed as spacing to models that
            were trained resampled.
        probabilities: also return the class probabilities (not for tiled images).
        progress: ``progress(fraction, message)``.

    Raises:
        DataError: a layer the model cannot take.
    """
    say = progress or (lambda f, m: None)
    dims = segmenter.spatial_dims
    image, planes = layer_channels(data, rgb, segmenter.modalities, name, dims)
    cells = segmenter.predictor.format.has_cells
    classes = list(segmenter.classes)
    if planes == 0 and image.shape[1] * image.shape[2] > TILED_ABOVE_PIXELS and not probabilities:
        return _tiled(segmenter, image, cells, say)
    spacing = None
    if segmenter.spec.target_spacing is not None and scale is not None:
        s = [float(v) for v in scale[-image.ndim + 1:]]
        spacing = tuple(s[1:] + s[:1]) if planes else tuple(s)
    if dims == 3:
        say(0.05, "segmenting the stack")
        out = segmenter.predict(image, spacing=spacing, probabilities=probabilities, cells=cells)
        labels, probs = out if probabilities else (out, None)
        labels, probs = np.moveaxis(labels, -1, 0), (np.moveaxis(probs, -1, 1) if probs is not None else None)
        say(0.9, "labelling")
        result = _stack_instances(labels) if cells else labels.astype(np.uint8)
        return Segmentation(result, cells, _probability_maps(probs, classes))
    if planes == 0:
        say(0.05, "segmenting")
        out = segmenter.predict(image, spacing=spacing, probabilities=probabilities, cells=cells)
        labels, probs = out if probabilities else (out, None)
        say(0.9, "labelling")
        result = labels.astype(np.uint32) if cells else labels.astype(np.uint8)
        return Segmentation(result, cells, _probability_maps(probs, classes))
    out_labels, out_probs = [], []
    for z in range(planes):
        say(z / planes, f"plane {z + 1}/{planes}")
        out = segmenter.predict(image[..., z], spacing=spacing[:2] if spacing else None, probabilities=probabilities,
                                cells=cells)
        labels, probs = out if probabilities else (out, None)
        out_labels.append(labels)
        if probs is not None:
            out_probs.append(probs)
    labels = np.stack(out_labels)
    result = _stack_instances(labels) if cells else labels.astype(np.uint8)
    probs = np.stack(out_probs, axis=1) if out_probs else None
    return Segmentation(result, cells, _probability_maps(probs, classes))


def _stack_instances(planes: np.ndarray) -> np.ndarray:
    """A ``(Z, Y, X)`` stack of per-plane cells (ids 1..N in each plane) with ids unique over
    the stack."""
    out = np.zeros(planes.shape, np.uint32)
    top = 0
    for z in range(planes.shape[0]):
        cells = planes[z].astype(np.uint32)
        out[z] = np.where(cells > 0, cells + top, 0)
        top = int(out[z].max(initial=top))
    return out


def _probability_maps(probs: np.ndarray | None, classes: list[str]) -> dict[str, np.ndarray]:
    if probs is None:
        return {}
    return {name: np.ascontiguousarray(probs[k]) for k, name in enumerate(classes) if k > 0}


def _tiled(segmenter, image: np.ndarray, cells: bool, say: Progress) -> Segmentation:
    from pdeseg.inference.tiling import predict_tiled

    original = segmenter.predictor
    note = (f" (whole-image post-processing left out: {original.postprocessing.describe()})"
            if original.postprocessing.enabled else "")
    p = original.with_options(postprocess=False) if original.options.postprocess else original
    result = predict_tiled(None, image, options=p.options, predictor=p, instances=cells, progress=False,
                           callback=lambda desc, done, total: say(done / max(total, 1), f"{desc}: {done}/{total}"))
    try:
        labels = np.asarray(result.labels[:])
    finally:
        result.cleanup()
    return Segmentation(labels, cells, {}, note=f"segmented in {len(result.grid.tiles())} tiles; no probability maps "
                                               "for tiled images" + note)
