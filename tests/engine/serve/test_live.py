"""Live updates under load, and durability: kill -9 during adds loses nothing acknowledged."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import numpy as np
import torch

from engine.features import TmkFeatures
from engine.signals import encode
from engine.synthetic import perturb_rows, random_signatures
from tests.engine.serve.conftest import REPO


def near_copy(f: TmkFeatures, seed: int) -> TmkFeatures:
    gen = torch.Generator().manual_seed(seed)
    avg, rows = perturb_rows(torch.from_numpy(f.avg), torch.from_numpy(np.stack([f.cos, f.sin])),
                             torch.tensor([0.2]), gen)
    return TmkFeatures(avg[0].numpy(), rows[0, 0].numpy(), rows[0, 1].numpy(), f.frame_count, f.params, "near")


def test_signal_added_under_load_is_visible_within_a_second(serve):
    s = serve()
    c = s.client()
    assert c.post_json("/c/banks", {"name": "LIVE"}).status == 201
    sigs = random_signatures(41, seed=11)
    target, bank = sigs[0], sigs[1:]
    for k in range(0, len(bank), 20):
        r = c.post_json("/v1/banks/LIVE/signals", {"signals": [{"signal": encode(f)} for f in bank[k:k + 20]]})
        assert r.status == 201, r.text
    needle = {"signal_type": "tmk_pdqf", "signal": encode(near_copy(target, 1)), "banks": "LIVE"}
    assert c.post_json("/m/raw_lookup", needle).json() == {"matches": []}

    stop = threading.Event()
    seen: list[list[tuple[float, float, int, list]]] = [[] for _ in range(8)]

    def client_loop(k: int) -> None:
        cl = s.client()
        while not stop.is_set():
            t0 = time.monotonic()
            r = cl.post_json("/m/raw_lookup", needle)
            seen[k].append((t0, time.monotonic(), r.status, r.json().get("matches", []) if r.status == 200 else []))

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        t_add = time.monotonic()
        r = c.post_json("/c/bank/LIVE/signal", {"tmk_pdqf": encode(target), "note": "late"})
        t_ack = time.monotonic()
        assert r.status == 201, r.text
        cid = r.json()["id"]
        time.sleep(1.5)
        t_del = time.monotonic()
        assert c.delete(f"/c/bank/LIVE/content/{cid}").status == 200
        t_del_ack = time.monotonic()
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    every = [x for per in seen for x in per]
    assert len(every) >= 16 and all(st == 200 for _, _, st, _ in every), {st for _, _, st, _ in every}
    for start, end, _, ms in every:
        if end < t_add:
            assert ms == []                         # not there before the add
        if t_ack + 1.0 <= start and end < t_del:
            assert ms == [cid]                      # visible within 1 s of the acknowledgement
        if start >= t_del_ack + 1.0:
            assert ms == []                         # removal visible within 1 s
    after = [start for start, _, _, ms in every if ms == [cid]]
    assert after and min(after) - t_ack < 1.0       # and actually observed within that second
    assert any(t_ack + 1.0 <= st and e < t_del for st, e, _, _ in every)


def test_kill_9_during_adds_loses_nothing_acknowledged(serve, tmp_path):
    s = serve()
    c = s.client()
    assert c.post_json("/c/banks", {"name": "DUR"}).status == 201
    sigs = [encode(f) for f in random_signatures(60, seed=21)]
    acked: dict[int, int] = {}          # content id -> signal index
    lock = threading.Lock()

    def adder(part: list[int]) -> None:
        cl = s.client()
        for k in part:
            try:
                r = cl.post_json("/c/bank/DUR/signal", {"tmk_pdqf": sigs[k], "note": k})
            except OSError:
                return                   # the server is gone: this add was never acknowledged
            if r.status == 201:
                with lock:
                    acked[r.json()["id"]] = k

    threads = [threading.Thread(target=adder, args=(list(range(j, 60, 3)),)) for j in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 8 and time.monotonic() < deadline:
        time.sleep(0.02)
    s.stop(signal.SIGKILL)               # mid-adds
    for t in threads:
        t.join(60)
    assert 8 <= len(acked) < 60, len(acked)

    s2 = serve(data=s.data)
    c2 = s2.client()
    size = c2.get("/c/bank/DUR").json()["size"]
    assert size >= len(acked)
    for cid, k in acked.items():
        r = c2.get(f"/c/bank/DUR/content/{cid}")
        assert r.status == 200, (cid, r.text)
        assert r.json()["signals"]["tmk_pdqf"] == sigs[k] and r.json()["note"] == k
    new = c2.post_json("/c/bank/DUR/signal", {"tmk_pdqf": sigs[-1]}).json()["id"]
    assert new not in acked
    v = subprocess.run([sys.executable, "-m", "engine.cli", "index", "verify", str(s.data / "DUR" / "index")],
                       capture_output=True, text=True, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin"})
    assert v.returncode == 0, v.stderr
