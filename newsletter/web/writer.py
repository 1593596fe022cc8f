"""The one writer of a `newsletter serve` process: a thread with its own connection that applies
queued writes in batches, one transaction and one commit per batch (group commit).

Why: every one-click is a write, and on SQLite there is one writer at a time for the whole file.
Threads that each open `BEGIN IMMEDIATE` queue on SQLite's busy handler, which sleeps in steps
(up to 100 ms) and pays one fsync per request; under 32 concurrent one-clicks that gave a p99 of
1.4 s and time-outs. Here the requests queue in memory instead, the writer takes every request
waiting (up to `MAX_BATCH`), runs them all in one write transaction, commits once —
`synchronous = FULL` stays, so that commit is on disk — and only then answers them all. A 200 for
an unsubscribe therefore always means "committed"; a failed commit answers every request of the
batch with the error, and none of them was applied.

* `write(fn, *args)`: `fn(conn, *args)` inside the batch's transaction; the result after the
  commit. An exception of `fn` rolls back its savepoint only (the others are kept) and is raised
  to its caller (the batch is applied without savepoints first; if a job raises, it is rolled
  back and applied again with them) — except a `DatabaseError` (the file's fault: full disk,
  locked past the busy timeout), which fails the whole batch, as the transaction may be gone.
  A batched job only touches the database: it may run twice.
* `alone(fn, *args)`: `fn(*args)` in the writer thread between batches, for `Store` methods that
  open their own write transaction (a sign-up, a confirmation): serialised with the batches,
  so the process never competes with itself for SQLite's write lock.

On PostgreSQL the same writer runs (one connection per process out of the engine's pool): the
batch costs one WAL flush, and serve's own writes never deadlock each other. See docs/web.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from sqlalchemy.engine import Connection, Engine

from newsletter.db.engine import DatabaseError

log = logging.getLogger("newsletter.serve")

T = TypeVar("T")

# Requests per transaction: enough to absorb a burst, small enough that the write lock is held
# for a few milliseconds only (other processes — a send, an import — wait for it).
MAX_BATCH = 128


class WriterClosed(RuntimeError):
    """The writer was stopped (the server is shutting down)."""


@dataclass
class _Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    batched: bool  # False: run alone, outside the batch transaction
    bulk: bool = False  # fn(conn, [item, …]) → [result, …] once for all such jobs of a batch
    waiter: asyncio.Future[Any] | None = None  # an async caller's (settled on its loop)
    future: Future[Any] | None = None  # a thread's


_STOP = object()


class Writer:
    """Serve's write path: one thread, one connection, group commit."""

    def __init__(self, engine: Engine, *, max_batch: int = MAX_BATCH) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches = 0  # committed batches, for tests and the bench
        self.waiting = 0  # jobs submitted and not answered yet

    # ---- callers (event loop or any thread)

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(conn, *args)` in the next batch; returns once it is committed."""
        return await self._wait(_Job(fn, args, batched=True))

    async def write_many(self, fn: Callable[[Connection, list[Any]], list[T]], item: Any) -> T:
        """Like `write`, but every job of the batch with the same `fn` is applied by one call,
        `fn(conn, items)` returning one result per item in order: set-based statements instead of
        a few per request (the one-click hot path)."""
        return await self._wait(_Job(fn, (item,), batched=True, bulk=True))

    async def alone(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` in the writer thread, between batches (it opens its own
        transaction)."""
        return await self._wait(_Job(partial(fn, **kwargs), args, batched=False))

    def write_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """`write` for a worker thread (e.g. a background task): blocks until committed."""
        return self._block(_Job(fn, args, batched=True))

    def alone_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`alone` for a worker thread."""
        return self._block(_Job(partial(fn, **kwargs), args, batched=False))

    async def _wait(self, job: _Job) -> Any:
        job.waiter = asyncio.get_running_loop().create_future()
        self._submit(job)
        # A caller that goes away (cancelled) cancels its waiter only: the job stays in its batch,
        # and `_wake` skips the answer. (No `asyncio.shield`: an extra future per request.)
        return await job.waiter

    def _block(self, job: _Job) -> Any:
        job.future = Future()
        self._submit(job)
        return job.future.result()

    def _submit(self, job: _Job) -> None:
        with self._lock:
            if self._closed:
                raise WriterClosed("the server is shutting down")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="newsletter-writer", daemon=True)
                self._thread.start()
            self.waiting += 1
            self._queue.put(job)

    def close(self, timeout: float = 30) -> None:
        """Finish what is queued, then stop the thread and close the connection."""
        with self._lock:
            self._closed = True
            thread = self._thread
            if thread is not None:
                self._queue.put(_STOP)
        if thread is not None:
            thread.join(timeout)

    # ---- the writer thread

    def _run(self) -> None:
        pending: list[Any] = []
        while True:
            item = pending.pop(0) if pending else self._queue.get()
            if item is _STOP:
                break
            if not item.batched:
                self._run_alone(item)
                continue
            batch = [item]
            # Everything that queued up while the last commit was syncing goes into this batch;
            # a solo job or the stop signal ends it (kept for after the batch, in order).
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP or not nxt.batched:
                    pending.append(nxt)
                    break
                batch.append(nxt)
            self._run_batch(batch)
        self._disconnect()
        # Whatever arrived after the stop signal: refuse it rather than leave callers hanging.
        while True:
            try:
                late = self._queue.get_nowait()
            except queue.Empty:
                break
            if late is not _STOP:
                self._answer([(late, False, WriterClosed("the server is shutting down"))])

    def _run_alone(self, job: _Job) -> None:
        try:
            outcome = (job, True, job.fn(*job.args))
        except BaseException as exc:  # handed to the caller, who decides
            outcome = (job, False, exc)
        self._answer([outcome])

    def _answer(self, outcomes: list[tuple[_Job, bool, Any]]) -> None:
        with self._lock:
            self.waiting -= len(outcomes)
        _settle(outcomes)

    def _connection(self) -> Connection:
        if self._conn is None:
            conn = self.engine.connect()
            if conn.dialect.name == "sqlite":
                # The write lock up front, as `write_transaction` does (docs/data-model.md).
                conn = conn.execution_options(sqlite_begin="IMMEDIATE")
            self._conn = conn
        return self._conn

    def _disconnect(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # a broken connection: nothing left to release
                log.debug("closing the writer's connection failed", exc_info=True)
            self._conn = None

    def _run_batch(self, jobs: list[_Job]) -> None:
        try:
            try:
                results = self._apply(jobs, isolate=False)
            except _JobFailed:
                # A job raised: its writes must not stay. Rolled back; applied once more with
                # each job in a SAVEPOINT, so only that job fails (no lock waits, no sleep).
                results = self._apply(jobs, isolate=True)
            # Committed (and, on SQLite with synchronous = FULL, synced): now answer.
        except Exception as exc:
            self._disconnect()  # start the next batch on a fresh connection
            error = exc if isinstance(exc, DatabaseError) else DatabaseError(
                f"the database did not take the write: {getattr(exc, 'orig', None) or exc}")
            self._answer([(job, False, error) for job in jobs])
            return
        self.batches += 1
        self._answer(results)

    def _apply(self, jobs: list[_Job], *, isolate: bool) -> list[tuple[_Job, bool, Any]]:
        """One transaction for all `jobs`. Without `isolate` the first failing job aborts it
        (`_JobFailed`): savepoints cost two statements per job, and jobs almost never fail."""
        results: list[tuple[_Job, bool, Any]] = []
        conn = self._connection()
        groups: dict[Any, list[_Job]] = {}
        for job in jobs:
            if job.bulk and not isolate:
                groups.setdefault(job.fn, []).append(job)
        with conn.begin():
            for job in jobs:
                if job.bulk and not isolate:
                    group = groups.pop(job.fn, None)
                    if group is None:
                        continue  # applied with the first job of its group
                    try:
                        values = job.fn(conn, [j.args[0] for j in group])
                    except DatabaseError:
                        raise
                    except Exception as exc:
                        raise _JobFailed from exc
                    results.extend((j, True, v) for j, v in zip(group, values, strict=True))
                    continue
                savepoint = conn.begin_nested() if isolate else None
                try:
                    value = job.fn(conn, [job.args[0]])[0] if job.bulk else job.fn(conn, *job.args)
                except DatabaseError:
                    raise  # the transaction may be gone: the whole batch fails
                except Exception as exc:
                    if savepoint is None:
                        raise _JobFailed from exc
                    savepoint.rollback()
                    results.append((job, False, exc))
                else:
                    if savepoint is not None:
                        savepoint.commit()
                    results.append((job, True, value))
        return results


class _JobFailed(Exception):
    """A job raised in a batch run without savepoints: run the batch again with them."""


def _settle(outcomes: list[tuple[_Job, bool, Any]]) -> None:
    """Hand results to their callers: threads at once, coroutines with one wake-up of their
    event loop per batch (not one per request)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
    for job, ok, value in outcomes:
        if job.future is not None:
            if ok:
                job.future.set_result(value)
            else:
                job.future.set_exception(value)
        elif job.waiter is not None:
            by_loop.setdefault(job.waiter.get_loop(), []).append((job.waiter, ok, value))
    for loop, waiters in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            loop.call_soon_threadsafe(_wake, waiters)


def _wake(waiters: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for waiter, ok, value in waiters:
        if waiter.done():
            continue
        if ok:
            waiter.set_result(value)
        else:
            waiter.set_exception(value)


__all__ = ["MAX_BATCH", "Writer", "WriterClosed"]
