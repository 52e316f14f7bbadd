"""Moved to :mod:`pdeseg.data.pipeline.label_geometry`; this module re-exports it for one release."""

from pdeseg.data.pipeline.label_geometry import *  # noqa: F401,F403
