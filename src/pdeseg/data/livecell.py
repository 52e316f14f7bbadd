"""Moved to :mod:`pdeseg.data.readers.livecell`; this module re-exports it for one release."""

from pdeseg.data.readers.livecell import *  # noqa: F401,F403
