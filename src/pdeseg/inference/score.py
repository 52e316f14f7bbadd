"""The one scoring path: training validation, ``evaluate``, ``compare``, ``ablate`` and ``demo``
all score a model through :func:`score`, on cached cases (the same normalised float16
arrays for every caller, so one checkpoint always gets one score).

Scopes:

* ``slices``: the slices the config selects (e.g. paper 000's middle slice), fitted as in
  training, in batches; per-case confusion counts accumulated over them (2D slice mode);
* ``volume``: every case segmented whole (slice by slice, sliding window or in one pass,
  as the spec says) and scored in its own dimensions; HD95 and surface Dice optional.
  Formats of 2D object images (microscopy, ``object_metrics``) add boundary F1 at 1, 2 and
  3 px of the foreground and, where the case has objects, the instance metrics of the
  predicted cells (:func:`pdeseg.data.pipeline.label_geometry.predicted_instances`: watershed on the boundary
  class, or connected components; specks below 10 pixels dropped): DSB score,
  AP50, split and merged cells (:mod:`pdeseg.metrics.instances`), and LIVECell's COCO mask
  AP, AP50 and AP75 (:mod:`pdeseg.metrics.coco`: each image's own, in its row, and the
  split's pooled AP in :attr:`Scores.pooled`, as LIVECell publishes it; a cell's confidence
  is its mean cell probability where the model's output is at hand). Pixels outside a case's
  field of view (DRIVE) are set to background in truth and prediction before any metric.

Under ``torchrun`` every process scores its share of the cases and the per-case rows are
gathered, so every process returns the same result.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from pdeseg.config import IGNORE_LABEL, TaskSpec
from pdeseg.data.case import LoadedCase
from pdeseg.data.formats import get_format
from pdeseg.data.pipeline.cache import CachedCase
from pdeseg.data.pipeline.sampling import case_volume, evaluation_slices
from pdeseg.errors import ConfigError, DataError
from pdeseg.inference.decode import Segmentation, decode_batch
from pdeseg.inference.predict import Predictor, read_ahead
from pdeseg.losses.segmentation import split_ignored
from pdeseg.metrics.segmentation import ScoringRules, summarize
from pdeseg.progress import track

SCOPES = ("slices", "volume")


def default_scope(spec: TaskSpec) -> str:
    """Scope used when none is asked for: the config's slice selection for slice models of
    volumes; whole cases for patch and whole-volume models and for 2D object images
    (microscopy), which are scored at their own size with their object metrics."""
    return "slices" if spec.mode == "slices" and not get_format(spec.format).object_metrics else "volume"


def scoring_rules(spec: TaskSpec) -> ScoringRules:
    """Classes, regions and empty-mask rule of a spec's data format."""
    return ScoringRules(tuple(spec.class_names), {k: tuple(v) for k, v in spec.regions.items()}, 1.0,
                        get_format(spec.format).hd95_one_empty)


@dataclass
class Scores:
    """What :func:`score` measured.

    Attributes:
        rows: one ``{"case": id, metric: value, ...}`` per case.
        loss: mean loss over slices (``slices`` scope) or cases (``volume``), if a loss was given.
        seconds: wall time of the model and metrics.
        units: slices (or cases) segmented, for a per-unit time.
        pooled: split-level numbers that are not a mean over cases: the COCO mask AP of every
            image together (``mask_ap``, ``mask_ap50``, ``mask_ap75``), for cell models scored
            in volume scope; empty otherwise.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    loss: float | None = None
    seconds: float = 0.0
    units: int = 0
    pooled: dict[str, float] = field(default_factory=dict)
    mask_ap_images: Any = field(default=None, repr=False)  # the CocoMaskAP behind ``pooled`` (for gathering)

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean, sd, median and count of every metric over cases."""
        return summarize(self.rows)

    def means(self) -> dict[str, float]:
        """Case-mean of every metric."""
        return {k: v["mean"] for k, v in self.summary().items()}


def score(
    predictor: Predictor,
    cases: list[CachedCase],
    scope: Literal["slices", "volume"] = "volume",
    loss_fn: nn.Module | None = None,
    with_hd95: bool = False,
    batch_size: int | None = None,
    progress: bool = False,
    each_case: Callable[[CachedCase, np.ndarray, np.ndarray | None], None] | None = None,
    surface_tolerance_mm: float | None = None,
) -> Scores:
    """Per-case metrics of ``predictor`` on cached, labelled ``cases``.

    Args:
        scope: ``slices`` (the spec's slice selection; slice mode only) or ``volume``.
        loss_fn: also report this loss (on logits).
        with_hd95: add HD95 per region (volume scope; in the units of the case spacing).
        surface_tolerance_mm: add the surface Dice per region at this tolerance (volume
            scope; in the units of the case spacing).
        batch_size: slices per batch in slices scope (default: the predictor's).
        each_case: volume scope: called with each case, its predicted classes and its
            predicted cells (a cell model's instances, else None), so that callers can draw or
            save them without segmenting the case again.

    Raises:
        ConfigError: an unknown scope, slices scope for a non-slice model, HD95 or surface
            Dice in slices scope, or a negative tolerance.
    """
    if scope not in SCOPES:
        raise ConfigError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if scope == "slices" and predictor.spec.mode != "slices":
        raise ConfigError(f"scope slices needs a slice model; this one samples {predictor.spec.mode}: use scope volume")
    if with_hd95 and scope != "volume":
        raise ConfigError("HD95 needs whole volumes: use scope volume")
    if surface_tolerance_mm is not None:
        if isinstance(surface_tolerance_mm, bool) or not isinstance(surface_tolerance_mm, (int, float)) \
                or not np.isfinite(surface_tolerance_mm) or surface_tolerance_mm < 0:
            raise ConfigError(f"surface tolerance must be a distance >= 0 (mm), got {surface_tolerance_mm!r}")
        if scope != "volume":
            raise ConfigError("surface Dice needs whole volumes: use scope volume")
    mine = _my_share(cases)
    t0 = time.perf_counter()
    if scope == "slices":
        result = _score_slices(predictor, mine, loss_fn, batch_size or predictor.batch_size, progress)
    else:
        result = _score_volumes(predictor, mine, loss_fn, with_hd95, progress, each_case, surface_tolerance_mm)
    result.seconds = time.perf_counter() - t0
    return _gather(result, [c.case_id for c in cases])


class _MaskAP:
    """The COCO mask AP of the images one scoring call sees: each image is added as it is
    scored; :meth:`finish` writes every image's own AP into its row and returns the pooled AP."""

    def __init__(self):
        from pdeseg.metrics.coco import CocoMaskAP

        self.acc, self.cases = CocoMaskAP(), []

    def add(self, case_id: str, pred_inst: np.ndarray, true_inst: np.ndarray, cell_prob: np.ndarray | None) -> None:
        from pdeseg.metrics.coco import instance_confidences

        confidences = None if cell_prob is None else instance_confidences(pred_inst, cell_prob)
        self.acc.add(pred_inst, true_inst, confidences)
        self.cases.append(case_id)

    def finish(self, rows: list[dict[str, Any]]) -> dict[str, float]:
        if not self.cases:
            return {}
        pooled, per_image = self.acc.results()
        by_case = dict(zip(self.cases, per_image))
        for row in rows:
            row.update(by_case.get(row["case"], {}))
        return pooled


def _score_slices(predictor: Predictor, cases: list[CachedCase], loss_fn, batch_size: int, progress: bool) -> Scores:
    acc = scoring_rules(predictor.spec).accumulator()
    if not cases:
        return Scores()
    loader = DataLoader(evaluation_slices(cases, predictor.spec), batch_size=batch_size, shuffle=False)
    total, count = 0.0, 0
    for batch in track(loader, "scoring", "batch", enabled=progress):
        logits = predictor.predict_batch(batch["image"])
        y = batch["label"].to(logits.device)
        if loss_fn is not None:
            maps = {"maps": batch["maps"].to(logits.device)} if "maps" in batch else {}
            total += float(loss_fn(logits, y, **maps)) * y.shape[0]
            count += y.shape[0]
        pred, (y, keep) = decode_batch(logits, predictor.head), split_ignored(y)  # outside a field of view: not scored
        acc.update(pred if keep is None else pred * keep, y, list(batch["case"]))
    return Scores(acc.per_case(), total / count if count else None, units=len(loader.dataset))


def _score_volumes(predictor: Predictor, cases: list[CachedCase], loss_fn, with_hd95: bool, progress: bool,
                   each_case: Callable[[CachedCase, np.ndarray, np.ndarray | None], None] | None = None,
                   surface_tolerance_mm: float | None = None) -> Scores:
    rules = scoring_rules(predictor.spec)
    objects = get_format(predictor.spec.format).object_metrics
    rows, losses, units = [], [], 0
    mask_ap = _MaskAP() if objects else None
    for case in track(cases, "scoring", "case", enabled=progress):
        image, label = case_volume(case)
        logits = predictor.predict_logits(image)
        if loss_fn is not None:
            outside = _outside(case)
            target = label.astype(np.int64) if outside is None else np.where(outside, IGNORE_LABEL, label)
            losses.append(float(loss_fn(logits[None], torch.from_numpy(target)[None], **_map_targets(predictor, case))))
        seg = predictor.decode(logits, with_probabilities=objects, with_cells=objects)
        classes, cells = seg.classes, seg.instances
        cell_prob = 1 - seg.probabilities[0] if objects else None
        rows.append(case_row(rules, objects, CaseTruth.of_cached(case, label), classes, with_hd95, surface_tolerance_mm,
                             cells, mask_ap, cell_prob))
        if each_case is not None:
            each_case(case, classes, cells)
        units += image.shape[-1] if predictor.spec.mode == "slices" else 1
    pooled = mask_ap.finish(rows) if mask_ap is not None else {}
    return Scores(rows, float(np.mean(losses)) if losses else None, units=units, pooled=pooled,
                  mask_ap_images=mask_ap.acc if mask_ap is not None else None)


def score_inputs(
    predictor: Predictor,
    cases: list,
    with_hd95: bool = False,
    progress: bool = False,
    each_case: Callable[[LoadedCase, Segmentation], None] | None = None,
    surface_tolerance_mm: float | None = None,
) -> Scores:
    """Per-case metrics of ``predictor`` on the input's own grid (nnU-Net's rule): each reader
    case is read with its label, segmented exactly as ``predict`` segments it for writing
    (:meth:`~pdeseg.inference.predict.Predictor.segment`: logits resampled back from a
    ``target_spacing``, a crop box pasted back, post-processing, cells), and scored against
    its original classes at its own voxel spacing by the same rows as :func:`score`
    (:func:`case_row`).

    Args:
        cases: reader cases (``case_id``, ``load(modalities, with_label=True)``) with labels.
        each_case: called with each read case (label included) and its :class:`Segmentation`.
        with_hd95, surface_tolerance_mm: as :func:`score`.

    Raises:
        ConfigError: a negative tolerance.
        DataError: a case without a label, or unreadable.
    """
    if surface_tolerance_mm is not None and (isinstance(surface_tolerance_mm, bool)
                                             or not isinstance(surface_tolerance_mm, (int, float))
                                             or not np.isfinite(surface_tolerance_mm) or surface_tolerance_mm < 0):
        raise ConfigError(f"surface tolerance must be a distance >= 0 (mm), got {surface_tolerance_mm!r}")
    rules = scoring_rules(predictor.spec)
    objects = get_format(predictor.spec.format).object_metrics
    rows: list[dict[str, Any]] = []
    mask_ap = _MaskAP() if objects else None
    t0 = time.perf_counter()
    mine = _my_share(cases)

    def read(case) -> tuple[LoadedCase, np.ndarray]:  # in a background thread while the case before is segmented
        loaded = case.load(predictor.modalities, with_label=True)
        if loaded.label is None:
            raise DataError(f"case {case.case_id}: no label to score against")
        return loaded, predictor.preprocess(loaded)

    for _, ahead in zip(track(mine, "scoring", "case", enabled=progress), read_ahead(read, mine)):
        loaded, image = ahead.result()
        seg = predictor.segment(loaded, image, with_probabilities=objects, with_cells=objects)
        classes = np.array(seg.classes, dtype=np.uint8)  # the scoring sets the field of view's outside to 0
        cell_prob = 1 - seg.probabilities[0] if objects else None
        rows.append(case_row(rules, objects, CaseTruth.of_loaded(loaded), classes, with_hd95, surface_tolerance_mm,
                             seg.instances, mask_ap, cell_prob))
        if each_case is not None:
            each_case(loaded, seg)
    pooled = mask_ap.finish(rows) if mask_ap is not None else {}
    result = Scores(rows, units=len(rows), pooled=pooled, mask_ap_images=mask_ap.acc if mask_ap is not None else None)
    result.seconds = time.perf_counter() - t0
    return _gather(result, [c.case_id for c in cases])


@dataclass
class CaseTruth:
    """What a score row needs of one case besides the predicted map, on the grid it is scored on.

    Attributes:
        case_id: the row's ``case``.
        label: ``(X, Y, Z)`` true classes.
        spacing: voxel size per axis (mm; pixels where the files do not say).
        valid: ``(X, Y, Z)`` bool field of view (outside it nothing is scored), or None.
        instances: ``(X, Y, Z)`` int32 true objects, or None.
        domain: cell type or imaging modality ('' when none).
    """

    case_id: str
    label: np.ndarray
    spacing: tuple[float, ...]
    valid: np.ndarray | None = None
    instances: np.ndarray | None = None
    domain: str = ""

    @classmethod
    def of_cached(cls, case: CachedCase, label: np.ndarray | None = None) -> CaseTruth:
        """A cached case on the cache grid (``label``: its ``(X, Y, Z)`` classes, if at hand)."""
        if label is None:
            _, label = case_volume(case)
        valid = None if case.valid is None else np.asarray(case.valid).transpose(1, 2, 0)
        instances = None if case.instances is None else np.asarray(case.instances).transpose(1, 2, 0)
        return cls(case.case_id, label, tuple(case.meta["spacing"]), valid, instances, case.domain)

    @classmethod
    def of_loaded(cls, loaded: LoadedCase) -> CaseTruth:
        """A read case on the input's own grid."""
        return cls(loaded.case.case_id, np.asarray(loaded.label), loaded.spacing,
                   None if loaded.valid is None else np.asarray(loaded.valid, bool),
                   None if loaded.instances is None else np.asarray(loaded.instances), loaded.domain)


def _map_targets(predictor: Predictor, case: CachedCase) -> dict[str, torch.Tensor]:
    """``{"maps": (1, M, X, Y, Z)}``: the targets of a cell model's extra maps for a whole case,
    slice by slice from its objects (the loss's keyword argument), or ``{}`` without maps."""
    rep = predictor.representation
    if rep is None or not rep.maps or case.instances is None:
        return {}
    objects = np.asarray(case.instances)  # (Z, X, Y)
    maps = np.stack([rep.targets(objects[z])[1] for z in range(objects.shape[0])], axis=-1)  # (M, X, Y, Z)
    return {"maps": torch.from_numpy(maps)[None]}


def _outside(case: CachedCase) -> np.ndarray | None:
    """Bool ``(X, Y, Z)``: the voxels outside the case's field of view (DRIVE), or None."""
    return None if case.valid is None else ~np.asarray(case.valid).transpose(1, 2, 0)


def case_row(rules: ScoringRules, objects: bool, truth: CaseTruth, classes: np.ndarray,
             with_hd95: bool = False, surface_tolerance_mm: float | None = None,
             cells: np.ndarray | None = None, mask_ap: _MaskAP | None = None,
             cell_prob: np.ndarray | None = None) -> dict[str, Any]:
    """The metrics of one whole case's predicted label map: the one place where a label map
    becomes a score row (validation, ``evaluate`` on either grid, ``compare``, ``ablate``,
    ``crossval``).

    Pixels outside the case's field of view are set to background in truth and in
    ``classes`` (in place, so that callers that keep the map keep what was scored); then the
    class and region metrics of ``rules`` at the truth's spacing and, for 2D object images
    (``objects``), the foreground's boundary F1 and the instance metrics (:func:`object_metrics`).

    Args:
        truth: the case's id, true classes ``(X, Y, Z)``, spacing, field of view and objects
            on the grid scored (:meth:`CaseTruth.of_cached`, :meth:`CaseTruth.of_loaded`).
        classes: uint8 ``(X, Y, Z)`` on the same grid.
        cells: the predicted instances ``(X, Y, 1)`` as the model's representation found them
            (:func:`~pdeseg.inference.decode.decode`), or None: found from ``classes``.
        mask_ap: where given, a case with objects is added to it (its COCO mask AP is written
            into the row by :meth:`_MaskAP.finish`).
        cell_prob: ``(X, Y, 1)`` the model's cell probability, the predicted cells' confidence
            for the mask AP (None: every cell 1).

    Returns:
        ``{"case": id, metric: value, ...}``.

    Raises:
        DataError: a map whose shape is not the truth's.
    """
    label = truth.label
    if classes.shape != label.shape:
        raise DataError(f"case {truth.case_id}: the label map is {classes.shape}, the case {label.shape}")
    outside = None if truth.valid is None else ~truth.valid
    if outside is not None:  # outside the field of view nothing is scored
        classes[outside], label = 0, np.where(outside, 0, label).astype(label.dtype)
    row = {"case": truth.case_id, **rules.case_metrics(classes, label, truth.spacing, with_hd95, surface_tolerance_mm)}
    if objects:
        if outside is not None and cells is not None:
            cells = np.where(outside, 0, cells)
        row.update(object_metrics(classes, label, truth, cells, mask_ap, cell_prob))
    return row


def score_label_maps(spec: TaskSpec, cases: list[CachedCase], label_map: Callable[[CachedCase], np.ndarray],
                     with_hd95: bool = False, surface_tolerance_mm: float | None = None,
                     progress: bool = False) -> Scores:
    """Per-case metrics of label maps that were kept (``crossval``'s out-of-fold maps, a
    post-processing rule applied to them), scored exactly as :func:`score` scores a model's
    maps in volume scope: field of view, regions, HD95, object metrics and all.

    Args:
        spec: the preprocessing spec of the model that made the maps (classes, regions, format).
        cases: the cached, labelled cases.
        label_map: ``label_map(case)`` -> uint8 ``(X, Y, Z)`` on the cached case's grid.

    Raises:
        DataError: a map whose shape is not the case's.
    """
    rules, objects = scoring_rules(spec), get_format(spec.format).object_metrics
    rows = []
    mask_ap = _MaskAP() if objects else None
    for case in track(cases, "scoring", "case", enabled=progress):
        classes = np.array(label_map(case), dtype=np.uint8)
        rows.append(case_row(rules, objects, CaseTruth.of_cached(case), classes, with_hd95, surface_tolerance_mm,
                             mask_ap=mask_ap))
    pooled = mask_ap.finish(rows) if mask_ap is not None else {}
    return Scores(rows, units=len(rows), pooled=pooled)


def object_metrics(classes: np.ndarray, label: np.ndarray, truth: CaseTruth,
                   cells: np.ndarray | None = None, mask_ap: _MaskAP | None = None,
                   cell_prob: np.ndarray | None = None) -> dict[str, Any]:
    """Dice of the foreground (``dice_fg``: every non-background class counts, so the
    cells' Dice for semantic and boundary outputs alike), its boundary F1 at 1, 2 and 3 px
    and, when the case has objects (``truth.instances``), the instance metrics of the
    predicted cells (``cells`` ``(X, Y, 1)``, or None:
    :func:`~pdeseg.data.pipeline.label_geometry.predicted_instances` of the class map), for a
    one-slice case ``(X, Y, 1)``."""
    from pdeseg.data.pipeline.label_geometry import predicted_instances
    from pdeseg.metrics.instances import boundary_f1_scores, instance_metrics

    pred, true = classes[..., 0], label[..., 0]
    row: dict[str, Any] = {"domain": truth.domain} if truth.domain else {}
    both = np.count_nonzero(pred > 0) + np.count_nonzero(true > 0)  # Dice of the cells, whatever the classes
    row["dice_fg"] = 2 * np.count_nonzero((pred > 0) & (true > 0)) / both if both else 1.0
    row.update(boundary_f1_scores(pred > 0, true > 0, (1, 2, 3)))
    if truth.instances is not None:
        objects = np.asarray(truth.instances[..., 0])
        if truth.valid is not None:
            objects = np.where(truth.valid[..., 0], objects, 0)
        found = predicted_instances(pred) if cells is None else cells[..., 0]
        row.update(instance_metrics(found, objects))
        if mask_ap is not None:
            mask_ap.add(truth.case_id, found, objects, None if cell_prob is None else cell_prob[..., 0])
    return row


def _my_share(cases: list[CachedCase]) -> list[CachedCase]:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return cases
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return cases[rank::world]


def _gather(result: Scores, order: list[str]) -> Scores:
    """All processes' rows in the cases' order (a no-op for one process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return result
    world = torch.distributed.get_world_size()
    parts: list[Any] = [None] * world
    torch.distributed.all_gather_object(parts, (result.rows, result.loss, result.units, result.mask_ap_images))
    rows = {r["case"]: r for p in parts for r in p[0]}
    weighted = [(p[1], p[2]) for p in parts if p[1] is not None and p[2]]
    loss = sum(value * n for value, n in weighted) / sum(n for _, n in weighted) if weighted else None
    pooled: dict[str, float] = {}
    images = [p[3] for p in parts if p[3] is not None]
    if images:  # the pooled AP of every process's images together
        for more in images[1:]:
            images[0].merge(more)
        pooled = images[0].result()
    return Scores([rows[c] for c in order if c in rows], loss, result.seconds, sum(p[2] for p in parts), pooled)
