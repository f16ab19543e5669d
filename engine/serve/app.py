"""The HTTP API: HMA-compatible endpoints (signal type ``tmk_pdqf``) and a native JSON API.

HMA (OpenMediaMatch) paths, parameters and JSON shapes: ``/status``, ``/c/...`` (curation),
``/m/...`` (matching), ``/h/hash``.  A TMK string (351 KB) does not fit in a URL, so every
GET that takes a signal also has a POST form with the same fields as JSON.  The native API
(``/v1/...``) returns both levels and the offsets and takes batches.  Distances are given as
``"L1/L2"`` (level-1 and level-2, 6 decimals).  Errors: ``{"message": "..."}`` with a 4xx
status (5xx only for server faults), never a traceback.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Optional, Union

from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.features import TmkFeatures
from engine.serve.banks import BankError, check_bank_name
from engine.serve.hashing import QueueFull
from engine.serve.metrics import Metrics
from engine.serve.service import Service, check_banks
from engine.signals import SIGNAL_TYPE, SignalError, decode, encode

log = logging.getLogger("vmatch.serve")

#: Signals per native batch lookup.
MAX_BATCH = 256


class SignalBody(BaseModel):
    tmk_pdqf: str = Field(description="TMK+PDQF signal string (TMK1FVECPDQF|base64, or base64 of the .tmk)")
    note: Optional[Any] = None
    metadata: Optional[Any] = None


class BankBody(BaseModel):
    name: str = Field(description="bank name, ^[A-Z0-9_]+$")
    c1: Optional[float] = Field(None, description="level-1 threshold of this bank (default: the server's)")
    c2: Optional[float] = Field(None, description="level-2 threshold of this bank (default: the server's)")


class BankUpdate(BaseModel):
    c1: Optional[float] = None
    c2: Optional[float] = None


class RawLookupBody(BaseModel):
    signal_type: str = SIGNAL_TYPE
    signal: str
    banks: Union[str, list[str], None] = None
    include_distance: Union[bool, str, None] = False


class CompareBody(BaseModel):
    tmk_pdqf: list[str] = Field(description="two signal strings")


class NativeLookup(BaseModel):
    signals: list[str]
    banks: Optional[list[str]] = None
    c1: Optional[float] = None
    c2: Optional[float] = None
    top: Optional[int] = None


class NativeItem(BaseModel):
    signal: str
    note: Optional[Any] = None
    metadata: Optional[Any] = None


class NativeAdd(BaseModel):
    signals: list[NativeItem]


def _err(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"message": message}, status_code=status, headers=headers)


def _signal(s: Any, where: str = "signal") -> TmkFeatures:
    try:
        return decode(s, where)
    except SignalError as e:
        raise BankError(400, f"invalid signal: {e}") from None


def _signal_type(t: str | None) -> None:
    if t not in (None, "", SIGNAL_TYPE):
        raise BankError(400, f"unknown signal_type {t!r} (this server matches {SIGNAL_TYPE!r})")


def _bool(v: Any, name: str) -> bool:
    if isinstance(v, bool):
        return v
    if v is None:
        return False
    s = str(v).strip().lower()
    if s in ("", "0", "false", "no", "off"):
        return False
    if s in ("1", "true", "yes", "on"):
        return True
    raise BankError(400, f"{name} must be true or false (got {v!r})")


def _banks(v: Any) -> list[str] | None:
    if v is None or v == "":
        return None
    if isinstance(v, str):
        v = [b.strip() for b in v.split(",") if b.strip()]
    return check_banks(v)


def _distance(m: dict[str, Any]) -> str:
    return f"{m['level1']:.6f}/{m['level2']:.6f}"


def _metadata(raw: str | None) -> Any:
    if raw is None or raw == "":
        return None
    try:
        return json.loads(raw)
    except ValueError as e:
        raise BankError(400, f"metadata is not valid JSON ({e})") from None


async def time_limited(coro: Any, timeout: float) -> Any:
    """`coro`, or a 504 past `timeout` seconds (the per-request limit)."""
    try:
        return await asyncio.wait_for(coro, timeout)
    except asyncio.TimeoutError:
        raise BankError(504, f"the request took longer than {timeout:g} s") from None


async def raw_lookup(service: Service, timeout: float, signal_type: str | None, signal: Any, banks: Any,
                     include_distance: Any) -> dict:
    """HMA's raw lookup (GET and POST /m/raw_lookup, and the fast path of engine/serve/fastpath.py)."""
    _signal_type(signal_type)
    if signal is None or signal == "":
        raise BankError(400, "missing parameter 'signal'")
    distance = _bool(include_distance, "include_distance")
    feats = _signal(signal)
    res = (await time_limited(service.lookup([feats], _banks(banks), None, None, None), timeout))[0]
    if distance:
        return {"matches": [{"bank_content_id": m["id"], "distance": _distance(m)} for m in res]}
    return {"matches": [m["id"] for m in res]}


def create_app(service: Service, metrics: Metrics, request_timeout_s: float = 60.0,
               hash_timeout_s: float = 600.0, title: str = "vmatch serve",
               on_startup: Callable[[], Any] | None = None) -> FastAPI:
    """The FastAPI app over `service` (middleware for auth, limits and logs: engine/serve/middleware.py).

    `on_startup` runs when the server starts; `service.close()` when it stops (SIGTERM: requests
    in flight finish, queued writes are committed)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if on_startup:
            on_startup()
        yield
        await service.close()

    app = FastAPI(title=title, description=__doc__, version="1", lifespan=lifespan)
    app.state.service, app.state.metrics = service, metrics

    @app.exception_handler(BankError)
    async def bank_error(_: Request, e: BankError) -> JSONResponse:
        headers = {"Retry-After": str(e.retry_after)} if isinstance(e, QueueFull) else None
        return _err(e.status, e.message, headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, e: RequestValidationError) -> JSONResponse:
        parts = []
        for d in e.errors()[:3]:
            loc = ".".join(str(x) for x in d.get("loc", ()) if x != "body") or "body"
            parts.append(f"{loc}: {d.get('msg', 'invalid')}")
        return _err(400, "bad request: " + "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return _err(e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def server_error(req: Request, e: Exception) -> JSONResponse:
        log.exception("%s %s failed", req.method, req.url.path)
        return _err(500, f"internal error ({type(e).__name__})")

    async def limited(coro: Any, timeout: float | None = None) -> Any:
        return await time_limited(coro, timeout or request_timeout_s)

    async def hash_upload(video: UploadFile | None) -> tuple[TmkFeatures, float]:
        if video is None:
            raise BankError(400, "missing multipart field 'video'")
        name = video.filename or "video"
        suffix = Path(name).suffix[:16] if Path(name).suffix.isascii() else ""
        fd, tmp = tempfile.mkstemp(prefix="vmatch-upload-", suffix=suffix)
        try:
            with os.fdopen(fd, "wb") as out:
                await asyncio.to_thread(shutil.copyfileobj, video.file, out, 1 << 20)
            if os.path.getsize(tmp) == 0:
                raise BankError(400, f"{name}: empty upload")
            res = await limited(service.hash(Path(tmp), name), hash_timeout_s)
        finally:
            os.unlink(tmp)
        return res.features, res.seconds

    # ------------------------------------------------------------------ core
    @app.get("/status", response_class=PlainTextResponse, tags=["core"])
    async def status() -> Response:
        why = await service.ready()
        return PlainTextResponse("I-AM-ALIVE" if why is None else "INDEX-NOT-LOADED", 200 if why is None else 503)

    @app.get("/status/live", response_class=PlainTextResponse, tags=["core"])
    async def live() -> str:
        return "I-AM-ALIVE"

    @app.get("/metrics", response_class=PlainTextResponse, tags=["core"])
    async def prometheus() -> Response:
        return Response(metrics.render(service.gauges()), media_type=metrics.content_type)

    # ------------------------------------------------------------------ curation (HMA /c)
    @app.get("/c/banks", tags=["curation"])
    async def banks_list() -> list[dict[str, Any]]:
        return await service.list_banks()

    @app.post("/c/banks", status_code=201, tags=["curation"])
    async def banks_create(body: BankBody) -> dict[str, Any]:
        check_bank_name(body.name)
        return await limited(service.create_bank(body.name, body.c1, body.c2))

    @app.get("/c/bank/{name}", tags=["curation"])
    async def bank_get(name: str) -> dict[str, Any]:
        return await service.get_bank(name)

    @app.put("/c/bank/{name}", tags=["curation"])
    async def bank_update(name: str, body: BankUpdate) -> dict[str, Any]:
        return await limited(service.update_bank(name, body.c1, body.c2))

    @app.delete("/c/bank/{name}", tags=["curation"])
    async def bank_delete(name: str) -> dict[str, Any]:
        return await limited(service.delete_bank(name))

    @app.post("/c/bank/{name}/signal", status_code=201, tags=["curation"])
    async def bank_add_signal(name: str, body: SignalBody) -> dict[str, Any]:
        check_bank_name(name)
        feats = _signal(body.tmk_pdqf, "tmk_pdqf")
        ids = await limited(service.add(name, [(feats, body.note, body.metadata)]))
        return {"id": ids[0], "signals": {SIGNAL_TYPE: encode(feats)}}

    @app.post("/c/bank/{name}/content", status_code=201, tags=["curation"])
    async def bank_add_content(name: str, video: Optional[UploadFile] = File(None),
                               metadata: Optional[str] = Query(None, description="JSON")) -> dict[str, Any]:
        await service.get_bank(check_bank_name(name))
        meta = _metadata(metadata)
        feats, _ = await hash_upload(video)
        ids = await limited(service.add(name, [(feats, video.filename if video else None, meta)]))
        return {"id": ids[0], "signals": {SIGNAL_TYPE: encode(feats)}}

    @app.get("/c/bank/{name}/content/{content_id}", tags=["curation"])
    async def content_get(name: str, content_id: int) -> dict[str, Any]:
        return await limited(service.content(check_bank_name(name), content_id))

    @app.delete("/c/bank/{name}/content/{content_id}", tags=["curation"])
    async def content_delete(name: str, content_id: int) -> dict[str, Any]:
        return await limited(service.remove(check_bank_name(name), content_id))

    @app.get("/c/signal_type", tags=["curation"])
    async def signal_types() -> dict[str, Any]:
        return {SIGNAL_TYPE: {"enabled_ratio": 1.0}}

    @app.get("/c/content_type", tags=["curation"])
    async def content_types() -> dict[str, Any]:
        return {"video": {"enabled": True}}

    # ------------------------------------------------------------------ matching (HMA /m)
    @app.get("/m/raw_lookup", tags=["matching"])
    async def raw_lookup_get(signal_type: Optional[str] = None, signal: Optional[str] = None,
                             banks: Optional[str] = None, include_distance: Optional[str] = None) -> dict:
        return await raw_lookup(service, request_timeout_s, signal_type, signal, banks, include_distance)

    @app.post("/m/raw_lookup", tags=["matching"])
    async def raw_lookup_post(body: RawLookupBody) -> dict:
        """Usually answered by engine/serve/fastpath.py (same fields, same answers, less overhead)."""
        return await raw_lookup(service, request_timeout_s, body.signal_type, body.signal, body.banks,
                                body.include_distance)

    def by_bank(res: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for m in res:
            out.setdefault(m["bank"], []).append({"bank_content_id": m["id"], "distance": _distance(m)})
        return out

    @app.get("/m/lookup", tags=["matching"])
    async def lookup_get(signal_type: Optional[str] = None, signal: Optional[str] = None,
                         banks: Optional[str] = None) -> dict:
        _signal_type(signal_type)
        if not signal:
            raise BankError(400, "missing parameter 'signal' (a url is not fetched by this server)")
        res = (await limited(service.lookup([_signal(signal)], _banks(banks), None, None, None)))[0]
        return by_bank(res)

    @app.post("/m/lookup", tags=["matching"])
    async def lookup_post(video: Optional[UploadFile] = File(None), banks: Optional[str] = None) -> dict:
        target = _banks(banks)
        for b in target or []:
            await service.get_bank(b)
        feats, _ = await hash_upload(video)
        res = (await limited(service.lookup([feats], target, None, None, None)))[0]
        return {SIGNAL_TYPE: by_bank(res)}

    @app.post("/m/compare", tags=["matching"])
    async def compare(body: CompareBody) -> dict:
        if len(body.tmk_pdqf) != 2:
            raise BankError(400, f"tmk_pdqf must hold exactly two signals (got {len(body.tmk_pdqf)})")
        a, b = (_signal(s, f"tmk_pdqf[{i}]") for i, s in enumerate(body.tmk_pdqf))
        from engine.serve.compare import compare_pair
        l1, l2 = await asyncio.to_thread(compare_pair, a, b)
        ok = l1 >= 0.7 and l2 >= 0.7
        return {SIGNAL_TYPE: [ok, {"level1": round(l1, 6), "level2": round(l2, 6), "distance": f"{l1:.6f}/{l2:.6f}"}]}

    @app.get("/m/index/status", tags=["matching"])
    async def index_status() -> dict:
        return {SIGNAL_TYPE: await service.index_status()}

    # ------------------------------------------------------------------ hashing (HMA /h)
    @app.post("/h/hash", tags=["hashing"])
    async def hash_post(video: Optional[UploadFile] = File(None)) -> dict:
        feats, _ = await hash_upload(video)
        return {SIGNAL_TYPE: encode(feats)}

    # ------------------------------------------------------------------ native API
    @app.get("/v1/banks", tags=["native"])
    async def v1_banks() -> list[dict[str, Any]]:
        return await service.list_banks()

    @app.post("/v1/lookup", tags=["native"])
    async def v1_lookup(body: NativeLookup) -> dict:
        """Batch lookup: both levels and the best offset per period of every match, best first per bank."""
        if not body.signals or len(body.signals) > MAX_BATCH:
            raise BankError(400, f"signals must hold 1 to {MAX_BATCH} strings (got {len(body.signals)})")
        if body.top is not None and body.top < 1:
            raise BankError(400, "top must be at least 1")
        from engine.serve.banks import check_thresholds
        c1, c2 = check_thresholds(body.c1, body.c2)
        feats = [_signal(s, f"signals[{i}]") for i, s in enumerate(body.signals)]
        res = await limited(service.lookup(feats, check_banks(body.banks), c1, c2, body.top))
        return {"results": [{"matches": r} for r in res]}

    @app.post("/v1/banks/{name}/signals", status_code=201, tags=["native"])
    async def v1_add(name: str, body: NativeAdd) -> dict:
        """Batch add (one commit): the content ids, in order."""
        check_bank_name(name)
        if not body.signals or len(body.signals) > 4 * MAX_BATCH:
            raise BankError(400, f"signals must hold 1 to {4 * MAX_BATCH} items")
        items = [(_signal(it.signal, f"signals[{i}]"), it.note, it.metadata) for i, it in enumerate(body.signals)]
        return {"ids": await limited(service.add(name, items))}

    @app.post("/v1/hash", tags=["native"])
    async def v1_hash(video: Optional[UploadFile] = File(None)) -> dict:
        feats, secs = await hash_upload(video)
        return {"signal": encode(feats), "frames": feats.frame_count, "seconds": round(secs, 3)}

    return app
