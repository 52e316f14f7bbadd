"""From a data-set fingerprint and the device's measured step costs to a training plan.

:func:`plan_from_fingerprint` decides every setting of an :class:`~pdeseg.config.ExperimentConfig`
and keeps a one-line reason beside each (written as YAML comments by
:mod:`pdeseg.planning.emit`). The rules, in the order they are applied:

1. **Sampling mode.** One image per case (microscopy, photographs): 2D. A stack of 2D files
   without voxel size whose slices are few (``Z < W / 4``, e.g. the LGG TIFF slices): 2D
   slices. A volume whose spacing is anisotropic by more than 3 (nnU-Net's threshold): 2D
   slices in the fine plane. Otherwise 3D patches, unless no *useful* 3D patch (at least
   1/8 of the median case, or 96 voxels on every axis) fits the memory and the time
   budget: then 2D slices, with the reason.
2. **Target spacing.** None when every case already has the same spacing (within 1 %);
   else the median spacing (nnU-Net's rule for isotropic data; anisotropic data went to 2D
   in rule 1).
3. **Depth and widths.** Downsample (stride 2 on every axis) while the smallest patch axis
   stays at 4 voxels or more at the bottleneck (``levels - 1 = floor(log2(min(patch) / 4))``,
   at most 5 in 3D, 6 in 2D); widths double from a base of 32 up to 320 (3D) or 512 (2D), as
   nnU-Net's, and a base of 24 or 16 where the time budget needs it (rule 5).
4. **Patch and batch.** The patch starts at the median case (after resampling), rounded up
   to a multiple of ``2**(levels-1)`` and capped at 128 (3D) or 512 (2D) per axis. The batch
   starts at nnU-Net's cap, 5 % of the data set's voxels over the patch's (at least 2, at
   most 16 in 3D, 32 in 2D).
5. **Fitting the device.** The step's peak memory must stay under
   :func:`~pdeseg.planning.cost.memory_budget`, and the time budget must give at least
   :data:`MIN_STEPS` optimiser steps. Measured candidates are tried in this order: base
   width 32, 24, 16, each with the batch falling from its start to 2; then the patch shrinks
   (largest axis first, one multiple at a time) and the widths and batches are tried again.
   **A busy CPU** (load average over half the CPUs): where nothing gives :data:`MIN_STEPS`
   steps, the search runs again accepting down to :data:`BUSY_MIN_STEPS` (a quarter), with
   the reason and a warning, rather than refusing. The step times were measured under that
   load, so the plan is sized for the time the run will actually get; a short run that trains
   is worth more to the user than a refusal they cannot act on (the load is not theirs to
   remove), and a quarter of the idle floor still gives a few epochs of a few dozen steps
   each. Below that floor, or on an idle CPU below :data:`MIN_STEPS`, the run would not
   learn enough to be worth its time: refused. An idle plan is never traded for fewer steps.
   **A refusal** names the shortest budget that plans (:func:`shortest_budget`: the rules
   re-run on the predicted step costs, bisecting the budget), as a ``--time-budget`` value.
6. **Normalisation.** CT: clip to the 0.5 / 99.5 percentiles of the training foreground,
   then z-score with its mean and sd (nnU-Net). MR and other images with many zero voxels
   (>= 25 %, skull-stripped or padded): z-score over the non-zero voxels; without: over
   every voxel. Microscopy: per-image z-score, and random contrast inversion when the
   images disagree in polarity (between 10 % and 90 % of them bright-on-dark, in every channel).
7. **Mirroring.** Every axis with probability 0.5, except when a class is named by side or
   position (left/right, anterior/posterior, superior/inferior, ...): mirroring would swap
   such classes, so there is none (on Hippocampus, mirroring cost 0.034 / 0.028 Dice, p < 1e-7
   over 40 test cases, issue 27).
8. **Output, sampling, post-processing.** Softmax classes (region heads measured worse at
   CPU budgets, issue 13); for instance data (objects counted per image: cells, nuclei) of a
   format with a ``targets`` option and none chosen, Cellpose-style ``flows`` with their
   ``instance_maps`` loss and ``best.pt`` by the DSB score, since touching objects must come
   apart (flows beat a boundary class by +0.149 DSB score on DSB 2018, issue 23); a third
   of patches centred on a foreground class (nnU-Net);
   removal of components under 10 % of the largest when the foreground is mostly one
   object (median share of the largest component >= 0.9).
9. **Epochs from the time budget.** The measured step time (times :data:`LOADER_OVERHEAD`
   for loading and augmentation) and an estimate of the validation pass (windows or slices
   to segment, at :data:`INFER_RATIO` of a training step per sample) give the epochs that
   fit; the epoch length (patches per case) is chosen so that validation takes about a
   tenth of the time.

Every choice names its numbers in its reason.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pdeseg.data.fingerprint import Fingerprint
from pdeseg.data.pipeline.splits import DEFAULT_FRACTIONS
from pdeseg.errors import ConfigError, DataError, DeviceError

#: Fewest optimiser steps a plan accepts within its time budget.
MIN_STEPS = 600
#: On a busy CPU (other work holds more than half of it), the fewest steps a plan accepts: it is sized
#: for the time actually available rather than refused, down to this floor (see rule 5).
BUSY_MIN_STEPS = 150
#: Loading, augmentation and logging on top of the measured network step.
LOADER_OVERHEAD = {3: 1.3, 2: 1.2}
#: Inference of one sample over a training step per sample (forward only, no gradients).
INFER_RATIO = 0.35
#: Share of the time budget validation should take.
VAL_SHARE = 0.1
BASE_WIDTHS = (32, 24, 16)
MAX_WIDTH = {3: 320, 2: 512}
MAX_PATCH = {3: 128, 2: 512}
MAX_LEVELS = {3: 6, 2: 7}
MAX_BATCH = {3: 16, 2: 32}
SPLIT = list(DEFAULT_FRACTIONS)
_POSITIONAL = re.compile(r"(^|[^a-z])(left|right|l|r|lh|rh|anterior|posterior|superior|inferior|dorsal|ventral|"
                         r"medial|lateral|upper|lower|front|rear)([^a-z]|$)", re.IGNORECASE)

#: ``(dims, features, patch, batch) -> StepCost``: ``predict`` (cheap, for the search) and ``cost`` (a real
#: measurement, for the candidate the search picks) of :class:`pdeseg.planning.cost.CostModel` in real use.
CostFn = Callable[[int, tuple, tuple, int], Any]


@dataclass(frozen=True)
class Costs:
    """The two cost functions the planner uses (see :data:`CostFn`)."""

    predict: CostFn
    measure: CostFn


def parse_duration(text: str | float | int) -> float:
    """Seconds in ``2h``, ``90m``, ``1h30m``, ``45s``, ``3600`` (plain seconds).

    Raises:
        ConfigError: anything else, or a duration that is not positive.
    """
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        t = text.strip().lower()
        m = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m(?:in)?)?\s*(?:(\d+(?:\.\d+)?)s)?", t)
        if t and re.fullmatch(r"\d+(?:\.\d+)?", t):
            seconds = float(t)
        elif t and m and any(m.groups()):
            h, mi, s = (float(g) if g else 0.0 for g in m.groups())
            seconds = 3600 * h + 60 * mi + s
        else:
            raise ConfigError(f"time budget {text!r} is not a duration; write e.g. 2h, 90m, 1h30m or 600s")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"time budget {text!r} must be a positive duration")
    return seconds


def positional_classes(names: list[str]) -> list[str]:
    """The class names that name a side or position (mirroring would swap them)."""
    return [n for n in names if _POSITIONAL.search(n.replace("_", " ").replace("-", " "))]


@dataclass
class Plan:
    """A planned experiment: the config (plain data), a reason per dotted key, the cost estimate."""

    config: dict[str, Any]
    reasons: dict[str, str]
    estimate: dict[str, float]
    fingerprint: Fingerprint
    measurements: list[dict] = field(default_factory=list)
    #: What was measured, in how long, and what predicted (:meth:`pdeseg.planning.cost.CostModel.account`).
    measuring: str = ""

    def summary(self) -> str:
        d, t, m = self.config["data"], self.config["train"], self.config["models"][0]
        e = self.estimate
        size = "x".join(map(str, d.get("spatial_size") or [])) or "whole"
        what = f"3D patches {size}" if d["mode"] == "patches" else f"2D {'images' if self.fingerprint.spatial_dims == 2 else 'slices'} {size}"
        return (f"plan: {what}, batch {t['batch_size']}, {m['name']} widths {m['kwargs']['features']}, "
                f"normalisation {d['normalization']}, {t['epochs']} epochs of {e['steps_per_epoch']:.0f} steps\n"
                f"expected on {e['device']}: {e['step_s']:.2f} s per step ({_measured(e)}), about "
                f"{fmt_duration(e['epoch_s'])} per epoch with validation, {fmt_duration(e['total_s'])} in all (budget "
                f"{fmt_duration(e['budget_s'])})" + (f"\nstep times: {self.measuring}" if self.measuring else ""))


def _measured(estimate: dict) -> str:
    return "measured" if estimate.get("step_measured", True) else "predicted, not measured"


def fmt_duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class _Choice:
    dims: int
    patch: tuple[int, ...]
    batch: int
    features: tuple[int, ...]
    step_s: float
    peak: float
    measured: bool


def _widths(base: int, levels: int, dims: int) -> tuple[int, ...]:
    return tuple(min(base * 2**k, MAX_WIDTH[dims]) for k in range(levels))


def _levels(shape: list[float], dims: int) -> int:
    smallest = max(min(shape), 8)
    return int(min(MAX_LEVELS[dims], max(2, math.floor(math.log2(smallest / 4)) + 1)))


def _round_up(v: float, m: int) -> int:
    return int(max(m, math.ceil(v / m) * m))


def _search(dims: int, shape: list[float], batch_start: int, cost: Costs, budget_s: float, memory: float,
            useful: Callable[[tuple[int, ...]], bool], epoch_items: float | None = None, min_steps: int = MIN_STEPS
            ) -> tuple[_Choice | None, str, str]:
    """The first candidate of rule 5 that fits, or None; the limit the last candidate hit
    (``memory`` or ``time``) and why. ``epoch_items``: the samples of one epoch where that is
    fixed (every slice once), which must fit the budget too."""
    levels = _levels(shape, dims)
    m = 2 ** (levels - 1)
    patch = [min(_round_up(s, m), MAX_PATCH[dims]) for s in shape]
    patch = [max(m, (p // m) * m) for p in patch]
    overhead = LOADER_OVERHEAD[dims]
    limit, why = "", ""

    def fits(c: Any, features: tuple[int, ...], batch: int) -> bool:
        nonlocal limit, why
        size = f"patch {'x'.join(map(str, patch))} x{batch}"
        if c.peak_bytes > memory:
            limit, why = "memory", f"{size} needs {c.peak_bytes / 2**30:.1f} GiB of {memory / 2**30:.1f} GiB"
            return False
        steps = budget_s * (1 - VAL_SHARE) / (c.seconds * overhead)
        need = max(min_steps, math.ceil(epoch_items / batch) if epoch_items else 0)
        if steps < need:
            limit, why = "time", (f"{size} at widths from {features[0]} gives {steps:.0f} steps in the budget (< {need}"
                   + (", one epoch)" if need > min_steps else ")"))
            return False
        return True

    while True:
        for base in BASE_WIDTHS:
            features = _widths(base, levels, dims)
            for batch in range(batch_start, 1, -1):
                key = (dims, features, tuple(patch), batch)
                if fits(cost.predict(*key), features, batch):
                    c = cost.measure(*key)  # the candidate itself (a prediction where too slow to measure)
                    if fits(c, features, batch):
                        return _Choice(dims, tuple(patch), batch, features, c.seconds, c.peak_bytes, c.measured), "", ""
        i = max(range(dims), key=lambda a: patch[a] / max(shape[a], 1))
        if patch[i] <= m or not useful(tuple(p if k != i else p - m for k, p in enumerate(patch))):
            return None, limit, why
        patch[i] -= m


#: A plan's split needs one case each for training, validation and test.
MIN_CASES = 3


def plan_split_counts(n_cases: int) -> tuple[int, int, int]:
    """``(train, validation, test)`` cases of the plan's split (:data:`SPLIT`) of ``n_cases``,
    as :func:`pdeseg.data.pipeline.splits.split_cases` draws it."""
    from pdeseg.data.pipeline.splits import split_cases

    parts = split_cases([str(i) for i in range(n_cases)], list(SPLIT))
    return len(parts["train"]), len(parts["val"]), len(parts["test"])


def check_trainable(fp: Fingerprint) -> None:
    """Raises DataError when the data set of ``fp`` cannot train a planned run: fewer than
    :data:`MIN_CASES` labelled cases (the split needs one case for each of training,
    validation and test), or no foreground voxel in any label (nothing to learn)."""
    if fp.n_cases < MIN_CASES:
        raise DataError(f"{fp.root}: {fp.n_cases} labelled case(s); a plan needs at least {MIN_CASES} (one each for "
                        "training, validation and test); add cases, or write a config by hand with split.counts")
    if len(fp.classes) > 1 and not any(c.cases_present for c in fp.classes[1:]):
        raise DataError(f"{fp.root}: no label of its {fp.n_cases} case(s) holds any foreground (classes "
                        f"{', '.join(c.name for c in fp.classes[1:])} never occur); there is nothing to learn: check the "
                        "label files")


class _TooShort(ConfigError):
    """The budget is too short (the message's first half; :func:`plan_from_fingerprint` adds the
    shortest budget that plans)."""


def plan_from_fingerprint(fp: Fingerprint, cost: Costs, budget_s: float, memory_bytes: float,
                          device_name: str = "cpu", busy: str = "") -> Plan:
    """The plan for ``fp`` (see the module docstring for the rules).

    Args:
        cost: measured step costs (:class:`~pdeseg.planning.cost.CostModel`).
        budget_s: wall-clock training budget (seconds).
        memory_bytes: what one training step may use.
        busy: where the CPU is shared with other work, what says so (``"load average 6.5 on 2
            CPUs"``): the plan then accepts down to :data:`BUSY_MIN_STEPS` steps (rule 5).

    Raises:
        ConfigError: the budget is too short for a useful run or for one epoch; the message
            names the shortest budget that plans (:func:`shortest_budget`).
        DeviceError: not even the smallest patch fits the device's memory.
        DataError: fewer than :data:`MIN_CASES` labelled cases, or no foreground in any label
            (:func:`check_trainable`).
    """
    try:
        return _plan_any(fp, cost, budget_s, memory_bytes, device_name, busy)
    except _TooShort as exc:
        shortest = shortest_budget(fp, cost, budget_s, memory_bytes, device_name, busy)
        if shortest is None:
            raise ConfigError(f"{exc}; no budget up to {fmt_duration(MAX_BUDGET_S)} plans a run on this device") from None
        arg = budget_arg(shortest)
        raise ConfigError(f"{exc}; the shortest budget that plans on this device is about {fmt_duration(shortest)}: "
                          f"give --time-budget {arg} or more") from None


#: The longest budget :func:`shortest_budget` looks at (30 days).
MAX_BUDGET_S = 30 * 86400.0


def budget_arg(seconds: float) -> str:
    """``seconds`` as a ``--time-budget`` value: ``45s``, ``7m``, ``2h5m``."""
    s = math.ceil(seconds)
    if s < 120:
        return f"{s}s"
    h, m = divmod(math.ceil(s / 60), 60)
    return f"{h}h{m}m" if h and m else f"{h}h" if h else f"{m}m"


def shortest_budget(fp: Fingerprint, cost: Costs, budget_s: float, memory_bytes: float, device_name: str = "cpu",
                    busy: str = "") -> float | None:
    """The shortest budget above ``budget_s`` for which the rules plan a run, searched on predicted
    step costs (``cost.predict``: no new candidate is measured), rounded up to whole seconds
    under 2 minutes and whole minutes above (as :func:`budget_arg` writes it); None where none
    up to :data:`MAX_BUDGET_S` does."""
    predicted = Costs(cost.predict, cost.predict)

    def plans(b: float) -> bool:
        try:
            _plan_any(fp, predicted, b, memory_bytes, device_name, busy)
            return True
        except _TooShort:
            return False

    lo, hi = budget_s, 2 * budget_s
    while not plans(hi):
        lo, hi = hi, 2 * hi
        if hi > MAX_BUDGET_S:
            return None
    while hi - lo > max(1.0, 0.002 * hi):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if plans(mid) else (mid, hi)
    step = 1.0 if hi < 120 else 60.0
    for k in range(1, 10):  # rounded up; the rules are monotone in the budget but for rounding at the edges
        rounded = step * math.ceil(hi / step) + (k - 1) * step
        if plans(rounded):
            return rounded
    return hi


def _plan_any(fp: Fingerprint, cost: Costs, budget_s: float, memory_bytes: float, device_name: str, busy: str) -> Plan:
    """The plan with :data:`MIN_STEPS`, or on a busy CPU where that is too short, with
    :data:`BUSY_MIN_STEPS` (a plan that a busy machine can train rather than a refusal; an idle plan
    is never traded for fewer steps)."""
    try:
        return _plan(fp, cost, budget_s, memory_bytes, device_name, busy, MIN_STEPS)
    except _TooShort:
        if not busy:
            raise
    return _plan(fp, cost, budget_s, memory_bytes, device_name, busy, BUSY_MIN_STEPS)


def _plan(fp: Fingerprint, cost: Costs, budget_s: float, memory_bytes: float, device_name: str, busy: str,
          min_steps: int) -> Plan:
    """:func:`plan_from_fingerprint` at one step floor, without the shortest budget; raises
    :class:`_TooShort`."""
    check_trainable(fp)
    reasons: dict[str, str] = {}
    names = [c.name for c in fp.classes]
    n_train, n_val, n_test = plan_split_counts(fp.n_cases)
    shape3 = list(fp.shape_median[:3])
    data: dict[str, Any] = {"root": fp.root, "format": fp.format}
    if fp.format_options:
        data["format_options"] = dict(fp.format_options)
    data["modalities"] = [c.name for c in fp.channels]
    reasons["data.format"] = f"detected from the folder's layout ({fp.n_cases} labelled cases)"

    # 1-2: mode and spacing
    mode, slice_axis = "patches", None
    if fp.spatial_dims == 2:
        mode, slice_axis = "slices", 2
        reasons["data.mode"] = f"every case is one 2D image (median {fp.shape_median[0]:g}x{fp.shape_median[1]:g})"
    elif not fp.spacing_known and shape3[2] < min(shape3[:2]) / 4:
        mode, slice_axis = "slices", 2
        reasons["data.mode"] = (f"each case is a stack of {shape3[2]:g} 2D images of {shape3[0]:g}x{shape3[1]:g} whose files "
                                "carry no slice spacing: 2D slices")
    elif fp.anisotropy > 3:
        mode = "slices"
        slice_axis = max(range(3), key=lambda a: fp.spacing_median[a])
        reasons["data.mode"] = (f"spacing {'x'.join(f'{s:g}' for s in fp.spacing_median)} mm is anisotropic "
                                f"({fp.anisotropy:.1f} > 3): 2D slices in the fine plane")
    same_spacing = all(abs(fp.spacing_p90[a] - fp.spacing_p10[a]) <= 0.01 * fp.spacing_median[a] for a in range(3))
    target = None
    if fp.spatial_dims == 3 and fp.spacing_known and not same_spacing:
        target = [round(s, 4) for s in fp.spacing_median]
        reasons["data.target_spacing"] = (f"cases range from {'x'.join(f'{s:g}' for s in fp.spacing_p10)} to "
                                          f"{'x'.join(f'{s:g}' for s in fp.spacing_p90)} mm (10th-90th): resampled to the median")
    elif fp.spatial_dims == 3:
        reasons["data.target_spacing"] = ("every case has the same voxel size "
                                          f"({'x'.join(f'{s:g}' for s in fp.spacing_median)}): no resampling")
    data["target_spacing"] = target
    spacing_now = fp.spacing_median
    shape_t = [shape3[a] * spacing_now[a] / (target[a] if target else spacing_now[a]) for a in range(3)]
    total_voxels = fp.n_cases * math.prod(shape_t)
    median_voxels = math.prod(shape_t)

    choice: _Choice | None = None
    if mode == "patches":
        start = int(min(MAX_BATCH[3], max(2, math.floor(0.05 * total_voxels / math.prod(
            [min(_round_up(s, 2 ** (_levels(shape_t, 3) - 1)), MAX_PATCH[3]) for s in shape_t])))))

        def useful(p: tuple[int, ...]) -> bool:
            return math.prod(p) >= median_voxels / 8 or min(p) >= 96

        choice, _, why3 = _search(3, shape_t, start, cost, budget_s, memory_bytes, useful, min_steps=min_steps)
        if choice is None:
            mode, slice_axis = "slices", 2
            reasons["data.mode"] = f"no useful 3D patch fits ({why3}): 2D slices"
        else:
            reasons["data.mode"] = (f"volumes of {'x'.join(f'{s:g}' for s in shape_t)} voxels (median), spacing "
                                    f"{fp.anisotropy:.1f}x anisotropic: 3D patches")
            reasons["data.spatial_size"] = _patch_reason(choice, shape_t, MAX_PATCH[3], "case")
    plane = [a for a in range(3) if a != slice_axis][:2] if slice_axis is not None else [0, 1]
    if mode == "slices":
        shape2 = [shape3[a] for a in plane]
        n_slices = fp.nonzero_slices if fp.zero_fraction >= 0.25 else shape3[slice_axis]
        items = n_train * max(1.0, n_slices)
        start = int(min(MAX_BATCH[2], max(2, math.floor(0.05 * fp.n_cases * math.prod(shape3) / math.prod(shape2)))))
        fixed = items if fp.spatial_dims == 3 else None  # every slice once per epoch; 2D images: windows per image
        choice, limit, why2 = _search(2, shape2, start, cost, budget_s, memory_bytes, lambda p: min(p) >= 64, fixed,
                                      min_steps)
        if choice is None:
            if limit == "memory":
                raise DeviceError(f"the device cannot fit the smallest 2D patch ({why2}); free memory or use another device")
            raise _TooShort(f"time budget {fmt_duration(budget_s)} is too short for a useful training run ({why2})")
        reasons["data.spatial_size"] = _patch_reason(choice, shape2, MAX_PATCH[2], "image")
    data["mode"] = mode
    data["spatial_size"] = list(choice.patch)
    if mode == "slices":
        data["slice_axes"] = [slice_axis]
        if fp.spatial_dims == 2:
            data["slices"] = "all"
        elif fp.zero_fraction >= 0.25:
            data["slices"] = "brain"
            reasons["data.slices"] = f"{100 * fp.zero_fraction:.0f}% of a case is zero: slices with signal only"
        else:
            data["slices"] = "all"
        large = [fp.shape_p90[a] for a in plane]
        if any(s > p for s, p in zip(large, choice.patch)):
            data["crop"] = "random"
            data["tile_inference"] = True
            reasons["data.crop"] = (f"images up to {'x'.join(f'{s:g}' for s in large[:2])} (90th percentile) are larger than "
                                    "the patch: random windows in training, overlapping tiles at inference")
    # 6: normalisation
    kinds = {c.kind for c in fp.channels}
    augment: dict[str, Any] = {"enabled": True}
    if "ct" in kinds:
        data["normalization"] = "ct"
        data["ct_window"] = None
        ct = next(c for c in fp.channels if c.kind == "ct")
        reasons["data.normalization"] = (f"CT in HU (foreground 0.5-99.5% [{ct.fg_p005:.0f}, {ct.fg_p995:.0f}]): clipped to the "
                                         "training foreground's percentiles, then its mean and sd (nnU-Net)")
    elif fp.microscopy:
        data["normalization"] = "zscore_all"
        shares = [c.bright_on_dark for c in fp.channels]
        share = shares[0]
        reasons["data.normalization"] = "microscopy: z-score per image over every pixel"
        if all(0.1 < s < 0.9 for s in shares):  # one channel of a single polarity (DRIVE's green) keeps the contrast
            augment["invert_prob"] = 0.5
            reasons["data.augment.invert_prob"] = (f"{100 * share:.0f}% of images are bright-on-dark, the rest dark-on-bright: "
                                                   "random contrast inversion makes the model see both")
    elif fp.zero_fraction >= 0.25:
        data["normalization"] = "zscore"
        reasons["data.normalization"] = (f"{100 * fp.zero_fraction:.0f}% of a case is exactly zero (skull-stripped or padded): "
                                         "z-score per image over the non-zero voxels")
    else:
        data["normalization"] = "zscore_all"
        reasons["data.normalization"] = (f"{', '.join(sorted(kinds))} images with {100 * fp.zero_fraction:.0f}% zero voxels: "
                                         "z-score per image over every voxel")
    # 7: mirroring and the rest of the augmentation
    positional = positional_classes(names)
    augment["flip_prob"] = 0.0 if positional else 0.5
    reasons["data.augment.flip_prob"] = (f"classes {', '.join(positional)} are named by position: mirroring would swap them "
                                         "(measured on Hippocampus: -0.03 Dice with mirroring)"
                                         if positional else "no class is named by side or position: mirror every axis")
    micro2d = fp.microscopy and fp.spatial_dims == 2
    augment["rotate_deg"] = 180.0 if micro2d else 15.0
    augment["scale_range"] = 0.2 if micro2d else 0.15
    augment["affine_prob"] = 0.5 if choice.dims == 2 else 0.3
    augment["gamma"] = 0.3
    reasons["data.augment.rotate_deg"] = ("cells have no up or down: any rotation" if micro2d
                                          else "small rotations, as nnU-Net (+-15 degrees)")
    data["augment"] = augment
    data["foreground_prob"] = 0.33
    data["foreground_sampling"] = "classes"
    reasons["data.foreground_prob"] = "a third of the patches centred on a foreground class, chosen uniformly (nnU-Net)"
    data["split"] = {"fractions": list(SPLIT), "seed": 0}
    reasons["data.split"] = f"by case: {n_train} train / {n_val} validation / {n_test} test"

    # 9: epochs from the budget
    overhead = LOADER_OVERHEAD[choice.dims]
    step_eff = choice.step_s * overhead
    infer_sample = choice.step_s / choice.batch * INFER_RATIO
    if choice.dims == 3:
        windows = math.prod(1 if s <= p else math.ceil((s - p) / (p / 2)) + 1 for s, p in zip(shape_t, choice.patch))
        val_s = n_val * windows * infer_sample
    else:
        per_case = 1 if fp.spatial_dims == 2 else shape3[slice_axis]
        val_s = n_val * per_case * infer_sample
    random_items = mode == "patches" or data.get("crop") == "random"
    # what one sample per unit and epoch means: a case (patches, 2D images) or every slice of a training case
    units = n_train if (mode == "patches" or fp.spatial_dims == 2) else n_train * max(1.0, (
        fp.nonzero_slices if data.get("slices") == "brain" else shape3[slice_axis]))
    if random_items:
        epochs = max(1, min(1000, math.floor(budget_s * VAL_SHARE / max(val_s, 1e-9)),
                            math.floor(budget_s / (50 * step_eff))))
        steps = max(1, math.floor((budget_s / epochs - val_s) / step_eff))
        per_unit = max(1, math.floor(steps * choice.batch / units))  # rounded down: the epoch stays within its share
        data["samples_per_case"] = per_unit
        steps_per_epoch = math.ceil(units * per_unit / choice.batch)
        reasons["data.samples_per_case"] = (f"{per_unit} per {'case' if units == n_train else 'slice'} and epoch: "
                                            f"{steps_per_epoch} steps an epoch, about 50 or more and long enough that "
                                            f"validation (about {fmt_duration(val_s)} an epoch) stays near "
                                            f"{100 * VAL_SHARE:.0f}% of the time")
    else:
        steps_per_epoch = math.ceil(units / choice.batch)
    epoch_s = steps_per_epoch * step_eff + val_s
    epochs = math.floor(budget_s / epoch_s)
    if epochs < 1:
        raise _TooShort(f"time budget {fmt_duration(budget_s)} is too short for one epoch, which takes about "
                        f"{fmt_duration(epoch_s)} on this device")
    epochs = min(epochs, 1000)
    features = list(choice.features)
    reasons["models"] = (f"unet3d, {len(features)} levels (bottleneck {min(choice.patch) // 2 ** (len(features) - 1)}+ voxels "
                         f"on the smallest axis), widths from {features[0]} ("
                         + (f"measured {choice.step_s:.2f} s per step at batch {choice.batch})" if choice.measured else
                            f"{choice.step_s:.2f} s per step at batch {choice.batch}, predicted, not measured: "
                            f"{_how(cost, choice)})")
                         + ", deep supervision")
    train = {
        "epochs": int(epochs), "batch_size": int(choice.batch), "optimizer": "adamw", "lr": 0.002, "weight_decay": 0.0001,
        "scheduler": "cosine", "warmup_epochs": 1.0 if epochs > 1 else 0.0, "grad_clip": 12.0, "precision": "auto",
        "device": device_name if device_name in ("cpu", "cuda") else "auto", "seed": 0, "monitor": "dice_mean",
        "val_batch_size": int(choice.batch),
    }
    measured = "measured" if choice.measured else "predicted"
    reasons["train.epochs"] = (f"{epochs} epochs x {steps_per_epoch} steps at {step_eff:.2f} s ({measured} step x "
                               f"{overhead} for loading) + {fmt_duration(val_s)} validation fit {fmt_duration(budget_s)}")
    total_steps = int(epochs * steps_per_epoch)
    if min_steps < MIN_STEPS:
        reasons["train.epochs"] += (f"; {total_steps} steps, fewer than the {MIN_STEPS} a plan on an idle CPU needs: the CPU "
                                    f"is busy ({busy}), so the plan is sized for the time it actually gets (about "
                                    f"{BUSY_MIN_STEPS} steps or more) rather than refused; plan on an idle machine or give a "
                                    "longer budget for more")
    reasons["train.batch_size"] = (f"{choice.batch}: nnU-Net's cap (5% of the data set's voxels per batch, at least 2), "
                                   f"lowered until {min_steps}+ steps fit the budget" if choice.dims == 3 else
                                   f"{choice.batch}: the largest that gives {min_steps}+ steps in the budget")
    reasons["train.optimizer"] = ("AdamW + cosine with 1 warm-up epoch: at budgets of thousands of steps it beat nnU-Net's "
                                  "SGD + polynomial schedule (Hippocampus, issue 27)")
    post: dict[str, Any] = {}
    if fp.largest_component_share >= 0.9 and not fp.microscopy:
        post["min_component_fraction"] = 0.1
        reasons["postprocess"] = (f"the largest component holds {100 * fp.largest_component_share:.0f}% of a case's "
                                  "foreground (median): islands under 10% of it are removed")
    else:
        reasons["postprocess"] = ("none: the foreground is many objects" if fp.microscopy else
                                  f"none: the largest component holds only {100 * fp.largest_component_share:.0f}% of the "
                                  "foreground; try postprocess.min_component_fraction with pdeseg crossval")
    config: dict[str, Any] = {
        "name": f"plan_{_safe_name(Path(fp.root).name)}", "output_dir": "runs", "output": "softmax", "data": data,
        "models": [{"name": "unet3d", "kwargs": {"features": features, "deep_supervision": True}}],
        "loss": {"terms": [{"name": "ce", "weight": 1.0}, {"name": "dice", "weight": 1.0}]},
        "train": train, "postprocess": post,
    }
    reasons["output"] = ("softmax classes; region heads (nested regions) measured worse at CPU budgets (issue 13)"
                         if any(len(v) > 1 for v in _regions(fp)) else "softmax classes")
    reasons["loss"] = "cross-entropy + soft Dice (nnU-Net's default)"
    if _instance_data(fp):
        data["format_options"] = {**data.get("format_options", {}), "targets": "flows"}
        config["loss"]["terms"].append({"name": "instance_maps", "weight": 1.0})
        train["monitor"] = "dsb_score"
        reasons["data.format_options"] = (f"{fp.objects_per_image:g} objects per image (median), median area "
                                          f"{fp.object_area_median:g} px: Cellpose-style flows separate touching objects "
                                          "(+0.149 DSB score over a boundary class on DSB 2018, issue 23)")
        reasons["loss"] += "; instance_maps trains the flows"
        reasons["train.monitor"] = "best.pt by the validation images' DSB score (the objects, not the pixels)"
    estimate = {"step_s": choice.step_s, "step_eff_s": step_eff, "steps_per_epoch": float(steps_per_epoch), "val_s": val_s,
                "epoch_s": epoch_s, "epochs": float(epochs), "total_s": epochs * epoch_s, "budget_s": budget_s,
                "peak_mib": choice.peak / 2**20 if math.isfinite(choice.peak) else float("nan"), "device": device_name,
                "step_measured": bool(choice.measured), "steps": float(total_steps)}
    return Plan(config, reasons, estimate, fp)


def _how(cost: Costs, choice: _Choice) -> str:
    """How the chosen network's figures were predicted, where the cost functions can say."""
    how = getattr(getattr(cost.measure, "__self__", None), "how", None)
    text = how(choice.dims, choice.features) if how else ""
    if not text or text.startswith("measured"):
        return "from the line through its network's measured probes"
    return text


def _patch_reason(choice: _Choice, shape: list[float], cap: int, what: str) -> str:
    m = 2 ** (len(choice.features) - 1)
    full = [min(_round_up(s, m), cap) for s in shape]
    text = (f"patch {'x'.join(map(str, choice.patch))}: the median {what} {'x'.join(f'{s:g}' for s in shape)} rounded up "
            f"to a multiple of {m} (cap {cap})")
    if list(choice.patch) != full:
        text += f", shrunk from {'x'.join(map(str, full))} to fit the memory and time budget"
    return text


def _regions(fp: Fingerprint) -> list[list[int]]:
    from pdeseg.data.formats import get_format

    try:
        return [list(v) for v in get_format(fp.format).dataset_info(fp.root, fp.format_options).regions.values()]
    except (ConfigError, DataError):  # only a reason's wording depends on it
        return []


def _instance_data(fp: Fingerprint) -> bool:
    """Objects are counted per image and the format lets the plan choose how they are learnt
    (a ``targets`` read option), and the user chose nothing."""
    from pdeseg.data.formats import get_format

    return (fp.objects_per_image is not None and "targets" in get_format(fp.format).read_options
            and not (fp.format_options or {}).get("targets"))


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_").lower() or "data"
