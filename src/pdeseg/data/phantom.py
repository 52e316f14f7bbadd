"""Moved to :mod:`pdeseg.data.phantoms.brats`; this module re-exports it for one release."""

from pdeseg.data.phantoms.brats import *  # noqa: F401,F403
from pdeseg.data.phantoms.brats import (  # noqa: F401
    MODALITIES,
    make_phantom_case,
    phantom_case_seed,
    write_lgg_phantom_dataset,
    write_phantom_dataset,
    _make_phantom_case_with_tissue,
    _smooth_noise,
)

_case_seed = phantom_case_seed  # the old name
