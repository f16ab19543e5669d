"""`vmatch serve --data DIR`: the matching service (HMA's API) on one machine or on Ray Serve."""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

from engine.cli.common import CliError, config_from

# The optional dependencies (the `serve` extra, and faiss for the index), checked without importing
# them: every vmatch command imports this module, and FastAPI + uvicorn cost ~0.5 s to import.
for _mod in ("fastapi", "uvicorn", "multipart", "prometheus_client", "faiss"):
    if importlib.util.find_spec(_mod) is None:
        raise ModuleNotFoundError(f"No module named {_mod!r}", name=_mod)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="HTTP matching service with HMA's API and live bank updates",
                       description="Serve the banks in DIR (one vmatch index per bank) over HTTP: HMA-compatible "
                                   "endpoints for signal type tmk_pdqf, a native JSON API under /v1, OpenAPI "
                                   "docs at /docs, Prometheus metrics at /metrics.")
    p.add_argument("--data", required=True, metavar="DIR", help="folder of the banks (created if missing)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1; others need --token-file)")
    p.add_argument("--port", type=int, help="port (default 5000; 0: any free port)")
    p.add_argument("--token-file", metavar="FILE", help="require 'Authorization: Bearer <token in FILE>'")
    p.add_argument("--c1", type=float, help="default level-1 threshold (0.7)")
    p.add_argument("--c2", type=float, help="default level-2 threshold (0.7)")
    p.add_argument("--max-body-mb", type=float, help="largest request body in MiB (413 beyond)")
    p.add_argument("--hash-workers", type=int, help="videos hashed at once")
    p.add_argument("--hash-queue", type=int, help="uploads waiting for a hasher (503 beyond)")
    p.add_argument("--request-timeout", type=float, metavar="S", help="per-request time limit (504 beyond)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="matching device")
    p.add_argument("--workers", type=int, metavar="N",
                   help="serving processes sharing the port and the banks (default 1; on CPU one per core)")
    p.add_argument("--serve-config", metavar="YAML", help="server settings (default: configs/serve.yaml)")
    p.add_argument("--port-file", metavar="FILE", help="write the port listened on to FILE (with --port 0)")
    p.add_argument("--ray", action="store_true", help="run on Ray Serve (hasher and matcher replicas)")
    p.add_argument("--ray-address", metavar="ADDR", help="Ray cluster to join (default: start a local Ray)")
    p.set_defaults(func=run)


def serve_config(args: argparse.Namespace) -> Any:
    """configs/serve.yaml (or --serve-config) through the one typed loader, then the flags over it."""
    import dataclasses

    from engine.config import load_serve_config
    from engine.errors import ConfigError

    s = load_serve_config(args.serve_config)
    flags = {"host": "host", "port": "port", "c1": "c1", "c2": "c2", "max_body_mb": "max_body_mb",
             "hash_workers": "hash_workers", "hash_queue": "hash_queue", "request_timeout_s": "request_timeout",
             "device": "device", "workers": "workers"}     # setting -> argparse dest
    over = {key: getattr(args, dest) for key, dest in flags.items() if getattr(args, dest) is not None}
    if args.ray_address:
        over["ray"] = dataclasses.replace(s.ray, address=args.ray_address)
    try:
        return dataclasses.replace(s, **over)
    except ConfigError as e:            # a flag out of range: name the flag
        key = next((k for k in over if e.reason.startswith(k + " ")), None)
        flag = f"--{flags[key].replace('_', '-')}" if key else None
        raise CliError(f"{flag} {e.reason[len(key) + 1:]}" if key else e.reason, 2) from None


def run(args: argparse.Namespace) -> int:
    from engine.serve.banks import BankError
    from engine.serve.server import ListenError, ServeOptions, is_loopback, setup_logging

    cfg = config_from(args)
    s = serve_config(args)
    token = None
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as e:
            raise CliError(f"{args.token_file}: cannot read the token file ({e.strerror or e})", 2) from None
        if not token or any(c.isspace() for c in token):
            raise CliError(f"{args.token_file}: the token file must hold one token without spaces", 2)
    elif not is_loopback(s.host):
        raise CliError(f"refusing to listen on {s.host} without --token-file: anyone who can reach it could "
                       "read and change the banks (give --token-file FILE, or --host 127.0.0.1)", 2)
    data = Path(args.data)
    if data.exists() and not data.is_dir():
        raise CliError(f"{data}: not a directory", 2)
    h = cfg.hash

    def make_hasher() -> Any:
        from engine.hasher import VideoHasher
        return VideoHasher(cfg.tmk, mode=h.mode, device=h.device, chunk_frames=h.chunk_frames,
                           timeout_s=min(s.hash_timeout_s, h.timeout_s or float("inf")),
                           backend=h.backend, fast_exact_below=h.fast_exact_below, torch_threads=h.torch_threads)

    setup_logging()
    opts = ServeOptions(data, s, token, Path(args.port_file) if args.port_file else None, make_hasher)
    try:
        if args.ray:
            from engine.serve.ray_app import run_ray
            return run_ray(opts, cfg)
        from engine.serve.server import run_local
        return run_local(opts)
    except ListenError as e:
        raise CliError(str(e), 2) from None
    except BankError as e:
        raise CliError(e.message, 2) from None
