"""A whole `vmatch query` process (issue 13): at --c1 -1 it never imports faiss, on CPU it never
imports torch (numpy scoring, kernels/score_np.py); its output is the in-process query's."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

SCRIPT = """
import json, sys
from engine.cli import main
code = main(sys.argv[1:])
from engine.index import segment
print(json.dumps({'code': code, 'faiss': 'faiss' in sys.modules, 'torch': 'torch' in sys.modules,
                  'ahead_left': len(segment._AHEAD)}), file=sys.stderr)
"""


def _run(*args: str) -> tuple[dict, str]:
    r = subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stderr.strip().splitlines()[-1]), r.stdout


def test_query_at_c1_minus_1_skips_faiss_and_prints_the_in_process_answer(tmp_path, ref_tmks):
    from engine.index import VideoIndex
    from engine.tmkfile import read_tmk

    root = tmp_path / "ix"
    ix = VideoIndex.create(root, shards=2, device="cpu")
    ix.add_paths(list(ref_tmks.values()))
    needle = ref_tmks["chair-19-sd-bar"]
    from kernels.device import device_kind
    gpu = device_kind("auto") != "cpu"        # only a GPU query needs torch
    res, out = _run("query", str(root), str(needle), "--c1", "-1", "--c2", "-1")
    assert res == {"code": 0, "faiss": False, "torch": gpu, "ahead_left": 0}
    want = [f"{m.level1:.6f}\t{m.level2:.6f}\t{m.needle}\t{m.id}"
            for m in VideoIndex(root, device="cpu").query([read_tmk(needle)], -1, -1)[0]]
    assert out.splitlines() == want and len(want) == len(ref_tmks)
    res, out = _run("query", str(root), str(needle), "--c1", "0.9", "--c2", "0.9")   # a search: faiss
    assert res["code"] == 0 and res["faiss"] and res["torch"] == gpu and res["ahead_left"] == 0
    assert 0 < len(out.splitlines()) < len(ref_tmks)


def test_query_read_ahead_leaves_errors_to_the_index(tmp_path, ref_tmks):
    r = subprocess.run([sys.executable, "-m", "engine.cli", "query", str(tmp_path / "nope"),
                        str(ref_tmks["chair-19-sd-bar"]), "--c1", "-1"], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "no such index" in r.stderr

