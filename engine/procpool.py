"""Ordered map over worker processes that survives a crashing worker (used by `vmatch hash -j`).

Hashing on CPU is Python driving many small numpy ops plus a decoder: threads would share one
GIL, processes use every core.  Results come back in input order; memory is bounded by the
number of workers (each task is small, each worker holds one video's chunks at a time).  A
worker that dies (a decoder crash, the OOM killer) breaks the whole pool in
``concurrent.futures``: here the unfinished tasks are rerun one worker at a time, so the crash
is pinned on its own input and reported as that input's failure while the others still run.
"""
from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_R = TypeVar("_R")


def mp_context() -> multiprocessing.context.BaseContext:
    """fork where it is safe (Linux, no other Python thread yet): workers start in
    milliseconds with the parent's imports; spawn elsewhere."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def ordered_map(fn: Callable[[_T], _R], items: Sequence[_T], jobs: int, *,
                initializer: Callable[..., None] | None = None, initargs: tuple[Any, ...] = (),
                on_crash: Callable[[_T, str], _R],
                context: multiprocessing.context.BaseContext | None = None,
                cost: Callable[[_T], float] | None = None) -> Iterator[_R]:
    """``fn(item)`` for each item in ``jobs`` worker processes, yielded in input order.

    ``cost`` (e.g. file size): items are started costliest first, so the last one to finish
    is a short one and no core idles through a long tail; results still come in input order.

    The workers start (fork) here, before the caller starts threads; results are collected
    when the returned iterator is consumed.  ``fn`` and ``initializer`` must be picklable
    (module-level).  When a worker dies, the pool is rebuilt with one worker for the tasks not
    yet returned, so each remaining task runs alone; a task that kills its lone worker yields
    ``on_crash(item, reason)``.
    """
    ctx = context or mp_context()
    pending = list(items)
    workers = max(1, min(jobs, len(pending)))
    order = sorted(range(len(pending)), key=lambda i: -cost(pending[i])) if cost else None
    pool = _start(fn, pending, workers, ctx, initializer, initargs, order) if pending else None
    return _collect(fn, pending, workers, pool, ctx, initializer, initargs, on_crash)


def _start(fn: Callable[[_T], _R], items: Sequence[_T], workers: int, ctx: Any,
           initializer: Any, initargs: tuple[Any, ...],
           order: list[int] | None = None) -> tuple[ProcessPoolExecutor, list[Any]]:
    """A pool running ``fn`` on every item, submitted in ``order``; the futures in item order."""
    ex = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=initializer, initargs=initargs)
    futures: list[Any] = [None] * len(items)
    for i in order if order is not None else range(len(items)):
        futures[i] = ex.submit(fn, items[i])
    return ex, futures


def _collect(fn: Callable[[_T], _R], pending: list[_T], workers: int, pool: Any, ctx: Any,
             initializer: Any, initargs: tuple[Any, ...], on_crash: Callable[[_T, str], _R]) -> Iterator[_R]:
    while pending:
        if pool is None:
            # threads run by now (the caller's): fork only from a single-threaded process
            ctx = ctx if ctx.get_start_method() != "fork" else mp_context()
            pool = _start(fn, pending, workers, ctx, initializer, initargs)
        ex, futures = pool
        done = 0
        try:
            for fut in futures:
                try:
                    result = fut.result()
                except BrokenProcessPool as e:
                    if workers > 1:
                        log.info("a worker process died; rerunning %d tasks one at a time", len(pending) - done)
                    else:
                        yield on_crash(pending[done], _reason(e))
                        done += 1
                    break
                yield result
                done += 1
        finally:
            for fut in futures[done:]:
                fut.cancel()
            ex.shutdown(wait=True)
        pending, pool, workers = pending[done:], None, 1


def _reason(e: BaseException) -> str:
    cause = e.__cause__
    return str(cause).strip() if cause is not None and str(cause).strip() else "the worker process died"


__all__ = ["mp_context", "ordered_map"]
