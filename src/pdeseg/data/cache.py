"""Moved to :mod:`pdeseg.data.pipeline.cache`; this module re-exports it for one release."""

from pdeseg.data.pipeline.cache import *  # noqa: F401,F403
from pdeseg.data.pipeline.cache import CachedCase, write_cache, _case_id_seed  # noqa: F401

cache_cases = write_cache  # the old name
_case_seed = _case_id_seed  # the old name
