"""Moved to :mod:`pdeseg.data.pipeline.prepare`; this module re-exports it for one release."""

from pdeseg.data.pipeline.prepare import *  # noqa: F401,F403
from pdeseg.data.pipeline.prepare import PreparedData, load_cached_cases, prepare_data, subsample_training  # noqa: F401

cached_cases = load_cached_cases  # the old name
