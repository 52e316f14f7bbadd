"""Moved to :mod:`pdeseg.data.readers.dsb`; this module re-exports it for one release."""

from pdeseg.data.readers.dsb import *  # noqa: F401,F403
