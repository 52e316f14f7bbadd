"""Moved to :mod:`pdeseg.data.phantoms.msd`; this module re-exports it for one release."""

from pdeseg.data.phantoms.msd import *  # noqa: F401,F403
from pdeseg.data.phantoms.msd import write_msd_phantom_dataset  # noqa: F401
