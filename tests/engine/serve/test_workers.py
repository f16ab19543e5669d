"""`vmatch serve --workers 2`: serving processes sharing one port and one data directory.

A signal added through one process is visible to lookups answered by the others within a second,
metrics count every worker's requests, SIGTERM stops every worker gracefully, and kill -9 of the
whole server group during adds loses nothing acknowledged."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

from engine.signals import encode
from engine.synthetic import random_signatures
from tests.engine.serve.conftest import REPO
from tests.engine.serve.test_live import near_copy


def _pids(server, endpoint: str) -> set[int]:
    return {x["pid"] for x in (json.loads(ln) for ln in server.stderr().splitlines() if ln.startswith("{"))
            if x["endpoint"] == endpoint}


def test_added_via_one_worker_visible_to_the_others_within_a_second(serve):
    s = serve("--workers", "2")
    workers = s.workers()
    assert len(workers) == 2 and s.proc.pid not in workers
    c = s.client()
    assert c.post_json("/c/banks", {"name": "MW"}).status == 201
    sigs = random_signatures(21, seed=31)
    target = sigs[0]
    r = c.post_json("/v1/banks/MW/signals", {"signals": [{"signal": encode(f)} for f in sigs[1:]]})
    assert r.status == 201, r.text
    needle = {"signal_type": "tmk_pdqf", "signal": encode(near_copy(target, 2)), "banks": "MW"}

    stop = threading.Event()
    seen: list[list[tuple[float, float, int, list]]] = [[] for _ in range(8)]

    def client_loop(k: int) -> None:
        cl = s.client()
        while not stop.is_set():
            if k % 2:
                cl.close()       # half the clients connect anew each time: every worker gets some
            t0 = time.monotonic()
            r = cl.post_json("/m/raw_lookup", needle)
            seen[k].append((t0, time.monotonic(), r.status, r.json().get("matches", []) if r.status == 200 else []))

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        t_add = time.monotonic()
        r = c.post_json("/c/bank/MW/signal", {"tmk_pdqf": encode(target)})
        t_ack = time.monotonic()
        assert r.status == 201, r.text
        cid = r.json()["id"]
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    every = [x for per in seen for x in per]
    assert len(every) >= 16 and all(st == 200 for _, _, st, _ in every), {st for _, _, st, _ in every}
    for start, end, _, ms in every:
        if end < t_add:
            assert ms == []
        if start >= t_ack + 1.0:
            assert ms == [cid]                                   # every worker sees it after 1 s
    assert any(start >= t_ack + 1.0 for start, _, _, _ in every)
    assert _pids(s, "/m/raw_lookup") == set(workers)             # lookups were answered by both
    adder = _pids(s, "/c/bank/{name}/signal")
    assert len(adder) == 1 and adder < set(workers)              # the add went through one of them

    # counters of all workers in one scrape
    n = len(every) + 1                                           # + the lookup below
    assert c.post_json("/m/raw_lookup", needle).json() == {"matches": [cid]}
    text = c.get("/metrics").text
    m = re.search(r'vmatch_requests_total\{endpoint="/m/raw_lookup",method="POST",status="200"\} (\S+)', text)
    assert m and float(m.group(1)) == n, (m and m.group(1), n)

    os.kill(workers[0], signal.SIGKILL)                          # a worker that dies is replaced
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (len(s.workers()) != 2 or workers[0] in s.workers()):
        time.sleep(0.1)
    replaced = s.workers()
    assert len(replaced) == 2 and workers[0] not in replaced and workers[1] in replaced, replaced
    assert re.search(r"worker [01] exited by signal 9; starting another", s.stderr())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and set(replaced) - _pids(s, "/m/raw_lookup"):
        c.close()                                                # new connections reach the new worker
        assert c.post_json("/m/raw_lookup", needle).json() == {"matches": [cid]}
    assert set(replaced) <= _pids(s, "/m/raw_lookup")
    workers = replaced

    assert s.stop() == 0, s.stderr()                            # SIGTERM: every worker stops gracefully
    for pid in workers:
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()
    assert s.stderr().count("worker ") >= 2 and "Traceback" not in s.stderr()


def test_kill_9_of_the_whole_group_during_adds_loses_nothing_acknowledged(serve, tmp_path):
    conf = tmp_path / "serve.yaml"            # merges of small segments all the time, killed mid-way too
    conf.write_text("compact_segments: 2\n")
    s = serve("--workers", "2", "--serve-config", str(conf))
    c = s.client()
    assert c.post_json("/c/banks", {"name": "MDUR"}).status == 201
    sigs = [encode(f) for f in random_signatures(60, seed=41)]
    acked: list[tuple[int, int]] = []          # (content id, signal index)
    lock = threading.Lock()

    def adder(part: list[int]) -> None:
        cl = s.client()
        for k in part:
            cl.close()           # a new connection per add: the adds are spread over the workers
            try:
                r = cl.post_json("/c/bank/MDUR/signal", {"tmk_pdqf": sigs[k], "note": k})
            except OSError:
                return
            if r.status == 201:
                with lock:
                    acked.append((r.json()["id"], k))

    threads = [threading.Thread(target=adder, args=(list(range(j, 60, 4)),)) for j in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while (len(acked) < 10 or "merged the small segments" not in s.stderr()) and time.monotonic() < deadline:
        time.sleep(0.02)
    adders = _pids(s, "/c/bank/{name}/signal")
    s.kill_group()                             # supervisor and workers, mid-adds
    for t in threads:
        t.join(60)
    assert 10 <= len(acked) < 60, len(acked)
    assert len({cid for cid, _ in acked}) == len(acked)          # no id given twice
    assert len(adders) == 2                                      # both processes were committing

    assert "merged the small segments" in s.stderr()
    s2 = serve("--workers", "2", data=s.data)
    c2 = s2.client()
    assert c2.get("/c/bank/MDUR").json()["size"] >= len(acked)
    for cid, k in acked:
        r = c2.get(f"/c/bank/MDUR/content/{cid}")
        assert r.status == 200, (cid, r.text)
        assert r.json()["signals"]["tmk_pdqf"] == sigs[k] and r.json()["note"] == k
    new = c2.post_json("/c/bank/MDUR/signal", {"tmk_pdqf": sigs[-1]}).json()["id"]
    assert new not in {cid for cid, _ in acked}
    v = subprocess.run([sys.executable, "-m", "engine.cli", "index", "verify", str(s.data / "MDUR" / "index")],
                       capture_output=True, text=True, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin"})
    assert v.returncode == 0, v.stderr
