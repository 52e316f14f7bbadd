"""Moved to :mod:`pdeseg.data.readers.lgg`; this module re-exports it for one release."""

from pdeseg.data.readers.lgg import *  # noqa: F401,F403
