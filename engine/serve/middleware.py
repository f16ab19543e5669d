"""ASGI middleware: bearer auth, request body limit, metrics and one access-log line per request.

Pure ASGI (no response buffering), outermost around the FastAPI app, so it also covers
/docs, /openapi.json, 404s and the Ray Serve ingress.
"""
from __future__ import annotations

import hmac
import json
import logging
import os
import time
from typing import Any, Awaitable, Callable

from engine.serve.metrics import Metrics

access = logging.getLogger("vmatch.access")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

#: Paths reachable without the token (load balancers' liveness probes).
OPEN_PATHS = frozenset({"/status/live"})


class _TooLarge(BaseException):
    """Raised from receive() past the limit; a BaseException so the app's error handlers let it through."""


async def _json(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"message": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def _endpoint(scope: Scope) -> str:
    """The route template (bounded label cardinality); 'unmatched' for 404s."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class ServeMiddleware:
    def __init__(self, app: Any, metrics: Metrics, token: str | None = None, max_body: int = 128 << 20) -> None:
        self.app, self.metrics, self.max_body = app, metrics, max_body
        self.token = token.encode() if token else None

    def _authorized(self, scope: Scope) -> bool:
        if self.token is None or scope.get("path") in OPEN_PATHS:
            return True
        for k, v in scope.get("headers", []):
            if k == b"authorization":
                scheme, _, cred = v.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(cred.strip(), self.token)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        state = {"status": 500, "out": 0, "in": 0, "started": False}

        async def send_wrapped(msg: dict[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                state["status"], state["started"] = msg["status"], True
            elif msg["type"] == "http.response.body":
                state["out"] += len(msg.get("body", b""))
            await send(msg)

        async def receive_limited() -> dict[str, Any]:
            msg = await receive()
            if msg["type"] == "http.request":
                state["in"] += len(msg.get("body", b""))
                if state["in"] > self.max_body:
                    raise _TooLarge()
            return msg

        try:
            if not self._authorized(scope):
                await _json(send_wrapped, 401, "missing or invalid bearer token (Authorization: Bearer <token>)",
                            [(b"www-authenticate", b"Bearer")])
                return
            length = next((v for k, v in scope.get("headers", []) if k == b"content-length"), None)
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                await _json(send_wrapped, 413 if length.isdigit() else 400,
                            f"request body larger than the limit of {self.max_body} bytes" if length.isdigit()
                            else "invalid Content-Length")
                return
            try:
                await self.app(scope, receive_limited, send_wrapped)
            except _TooLarge:
                if not state["started"]:
                    await _json(send_wrapped, 413, f"request body larger than the limit of {self.max_body} bytes")
        finally:
            dt = time.perf_counter() - t0
            endpoint = _endpoint(scope)
            self.metrics.observe(endpoint, scope.get("method", ""), state["status"], dt)
            client = scope.get("client") or ("", 0)
            access.info(json.dumps({"ts": round(time.time(), 3), "client": client[0], "method": scope.get("method"),
                                    "path": scope.get("path"), "endpoint": endpoint, "status": state["status"],
                                    "ms": round(dt * 1000, 2), "bytes_in": state["in"], "bytes_out": state["out"],
                                    "pid": os.getpid()},
                                   separators=(",", ":")))
