"""Segmentation metrics: a functional core on integer label maps, plus a thin accumulator.

Everything here works on *label maps*: integer arrays of any number of spatial
dimensions (a 2D slice ``(H, W)``, a 3D volume ``(H, W, D)``, or a batch of either,
since the metrics only count voxels), holding the contiguous internal classes
``0 .. num_classes - 1``. Nothing here knows a data set: class names, evaluation
regions (unions of classes, e.g. BraTS WT/TC/ET) and the empty-mask rule are arguments,
supplied by a data format as :class:`ScoringRules` (BraTS's live in
:mod:`pdeseg.data.readers.brats`).

The package holds three modules, and this one re-exports their public names:

* :mod:`~pdeseg.metrics.segmentation.overlap`: counting and overlap scores. Counting is done
  once, with :func:`numpy.bincount` (or :func:`torch.bincount` on the tensor's own device) over
  ``target * C + pred``, which gives the full ``(C, C)`` confusion matrix. Per-class tp/fp/fn,
  accuracy and the tp/fp/fn of any region (a union of classes) all follow exactly from that
  matrix, and so do Dice, IoU, precision tp / (tp + fp) and recall (sensitivity) tp / (tp + fn).
* :mod:`~pdeseg.metrics.segmentation.surface`: the distance metrics (HD95, surface Dice), which
  need whole masks and the voxel spacing.
* :mod:`~pdeseg.metrics.segmentation.scoring`: per-case metric rows, their summary over cases,
  :class:`MetricAccumulator` (many slices of one case accumulated without keeping them) and
  :class:`ScoringRules`.

Empty masks: Dice, IoU, precision, recall and surface Dice are ``empty`` (1 by default, the
BraTS rule) when truth and prediction are both empty and 0 when only one of them is (a
prediction of nothing has precision 0 when there was something to find; a prediction of
something where there is nothing has recall 0). HD95 is 0 when both are empty and
``hd95_one_empty`` when only one is (infinite unless the data format says otherwise;
BraTS uses 373.13 mm).

Inputs may be numpy arrays or torch tensors. Integer or boolean dtypes only: a float
array (for example ``nibabel``'s ``get_fdata()``, or network probabilities) is rejected
with a message, never rounded silently.
"""

from pdeseg.metrics.segmentation import overlap, scoring, surface
from pdeseg.metrics.segmentation.overlap import *  # noqa: F403  (the names in overlap.__all__, and so on)
from pdeseg.metrics.segmentation.scoring import *  # noqa: F403
from pdeseg.metrics.segmentation.surface import *  # noqa: F403

__all__ = [*overlap.__all__, *surface.__all__, *scoring.__all__]
