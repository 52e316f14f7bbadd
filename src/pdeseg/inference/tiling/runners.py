"""Runners of a tiled run's tasks: a loop in this process (:class:`LocalRunner`), or a
``dask.distributed`` scheduler (:class:`DaskRunner`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from pdeseg._optional import require
from pdeseg.errors import ConfigError
from pdeseg.inference.tiling.tasks import TiledJob

#: ``callback(pass, done, total)``: told after each task of a pass (see :func:`~pdeseg.inference.tiling.predict_tiled`).
Callback = Callable[[str, int, int], None]

#: Seconds to wait for a ``dask_address`` scheduler before giving up.
CONNECT_TIMEOUT_S = 10


class LocalRunner:
    """Runs tasks one after another in this process."""

    name = "1 process"

    def map(self, fn: Callable, items: list, desc: str, progress: bool, job: TiledJob,
            callback: Callback | None = None, **extra) -> list:
        """``fn(job, item, *extra[i])`` for each item, in order; ``callback(desc, done, total)``
        after each (and a progress bar with ``progress``)."""
        from pdeseg.progress import track

        out = []
        for i, item in enumerate(track(items, desc, "tile", enabled=progress)):
            out.append(fn(job, item, *[a[i] if isinstance(a, list) else a for a in extra.values()]))
            if callback is not None:
                callback(desc, i + 1, len(items))
        return out


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _probe_scheduler(address: str) -> None:
    """Open and close one connection to the scheduler at ``address`` (in a thread of its own, so
    that it also works where an event loop is running, as in Jupyter or napari).

    Raises:
        ValueError, TypeError: not an address; OSError, TimeoutError: nobody answers there
            within :data:`CONNECT_TIMEOUT_S`.
    """
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from distributed.comm import connect

    async def probe() -> None:
        comm = await connect(address, timeout=CONNECT_TIMEOUT_S)
        await comm.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, probe()).result()


class DaskRunner:
    """Runs tasks on a ``dask.distributed`` scheduler: a ``LocalCluster`` of ``workers``
    processes (``threads`` torch threads each) made here, or the scheduler at ``address``
    (workers there must have pdeseg installed and see the same files).

    Each worker loads the model once and keeps it for the tasks it is given."""

    def __init__(self, workers: int | None = None, threads: int = 1, address: str | None = None):
        require("distributed", extra="distributed", feature="running tiles on Dask (--dask-workers / --dask-scheduler)")
        from distributed import Client, LocalCluster

        logging.getLogger("distributed").setLevel(max(logging.WARNING, logging.getLogger("distributed").level))
        self.cluster = None
        # never the process's default scheduler: a Client made default sets dask's scheduler to
        # itself before it connects, so one that failed to connect hung every later dask compute
        if address:
            try:
                _probe_scheduler(address)  # a Client that fails to connect hangs 20 s on exit, then prints a traceback
                self.client = Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
            except (OSError, ValueError, TypeError, TimeoutError) as exc:
                raise ConfigError(f"--dask-scheduler {address}: cannot connect to a dask.distributed scheduler there "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no reason given'}); "
                                  "give its address as tcp://host:8786") from None
        else:
            n = workers or max(os.cpu_count() // max(threads, 1), 1)
            self.cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                                        silence_logs=logging.WARNING)
            self.client = Client(self.cluster, set_as_default=False)
        self.threads = threads
        self.name = f"Dask ({len(self.client.scheduler_info()['workers'])} workers)"

    def map(self, fn: Callable, items: list, desc: str, progress: bool, job: TiledJob,
            callback: Callback | None = None, **extra) -> list:
        """As :meth:`LocalRunner.map`, the tasks on the cluster (``callback`` as each one finishes)."""
        from distributed import as_completed

        from pdeseg.progress import counter

        job_f = self.client.scatter(replace(job, threads=self.threads), broadcast=True, hash=False)
        futures = [self.client.submit(fn, job_f, item, *[a[i] if isinstance(a, list) else a for a in extra.values()],
                                      pure=False, key=f"{fn.__name__}-{i}-{os.getpid()}-{id(items)}")
                   for i, item in enumerate(items)]
        index = {f.key: i for i, f in enumerate(futures)}
        out: list = [None] * len(items)
        with counter(desc, "tile", len(items), enabled=progress) as bar:
            for done, fut in enumerate(as_completed(futures, loop=self.client.loop), 1):  # this client's (not the default)
                out[index[fut.key]] = fut.result()
                bar.update(1)
                if callback is not None:
                    callback(desc, done, len(items))
        return out

    def worker_peaks_mib(self) -> list[float]:
        """Peak resident memory (MiB) of each worker process so far."""
        return sorted(self.client.run(_peak_rss_mib).values())

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()




def make_runner(runner: Any, dask_workers: int | None, dask_address: str | None, threads: int | None):
    if runner is not None:
        return runner, False
    if dask_workers or dask_address:
        return DaskRunner(dask_workers, threads or 1, dask_address), True
    return LocalRunner(), False
