"""`vmatch serve --ray`: the same HTTP app as an ingress on Ray Serve, with hasher and matcher replicas.

* **Ingress** (the FastAPI app of engine/serve/app.py with the same middleware): parses and
  validates requests, forwards them through deployment handles.
* **Curator** (one replica): the only writer: a writable `BankStore` (group commits, durable
  acknowledgements); curation reads go here too, so a client reads its own writes.
* **Matcher** replicas: read-only `BankStore`s on the same data folder (a shared file system
  on a multi-node cluster) that pick up the curator's commits by polling the manifests
  (incremental refresh, no rebuild) - visible within ``poll_s`` plus one refresh.  Lookups
  are batched dynamically with ``serve.batch`` (one index query per batch: one level-1
  product, level-2 grouped, on the replica's GPU where it has one).
* **Hasher** replicas: one `VideoHasher` each (fast mode on a GPU where the replica has one).

Replica counts and resources: the ``ray:`` section of configs/serve.yaml.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from engine.serve.banks import BankError, BankStore
from engine.serve.hashing import HashResult, QueueFull
from engine.serve.service import match_json

log = logging.getLogger("vmatch.serve")


def _unwrap(e: BaseException) -> BaseException:
    """The BankError inside a Ray task error (so the client gets its 4xx), else `e`."""
    seen = 0
    while seen < 5:
        if isinstance(e, BankError) and type(e).__module__.startswith("engine."):
            return e
        cause = getattr(e, "cause", None) or e.__cause__
        if cause is None:
            break
        e, seen = cause, seen + 1
    if isinstance(e, BankError):
        return BankError(e.status, e.message)
    return e


async def _call(ref: Any) -> Any:
    try:
        return await ref
    except Exception as e:  # noqa: BLE001 - re-raised as the replica's own error where it is one
        u = _unwrap(e)
        if isinstance(u, BankError):
            raise BankError(u.status, u.message) from None
        if type(e).__name__ == "BackPressureError":
            raise QueueFull(2) from None
        raise


class Curator:
    """The writer replica."""

    def __init__(self, data: str, settings: Any) -> None:
        from engine.serve.server import set_torch_threads
        set_torch_threads(settings.torch_threads)
        self.store = BankStore(data, c1=settings.c1, c2=settings.c2, device="cpu", poll_s=settings.poll_s,
                               shards=settings.bank_shards, store=settings.bank_store,
                               compact_segments=settings.compact_segments)
        self.store.start()
        self.store.ready.wait(600)

    async def call(self, method: str, *args: Any) -> Any:
        st = self.store
        if method in ("create_bank", "update_bank", "delete_bank", "add", "remove"):
            return await asyncio.wrap_future(getattr(st, method)(*args))
        if method == "list_banks":
            return [st.bank_json(b) for b in st.list_banks()]
        if method == "get_bank":
            return st.bank_json(st.bank(*args))
        if method == "content":
            return await asyncio.to_thread(st.content, *args)
        if method == "index_status":
            return st.index_status()
        if method == "ready":
            return None if st.ready.is_set() else (st.load_error or "INDEX-NOT-LOADED")
        if method == "gauges":
            return {"bank_sizes": {b.name: b.size for b in st.list_banks()}, "write_queue": st._ops.qsize()}
        raise BankError(400, f"unknown operation {method}")


class Matcher:
    """A read replica: polls the data folder, answers batched lookups."""

    def __init__(self, data: str, settings: Any) -> None:
        from engine.serve.server import set_torch_threads
        set_torch_threads(settings.torch_threads)
        deadline = time.monotonic() + 120
        while not Path(data).is_dir() and time.monotonic() < deadline:   # the curator creates it
            time.sleep(0.2)
        self.store = BankStore(data, c1=settings.c1, c2=settings.c2, device=settings.device,
                               writable=False, poll_s=settings.poll_s)
        self.store.start()
        self.store.ready.wait(600)

    async def lookup(self, requests: list[tuple[list[Any], tuple]]) -> list[Any]:
        """One batch (serve.batch): requests grouped by (banks, c1, c2, top), one query per group."""
        groups: dict[tuple, list[int]] = {}
        for k, (_, key) in enumerate(requests):
            groups.setdefault(key, []).append(k)
        out: list[Any] = [None] * len(requests)
        for key, members in groups.items():
            banks, c1, c2, top = key
            needles = [n for k in members for n in requests[k][0]]
            try:
                res = await asyncio.to_thread(self.store.lookup, needles, list(banks) or None, c1, c2, top)
            except BankError as e:
                for k in members:
                    out[k] = e
                continue
            at = 0
            for k in members:
                n = len(requests[k][0])
                out[k] = [[match_json(b, m) for b, m in ms] for ms in res[at:at + n]]
                at += n
        return out


class Hasher:
    def __init__(self, make_hasher: Any, settings: Any) -> None:
        from engine.serve.hashing import HashPool
        self.pool = HashPool(make_hasher, workers=1, queue=max(0, int(settings.hash_queue)))

    async def hash(self, data: bytes, suffix: str, name: str) -> HashResult:
        fd, tmp = tempfile.mkstemp(prefix="vmatch-upload-", suffix=suffix)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return await asyncio.wrap_future(self.pool.submit(tmp, name))
        finally:
            os.unlink(tmp)


class RayService:
    """`Service` over deployment handles (engine/serve/service.py)."""

    def __init__(self, curator: Any, matcher: Any, hasher: Any, hash_capacity: int) -> None:
        self.curator, self.matcher, self.hasher = curator, matcher, hasher
        self.hash_capacity = hash_capacity
        self.pending = 0
        self.frames = 0
        self.seconds = 0.0
        self._recent: list[tuple[float, int, float]] = []
        self._gauges: dict[str, Any] = {}

    async def _c(self, method: str, *args: Any) -> Any:
        return await _call(self.curator.call.remote(method, *args))

    async def ready(self) -> str | None:
        try:
            return await self._c("ready")
        except Exception as e:  # noqa: BLE001 - not up yet
            return f"INDEX-NOT-LOADED ({type(e).__name__})"

    async def list_banks(self) -> list[dict[str, Any]]:
        return await self._c("list_banks")

    async def get_bank(self, name: str) -> dict[str, Any]:
        return await self._c("get_bank", name)

    async def create_bank(self, name: str, c1: Any, c2: Any) -> dict[str, Any]:
        return await self._c("create_bank", name, c1, c2)

    async def update_bank(self, name: str, c1: Any, c2: Any) -> dict[str, Any]:
        return await self._c("update_bank", name, c1, c2)

    async def delete_bank(self, name: str) -> dict[str, Any]:
        return await self._c("delete_bank", name)

    async def add(self, name: str, items: list[Any]) -> list[int]:
        return await self._c("add", name, items)

    async def content(self, name: str, content_id: int) -> dict[str, Any]:
        return await self._c("content", name, content_id)

    async def remove(self, name: str, content_id: int) -> dict[str, Any]:
        return await self._c("remove", name, content_id)

    async def lookup(self, needles: list[Any], banks: list[str] | None, c1: float | None, c2: float | None,
                     top: int | None) -> list[list[dict[str, Any]]]:
        for b in banks or []:
            await self.get_bank(b)              # unknown bank: 404 from the curator
        res = await _call(self.matcher.lookup.remote((needles, (tuple(banks) if banks else (), c1, c2, top))))
        if isinstance(res, BaseException):
            raise _unwrap(res)
        return res

    async def hash(self, path: Path, name: str) -> HashResult:
        if self.pending >= self.hash_capacity:
            raise QueueFull(2)
        self.pending += 1
        try:
            data = await asyncio.to_thread(Path(path).read_bytes)
            res: HashResult = await _call(self.hasher.hash.remote(data, Path(path).suffix, name))
        finally:
            self.pending -= 1
        self.frames += res.frames
        self.seconds += res.seconds
        now = time.time()
        self._recent = [r for r in self._recent if now - r[0] <= 60] + [(now, res.frames, res.seconds)]
        return res

    async def index_status(self) -> dict[str, Any]:
        return await self._c("index_status")

    def gauges(self) -> dict[str, Any]:
        async def refresh() -> None:
            try:
                self._gauges = await self._c("gauges")
            except Exception:  # noqa: BLE001 - metrics are best effort
                pass
        asyncio.ensure_future(refresh())
        secs = sum(s for _, _, s in self._recent)
        return {**self._gauges, "hash_queue": self.pending, "hash_frames_total": self.frames,
                "hash_seconds_total": self.seconds,
                "hash_frames_per_second": sum(f for _, f, _ in self._recent) / secs if secs else 0.0}

    async def close(self) -> None:
        return None


def build_app(opts: Any) -> Any:
    """The Serve application graph (ingress bound to curator, matchers and hashers)."""
    from ray import serve

    from engine.serve.app import create_app
    from engine.serve.metrics import Metrics
    from engine.serve.middleware import ServeMiddleware

    s, r = opts.settings, opts.settings.ray
    data = str(Path(opts.data).resolve())
    metrics = Metrics()

    class _Proxy:
        """Stands for the RayService until the ingress replica has its handles."""
        target: Any = None

        def __getattr__(self, name: str) -> Any:
            return getattr(type(self).target, name)

    proxy = _Proxy()
    app = create_app(proxy, metrics, s.request_timeout_s, s.hash_timeout_s, title="vmatch serve (Ray)")
    app.add_middleware(ServeMiddleware, metrics=metrics, token=opts.token,
                       max_body=int(s.max_body_mb * (1 << 20)))
    capacity = int(r.hashers) * (1 + int(s.hash_queue))

    @serve.deployment(name="ingress", ray_actor_options={"num_cpus": 0})
    @serve.ingress(app)
    class Ingress:
        def __init__(self, curator: Any, matcher: Any, hasher: Any) -> None:
            _Proxy.target = RayService(curator, matcher, hasher, capacity)

    batched = type("BatchedMatcher", (Matcher,), {
        "lookup": serve.batch(max_batch_size=int(r.batch_max),
                              batch_wait_timeout_s=float(r.batch_wait_s))(Matcher.lookup)})
    curator = serve.deployment(Curator, name="curator", num_replicas=1,
                               ray_actor_options={"num_cpus": 0}).bind(data, s)
    matcher = serve.deployment(batched, name="matcher", num_replicas=int(r.matchers),
                               ray_actor_options={"num_cpus": 0.5, "num_gpus": float(r.matcher_gpus)}
                               ).bind(data, s)
    hasher = serve.deployment(Hasher, name="hasher", num_replicas=int(r.hashers),
                              max_ongoing_requests=1 + int(s.hash_queue),
                              ray_actor_options={"num_cpus": 0.5, "num_gpus": float(r.hasher_gpus)}
                              ).bind(opts.make_hasher, s)
    return Ingress.bind(curator, matcher, hasher)


def run_ray(opts: Any, cfg: Any) -> int:
    """Start (or join) Ray, run the application, serve until SIGTERM/SIGINT, then shut Serve down."""
    from ray import serve

    from engine.ray.cluster import connect
    from engine.serve.server import announce

    s = opts.settings
    Path(opts.data).mkdir(parents=True, exist_ok=True)
    session = connect(s.ray.address)
    r = s.ray
    for key, count in (("hasher_gpus", r.hashers), ("matcher_gpus", r.matchers)):
        if getattr(r, key) == "auto":     # hashers: a GPU each where the cluster has them; matchers: a share of the rest
            spare = session.gpus if key == "hasher_gpus" else max(0.0, session.gpus - r.hashers)
            setattr(r, key, min(1.0, spare / max(1, int(count))) if spare > 0 else 0.0)
    log.info("Ray: %g CPUs, %g GPUs; %s hasher(s) x %g GPU, %s matcher(s) x %g GPU", session.cpus, session.gpus,
             r.hashers, r.hasher_gpus, r.matchers, r.matcher_gpus)
    host, port = str(s.host), int(s.port)
    if port == 0:
        from engine.serve.server import bind
        sock = bind(host, 0)
        port = sock.getsockname()[1]
        sock.close()
    serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
    serve.run(build_app(opts), name="vmatch", route_prefix="/", blocking=False)
    announce(opts, host, port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("stopping the application (replicas finish their requests; queued writes are committed)")
    serve.delete("vmatch")
    if session.started:
        session.close()          # our local Ray: everything goes with it
    return 0
