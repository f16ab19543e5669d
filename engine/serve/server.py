"""Run the server on one machine: banks, hashing pool, FastAPI app, middleware, uvicorn."""
from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine.serve.app import create_app
from engine.serve.banks import BankStore
from engine.serve.hashing import HashPool
from engine.serve.metrics import Metrics
from engine.serve.middleware import ServeMiddleware
from engine.serve.service import LocalService

log = logging.getLogger("vmatch.serve")

SERVE_DEFAULTS: dict[str, Any] = {
    "host": "127.0.0.1", "port": 5000, "c1": 0.7, "c2": 0.7, "max_body_mb": 256, "request_timeout_s": 30.0,
    "hash_timeout_s": 600.0, "hash_workers": 1, "hash_queue": 4, "lookup_threads": 2, "poll_s": 0.25,
    "bank_shards": 1, "bank_store": "fp32", "device": "auto", "torch_threads": 1,
    "ray": {"address": None, "hashers": 1, "hasher_gpus": "auto", "matchers": 2, "matcher_gpus": "auto",
            "batch_max": 32, "batch_wait_s": 0.005},
}


@dataclass
class ServeOptions:
    data: Path
    settings: dict[str, Any]
    token: str | None = None
    port_file: Path | None = None
    make_hasher: Callable[[], Any] = field(default=lambda: None)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def set_torch_threads(n: int | None) -> None:
    if n:
        import torch
        torch.set_num_threads(int(n))


def setup_logging() -> None:
    """Diagnostics as `vmatch serve: LEVEL message`, access lines as bare JSON, both on stderr."""
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("vmatch serve: %(levelname)s %(message)s"))
    root = logging.getLogger("vmatch")
    root.handlers[:] = [h]
    root.setLevel(logging.INFO)
    root.propagate = False
    acc = logging.getLogger("vmatch.access")
    ah = logging.StreamHandler(sys.stderr)
    ah.setFormatter(logging.Formatter("%(message)s"))
    acc.handlers[:] = [ah]
    acc.propagate = False


class ListenError(OSError):
    """The address cannot be listened on; str() is one line."""


def bind(host: str, port: int) -> socket.socket:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def announce(opts: ServeOptions, host: str, port: int) -> None:
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    print(f"vmatch serve: listening on {url} (docs: {url}/docs)", file=sys.stderr, flush=True)
    if opts.port_file:
        tmp = opts.port_file.with_name(opts.port_file.name + ".tmp")
        tmp.write_text(f"{port}\n")
        tmp.replace(opts.port_file)


def build_local(opts: ServeOptions) -> tuple[Any, LocalService]:
    s = opts.settings
    set_torch_threads(s.get("torch_threads"))
    store = BankStore(opts.data, c1=s["c1"], c2=s["c2"], device=s["device"], poll_s=s["poll_s"],
                      shards=s["bank_shards"], store=s["bank_store"])
    pool = HashPool(opts.make_hasher, s["hash_workers"], s["hash_queue"])
    service = LocalService(store, pool, s["lookup_threads"])
    metrics = Metrics()
    app = create_app(service, metrics, s["request_timeout_s"], s["hash_timeout_s"], on_startup=store.start)
    return ServeMiddleware(app, metrics, opts.token, int(s["max_body_mb"] * (1 << 20))), service


def run_local(opts: ServeOptions) -> int:
    import uvicorn

    s = opts.settings
    asgi, _ = build_local(opts)
    sock = bind(s["host"], int(s["port"]))
    port = sock.getsockname()[1]
    config = uvicorn.Config(asgi, log_level="warning", access_log=False, timeout_graceful_shutdown=30,
                            lifespan="on", limit_concurrency=1024, timeout_keep_alive=30)
    server = uvicorn.Server(config)
    announce(opts, s["host"], port)
    # uvicorn re-raises the signal it stopped on once it is done; after a graceful SIGTERM
    # shutdown that should be a normal exit (status 0), not a death by signal
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run(sockets=[sock])      # SIGTERM / SIGINT: stop accepting, finish requests, drain writes
    log.info("stopped")
    return 0
