"""Open pdeseg predictions in napari as Labels layers with their pixel size.

* ``<image>_instances.tif`` / ``_instances.ome.tif`` / ``_classes.ome.tif``: cell ids or
  classes; an OME-TIFF's pixel size (micrometres) becomes the layer's scale;
* ``<image>_mask.png``: the 0/255 cell mask, as labels 0/1;
* ``<case>_seg.nii.gz``: a label volume; the NIfTI voxel size (mm) becomes the scale.

Files that are not integer label images are declined (the reader returns None), so napari
offers them to other readers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

_SUFFIXES = ("_instances.tif", "_instances.ome.tif", "_classes.ome.tif", "_mask.png", "_seg.nii.gz", "_seg.nii")


def get_reader(path):
    """napari's reader hook: a function that reads ``path``, or None when it is not a pdeseg
    prediction."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    name = Path(path).name.lower()
    if not name.endswith(_SUFFIXES):
        return None
    return read_prediction


def read_prediction(path) -> list[tuple]:
    """``[(labels, {"name", "scale", "metadata"}, "labels")]`` for one prediction file.

    Raises:
        ValueError: the file does not hold integer labels.
    """
    if isinstance(path, (list, tuple)):
        path = path[0]
    p = Path(path)
    name = p.name.lower()
    scale = None
    if name.endswith((".nii.gz", ".nii")):
        import nibabel as nib

        img = nib.load(str(p))
        data = np.asarray(img.dataobj)
        scale = tuple(float(z) for z in img.header.get_zooms()[: data.ndim])
        unit = "mm"
    elif name.endswith(".png"):
        from PIL import Image

        with Image.open(p) as im:
            data = (np.asarray(im.convert("L")) > 0).astype(np.uint8)
        unit = "pixel"
    else:
        import tifffile

        with tifffile.TiffFile(p) as tf:
            data = tf.series[0].asarray()
            unit = "pixel"
            if tf.is_ome and tf.ome_metadata:
                from pdeseg.data.readers.ome import open_ome

                px = open_ome(p).levels[0].pixel_size
                if px is not None:
                    scale, unit = tuple(v * 1e3 for v in px), "um"
    if not (np.issubdtype(data.dtype, np.integer) or data.dtype == bool):
        raise ValueError(f"{p}: not a label image (dtype {data.dtype})")
    meta = {"name": p.name, "metadata": {"source": str(p), "unit": unit}}
    if scale is not None:
        meta["scale"] = scale
    return [(data, meta, "labels")]
