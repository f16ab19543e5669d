"""The backfill scheduler: a fixed pool of Ray hash workers (slots), per-video deadlines and
retries, yielding one `Outcome` per video. It knows nothing of outputs or the ledger's tables:
the driver (engine/ray/backfill.py) records outcomes and hands results to the sinks
(engine/ray/sinks.py).

One video at a time per worker (backpressure: memory does not grow with the input, and the
per-video deadline is exact). A worker that dies (or is killed) costs its video one attempt
(`attempt(item)` records it and returns the count) and the video goes to a fresh worker; after
`max_attempts` the outcome is a failure of kind ``crash``. A worker still busy past the
timeout plus `kill_grace_s` is killed and the outcome is a failure of kind ``timeout``.
"""
from __future__ import annotations

import enum
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from engine.errors import VmatchError
from engine.ray.actors import FeatureWorker, HashWorker, HasherFactory
from engine.ray.ledger import Item

LOG = logging.getLogger(__name__)

#: A run whose workers all stay unstarted (no free resources in the cluster) this long gives up.
WORKER_START_TIMEOUT_S = 600.0
EventHook = Callable[[str, dict[str, Any]], None]


class SchedulerError(VmatchError):
    """Workers cannot be started; str() is one line."""


class SlotState(enum.Enum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"


@dataclass
class Outcome:
    """What became of one video: ``ok`` with the `.tmk` bytes, or a failure ``kind`` and ``reason``."""

    item: Item
    ok: bool
    tmk: bytes = b""
    frames: int = 0
    seconds: float = 0.0
    kind: str = ""
    reason: str = ""


class Slot:
    """One worker: its actor, its state and the video it runs."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.actor: Any = None
        self.feature: Any = None
        self.ref: Any = None
        self.state = SlotState.IDLE
        self.item: Item | None = None
        self.token = ""
        self.started = 0.0
        self.pid = 0


def first_line(e: BaseException | str) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


class Scheduler:
    """Slots, deadlines and retries over Ray actors; `outcomes(items)` yields Outcome (or None as
    a heartbeat about every 0.25 s, so the caller can commit on time while videos are running).

    ``rc`` is the validated ``ray:`` section (plain options); ``settings`` the worker settings.
    """

    def __init__(self, rc: dict[str, Any], settings: dict[str, Any], attempt: Callable[[Item], int],
                 hasher_factory: HasherFactory | None = None, hooks: EventHook | None = None) -> None:
        self.rc, self.settings, self.attempt = rc, settings, attempt
        self.hasher_factory, self.hooks = hasher_factory, hooks
        self.slots: list[Slot] = []
        self.features: list[Any] = []
        self.killed = 0
        self.retried = 0
        self.t_first: float | None = None   # when the first worker became ready
        self._actor_cls: Any = None

    def _event(self, name: str, **info: Any) -> None:
        LOG.debug("%s %s", name, info)
        if self.hooks is not None:
            self.hooks(name, info)

    # ------------------------------------------------------------------ pool
    def start(self, n: int, n_feat: int, mode: str, params: Any, fast_exact_below: float) -> None:
        """Create the GPU feature workers (waiting until they are up) and start n hash workers."""
        import ray

        rc = self.rc
        cpa = float(rc["cpus_per_actor"] or 1)
        self._actor_cls = ray.remote(HashWorker).options(num_cpus=cpa, max_restarts=0, max_task_retries=0)
        self.slots = [Slot(i) for i in range(n)]
        if n_feat:
            feat_cls = ray.remote(FeatureWorker).options(num_gpus=float(rc["gpus_per_worker"]), num_cpus=0,
                                                         max_restarts=-1, max_task_retries=0)
            self.features = [feat_cls.remote(params, mode, fast_exact_below, rc["torch_threads"])
                             for _ in range(n_feat)]
            try:
                ray.get([f.ready.remote() for f in self.features], timeout=600)
            except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as e:
                raise SchedulerError(f"cannot start GPU feature workers: {first_line(e)}") from None
        for sl in self.slots:
            self._start(sl)

    def close(self) -> None:
        """Free the cluster's resources (also when the run is interrupted)."""
        import ray

        for a in [sl.actor for sl in self.slots if sl.actor is not None] + self.features:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass

    def _start(self, sl: Slot) -> None:
        feature = self.features[sl.n % len(self.features)] if self.features else None
        sl.feature = feature
        sl.actor = self._actor_cls.remote(self.settings, feature, self.hasher_factory)
        sl.ref, sl.state, sl.item = sl.actor.ready.remote(), SlotState.STARTING, None

    def _replace(self, sl: Slot) -> None:
        import ray

        if sl.feature is not None and sl.token:
            sl.feature.abort.remote(sl.token)
        try:
            ray.kill(sl.actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already dead
            pass
        self._start(sl)

    def _submit(self, sl: Slot, it: Item) -> None:
        sl.item, sl.state, sl.started = it, SlotState.BUSY, time.monotonic()
        sl.token = f"{it.id}.{it.attempts}.{sl.n}.{time.monotonic_ns()}"
        sl.ref = sl.actor.hash.remote(it.id, it.path, sl.token)
        self._event("submit", slot=sl.n, pid=sl.pid, path=it.path, id=it.id)

    def _retry(self, it: Item, retry: deque, why: str) -> Outcome | None:
        it.attempts = self.attempt(it)
        if it.attempts >= int(self.rc["max_attempts"]):
            return Outcome(it, False, kind="crash", reason=f"{why}; gave up after {it.attempts} attempts")
        self.retried += 1
        retry.append(it)
        return None

    # ------------------------------------------------------------------ the loop
    def outcomes(self, items: Iterator[Item]) -> Iterator[Outcome | None]:
        import ray

        slots, rc = self.slots, self.rc
        n = len(slots)
        retry: deque[Item] = deque()
        exhausted = False
        start_failures = 0
        timeout = self.settings["timeout_s"]
        deadline_s = None if timeout is None else float(timeout) + float(rc["kill_grace_s"])
        t_progress = time.monotonic()

        def next_item() -> Item | None:
            nonlocal exhausted
            if retry:
                return retry.popleft()
            if exhausted:
                return None
            it = next(items, None)
            if it is None:
                exhausted = True
            return it

        while True:
            for sl in slots:
                if sl.state is SlotState.IDLE:
                    it = next_item()
                    if it is None:
                        break
                    self._submit(sl, it)
            if exhausted and not retry and not any(sl.state is SlotState.BUSY for sl in slots):
                return  # all done (a worker that never got started does not hold the run)
            busy = {sl.ref: sl for sl in slots if sl.ref is not None}
            if all(sl.state is SlotState.STARTING for sl in slots):
                if time.monotonic() - t_progress > WORKER_START_TIMEOUT_S:
                    raise SchedulerError(f"no hash worker started in {WORKER_START_TIMEOUT_S:g} s "
                                         f"(does the cluster have {rc['cpus_per_actor']} free CPU per worker?)")
            else:
                t_progress = time.monotonic()
            if not busy:
                return
            ready, _ = ray.wait(list(busy), num_returns=1, timeout=0.25)
            if ready:
                more, _ = ray.wait(list(busy), num_returns=len(busy), timeout=0)
                ready = list(dict.fromkeys(ready + more))
            for ref in ready:
                sl = busy[ref]
                sl.ref = None
                if sl.state is SlotState.STARTING:
                    try:
                        sl.pid = ray.get(ref)
                        sl.state = SlotState.IDLE
                        if self.t_first is None:
                            self.t_first = time.monotonic()
                        self._event("worker_ready", slot=sl.n, pid=sl.pid)
                    except ray.exceptions.RayError as e:
                        start_failures += 1
                        if start_failures > 3 * n:
                            raise SchedulerError(f"cannot start hash workers: {first_line(e)}") from None
                        self._start(sl)
                    continue
                it = sl.item
                assert it is not None
                sl.item, sl.state = None, SlotState.IDLE
                try:
                    res = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                        ray.exceptions.ObjectLostError, ray.exceptions.OutOfMemoryError) as e:
                    self._event("worker_died", slot=sl.n, pid=sl.pid, path=it.path)
                    out = self._retry(it, retry, f"worker died ({type(e).__name__})")
                    self._replace(sl)
                    if out is not None:
                        yield out
                    continue
                except ray.exceptions.RayTaskError as e:
                    yield Outcome(it, False, kind="error",
                                  reason=first_line(e.cause if getattr(e, "cause", None) else e))
                    continue
                if res.get("ok"):
                    nxt = next_item()  # keep the worker busy while this result is written
                    if nxt is not None:
                        self._submit(sl, nxt)
                    yield Outcome(it, True, tmk=res["tmk"], frames=int(res["frames"]), seconds=float(res["seconds"]))
                elif res.get("kind") == "lost":
                    out = self._retry(it, retry, res.get("reason", "feature worker lost"))
                    if out is not None:
                        yield out
                else:
                    if res.get("recycle"):
                        self._replace(sl)
                    yield Outcome(it, False, kind=res["kind"], reason=res["reason"])
            if deadline_s is not None:
                now = time.monotonic()
                for sl in slots:
                    if sl.state is SlotState.BUSY and now - sl.started > deadline_s:
                        it = sl.item
                        assert it is not None
                        self._event("kill", slot=sl.n, pid=sl.pid, path=it.path)
                        self.killed += 1
                        sl.item = None
                        self._replace(sl)
                        yield Outcome(it, False, kind="timeout",
                                      reason=f"decode timed out after {float(timeout):g} s (worker killed)")
            yield None  # heartbeat: the caller commits what is due
