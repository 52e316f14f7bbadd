"""Moved to :mod:`pdeseg.data.pipeline.preprocess`; this module re-exports it for one release."""

from pdeseg.data.pipeline.preprocess import *  # noqa: F401,F403
from pdeseg.data.pipeline.preprocess import Preprocessing, nonzero_mask  # noqa: F401
