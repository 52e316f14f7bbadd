"""Post-processing of predicted label maps: two stated rules, each off unless configured
(``postprocess`` in the config, stored with every checkpoint; ``--no-postprocess`` turns
them off in ``predict`` and ``evaluate``).

* **Main components** (``min_component_fraction = f``): the foreground (every class but
  background; BraTS WT) is cut into connected components (full connectivity: 26 neighbours
  in 3D, 8 in 2D), and a component smaller than ``f`` times the largest one is set to
  background. ``f = 1`` keeps only the largest component; a small ``f`` removes islands of a
  few voxels far from the tumour, which are what drive a large HD95.
* **Small innermost region** (``min_innermost_voxels = n``): for a data set whose regions form
  a nested chain (BraTS WT ⊃ TC ⊃ ET), if the innermost region (ET) has fewer than ``n``
  voxels in the whole case it is relabelled as the own class of the next region out (NCR).
  TC and WT are unchanged. BraTS scores ET as 1 when truth and prediction are both empty and
  0 when only the prediction is not, so a few false ET voxels in a case without enhancement
  cost a whole point of Dice; the price is a miss where a true ET is that small. ``n`` must be
  chosen on validation cases (see :func:`choose_min_innermost_voxels`), never on test.

Both work on whole cases (a volume, or a 2D image), after the label map is rebuilt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pdeseg.errors import ConfigError
from pdeseg.nn.output import OutputHead, make_head


@dataclass(frozen=True)
class PostProcessing:
    """The rules to apply (None: off). See the module docstring."""

    min_component_fraction: float | None = None
    min_innermost_voxels: int | None = None

    def __post_init__(self):
        f, n = self.min_component_fraction, self.min_innermost_voxels
        if f is not None and not 0 < f <= 1:
            raise ConfigError(f"postprocess.min_component_fraction must be in (0, 1], got {f}")
        if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
            raise ConfigError(f"postprocess.min_innermost_voxels must be a whole number >= 1, got {n!r}")

    @property
    def enabled(self) -> bool:
        return self.min_component_fraction is not None or self.min_innermost_voxels is not None

    @classmethod
    def from_config(cls, section: Mapping | None) -> PostProcessing:
        """From a config's (or a checkpoint's stored config's) ``postprocess`` mapping."""
        section = dict(section or {})
        return cls(section.get("min_component_fraction"), section.get("min_innermost_voxels"))

    def describe(self) -> str:
        parts = []
        if self.min_component_fraction is not None:
            parts.append(f"foreground components under {self.min_component_fraction:g} x the largest removed")
        if self.min_innermost_voxels is not None:
            parts.append(f"innermost region under {self.min_innermost_voxels} voxels relabelled")
        return "; ".join(parts) or "none"

    def apply(self, classes: np.ndarray, num_classes: int, regions: Mapping[str, Sequence[int]] | None) -> np.ndarray:
        """The label map ``classes`` (any spatial shape, ints) after the rules, as a new array.

        Raises:
            ConfigError: ``min_innermost_voxels`` for a data set without a nested region chain.
        """
        out = np.array(classes, copy=True)
        if self.min_component_fraction is not None:
            out = keep_main_components(out, self.min_component_fraction)
        if self.min_innermost_voxels is not None:
            out = relabel_small_innermost(out, region_chain(num_classes, regions), self.min_innermost_voxels)
        return out


def region_chain(num_classes: int, regions: Mapping[str, Sequence[int]] | None) -> OutputHead:
    """The nested region chain of a data set (as a region head), or ConfigError."""
    try:
        return make_head("regions", num_classes, regions)
    except ValueError as exc:
        raise ConfigError(f"postprocess.min_innermost_voxels needs nested regions: {exc}") from None


def keep_main_components(classes: np.ndarray, min_fraction: float) -> np.ndarray:
    """``classes`` with every foreground component smaller than ``min_fraction`` times the
    largest set to background (0). Components are of the foreground as a whole (any class
    > 0), with full connectivity."""
    fg = classes > 0
    components, n = ndimage.label(fg, structure=np.ones((3,) * fg.ndim, dtype=bool))
    if n <= 1:
        return classes
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    keep = sizes >= min_fraction * sizes.max()
    keep[0] = True
    return np.where(keep[components], classes, 0).astype(classes.dtype, copy=False)


def relabel_small_innermost(classes: np.ndarray, chain: OutputHead, min_voxels: int) -> np.ndarray:
    """``classes`` with the innermost region's class relabelled as the next region's own class
    when it has fewer than ``min_voxels`` voxels (BraTS: ET -> NCR)."""
    inner, outer = chain.levels[-1], chain.levels[-2]
    mask = classes == inner
    if 0 < int(mask.sum()) < min_voxels:
        classes = np.where(mask, outer, classes).astype(classes.dtype, copy=False)
    return classes


def choose_min_innermost_voxels(pred_volumes: Sequence[int], true_empty: Sequence[bool], dice: Sequence[float],
                                candidates: Sequence[int] | None = None) -> tuple[int | None, float]:
    """The innermost-region threshold that maximises the mean Dice of that region over
    validation cases, and that mean.

    Relabelling changes only the innermost region of a case whose predicted volume is below the
    threshold: its Dice becomes 1 if the truth has none of it and 0 otherwise. So the choice
    needs, per case, the predicted volume, whether the truth is empty, and the Dice without the
    rule. Candidates default to 0 (off) and every distinct predicted volume + 1; the smallest
    best threshold wins ties (the least intervention). Returns ``(None, mean)`` when no
    threshold beats leaving the rule off.
    """
    vols = np.asarray(pred_volumes, dtype=np.int64)
    empty = np.asarray(true_empty, dtype=bool)
    base = np.asarray(dice, dtype=np.float64)
    if not (len(vols) == len(empty) == len(base)) or not len(vols):
        raise ValueError("need one predicted volume, truth flag and Dice per validation case")
    if candidates is None:
        candidates = sorted({0, *(int(v) + 1 for v in vols if v > 0)})
    best, best_mean = None, float(base.mean())
    for t in sorted(candidates):
        if t <= 0:
            continue
        hit = (vols > 0) & (vols < t)
        mean = float(np.where(hit, empty.astype(np.float64), base).mean())
        if mean > best_mean + 1e-12:
            best, best_mean = int(t), mean
    return best, best_mean
