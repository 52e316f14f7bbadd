"""Moved to :mod:`pdeseg.data.readers.brats`; this module re-exports it for one release."""

from pdeseg.data.readers.brats import *  # noqa: F401,F403
