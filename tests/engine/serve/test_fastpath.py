"""The POST /m/raw_lookup fast path answers exactly as the FastAPI route does (same bytes, same status)."""
from __future__ import annotations

import asyncio
import json

from engine.serve.app import create_app
from engine.serve.banks import BankStore
from engine.serve.fastpath import RawLookupFastPath
from engine.serve.hashing import HashPool
from engine.serve.metrics import Metrics
from engine.serve.service import LocalService
from engine.signals import encode
from engine.synthetic import random_signatures
from tests.engine.serve.test_live import near_copy


async def _call(app, body: bytes, content_type: bytes = b"application/json") -> tuple[int, bytes]:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/m/raw_lookup", "raw_path": b"/m/raw_lookup", "query_string": b"",
             "root_path": "", "headers": [(b"content-type", content_type),
                                          (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}
    parts = [body[i:i + 65536] for i in range(0, len(body), 65536)] or [b""]
    msgs = [{"type": "http.request", "body": p, "more_body": k < len(parts) - 1} for k, p in enumerate(parts)]
    out: dict = {"body": b""}

    async def receive():
        return msgs.pop(0) if msgs else {"type": "http.disconnect"}

    async def send(m):
        if m["type"] == "http.response.start":
            out["status"] = m["status"]
        else:
            out["body"] += m.get("body", b"")

    await app(scope, receive, send)
    return out["status"], out["body"]


def test_fast_path_equals_the_fastapi_route(tmp_path):
    store = BankStore(tmp_path / "d", device="cpu")
    store.start()
    assert store.ready.wait(60)
    sigs = random_signatures(6, seed=51)
    store.create_bank("FP").result(60)
    ids = store.add("FP", [(f, None, None) for f in sigs]).result(60)
    service = LocalService(store, HashPool(lambda: None), 0)
    app = create_app(service, Metrics(), 30.0)
    replayed = []

    async def counting(scope, receive, send):
        replayed.append(scope["path"])
        await app(scope, receive, send)

    fast = RawLookupFastPath(counting, service, 30.0)
    hit = encode(near_copy(sigs[2], 3))
    bodies = [
        {"signal": hit}, {"signal": hit, "banks": "FP", "include_distance": True},
        {"signal": hit, "banks": ["FP"], "include_distance": "true", "signal_type": "tmk_pdqf"},
        {"signal": encode(random_signatures(1, seed=99)[0])}, {"signal": hit, "extra": 1},
        {"signal": hit, "banks": "NOPE"}, {"signal": hit, "banks": "bad name"}, {"signal": hit, "signal_type": "pdq"},
        {"signal": hit, "include_distance": "maybe"}, {"signal": hit[:1000]}, {"signal": ""},
        # not the fast path's: replayed to the route (its own 400s, or pydantic's coercions)
        {"signal": hit, "signal_type": None}, {"signal": hit, "include_distance": 1}, {"signal": 5},
        {"signal": hit, "banks": [1]}, {"signal_type": "tmk_pdqf"}, [hit],
    ]
    raw = [json.dumps(b).encode() for b in bodies] + [b"{not json", b""]
    try:
        for k, body in enumerate(raw):
            want = asyncio.run(_call(app, body))
            assert asyncio.run(_call(fast, body)) == want, body[:80]
            assert len(replayed) == max(0, k - 10), (k, body[:80])   # the first 11 answered by the fast path
        st, out = asyncio.run(_call(fast, json.dumps({"signal": hit}).encode()))
        assert (st, json.loads(out)) == (200, {"matches": [ids[2]]})
        assert asyncio.run(_call(fast, json.dumps({"signal": hit}).encode(), b"text/plain")) == \
            asyncio.run(_call(app, json.dumps({"signal": hit}).encode(), b"text/plain"))
    finally:
        asyncio.run(service.close())
