"""Where the work runs: a local process pool, or a Dask cluster. Never what is computed.

The stages hand pure functions (strings and arrays in, arrays out, no RDKit objects) to an executor and consume
the results in submission order, so the output bytes do not depend on the engine. ``resources.engine`` chooses
it and is not a stage param: switching it reruns nothing, and no stage lists this module as a dep.

- ``local``: a ``ProcessPoolExecutor`` (spawn) with ``resources.workers`` processes.
- ``dask``: the scheduler at ``$DASK_SCHEDULER_ADDRESS`` (a real cluster: ``dask scheduler`` and ``dask worker``
  processes, with this project installed in the workers' environment), or else a ``LocalCluster`` of
  ``resources.workers`` single-threaded worker processes started for the stage and closed after it. Dask retries
  the tasks of a worker that dies on the others.

A run never waits forever on the cluster: results are awaited with a watchdog that fails the run with one
:class:`ClusterError` line once the cluster has had no worker for ``resources.worker_wait`` seconds, or when a task
killed every worker it ran on (Dask's ``KilledWorker``). Tasks pinned to workers (distributed training's ranks)
go through :func:`run_pinned`, which notices at once when one of their workers leaves.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

from stages.errors import InputError
from stages.params import Resources

log = logging.getLogger("stages.engine")

SCHEDULER_VARIABLE = "DASK_SCHEDULER_ADDRESS"
DEFAULT_WORKER_WAIT = Resources.model_fields["worker_wait"].default  # seconds, for callers without params
CONNECT_SECONDS = 60  # how long a client tries to reach $DASK_SCHEDULER_ADDRESS
POLL_SECONDS = 0.5  # how often a wait on the cluster looks at its workers
LOSS_GRACE_SECONDS = 10.0  # after a pinned task fails, how long the scheduler gets to report a worker it lost


class ClusterError(InputError):
    """The cluster cannot complete the run (workers lost and not replaced, a task that kills its workers): one
    ``error:`` line, like bad input, and no output written."""


class WorkerLost(Exception):
    """Workers that pinned tasks ran on left the cluster (killed, crashed, or restarted under a new address)."""

    def __init__(self, addresses: Sequence[str]) -> None:
        self.addresses = sorted(addresses)
        super().__init__(", ".join(self.addresses))


@contextlib.contextmanager
def dask_client(n_workers: int) -> Iterator:
    """A ``distributed.Client``: to ``$DASK_SCHEDULER_ADDRESS`` when set, else to a new ``LocalCluster``."""
    from distributed import Client, LocalCluster

    address = os.environ.get(SCHEDULER_VARIABLE)
    if address:
        log.info("dask: scheduler %s", address)
        try:
            client = Client(address, timeout=f"{CONNECT_SECONDS}s")
        except (ValueError, OSError) as exc:  # a malformed address; no scheduler there
            raise ClusterError(
                f"${SCHEDULER_VARIABLE}={address!r}: no Dask scheduler reached: {exc}"
            ) from None
        with client:
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


def worker_addresses(client) -> list[str]:
    """The addresses of the cluster's workers now, sorted."""
    return sorted(client.scheduler_info()["workers"])


def wait_for_workers(client, n_workers: int, wait: float) -> list[str]:
    """The first ``n_workers`` of the cluster's workers (by address), once it has that many; a
    :class:`ClusterError` after ``wait`` seconds without."""
    try:
        client.wait_for_workers(n_workers, timeout=wait)
    except TimeoutError:
        raise ClusterError(
            f"the Dask cluster at {client.scheduler.address} has {len(worker_addresses(client))} worker(s) after "
            f"waiting {wait:g} s (resources.worker_wait); {n_workers} needed"
        ) from None
    return worker_addresses(client)[:n_workers]


def report(topic: str, **fields: Any) -> None:
    """Log an event to the Dask scheduler when running on a Dask worker (a no-op elsewhere): progress that a
    client follows with ``Client.get_events(topic)``. Never part of an output."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return
    worker.log_event(topic, {**fields, "worker": worker.address})


def run_pinned(client, fn: Callable, calls: Sequence[tuple], workers: Sequence[str]) -> list:
    """``fn(*calls[i])`` on ``workers[i]``, all at the same time (XGBoost's collective needs every rank running),
    results in order. A pinned task never moves, so a lost worker would leave it waiting forever: instead, as soon
    as one of ``workers`` leaves the cluster every task is cancelled and :class:`WorkerLost` raised. A task's own
    error is re-raised, unless the scheduler reports a lost worker within ``LOSS_GRACE_SECONDS`` (the other ranks
    fail too when one dies)."""
    from distributed import wait

    fn = importable(fn)
    futures = [
        client.submit(fn, *args, workers=[worker], allow_other_workers=False, pure=False)
        for args, worker in zip(calls, workers, strict=True)
    ]
    try:
        while True:
            pending = [future for future in futures if not future.done()]
            with contextlib.suppress(TimeoutError):
                wait(pending, timeout=POLL_SECONDS, return_when="FIRST_COMPLETED")
            raise_if_lost(client, workers)
            failed = [future for future in futures if future.status == "error"]
            if failed:
                deadline = time.monotonic() + LOSS_GRACE_SECONDS
                while time.monotonic() < deadline:
                    raise_if_lost(client, workers)
                    time.sleep(POLL_SECONDS)
                failed[0].result()
            if all(future.status == "finished" for future in futures):
                return client.gather(futures)
    finally:
        client.cancel(futures)


def raise_if_lost(client, workers: Sequence[str]) -> None:
    gone = set(workers) - set(worker_addresses(client))
    if gone:
        raise WorkerLost(gone)


def importable(fn):
    """``fn`` by its importable name when it comes from a module run as ``python -m stages.<name>`` (whose name is
    then ``__main__``), so Dask sends workers a reference to import, not the function's code and globals."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if getattr(fn, "__module__", None) == "__main__" and spec is not None:
        return getattr(importlib.import_module(spec.name), fn.__qualname__)
    return fn


class ClusterWatch:
    """Fails a wait on the cluster once it has had no worker for ``wait`` seconds: Dask would keep the tasks
    waiting for one forever."""

    def __init__(self, client, wait: float) -> None:
        self.client, self.wait, self.empty_since = client, wait, None

    def check(self) -> None:
        if worker_addresses(self.client):
            self.empty_since = None
            return
        now = time.monotonic()
        self.empty_since = self.empty_since or now
        if now - self.empty_since > self.wait:
            raise ClusterError(
                f"the Dask cluster at {self.client.scheduler.address} has had no workers for {self.wait:g} s "
                "(resources.worker_wait): its tasks cannot run"
            )


class WatchedFuture:
    """A Dask future whose ``result()`` polls the cluster while it waits (:class:`ClusterWatch`) and reports a
    task that killed every worker it ran on as one :class:`ClusterError`."""

    def __init__(self, future, watch: ClusterWatch) -> None:
        self.future, self.watch = future, watch

    def result(self, timeout: float | None = None):
        from distributed.scheduler import KilledWorker

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return self.future.result(timeout=POLL_SECONDS)
            except TimeoutError:
                if deadline is not None and time.monotonic() > deadline:
                    raise
                self.watch.check()
            except KilledWorker as exc:
                raise ClusterError(f"{exc} (a crash or out of memory?)") from None


class DaskExecutor(Executor):
    """Dask's ``concurrent.futures`` executor, submitting functions by their importable names; its futures wait
    on the cluster with a :class:`ClusterWatch`."""

    def __init__(self, client, worker_wait: float = DEFAULT_WORKER_WAIT) -> None:
        self.executor = client.get_executor(pure=False)
        self.watch = ClusterWatch(client, worker_wait)

    def submit(self, fn, /, *args, **kwargs):
        return WatchedFuture(self.executor.submit(importable(fn), *args, **kwargs), self.watch)

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
def executor(engine: str, n_workers: int, worker_wait: float | None = None) -> Iterator[Executor | None]:
    """A ``concurrent.futures.Executor`` for the engine; ``None`` for the local engine with one worker (work then
    runs in-process). ``worker_wait``: see :class:`ClusterWatch` (default ``DEFAULT_WORKER_WAIT``)."""
    if engine == "dask":
        with dask_client(n_workers) as client:
            pool = DaskExecutor(client, worker_wait or DEFAULT_WORKER_WAIT)
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
