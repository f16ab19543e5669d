"""Commands that do not compute start light: building the parser and running them imports
neither torch nor faiss (whose imports cost seconds on a loaded 2-core machine)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

SCRIPT = """
import json, sys
from engine.cli import main
code = main(sys.argv[1:]) if sys.argv[1:] != ['--help'] else None
if code is None:
    try:
        main(['--help'])
    except SystemExit as e:
        code = e.code
heavy = sorted(m for m in ('torch', 'faiss', 'ray', 'pyarrow', 'decord') if m in sys.modules)
print(json.dumps({'code': code, 'heavy': heavy}), file=sys.stderr)
"""


def run(*args: str) -> tuple[dict, str]:
    r = subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    return json.loads(r.stderr.strip().splitlines()[-1]), r.stdout


@pytest.fixture(scope="module")
def small_index(tmp_path_factory, ref_tmks):
    from engine.index import VideoIndex

    root = tmp_path_factory.mktemp("startup") / "ix"
    ix = VideoIndex.create(root, shards=2, device="cpu")
    ix.add_paths([ref_tmks["doorknob-hd-no-bar"], ref_tmks["chair-19-sd-bar"]])
    return root


def test_help_info_compare_and_index_info_import_neither_torch_nor_faiss(ref_tmks, small_index):
    a, b = str(ref_tmks["doorknob-hd-no-bar"]), str(ref_tmks["chair-19-sd-bar"])
    res, out = run("--help")
    assert res == {"code": 0, "heavy": []} and "COMMAND" in out
    res, out = run("info", a)
    assert res == {"code": 0, "heavy": []} and json.loads(out)["frame_count"] == 62
    res, out = run("compare", a, a)
    assert res == {"code": 0, "heavy": []} and out.strip().endswith("equal")
    res, out = run("compare", a, b)
    assert res == {"code": 1, "heavy": []}
    res, out = run("index", "info", str(small_index))
    assert res == {"code": 0, "heavy": []} and json.loads(out)["count"] == 2
    res, _ = run("index", "info", str(small_index / "nope"))
    assert res == {"code": 1, "heavy": []}


def test_the_light_modules_import_no_torch():
    code = ("import sys, engine, engine.features, engine.tmkfile, engine.signals, engine.config, kernels.params, "
            "engine.index.manifest, engine.index.needles, engine.cli; engine.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'faiss', 'ray') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr
