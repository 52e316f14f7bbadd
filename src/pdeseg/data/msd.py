"""Moved to :mod:`pdeseg.data.readers.msd`; this module re-exports it for one release."""

from pdeseg.data.readers.msd import *  # noqa: F401,F403
