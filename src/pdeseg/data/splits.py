"""Moved to :mod:`pdeseg.data.pipeline.splits`; this module re-exports it for one release."""

from pdeseg.data.pipeline.splits import *  # noqa: F401,F403
from pdeseg.data.pipeline.splits import kfold_splits, save_split  # noqa: F401
