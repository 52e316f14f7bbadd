"""Moved to :mod:`pdeseg.data.phantoms.cells`; this module re-exports it for one release."""

from pdeseg.data.phantoms.cells import *  # noqa: F401,F403
from pdeseg.data.phantoms.cells import write_cell_phantom  # noqa: F401
