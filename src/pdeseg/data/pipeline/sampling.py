"""Training and validation samples drawn from cached cases, in 2D and 3D.

Three sampling modes (``data.mode``, stored in every checkpoint's preprocessing spec):

* ``slices``: axial slices (the last axis) of each case, chosen by ``data.slices``, brought
  to ``spatial_size`` by centre crop/pad or resize: :class:`SliceDataset`;
* ``patches``: random patches of ``spatial_size`` from each case, a share of them centred
  on a foreground voxel of a class drawn uniformly among the case's classes (or of any
  labelled voxel), from locations stored in the cache: :class:`PatchDataset`;
* ``whole``: whole cases, optionally centre cropped/padded to ``spatial_size``:
  :class:`VolumeDataset`.

Every item is ``{"image": (C, *spatial) float32, "label": (*spatial) int64, "case": str}``
(slices add ``"z"``). Models pad and crop internally, so no size needs to be a multiple of
anything. Crop, pad and resize are MONAI transforms on plain tensors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai import transforms as mt
from torch.utils.data import Dataset

from pdeseg.config import IGNORE_LABEL, AugmentConfig, DataConfig, TaskSpec
from pdeseg.data.pipeline.cache import CachedCase
from pdeseg.data.pipeline.representations import Representation
from pdeseg.data.pipeline.transforms import build_train_transform
from pdeseg.errors import ConfigError, DataError

log = logging.getLogger(__name__)
#: How a foreground patch centre is chosen (see :class:`PatchDataset`).
FOREGROUND_SAMPLING = ("classes", "any")


#: Names of the slice axes of a volume ``(X, Y, Z)`` (for RAS-like brain MRI).
AXIS_NAMES = {0: "sagittal", 1: "coronal", 2: "axial"}


def axis_slices(case: CachedCase, axis: int, selection: str, slice_range: Sequence[int] | None = None) -> list[int]:
    """Slice indices along ``axis`` (0, 1 or 2 of ``(X, Y, Z)``) of one case; the selections of
    :func:`select_slices`, read from the arrays for the non-axial axes (``range`` is axial only)."""
    if axis == 2:
        return select_slices(case, selection, slice_range)
    n = int(case.meta["shape"][axis])
    if selection == "all":
        return list(range(n))
    if selection == "middle":
        return [n // 2]
    if selection == "range":
        raise ConfigError("slice selection 'range' counts axial slices; use it with data.slice_axes: [2]")
    other = (0, 2) if axis == 0 else (0, 1)  # the cached label is (Z, X, Y)
    if selection in ("tumour", "tumour_middle"):
        if case.label is None:
            raise DataError(f"case {case.case_id} has no label, so 'tumour' slices cannot be selected")
        found = np.flatnonzero(np.asarray(case.label).any(axis=other)).tolist()
        if selection == "tumour_middle":
            return [found[len(found) // 2] if found else n // 2]
        return found
    if selection == "brain":
        return np.flatnonzero((np.asarray(case.image) != 0).any(axis=(0, 1, 3 - axis))).tolist()
    raise ConfigError(f"unknown slice selection {selection!r}")


def slice_stack(volume: np.ndarray, axis: int, indices, context: int = 0) -> np.ndarray:
    """Slices of a volume ``(C, X, Y, Z)`` along ``axis`` as a float32 batch ``(B, C (2n + 1), A, B')``:
    the two other axes in their order, and with ``context = n`` (2.5D) the modalities of the
    slices ``i - n .. i + n`` (neighbours first-to-last, the modalities within each; see
    :func:`context_indices`). The one way slices are cut, in training and in inference."""
    return stack_rows(np.moveaxis(volume, 1 + axis, 0), indices, context)


def stack_rows(front: np.ndarray, indices, context: int = 0) -> np.ndarray:
    """:func:`slice_stack` of a volume whose slicing axis is already first, ``(D, C, A, B')``
    (the cache's ``(Z, C, X, Y)`` for axial slices; make it contiguous once per case, and the
    batches are row reads instead of strided gathers)."""
    idx = context_indices(np.atleast_1d(indices), front.shape[0], context)  # (B, 2n + 1)
    taken = front[idx]  # (B, 2n + 1, C, A, B')
    return np.ascontiguousarray(taken, dtype=np.float32).reshape(idx.shape[0], -1, *front.shape[2:])


def select_slices(case: CachedCase, selection: str, slice_range: Sequence[int] | None = None) -> list[int]:
    """Slice indices (along the last, axial, axis) of one case.

    ``middle``: the volume's middle axial slice, one per case (paper 000's protocol);
    ``tumour_middle``: the centre of the labelled extent (the volume's middle when the case
    has no label); ``range``: the inclusive ``[first, last]``, clipped to the volume;
    ``brain``: slices with any non-zero voxel; ``tumour``: slices with any labelled
    (foreground) voxel; ``all``: every slice.
    """
    n = case.num_slices
    if selection == "middle":
        return [n // 2]
    if selection == "tumour_middle":
        tumour = case.slices("tumour")
        return [tumour[len(tumour) // 2] if tumour else n // 2]
    if selection == "range":
        if slice_range is None:
            raise ConfigError("slice selection 'range' needs data.slice_range: [first, last]")
        first, last = max(0, int(slice_range[0])), min(n - 1, int(slice_range[1]))
        return list(range(first, last + 1))
    if selection == "brain":
        return case.slices("brain")
    if selection == "tumour":
        if not case.meta["has_label"]:
            raise DataError(f"case {case.case_id} has no label, so 'tumour' slices cannot be selected")
        return case.slices("tumour")
    if selection == "all":
        return list(range(n))
    raise ConfigError(f"unknown slice selection {selection!r}")


def _plain(x) -> torch.Tensor:
    """A plain ``torch.Tensor`` (MONAI transforms return ``MetaTensor``)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def fit_spatial(
    image: torch.Tensor, label: torch.Tensor | None, spatial_size: Sequence[int] | None, resize: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Bring ``image (C, *S)`` and ``label (*S)`` to ``spatial_size``: centre crop/pad (zeros),
    or resize (image bilinear/trilinear, label nearest). ``None`` leaves them as they are."""
    if spatial_size is None:
        return image, label
    size = tuple(int(s) for s in spatial_size)
    if tuple(image.shape[1:]) == size:
        return image, label
    if resize:
        mode = "bilinear" if len(size) == 2 else "trilinear"
        image = _plain(mt.Resize(size, mode=mode)(image))
        if label is not None:
            label = _plain(mt.Resize(size, mode="nearest")(label[None].float()))[0].to(label.dtype)
        return image, label
    fit = mt.ResizeWithPadOrCrop(size)
    image = _plain(fit(image))
    if label is not None:
        label = _plain(fit(label[None]))[0]
    return image, label


def random_window(image: torch.Tensor, label: torch.Tensor, size: Sequence[int], rng: np.random.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut ``image (C, *S)`` and ``label (*S)`` to at most ``size`` per axis at a uniformly drawn
    offset (axes already within ``size`` are left whole, for :func:`fit_spatial` to pad)."""
    index = []
    for n, s in zip(image.shape[1:], size):
        start = int(rng.integers(0, n - int(s) + 1)) if n > int(s) else 0
        index.append(slice(start, start + min(n, int(s))))
    return image[(slice(None), *index)], label[tuple(index)]


def _augment(transform: Callable | None, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if transform is None:
        return image, label
    out = transform({"image": image, "label": label[None]})
    # plain tensors: MONAI's MetaTensor would add Python overhead to every op of the model
    return _plain(out["image"]).float(), _plain(out["label"])[0].round().long()


class PerItemDraws:
    """Mixin: every random draw of item ``index`` (the augmentation, and in patches mode the
    patch centre) comes from a generator seeded by ``(seed, epoch, index)``, so an epoch's
    samples do not depend on the number of DataLoader workers or the order items are read in,
    and a resumed run draws them again exactly. Call :meth:`set_epoch` before each epoch."""

    seed: int = 0
    epoch: int = 0
    transform: Callable | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def item_rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def augment_item(self, rng: np.random.Generator, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The transform, reseeded from ``rng``, applied to one item."""
        if self.transform is not None and hasattr(self.transform, "set_random_state"):
            self.transform.set_random_state(seed=int(rng.integers(2**32)))
        return _augment(self.transform, image, label)


def context_indices(z, depth: int, n: int) -> np.ndarray:
    """Slice indices of 2.5D input: for each ``z`` the slices ``z - n .. z + n``, clipped to
    ``[0, depth)`` (a volume's first and last slice repeat past its ends), shape
    ``(len(z), 2n + 1)`` (or ``(2n + 1,)`` for one ``z``)."""
    offsets = np.arange(-n, n + 1)
    return np.clip(np.asarray(z)[..., None] + offsets, 0, depth - 1)


class SliceDataset(PerItemDraws, Dataset):
    """Slices of cached cases: axial, or along each of ``axes`` (triplanar training).

    Each item is ``{"image": (C, H, W) float32, "label": (H, W) int64, "case": str, "z": int}``;
    pixels outside a case's field of view (DRIVE) carry :data:`~pdeseg.config.IGNORE_LABEL`.
    With a cell ``representation`` and cases with objects, the *instance image* is cut and
    augmented with the image, and the classes (and ``"maps": (M, H, W)`` float32 for
    representations with extra maps) are made from it afterwards
    (:meth:`~pdeseg.data.pipeline.representations.Representation.targets`).
    With ``context = n`` (2.5D) the image is ``(C (2n + 1), H, W)``: the modalities of slices
    ``z - n .. z + n`` (see :func:`context_indices`), the label that of slice ``z``.

    Args:
        cases: cached, labelled cases.
        selection, slice_range: see :func:`select_slices`.
        spatial_size, resize: see :func:`fit_spatial`.
        transform: optional dictionary transform (augmentation) applied after fitting.
        crop: ``center`` (see :func:`fit_spatial`) or ``random``: a slice larger than
            ``spatial_size`` along an axis gives a window at a position drawn uniformly per
            item and epoch (:class:`PerItemDraws`); a smaller axis is padded about the centre.
        repeats: items per selected slice and epoch (with a random crop: that many windows,
            each drawn on its own).
        context: neighbouring slices on each side stacked as channels (2.5D input).
        axes: the volume axes ``(X, Y, Z)`` to cut slices along, ``(2,)`` axial only; with
            several, every selected slice along each axis is an item (one model sees the
            three orientations), cut by :func:`slice_stack`.
        representation: a cell task's instance representation (see above), or None.

    Raises:
        DataError: no cases, no slices selected, or slices of different sizes to batch.
    """

    def __init__(
        self,
        cases: list[CachedCase],
        selection: str = "tumour",
        slice_range: Sequence[int] | None = None,
        spatial_size: Sequence[int] | None = None,
        resize: bool = False,
        transform: Callable | None = None,
        crop: str = "center",
        repeats: int = 1,
        context: int = 0,
        axes: Sequence[int] = (2,),
        representation: Representation | None = None,
    ):
        if crop not in ("center", "random"):
            raise ConfigError(f"crop must be center or random, got {crop!r}")
        if crop == "random" and (spatial_size is None or resize):
            raise ConfigError("a random crop needs a spatial_size and no resize")
        self.crop, self.context = crop, int(context)
        if not cases:
            raise DataError("no cases to draw slices from (empty split?)")
        self.axes = tuple(int(a) for a in axes)
        sizes = {tuple(s for k, s in enumerate(c.meta["shape"][:3]) if k != a) for c in cases for a in self.axes}
        if spatial_size is None and len(sizes) > 1:
            raise DataError(
                f"cases (or slice axes) give different slice sizes {sorted(sizes)} (e.g. BraTS 2020 and 2023 grids "
                "mixed, or slices along several axes); set data.spatial_size: [H, W] so that slices can be batched"
            )
        self.cases = cases
        self.spatial_size, self.resize, self.transform = spatial_size, resize, transform
        self.representation = representation
        self.items = [(i, a, z) for i, c in enumerate(cases) for a in self.axes
                      for z in axis_slices(c, a, selection, slice_range)] * int(repeats)
        if not self.items:
            raise DataError(f"slice selection {selection!r} gives no slices for cases {[c.case_id for c in cases]}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        ci, axis, z = self.items[index]
        case = self.cases[ci]
        if axis == 2:  # axial: rows of the (Z, C, X, Y) cache
            image = torch.from_numpy(stack_rows(case.image, z, self.context)[0])
        else:
            image = torch.from_numpy(slice_stack(np.asarray(case.image).transpose(1, 2, 3, 0), axis, z, self.context)[0])
        from_objects = self.representation is not None and case.instances is not None and case.valid is None
        source = case.instances if from_objects else case.label  # cells: the objects are cut and augmented
        label = torch.from_numpy(np.take(np.asarray(source).transpose(1, 2, 0), z, axis=axis).astype(np.int64))
        if case.valid is not None:  # outside the field of view: seen by no loss (IGNORE_LABEL)
            inside = np.take(np.asarray(case.valid).transpose(1, 2, 0), z, axis=axis).astype(bool)
            label = label.masked_fill(~torch.from_numpy(inside), IGNORE_LABEL)
        rng = self.item_rng(index)
        if self.crop == "random":
            image, label = random_window(image, label, self.spatial_size, rng)
        image, label = fit_spatial(image, label, self.spatial_size, self.resize)
        image, label = self.augment_item(rng, image, label)
        item = {"image": image.contiguous(), "case": case.case_id, "z": z, "axis": axis}
        if not from_objects:
            return {**item, "label": label.contiguous()}
        classes, maps = self.representation.targets(label.numpy())  # targets of the cut, augmented objects
        item["label"] = torch.from_numpy(classes)
        if maps.shape[0]:
            item["maps"] = torch.from_numpy(maps)
        return item


def case_volume(case: CachedCase) -> tuple[np.ndarray, np.ndarray | None]:
    """A cached case as ``(image (C, X, Y, Z) float32, label (X, Y, Z) or None)``."""
    image = np.asarray(case.image, dtype=np.float32).transpose(1, 2, 3, 0)
    label = np.asarray(case.label).transpose(1, 2, 0) if case.label is not None else None
    return image, label


class PatchDataset(PerItemDraws, Dataset):
    """Random patches of ``patch_size`` from whole cached volumes.

    ``samples_per_case`` patches per case and epoch. With probability ``foreground_prob`` a
    patch is centred on a foreground voxel taken from the case's cached locations
    (:meth:`CachedCase.foreground`, no search through the label), else on a uniformly random
    voxel; the patch is then shifted to lie inside the volume (volumes smaller than a patch
    are zero-padded), so near a border the centre moves. Which foreground voxel
    (``foreground_sampling``):

    * ``classes`` (default; the rule of nnU-Net and of MONAI's ``RandCropByLabelClasses``):
      a class drawn uniformly among the foreground classes present in the case, then one of
      its stored voxels, so a small class (enhancing tumour, a lesion) is a centre as often as
      a large one;
    * ``any``: a voxel drawn uniformly among all labelled voxels, so classes are centres in
      proportion to their size (the rule before class balancing).

    A case without any foreground always gets a random centre. Every draw, the centre and the
    augmentation alike (the transform is reseeded for each item), is a function of
    ``(seed, epoch, index)``: a resumed run draws the same patches whatever the number of
    DataLoader workers or the order of items. Call :meth:`set_epoch` before each epoch.

    Raises:
        DataError: no cases, or a case without a label.
        ConfigError: an unknown ``foreground_sampling``.
    """

    def __init__(self, cases: list[CachedCase], patch_size: Sequence[int], samples_per_case: int = 4,
                 foreground_prob: float = 0.33, transform: Callable | None = None, seed: int = 0,
                 foreground_sampling: str = "classes"):
        if not cases:
            raise DataError("no cases to draw patches from (empty split?)")
        if foreground_sampling not in FOREGROUND_SAMPLING:
            raise ConfigError(f"foreground_sampling must be one of {', '.join(FOREGROUND_SAMPLING)}, got {foreground_sampling!r}")
        unlabelled = [c.case_id for c in cases if not c.meta["has_label"]]
        if unlabelled:
            raise DataError(f"patches are drawn from labelled cases only; these have no label: {unlabelled[:5]}")
        self.cases, self.patch = cases, tuple(int(p) for p in patch_size)
        self.samples_per_case, self.foreground_prob = samples_per_case, foreground_prob
        self.foreground_sampling = foreground_sampling
        self.transform, self.seed, self.epoch = transform, seed, 0

    def __len__(self) -> int:
        return len(self.cases) * self.samples_per_case

    def _foreground_class(self, case: CachedCase, rng: np.random.Generator) -> int:
        classes = case.foreground_classes
        if self.foreground_sampling == "classes":
            return classes[rng.integers(len(classes))]
        voxels = np.asarray([case.meta["class_voxels"][k] for k in classes], dtype=np.float64)
        return classes[rng.choice(len(classes), p=voxels / voxels.sum())]

    def _centre(self, index: int) -> tuple[np.ndarray, np.random.Generator]:
        """The drawn patch centre ``(x, y, z)`` of item ``index`` (before the shift that keeps
        the patch inside the volume), and the item's generator for the draws that follow."""
        case = self.cases[index // self.samples_per_case]
        rng = self.item_rng(index)
        if rng.random() < self.foreground_prob and case.foreground_classes:
            locations = case.foreground(self._foreground_class(case, rng))
            return np.asarray(locations[rng.integers(len(locations))], dtype=np.int64), rng
        return np.array([rng.integers(s) for s in case.meta["shape"]]), rng

    def __getitem__(self, index: int) -> dict:
        case = self.cases[index // self.samples_per_case]
        centre, rng = self._centre(index)
        shape = case.meta["shape"]
        start = [int(np.clip(c - p // 2, 0, max(s - p, 0))) for c, p, s in zip(centre, self.patch, shape)]
        sx, sy, sz = (slice(b, b + p) for b, p in zip(start, self.patch))
        # read only the patch from the memory-mapped (Z, C, X, Y) / (Z, X, Y) cache
        img = torch.from_numpy(np.asarray(case.image[sz, :, sx, sy], dtype=np.float32).transpose(1, 2, 3, 0).copy())
        lab = torch.from_numpy(np.asarray(case.label[sz, sx, sy]).transpose(1, 2, 0).astype(np.int64))
        img, lab = fit_spatial(img, lab, self.patch)  # pads volumes smaller than a patch
        img, lab = self.augment_item(rng, img, lab)
        return {"image": img.contiguous(), "label": lab.contiguous(), "case": case.case_id}


class VolumeDataset(PerItemDraws, Dataset):
    """Whole cached cases, optionally centre cropped/padded to ``spatial_size``."""

    def __init__(self, cases: list[CachedCase], spatial_size: Sequence[int] | None = None, transform: Callable | None = None):
        if not cases:
            raise DataError("no cases (empty split?)")
        shapes = {tuple(c.meta["shape"]) for c in cases}
        if spatial_size is None and len(shapes) > 1:
            raise DataError(f"cases have different shapes {sorted(shapes)[:4]}; set data.spatial_size so they can be batched, "
                            "or use data.mode: patches")
        self.cases, self.spatial_size, self.transform = cases, spatial_size, transform

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict:
        case = self.cases[index]
        image, label = case_volume(case)
        img, lab = fit_spatial(torch.from_numpy(image), torch.from_numpy(label.astype(np.int64)), self.spatial_size)
        img, lab = self.augment_item(self.item_rng(index), img, lab)
        return {"image": img.contiguous(), "label": lab.contiguous(), "case": case.case_id}


def training_dataset(cases: list[CachedCase], spec: TaskSpec, data: DataConfig, seed: int = 0) -> Dataset:
    """The training samples of ``spec.mode`` with the config's augmentation."""
    if spec.mode == "slices":
        ds = SliceDataset(cases, spec.slices, spec.slice_range, spec.spatial_size, spec.resize, crop=data.crop,
                          repeats=data.samples_per_case if data.crop == "random" else 1, context=spec.context_slices,
                          axes=spec.slice_axes, representation=Representation.of(spec))
        size = spec.spatial_size or list(ds[0]["image"].shape[1:])
        ds.transform, ds.seed = _train_transform(data.augment, spec.spatial_dims, size), seed
        return ds
    if spec.mode == "patches":
        return PatchDataset(cases, spec.spatial_size, data.samples_per_case, data.foreground_prob,
                            _train_transform(data.augment, spec.spatial_dims, spec.spatial_size), seed,
                            data.foreground_sampling)
    size = spec.spatial_size or cases[0].meta["shape"]
    ds = VolumeDataset(cases, spec.spatial_size, _train_transform(data.augment, spec.spatial_dims, size))
    ds.seed = seed
    return ds


def _train_transform(augment: AugmentConfig, spatial_dims: int, size: Sequence[int]):
    return build_train_transform(augment, tuple(int(s) for s in size), spatial_dims)


def evaluation_slices(cases: list[CachedCase], spec: TaskSpec) -> SliceDataset:
    """The slices the config selects, fitted as in training, without augmentation."""
    return SliceDataset(cases, spec.slices, spec.slice_range, spec.spatial_size, spec.resize, context=spec.context_slices,
                        axes=spec.slice_axes, representation=Representation.of(spec))
