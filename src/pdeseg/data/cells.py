"""Moved to :mod:`pdeseg.data.readers.cells`; this module re-exports it for one release."""

from pdeseg.data.readers.cells import *  # noqa: F401,F403
