"""Run the server on one machine: banks, hashing pool, FastAPI app, middleware, uvicorn.

With ``workers > 1`` this process is a supervisor: it binds the socket, forks that many serving
processes (each a whole server on the shared socket and the shared data directory, see
engine/serve/banks.py for how their writes and reads stay consistent), announces the port once
every worker has loaded the banks, turns SIGTERM/SIGINT into one graceful SIGTERM per worker and
restarts a worker that dies.  Several processes because one Python process is bound to one core
by the GIL: a lookup is ~4 ms of CPU, most of it holding the GIL.
"""
from __future__ import annotations

import ctypes
import ipaddress
import logging
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine.config import ServeConfig
from engine.serve.app import create_app
from engine.serve.banks import BankStore
from engine.serve.fastpath import RawLookupFastPath
from engine.serve.hashing import HashPool
from engine.serve.metrics import Metrics
from engine.serve.middleware import ServeMiddleware
from engine.serve.service import LocalService

log = logging.getLogger("vmatch.serve")

@dataclass
class ServeOptions:
    data: Path
    settings: ServeConfig
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


def build_local(opts: ServeOptions, metrics_dir: str | None = None, preload: bool = False
                ) -> tuple[Any, LocalService]:
    """The ASGI app and its service.  ``preload``: load the banks now, before anything listens
    (a worker joining a running server must not answer 503 on the shared port while loading)."""
    s = opts.settings
    set_torch_threads(s.torch_threads)
    store = BankStore(opts.data, c1=s.c1, c2=s.c2, device=s.device, poll_s=s.poll_s,
                      shards=s.bank_shards, store=s.bank_store, compact_segments=s.compact_segments)
    pool = HashPool(opts.make_hasher, s.hash_workers, s.hash_queue)
    service = LocalService(store, pool, s.lookup_threads)
    metrics = Metrics(metrics_dir)
    if preload:
        store.start()
        while not store.ready.wait(0.1) and store.load_error is None:
            pass
    app = create_app(service, metrics, s.request_timeout_s, s.hash_timeout_s,
                     on_startup=None if preload else store.start)
    app = RawLookupFastPath(app, service, s.request_timeout_s)
    return ServeMiddleware(app, metrics, opts.token, int(s.max_body_mb * (1 << 20))), service


def _uvicorn_config(asgi: Any) -> Any:
    import uvicorn

    return uvicorn.Config(asgi, log_level="warning", access_log=False, timeout_graceful_shutdown=30,
                          lifespan="on", limit_concurrency=1024, timeout_keep_alive=30)


def run_local(opts: ServeOptions) -> int:
    import uvicorn

    s = opts.settings
    sock = bind(s.host, s.port)
    port = sock.getsockname()[1]
    if s.workers > 1:
        return Supervisor(opts, sock, port).run()
    asgi, _ = build_local(opts)
    server = uvicorn.Server(_uvicorn_config(asgi))
    announce(opts, s.host, port)
    # uvicorn re-raises the signal it stopped on once it is done; after a graceful SIGTERM
    # shutdown that should be a normal exit (status 0), not a death by signal
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run(sockets=[sock])      # SIGTERM / SIGINT: stop accepting, finish requests, drain writes
    log.info("stopped")
    return 0


# --------------------------------------------------------------------------- several processes
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Linux: SIGTERM (a graceful stop) to this worker when the supervisor dies, even by kill -9."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _worker_main(opts: ServeOptions, sock: socket.socket, slot: int, metrics_dir: str, ready_fd: int) -> int:
    """One serving process (forked): the whole server on the inherited socket."""
    import uvicorn

    class WorkerServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # Ctrl-C reaches the whole process group; the supervisor turns it into one SIGTERM each
            # (a second signal would be uvicorn's forced exit)
            if sig != signal.SIGINT:
                super().handle_exit(sig, frame)

    _die_with_parent()
    if os.getppid() == 1:
        return 0                     # the supervisor died before the line above
    asgi, service = build_local(opts, metrics_dir, preload=True)    # banks loaded before it accepts
    try:                # the supervisor announces the port once every worker is up; one 2-byte record
        os.write(ready_fd, bytes([slot % 256]) + (b"r" if service.store.ready.is_set() else b"e"))
    except OSError:
        pass
    signal.signal(signal.SIGTERM, lambda *_: None)
    WorkerServer(_uvicorn_config(asgi)).run(sockets=[sock])
    log.info("worker %d stopped", slot)
    return 0


class Supervisor:
    """Fork `workers` serving processes on one socket, forward stop signals, restart the dead."""

    def __init__(self, opts: ServeOptions, sock: socket.socket, port: int) -> None:
        self.opts, self.sock, self.port = opts, sock, port
        self.n = opts.settings.workers
        self.children: dict[int, tuple[int, float]] = {}      # pid -> (slot, start time)
        self.up: set[int] = set()                             # slots whose worker has loaded the banks
        self.stopping = 0
        _remove_stale_metrics_dirs()
        self.metrics_dir = tempfile.mkdtemp(prefix=f"vmatch-metrics-{os.getpid()}-")
        self.ready_r, self.ready_w = os.pipe()
        os.set_blocking(self.ready_r, False)

    def _drain_ready(self) -> None:
        try:
            data = os.read(self.ready_r, 4096)
        except BlockingIOError:
            return
        self.up.update(data[k] for k in range(0, len(data) - 1, 2))

    def spawn(self, slot: int) -> None:
        pid = os.fork()
        if pid == 0:                                # the worker
            code = 1
            try:
                os.close(self.ready_r)
                for sig in (signal.SIGTERM, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C: the supervisor's SIGTERM stops us
                code = _worker_main(self.opts, self.sock, slot, self.metrics_dir, self.ready_w)
            except BaseException as e:  # noqa: BLE001 - a worker reports and exits, never returns here
                if not isinstance(e, SystemExit):
                    log.exception("worker %d failed", slot)
            finally:
                sys.stderr.flush()
                os._exit(code)
        self.children[pid] = (slot, time.monotonic())

    def _signal(self, sig: int, _frame: Any) -> None:
        self.stopping += 1
        # first signal: a graceful stop of every worker; another one: uvicorn's forced exit
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._signal)
        try:
            for k in range(self.n):
                self.spawn(k)
            if self._wait_ready():
                announce(self.opts, self.opts.settings.host, self.port)
                log.info("%d workers serving", self.n)
            return self._supervise()
        finally:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _wait_ready(self) -> bool:
        while len(self.up) < self.n and not self.stopping:
            r, _, _ = select.select([self.ready_r], [], [], 0.2)
            if r:
                self._drain_ready()
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid:
                self.children.pop(pid, None)
                log.error("a worker exited while starting (%s); stopping", _how(status))
                self._signal(signal.SIGTERM, None)
                return False
        return not self.stopping

    def _supervise(self) -> int:
        rc = 0
        while self.children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            slot, started = self.children.pop(pid, (None, 0.0))
            if slot is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                if code != 0:
                    rc = 1
                    log.warning("worker %d exited %s", slot, _how(status))
                continue
            self._drain_ready()
            if slot not in self.up:          # dying before it is up: do not spin, stop instead
                log.error("worker %d exited %s before loading the banks; stopping the server", slot, _how(status))
                rc = 1
                self._signal(signal.SIGTERM, None)
                continue
            log.error("worker %d exited %s; starting another", slot, _how(status))
            self.up.discard(slot)
            if time.monotonic() - started < 1.0:
                time.sleep(1.0)              # at most one restart a second
            self.spawn(slot)
        log.info("stopped")
        return rc


def _remove_stale_metrics_dirs() -> None:
    """The metrics folders of supervisors that were killed (kill -9 leaves them behind)."""
    if not Path("/proc/self").exists():
        return                       # no way to tell a live supervisor here: leave them
    for d in Path(tempfile.gettempdir()).glob("vmatch-metrics-*-*"):
        pid = d.name.split("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)


def _how(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    return f"by signal {-code}" if code < 0 else f"with status {code}"
