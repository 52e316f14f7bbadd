"""Moved to :mod:`pdeseg.data.pipeline.sampling`; this module re-exports it for one release."""

from pdeseg.data.pipeline.sampling import *  # noqa: F401,F403
from pdeseg.data.pipeline.sampling import case_volume, evaluation_slices, select_slices  # noqa: F401
