#!/usr/bin/env python3
"""Load generator for `vmatch serve`: raw lookups under concurrent adds, and hashing uploads.

    # 1. a 10,000-signal synthetic bank (perturbed reference hashes, engine/synthetic.py), once
    python scripts/bench_serve.py prepare --data /tmp/vmatch-serve-bench --items 10000
    # 2. a server on it (any way you like; loopback only)
    vmatch serve --data /tmp/vmatch-serve-bench --port 5077 &
    # 3. the load: 8 clients for 20 s, one add every 0.25 s, baselines side by side
    python scripts/bench_serve.py lookup --url http://127.0.0.1:5077 --clients 8 --seconds 20
    python scripts/bench_serve.py hash --url http://127.0.0.1:5077 --video some.mp4 --repeat 5

`lookup`: POST /m/raw_lookup of TMK strings (near copies of bank items and of nothing, half
each) at the server's thresholds, from N threads with their own keep-alive connections
(http.client), bounded by --seconds and --max-requests; one more thread adds a new signal
every --add-every seconds.  Baseline: the same needles through `VideoIndex.query` in this
process (one thread, no HTTP; "in-process").  `vmatch query` of one needle as a whole process
is timed too and labelled as such; it is not divided by anything.
`hash`: POST /m/lookup of one video, sequentially; baseline: the same video hashed with
`vmatch hash`'s settings in this process, and `vmatch hash` as a whole process on --repeat
copies (labelled).  Prints one JSON object on stdout, with the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.features import TmkFeatures  # noqa: E402
from engine.serve.client import ServeClient  # noqa: E402
from engine.signals import encode  # noqa: E402
from engine.synthetic import mixed_strengths, perturb_rows, random_signatures  # noqa: E402
from engine.tmkfile import iter_tmk_paths, read_many, write_tmk  # noqa: E402

BANK = "BENCH"


def log(msg: str) -> None:
    print(f"[bench_serve] {msg}", file=sys.stderr, flush=True)


def load_bases() -> list[TmkFeatures]:
    for c in (REPO.parent / "shared/reference/threatexchange/tmk", REPO / "shared/reference/threatexchange/tmk"):
        if c.is_dir():
            return read_many([p for p in iter_tmk_paths([c]) if p.stem != "test-padded-dimensions"])
    raise SystemExit("bench_serve: reference hashes not found (../shared/reference/threatexchange/tmk)")


def perturbed(base: TmkFeatures, strength: float, gen: torch.Generator, name: str) -> TmkFeatures:
    a, r = perturb_rows(torch.from_numpy(base.avg), torch.from_numpy(np.stack([base.cos, base.sin])),
                        torch.tensor([strength]), gen)
    return TmkFeatures(a[0].numpy(), r[0, 0].numpy(), r[0, 1].numpy(), base.frame_count, base.params, name)


def cmd_prepare(args: argparse.Namespace) -> None:
    """Bank BENCH of N perturbed copies (item i from reference hash i mod 15, a fraction near copies)."""
    from engine.serve.banks import BankStore

    data = Path(args.data)
    store = BankStore(data, device="cpu")
    store.start()
    store.ready.wait()
    if BANK in store.banks:
        raise SystemExit(f"bench_serve: {data / BANK} exists; remove it to rebuild")
    store.create_bank(BANK).result()
    bases = load_bases()
    strengths = mixed_strengths(args.items, args.near_fraction, args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    for s in range(0, args.items, args.batch):
        items = [(perturbed(bases[i % len(bases)], float(strengths[i]), gen, f"syn-{i}"), f"syn-{i}", None)
                 for i in range(s, min(s + args.batch, args.items))]
        store.add(BANK, items).result()
        log(f"  {min(s + args.batch, args.items)}/{args.items} ({time.perf_counter() - t0:.0f} s)")
    store.close()
    # a bulk-loaded bank as one segment (what `vmatch index compact` makes); old files deleted now
    from engine.index import VideoIndex
    ix = VideoIndex(data / BANK / "index", device="cpu")
    ix.retire_after_s = 0.0
    ix.compact()
    ix.compact()
    # needles: near copies of near bank items (they match) and of far ones, plus unrelated signatures
    near = np.nonzero(strengths < 1.0)[0]
    rng = np.random.default_rng(args.seed + 1)
    out = data / "needles"
    out.mkdir(exist_ok=True)
    for k, i in enumerate(rng.choice(near, 16)):
        write_tmk(out / f"near-{k:02d}.tmk", perturbed(bases[i % len(bases)], 0.3, gen, f"near-{k}"))
    for k, f in enumerate(random_signatures(16, seed=args.seed + 2)):
        write_tmk(out / f"none-{k:02d}.tmk", f)
    print(json.dumps({"data": str(data), "bank": BANK, "items": args.items, "near": int(len(near)),
                      "seconds": round(time.perf_counter() - t0, 1)}))


def loopback(url: str) -> str:
    host = urlsplit(url).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"bench_serve: {url}: only loopback servers are benchmarked")
    return url


def server_pids(pid: int) -> list[int]:
    """The server process and its worker processes (`vmatch serve --workers N`: its children)."""
    kids = []
    for t in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (t / "children").read_text().split()]
    return [pid, *kids]


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds so far of a process and its workers (/proc), None without a pid."""
    if not pid:
        return None
    total = 0
    for p in server_pids(pid):
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def percentile(xs: list[float], q: float) -> float | None:
    return round(float(np.percentile(xs, q)) * 1000, 2) if xs else None


def cmd_lookup(args: argparse.Namespace) -> None:
    from engine.index import VideoIndex
    from engine.tmkfile import read_tmk

    url = loopback(args.url)
    data = Path(args.data)
    needle_paths = sorted((data / "needles").glob("*.tmk"))
    needles = [read_tmk(p) for p in needle_paths]
    bodies = [json.dumps({"signal_type": "tmk_pdqf", "signal": encode(f), "banks": BANK}).encode()
              for f in needles]
    c = ServeClient(url, args.token)
    size0 = c.get(f"/c/bank/{BANK}").json()["size"]
    load_before = os.getloadavg()
    srv_cpu0, own_cpu0 = cpu_seconds(args.server_pid), sum(os.times()[:2])
    stop = threading.Event()
    lat: list[list[float]] = [[] for _ in range(args.clients)]
    errors: list[str] = []
    matched = [0] * args.clients
    count = [0]
    lock = threading.Lock()
    t_end = time.monotonic() + args.seconds

    def client(k: int) -> None:
        cl = ServeClient(url, args.token)
        j = k
        while not stop.is_set() and time.monotonic() < t_end:
            with lock:
                if count[0] >= args.max_requests:
                    return
                count[0] += 1
            body = bodies[j % len(bodies)]
            j += args.clients
            t0 = time.perf_counter()
            try:
                r = cl.request("POST", "/m/raw_lookup", body, {"Content-Type": "application/json"})
            except OSError as e:
                errors.append(f"{type(e).__name__}: {e}")
                cl.close()
                continue
            lat[k].append(time.perf_counter() - t0)
            if r.status != 200:
                errors.append(f"HTTP {r.status}: {r.text[:120]}")
            elif r.json()["matches"]:
                matched[k] += 1

    adds: list[float] = []
    add_errors: list[str] = []

    def adder() -> None:
        cl = ServeClient(url, args.token)
        new = random_signatures(int(args.seconds / args.add_every) + 2, seed=int(time.time()) % 10000)
        for f in new:     # never waits past the end of the run, however long --add-every is
            if stop.wait(max(0.0, min(args.add_every, t_end - time.monotonic()))) or time.monotonic() >= t_end:
                return
            t0 = time.perf_counter()
            try:
                r = cl.post_json(f"/c/bank/{BANK}/signal", {"tmk_pdqf": encode(f), "note": "bench add"})
                if r.status != 201:
                    add_errors.append(f"HTTP {r.status}")
            except OSError as e:
                add_errors.append(str(e))
                continue
            adds.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
    if args.add_every > 0:
        threads.append(threading.Thread(target=adder))
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()
    srv_cpu = cpu_seconds(args.server_pid) - srv_cpu0 if args.server_pid else None
    own_cpu = sum(os.times()[:2]) - own_cpu0
    alll = [x for per in lat for x in per]
    size1 = c.get(f"/c/bank/{BANK}").json()["size"]

    # baseline 1: in-process index query, one needle per call, one thread, no HTTP
    ix = VideoIndex(data / BANK / "index", device="cpu")
    ix.query(needles[:1], args.c1, args.c2)
    base = []
    t_b = time.perf_counter()
    while time.perf_counter() - t_b < min(10.0, args.seconds / 2):
        for f in needles:
            t1 = time.perf_counter()
            ix.query([f], args.c1, args.c2)
            base.append(time.perf_counter() - t1)
    base_rate = len(base) / sum(base)
    # baseline 2: `vmatch query` as a whole process on one needle (startup and index open included)
    t_w = time.perf_counter()
    w = subprocess.run([sys.executable, "-m", "engine.cli", "query", str(data / BANK / "index"),
                        str(needle_paths[0]), "--c1", str(args.c1), "--c2", str(args.c2), "--device", "cpu"],
                       capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    whole_s = time.perf_counter() - t_w
    rate = len(alll) / wall
    print(json.dumps({
        "endpoint": "POST /m/raw_lookup", "url": url, "bank_size_start": size0, "bank_size_end": size1,
        "clients": args.clients, "seconds": round(wall, 2), "lookups": len(alll),
        "server_lookups_per_s": round(rate, 1), "p50_ms": percentile(alll, 50), "p99_ms": percentile(alll, 99),
        "errors": len(errors), "error_samples": errors[:3], "lookups_with_matches": sum(matched),
        "adds": len(adds), "add_errors": len(add_errors), "add_p50_ms": percentile(adds, 50),
        "add_p99_ms": percentile(adds, 99),
        "server_cpu_s": round(srv_cpu, 2) if srv_cpu is not None else None,
        "server_cpu_ms_per_request": round(1000 * srv_cpu / (len(alll) + len(adds)), 2) if srv_cpu else None,
        "load_generator_cpu_s": round(own_cpu, 2),
        "in_process_query_per_s_1_thread": round(base_rate, 1), "in_process_p50_ms": percentile(base, 50),
        "server_over_in_process": round(rate / base_rate, 3),
        "whole_process_vmatch_query_s": round(whole_s, 2), "whole_process_rc": w.returncode,
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in load_after],
        "cpus": os.cpu_count(),
    }, indent=1))


def cmd_hash(args: argparse.Namespace) -> None:
    from engine.config import load_config
    from engine.hasher import VideoHasher

    url = loopback(args.url)
    video = Path(args.video)
    c = ServeClient(url, args.token, timeout=600)
    load_before = os.getloadavg()
    first = c.post_file("/v1/hash", video)
    if first.status != 200:
        raise SystemExit(f"bench_serve: /v1/hash: HTTP {first.status} {first.text[:200]}")
    frames = first.json()["frames"]
    t0 = time.perf_counter()
    for _ in range(args.repeat):
        r = c.post_file("/m/lookup", video)
        if r.status != 200:
            raise SystemExit(f"bench_serve: /m/lookup: HTTP {r.status} {r.text[:200]}")
    server_s = time.perf_counter() - t0
    # baseline 1: `vmatch hash`'s hasher (same config) in this process, the same number of times
    h = load_config().hash
    hasher = VideoHasher(mode=h.mode, device=h.device, chunk_frames=h.chunk_frames, timeout_s=h.timeout_s,
                         backend=h.backend, fast_exact_below=h.fast_exact_below, torch_threads=h.torch_threads)
    hasher.hash(video)
    t0 = time.perf_counter()
    for _ in range(args.repeat):
        hasher.hash(video)
    local_s = time.perf_counter() - t0
    # baseline 2: `vmatch hash` as a whole process on `repeat` copies
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        copies = []
        for k in range(args.repeat):
            p = tmp / f"copy{k}{video.suffix}"
            os.symlink(video.resolve(), p)
            copies.append(str(p))
        t0 = time.perf_counter()
        w = subprocess.run([sys.executable, "-m", "engine.cli", "hash", *copies, "-d", str(tmp / "out")],
                           capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        whole_s = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = frames * args.repeat
    server_fps, local_fps = n / server_s, n / local_s
    print(json.dumps({
        "endpoint": "POST /m/lookup (upload, hash, look up in every bank)", "video": str(video),
        "frames": frames, "repeat": args.repeat,
        "server_frames_per_s": round(server_fps, 1),
        "in_process_vmatch_hash_frames_per_s": round(local_fps, 1),
        "server_over_in_process": round(server_fps / local_fps, 3),
        "whole_process_vmatch_hash_frames_per_s": round(n / whole_s, 1), "whole_process_rc": w.returncode,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
    }, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--data", required=True)
    p.add_argument("--items", type=int, default=10000)
    p.add_argument("--near-fraction", type=float, default=0.01)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_prepare)
    lk = sub.add_parser("lookup")
    lk.add_argument("--url", required=True)
    lk.add_argument("--data", required=True, help="the prepared data folder (needles, in-process baseline)")
    lk.add_argument("--token")
    lk.add_argument("--clients", type=int, default=8)
    lk.add_argument("--seconds", type=float, default=20.0)
    lk.add_argument("--max-requests", type=int, default=100000)
    lk.add_argument("--add-every", type=float, default=0.25, help="seconds between concurrent adds (0: none)")
    lk.add_argument("--server-pid", type=int, help="measure the server's CPU time during the run (/proc)")
    lk.add_argument("--c1", type=float, default=0.7)
    lk.add_argument("--c2", type=float, default=0.7)
    lk.set_defaults(func=cmd_lookup)
    hs = sub.add_parser("hash")
    hs.add_argument("--url", required=True)
    hs.add_argument("--token")
    hs.add_argument("--video", required=True)
    hs.add_argument("--repeat", type=int, default=5)
    hs.set_defaults(func=cmd_hash)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
