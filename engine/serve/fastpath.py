"""POST /m/raw_lookup without the framework's per-request layers: the hot endpoint of a matcher.

A raw lookup carries a 351 KB TMK string and is answered in a few milliseconds, so routing,
dependency resolution, pydantic validation and the standard-library JSON parser were a large part
of its CPU time.  This ASGI layer sits inside ServeMiddleware (auth, body limit, metrics and the
access log still apply) and in front of the FastAPI app: a JSON object whose fields have the types
`RawLookupBody` declares is answered here by the same `raw_lookup` function as the FastAPI
route, with the same JSON and status codes; anything else (another content type, invalid JSON,
wrong field types) is replayed to the FastAPI route, which gives its usual 400 answers.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from engine.serve.app import raw_lookup
from engine.serve.banks import BankError

try:                       # ~5x faster than json on a 351 KB string (the `serve` extra installs it)
    import orjson

    _loads = orjson.loads
except ImportError:        # pragma: no cover - without the extra: the standard parser
    _loads = json.loads

log = logging.getLogger("vmatch.serve")

PATH = "/m/raw_lookup"


class _Route:
    """What the metrics and access log read from scope["route"] (FastAPI's route template)."""

    path = PATH


def _fields(body: bytes) -> dict[str, Any] | None:
    """The request's fields when they are what RawLookupBody accepts as is, else None (replay)."""
    try:
        obj = _loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("signal"), str):
        return None
    st, banks, dist = obj.get("signal_type", "tmk_pdqf"), obj.get("banks"), obj.get("include_distance", False)
    if not isinstance(st, str):
        return None
    if not (banks is None or isinstance(banks, str) or (isinstance(banks, list)
                                                         and all(isinstance(b, str) for b in banks))):
        return None
    if not (dist is None or isinstance(dist, (bool, str))):
        return None
    return {"signal_type": st, "signal": obj["signal"], "banks": banks, "include_distance": dist}


def _is_json(scope: dict[str, Any]) -> bool:
    for k, v in scope.get("headers", []):
        if k == b"content-type":
            mt = v.split(b";", 1)[0].strip().lower()
            return mt == b"application/json" or mt.endswith(b"+json")
    return False


class RawLookupFastPath:
    def __init__(self, app: Any, service: Any, request_timeout_s: float) -> None:
        self.app, self.service, self.timeout = app, service, request_timeout_s

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST" or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        body = b"".join(chunks)
        fields = _fields(body)
        if fields is None:
            replayed = False

            async def replay() -> dict[str, Any]:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
            return
        scope["route"] = _Route
        try:
            status, out = 200, await raw_lookup(self.service, self.timeout, **fields)
        except BankError as e:
            status, out = e.status, {"message": e.message}
        except Exception as e:  # noqa: BLE001 - as the app's handler: logged, a one-line 500
            log.exception("POST %s failed", PATH)
            status, out = 500, {"message": f"internal error ({type(e).__name__})"}
        data = json.dumps(out, separators=(",", ":")).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})
