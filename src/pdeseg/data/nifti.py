"""Moved to :mod:`pdeseg.data.readers.nifti`; this module re-exports it for one release."""

from pdeseg.data.readers.nifti import *  # noqa: F401,F403
