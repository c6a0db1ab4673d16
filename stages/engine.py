"""Where the work runs: a local process pool, or a Dask cluster. Never what is computed.

The stages hand pure functions (strings and arrays in, arrays out, no RDKit objects) to an executor and consume
the results in submission order, so the output bytes do not depend on the engine. ``resources.engine`` chooses
it and is not a stage param: switching it reruns nothing, and no stage lists this module as a dep.

- ``local``: a ``ProcessPoolExecutor`` (spawn) with ``resources.workers`` processes.
- ``dask``: the scheduler at ``$DASK_SCHEDULER_ADDRESS`` (a real cluster: ``dask scheduler`` and ``dask worker``
  processes, with this project installed in the workers' environment), or else a ``LocalCluster`` of
  ``resources.workers`` single-threaded worker processes started for the stage and closed after it. Dask retries
  the tasks of a worker that dies on the others.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from multiprocessing import get_context

log = logging.getLogger("stages.engine")

SCHEDULER_VARIABLE = "DASK_SCHEDULER_ADDRESS"


@contextlib.contextmanager
def dask_client(n_workers: int) -> Iterator:
    """A ``distributed.Client``: to ``$DASK_SCHEDULER_ADDRESS`` when set, else to a new ``LocalCluster``."""
    from distributed import Client, LocalCluster

    address = os.environ.get(SCHEDULER_VARIABLE)
    if address:
        log.info("dask: scheduler %s", address)
        with Client(address, timeout="60s") as client:
            yield client
        return
    log.info("dask: a LocalCluster of %d workers", n_workers)
    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def importable(fn):
    """``fn`` by its importable name when it comes from a module run as ``python -m stages.<name>`` (whose name is
    then ``__main__``), so Dask sends workers a reference to import, not the function's code and globals."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if getattr(fn, "__module__", None) == "__main__" and spec is not None:
        return getattr(importlib.import_module(spec.name), fn.__qualname__)
    return fn


class DaskExecutor(Executor):
    """Dask's ``concurrent.futures`` executor, submitting functions by their importable names."""

    def __init__(self, client) -> None:
        self.executor = client.get_executor(pure=False)

    def submit(self, fn, /, *args, **kwargs):
        return self.executor.submit(importable(fn), *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.executor.shutdown(wait=wait)


class LazyProcessPool(Executor):
    """A spawn process pool started on the first submit (small jobs never pay for it), or by ``warm_up``."""

    def __init__(self, n_workers: int) -> None:
        self.n_workers, self.pool = n_workers, None

    def submit(self, fn, /, *args, **kwargs):
        if self.pool is None:
            self.pool = ProcessPoolExecutor(self.n_workers, mp_context=get_context("spawn"))
        return self.pool.submit(fn, *args, **kwargs)

    def warm_up(self, fn, /, *args) -> None:
        """Start every worker now and run ``fn`` (imports, caches) in each, while the caller reads its first
        batch: otherwise the workers start only when the first batch is ready and the cores idle meanwhile."""
        for _ in range(self.n_workers):
            self.submit(fn, *args)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=wait, cancel_futures=cancel_futures)


@contextlib.contextmanager
def executor(engine: str, n_workers: int) -> Iterator[Executor | None]:
    """A ``concurrent.futures.Executor`` for the engine; ``None`` for the local engine with one worker (work then
    runs in-process)."""
    if engine == "dask":
        with dask_client(n_workers) as client:
            pool = DaskExecutor(client)
            try:
                yield pool
            finally:
                pool.shutdown(wait=False)
        return
    if n_workers <= 1:
        yield None
        return
    pool = LazyProcessPool(n_workers)
    try:
        yield pool
    finally:
        pool.shutdown(cancel_futures=True)
