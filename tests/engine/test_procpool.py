"""engine.procpool.ordered_map: input order, costliest first, a dying worker pinned on its own input."""
from __future__ import annotations

import os

from engine.procpool import ordered_map


def _square(x: int) -> int:
    return x * x


def _die_on_three(x: int) -> int:
    if x == 3:
        os._exit(7)   # as a decoder crash or the OOM killer would end the worker
    return x * 10


def _crash(x: int, reason: str) -> int:
    return -x


def test_results_in_input_order_whatever_the_start_order():
    items = list(range(12))
    assert list(ordered_map(_square, items, 3, on_crash=_crash, cost=lambda x: x % 5)) == [x * x for x in items]
    assert list(ordered_map(_square, [], 2, on_crash=_crash)) == []


def test_a_dying_worker_fails_only_its_own_input():
    got = list(ordered_map(_die_on_three, list(range(7)), 2, on_crash=_crash))
    assert got == [0, 10, 20, -3, 40, 50, 60]


def test_spawned_workers_too():
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")   # what a process with other threads running gets
    assert list(ordered_map(_square, [3, 1, 2], 2, on_crash=_crash, context=ctx)) == [9, 1, 4]
