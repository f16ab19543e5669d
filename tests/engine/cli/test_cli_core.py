"""End-to-end tests of `vmatch hash|score|compare|info|bench` as a user runs them."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main
from tests.videos import make_testsrc


def vm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[3])


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("this is not a video\n")
    good = make_testsrc(d / "good.mp4", 2, 30)
    (d / "truncated.mp4").write_bytes(good.read_bytes()[:700])
    audio = d / "audio.m4a"
    from tests.videos import run_ffmpeg
    run_ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", str(audio))
    (d / "folder.mp4").mkdir()
    return {"empty": d / "empty.mp4", "text": d / "text.mp4", "truncated": d / "truncated.mp4",
            "audio": audio, "missing": d / "missing.mp4", "dir": d / "folder.mp4", "good": good}


def test_hash_batch_reports_each_failure_on_one_line_and_keeps_going(bad_inputs, tmp_path):
    order = ["empty", "text", "good", "truncated", "audio", "missing", "dir"]
    r = vm("hash", *[bad_inputs[k] for k in order], "-d", tmp_path)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("vmatch: ")]
    for k in ("empty", "text", "truncated", "audio", "missing", "dir"):
        mine = [ln for ln in lines if ln.startswith(f"vmatch: {bad_inputs[k]}: ")]
        assert len(mine) == 1, (k, r.stderr)
    assert (tmp_path / "good.tmk").stat().st_size == 263_344
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.tmk"]
    assert r.stdout == ""


def test_hash_reference_and_compare_info(ref_dir, ref_tmks, tmp_path):
    out = tmp_path / "door.tmk"
    r = vm("hash", ref_dir / "videos" / "doorknob-hd-no-bar.mp4", "-o", out, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == ref_tmks["doorknob-hd-no-bar"].read_bytes()
    r = vm("compare", out, ref_tmks["doorknob-hd-no-bar"])
    assert r.returncode == 0 and "equal" in r.stdout
    r = vm("compare", out, ref_tmks["pattern-hd-no-bar"])
    assert r.returncode == 1 and "frame count: 62 vs 105" in r.stdout and "cos:" in r.stdout
    info = json.loads(vm("info", out).stdout)
    assert info["frame_count"] == 62 and info["periods"] == [2731, 4391, 9767, 14653]
    assert info["bytes"] == 263_344 and info["algorithm"] == "PDQF"


def test_hash_refuses_bad_output_usage(ref_dir, tmp_path):
    v = ref_dir / "videos" / "doorknob-hd-no-bar.mp4"
    r = vm("hash", v, v, "-o", tmp_path / "x.tmk")
    assert r.returncode == 2 and r.stderr.startswith("vmatch: -o takes exactly one")


def test_score_all_pairs_reproduces_reference_table(ref_tmks, ref_pairs, capsys, monkeypatch):
    files = [p for s, p in ref_tmks.items() if s != "test-padded-dimensions"]
    monkeypatch.chdir(files[0].parent)
    assert main(["score", *[p.name for p in files], "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 105
    got = {(ln.split()[2], ln.split()[3]): ln.split()[:2] for ln in out}
    for l1, l2, a, b in ref_pairs:
        g1, g2 = map(float, got[(a, b)])  # first name is the lexicographically smaller one
        assert abs(g1 - l1) <= 2e-6 and abs(g2 - l2) <= 2e-6


def test_score_needle_and_thresholds(ref_tmks, capsys):
    n = ref_tmks["chair-19-sd-bar"]
    others = [ref_tmks[s] for s in ("chair-20-sd-bar", "pattern-hd-no-bar", "doorknob-hd-no-bar")]
    assert main(["score", "--needle", str(n), *map(str, others), "--c1", "0.5", "--c2", "0.9"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("0.989083 0.991138 ") and lines[0].endswith("chair-20-sd-bar.tmk")


def test_score_and_compare_bad_tmk(tmp_path):
    bad = tmp_path / "bad.tmk"
    bad.write_bytes(b"TMK1FVEC")
    r = vm("score", bad, bad)
    assert r.returncode == 1 and r.stderr.strip() == f"vmatch: {bad}: truncated header (8 bytes, need 32)"
    r = vm("compare", bad, bad)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_bench_commands_print_json(ref_dir):
    r = vm("bench", "score", "--pairs", "64", "--repeat", "1", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["pairs"] == 64 and d["pairs_per_s"] > 0
    r = vm("bench", "hash", ref_dir / "videos" / "doorknob-hd-no-bar.mp4", "--repeat", "1", "--device", "cpu")
    d = json.loads(r.stdout)
    assert d["frames"] == 62 and d["decode_only_s"] > 0 and d["end_to_end_s"] > 0
