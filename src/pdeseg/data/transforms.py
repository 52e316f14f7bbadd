"""Moved to :mod:`pdeseg.data.pipeline.transforms`; this module re-exports it for one release."""

from pdeseg.data.pipeline.transforms import *  # noqa: F401,F403
