"""`vmatch serve` over real HTTP: HMA endpoint shapes, matching, equality with `vmatch query`,
auth, every bad input, limits and metrics."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from engine.serve.client import ServeClient
from engine.signals import encode
from engine.tmkfile import read_tmk
from tests.engine.serve.conftest import REPO, Server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    s = Server(d / "data", d, "--max-body-mb", "1", "--hash-workers", "1", "--hash-queue", "0").start()
    yield s
    assert s.stop() == 0, s.stderr()          # SIGTERM: graceful, exit status 0
    assert "Traceback" not in s.stderr()


@pytest.fixture(scope="module")
def client(server) -> ServeClient:
    return server.client()


def sig(path: Path) -> str:
    return encode(read_tmk(path))


def test_status_docs_and_index_status(client):
    r = client.get("/status")
    assert (r.status, r.text) == (200, "I-AM-ALIVE")
    assert client.get("/status/live").text == "I-AM-ALIVE"
    assert client.get("/docs").status == 200
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/c/banks", "/c/bank/{name}/signal", "/m/raw_lookup", "/m/lookup", "/h/hash", "/m/compare",
              "/v1/lookup"):
        assert p in paths
    st = client.get("/m/index/status").json()["tmk_pdqf"]
    assert set(st) == {"present", "built_to", "size"} and st["present"] is True


def test_bank_lifecycle(client):
    r = client.post_json("/c/banks", {"name": "LIFE_1"})
    assert r.status == 201 and r.json()["name"] == "LIFE_1"
    assert client.post_json("/c/banks", {"name": "LIFE_1"}).status == 403
    assert "LIFE_1" in [b["name"] for b in client.get("/c/banks").json()]
    assert client.get("/c/bank/LIFE_1").json()["size"] == 0
    r = client.put_json("/c/bank/LIFE_1", {"c1": 0.8})
    assert r.status == 200 and r.json()["c1"] == 0.8
    assert client.delete("/c/bank/LIFE_1").status == 200
    assert client.get("/c/bank/LIFE_1").status == 404


def test_video_content_reencode_matches_unrelated_does_not(client, clips):
    assert client.post_json("/c/banks", {"name": "VIDEOS"}).status == 201
    r = client.post_file("/c/bank/VIDEOS/content", clips["orig"], params={"metadata": json.dumps({"case": 7})})
    assert r.status == 201, r.text
    body = r.json()
    cid, signal = body["id"], body["signals"]["tmk_pdqf"]
    assert isinstance(cid, int) and signal.startswith("TMK1FVECPDQF|")
    assert client.post_file("/h/hash", clips["orig"]).json() == {"tmk_pdqf": signal}   # same hash

    hit = client.post_file("/m/lookup", clips["reencode"])
    assert hit.status == 200, hit.text
    ms = hit.json()["tmk_pdqf"]["VIDEOS"]
    assert [m["bank_content_id"] for m in ms] == [cid]
    l1, l2 = map(float, ms[0]["distance"].split("/"))
    assert l1 >= 0.7 and l2 >= 0.7
    assert client.post_file("/m/lookup", clips["other"]).json() == {"tmk_pdqf": {}}

    re_sig = client.post_file("/h/hash", clips["reencode"]).json()["tmk_pdqf"]
    other_sig = client.post_file("/h/hash", clips["other"]).json()["tmk_pdqf"]
    assert client.post_json("/m/raw_lookup", {"signal_type": "tmk_pdqf", "signal": re_sig,
                                              "banks": "VIDEOS"}).json() == {"matches": [cid]}
    d = client.post_json("/m/raw_lookup", {"signal": re_sig, "include_distance": True}).json()["matches"]
    assert d[0]["bank_content_id"] == cid and d[0]["distance"] == ms[0]["distance"]
    assert client.post_json("/m/raw_lookup", {"signal": other_sig}).json() == {"matches": []}

    c = client.post_json("/m/compare", {"tmk_pdqf": [signal, re_sig]}).json()["tmk_pdqf"]
    assert c[0] is True and c[1]["level2"] >= 0.7
    assert client.post_json("/m/compare", {"tmk_pdqf": [signal, other_sig]}).json()["tmk_pdqf"][0] is False

    got = client.get(f"/c/bank/VIDEOS/content/{cid}").json()
    assert got["signals"]["tmk_pdqf"] == signal and got["metadata"] == {"case": 7}   # exact signal back
    native = client.post_json("/v1/lookup", {"signals": [re_sig, other_sig], "top": 5}).json()["results"]
    assert native[0]["matches"][0]["id"] == cid and len(native[0]["matches"][0]["offsets"]) == 4
    assert native[1]["matches"] == []

    assert client.delete(f"/c/bank/VIDEOS/content/{cid}").status == 200
    assert client.post_json("/m/raw_lookup", {"signal": re_sig}).json() == {"matches": []}
    assert client.get(f"/c/bank/VIDEOS/content/{cid}").status == 404


def test_results_equal_vmatch_query(server, client, ref_tmks):
    paths = sorted(ref_tmks.values())
    assert client.post_json("/c/banks", {"name": "REF"}).status == 201
    ids = {}
    for p in paths:
        r = client.post_json("/c/bank/REF/signal", {"tmk_pdqf": sig(p), "note": p.stem})
        assert r.status == 201
        ids[str(r.json()["id"])] = p.stem
    needles = [p for p in paths if p.stem in ("chair-22-sd-grey-bar", "pattern-sd-grey-bar", "doorknob-hd-no-bar")]
    out = subprocess.run([sys.executable, "-m", "engine.cli", "query", str(server.data / "REF" / "index"),
                          *map(str, needles), "--c1", "0.7", "--c2", "0.7", "--device", "cpu"],
                         capture_output=True, text=True, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin"})
    assert out.returncode == 0, out.stderr
    want: dict[str, dict[int, str]] = {n.stem: {} for n in needles}
    for line in out.stdout.splitlines():
        l1, l2, needle, item = line.split("\t")
        want[needle][int(item)] = f"{float(l1):.6f}/{float(l2):.6f}"
    assert sum(len(v) for v in want.values()) > len(needles)       # the chairs and patterns match each other
    for n in needles:
        got = client.post_json("/m/raw_lookup", {"signal": sig(n), "banks": ["REF"],
                                                 "include_distance": "true"}).json()["matches"]
        assert {m["bank_content_id"]: m["distance"] for m in got} == want[n.stem]
    # a bank's own thresholds apply to lookups in it
    assert client.put_json("/c/bank/REF", {"c1": 0.9, "c2": 0.99}).json()["c2"] == 0.99
    for n in needles:
        got = client.post_json("/m/raw_lookup", {"signal": sig(n), "banks": "REF",
                                                 "include_distance": True}).json()["matches"]
        strict = {k: v for k, v in want[n.stem].items()
                  if float(v.split("/")[0]) >= 0.9 and float(v.split("/")[1]) >= 0.99}
        assert {m["bank_content_id"]: m["distance"] for m in got} == strict
    assert any(len(v) > len({k for k, d in v.items() if float(d.split("/")[1]) >= 0.99}) for v in want.values())
    client.put_json("/c/bank/REF", {"c1": 0.7, "c2": 0.7})


def _is_clean_4xx(r, status: int) -> None:
    assert r.status == status, (r.status, r.text)
    assert "Traceback" not in r.text and isinstance(r.json()["message"], str) and r.json()["message"]


def test_every_bad_input_is_a_4xx_json_message(server, client, clips, ref_tmks):
    good = sig(next(iter(ref_tmks.values())))
    client.post_json("/c/banks", {"name": "BAD"})
    cases = [
        (client.post_json("/m/raw_lookup", {"signal": good[:len(good) // 2]}), 400),       # truncated
        (client.post_json("/m/raw_lookup", {"signal": "TMK1FVECPDQF|@@@not base64"}), 400),  # invalid
        (client.post_json("/m/raw_lookup", {"signal": good, "signal_type": "pdq"}), 400),     # wrong type
        (client.post_json("/m/raw_lookup", {"signal": good, "include_distance": "maybe"}), 400),
        (client.post_json("/m/raw_lookup", {"signal_type": "tmk_pdqf"}), 400),               # missing field
        (client.get("/m/raw_lookup", signal_type="tmk_pdqf"), 400),
        (client.post_json("/m/raw_lookup", {"signal": good, "banks": "NO_SUCH"}), 404),      # unknown bank
        (client.post_json("/m/raw_lookup", {"signal": good, "banks": "lower"}), 400),        # bad bank name
        (client.post_json("/c/bank/NO_SUCH/signal", {"tmk_pdqf": good}), 404),
        (client.post_json("/c/bank/BAD/signal", {"tmk_pdqf": 12}), 400),
        (client.request("POST", "/c/bank/BAD/signal", b"{not json", {"Content-Type": "application/json"}), 400),
        (client.post_file("/c/bank/BAD/content", clips["junk"]), 400),                       # non-video
        (client.post_file("/h/hash", clips["junk"]), 400),
        (client.post_file("/c/bank/BAD/content", clips["orig"], params={"metadata": "{oops"}), 400),
        (client.post_file("/h/hash", b"\0" * (1 << 21), filename="big.mp4"), 413),          # over 1 MiB
        (client.post_json("/m/compare", {"tmk_pdqf": [good]}), 400),
        (client.get("/c/bank/BAD/content/abc"), 400),
        (client.get("/c/bank/BAD/content/999999"), 404),
        (client.delete("/c/bank/BAD/content/999999"), 404),
        (client.post_json("/v1/lookup", {"signals": [good], "c1": 3}), 400),
        (client.get("/no/such/path"), 404),
    ]
    for k, (r, status) in enumerate(cases):
        try:
            _is_clean_4xx(r, status)
        except AssertionError as e:
            raise AssertionError(f"case {k}: {e}") from None
    assert client.get("/status").status == 200
    assert "Traceback" not in server.stderr()


def test_full_hashing_queue_is_503_with_retry_after(server, clips):
    results: list[tuple[int, str | None]] = []

    def upload() -> None:
        c = server.client()
        r = c.post_file("/h/hash", clips["orig"])
        results.append((r.status, r.headers.get("retry-after")))

    threads = [threading.Thread(target=upload) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {s for s, _ in results} <= {200, 503} and (200, None) in results
    assert any(s == 503 and ra for s, ra in results), results


def test_metrics_and_access_log(server, client):
    text = client.get("/metrics").text
    for needle in ('vmatch_requests_total{endpoint="/m/raw_lookup",method="POST",status="200"}',
                   'vmatch_request_seconds_bucket{endpoint="/m/raw_lookup"', 'vmatch_bank_size{bank="REF"}',
                   "vmatch_hash_queue_depth", "vmatch_hash_frames_per_second", "vmatch_hashed_frames_total"):
        assert needle in text, needle
    lines = [json.loads(x) for x in server.stderr().splitlines() if x.startswith("{")]
    assert any(x["endpoint"] == "/m/raw_lookup" and x["status"] == 200 and x["ms"] > 0 for x in lines)


def test_auth_refused_and_accepted_and_time_limit(serve):
    s = serve("--request-timeout", "0.000001", token="s3cret-token")
    assert s.client(token=None).get("/status/live").status == 200
    for path in ("/status", "/c/banks", "/docs", "/metrics", "/m/index/status"):
        assert s.client(token=None).get(path).status == 401, path
        assert s.client(token="wrong").get(path).status == 401, path
        assert s.client().get(path).status == 200, path
    r = s.client(token="wrong").post_json("/c/banks", {"name": "X"})
    assert r.status == 401 and r.headers.get("www-authenticate") == "Bearer"
    r = s.client().post_json("/c/banks", {"name": "X"})       # past the (absurd) per-request limit
    assert r.status == 504 and "longer than" in r.json()["message"]


def test_refuses_a_public_address_without_a_token(tmp_path):
    r = subprocess.run([sys.executable, "-m", "engine.cli", "serve", "--data", str(tmp_path / "d"),
                        "--host", "0.0.0.0", "--port", "0"], capture_output=True, text=True, cwd=REPO,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin"}, timeout=60)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "refusing to listen on 0.0.0.0 without --token-file" in r.stderr
