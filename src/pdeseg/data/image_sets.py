"""Moved to :mod:`pdeseg.data.readers.image_sets`; this module re-exports it for one release."""

from pdeseg.data.readers.image_sets import *  # noqa: F401,F403
