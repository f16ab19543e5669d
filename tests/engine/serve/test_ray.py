"""`vmatch serve --ray` on a local Ray: the same API through ingress, curator, matcher and hasher replicas."""
from __future__ import annotations

import time

from engine.signals import encode
from engine.synthetic import random_signatures
from tests.engine.serve.conftest import Server


def test_ray_serve_end_to_end(tmp_path, clips):
    s = Server(tmp_path / "data", tmp_path, "--ray").start(timeout=240)
    try:
        c = s.client()
        assert c.post_json("/c/banks", {"name": "RAY"}).status == 201
        assert c.post_json("/c/banks", {"name": "RAY"}).status == 403
        r = c.post_file("/c/bank/RAY/content", clips["orig"])
        assert r.status == 201, r.text
        cid = r.json()["id"]
        sig = encode(random_signatures(1, seed=5)[0])
        t_ack = None
        r = c.post_json("/c/bank/RAY/signal", {"tmk_pdqf": sig})
        t_ack = time.monotonic()
        sid = r.json()["id"]
        while True:            # matcher replicas see the curator's commit by polling: within a second
            m = c.post_json("/m/raw_lookup", {"signal": sig, "banks": "RAY"})
            assert m.status == 200, m.text
            if m.json()["matches"] == [sid]:
                break
            assert time.monotonic() - t_ack < 1.0, "not visible within 1 s"
            time.sleep(0.05)
        hit = c.post_file("/m/lookup", clips["reencode"])
        assert hit.status == 200 and [x["bank_content_id"] for x in hit.json()["tmk_pdqf"]["RAY"]] == [cid]
        assert c.post_file("/m/lookup", clips["other"]).json() == {"tmk_pdqf": {}}
        assert c.post_file("/h/hash", clips["junk"]).status == 400
        assert c.post_json("/m/raw_lookup", {"signal": sig, "banks": "NOPE"}).status == 404
        assert c.post_json("/m/raw_lookup", {"signal": sig[:1000]}).status == 400
        assert c.get(f"/c/bank/RAY/content/{sid}").json()["signals"]["tmk_pdqf"] == sig
        assert 'vmatch_requests_total{endpoint="/m/raw_lookup"' in c.get("/metrics").text
    finally:
        rc = s.stop(timeout=120)
    assert rc == 0, s.stderr()[-3000:]
    assert "Traceback" not in s.stderr()
