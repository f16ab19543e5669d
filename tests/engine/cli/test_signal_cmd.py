"""`vmatch signal encode|decode` and `vmatch index add --signals` as a user runs them."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine import signals
from engine.cli import main
from engine.features import TmkFeatures
from engine.tmkfile import to_bytes
from kernels.params import DEFAULT_PARAMS

ROOT = Path(__file__).resolve().parents[3]


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def tmks(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("tmk")
    p = DEFAULT_PARAMS
    shape = (p.num_periods, p.num_coeffs, p.dim)
    out = []
    for i in range(3):
        rng = np.random.default_rng(i)
        f = TmkFeatures(rng.standard_normal(p.dim), rng.standard_normal(shape), rng.standard_normal(shape), 50 + i)
        path = d / f"v{i}.tmk"
        path.write_bytes(to_bytes(f))
        out.append(path)
    return out


def test_encode_one_line_per_file_in_argument_order(capsys, tmks):
    rc, out, err = _run(capsys, "signal", "encode", tmks[2], tmks[0], tmks[1])
    assert rc == 0 and err == ""
    lines = out.split("\n")
    assert lines[-1] == "" and len(lines) == 4
    assert [signals.decode_bytes(s) for s in lines[:3]] == [tmks[k].read_bytes() for k in (2, 0, 1)]
    assert all(s == signals.encode(signals.decode_bytes(s)) and s.startswith("TMK1FVECPDQF|") for s in lines[:3])


def test_encode_reports_each_bad_file_and_goes_on(capsys, tmks, tmp_path):
    bad = tmp_path / "bad.tmk"
    bad.write_bytes(tmks[0].read_bytes()[:-8])
    rc, out, err = _run(capsys, "signal", "encode", tmks[0], bad, tmp_path / "missing.tmk", tmp_path, tmks[1])
    assert rc == 1
    assert [signals.decode_bytes(s) for s in out.splitlines()] == [tmks[0].read_bytes(), tmks[1].read_bytes()]
    assert err.splitlines() == [f"vmatch: {bad}: truncated body: 263336 bytes, expected 263344",
                                f"vmatch: {tmp_path / 'missing.tmk'}: No such file or directory",
                                f"vmatch: {tmp_path}: is a directory",
                                "vmatch: 3 of 5 inputs failed"]


def test_decode_writes_byte_identical_files_named_by_id_or_line(capsys, tmks, tmp_path):
    enc = [signals.encode(p.read_bytes()) for p in tmks]
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join([
        f"tmk_pdqf {enc[0]}\tfirst",             # 1: pytx prefix and an id
        base64.b64encode(tmks[1].read_bytes()).decode(),   # 2: plain base64, no id -> 2.tmk
        "# a comment",                           # 3
        "not-a-signal\tbroken",                  # 4: bad base64
        f"pdq {enc[2]}",                         # 5: another signal type
        f"{enc[2]}\tfirst",                      # 6: duplicate id
        f"{enc[2]}\t../escape",                  # 7: id that is not a file name
        f"tmk_pdqf {enc[2]}",                    # 8
    ]) + "\n")
    out_dir = tmp_path / "out"
    rc, out, err = _run(capsys, "signal", "decode", lst, "-d", out_dir)
    assert rc == 1 and out == ""
    assert sorted(p.name for p in out_dir.iterdir()) == ["2.tmk", "8.tmk", "first.tmk"]
    assert (out_dir / "first.tmk").read_bytes() == tmks[0].read_bytes()
    assert (out_dir / "2.tmk").read_bytes() == tmks[1].read_bytes()
    assert (out_dir / "8.tmk").read_bytes() == tmks[2].read_bytes()
    lines = err.splitlines()
    assert [ln.split(": ")[1] for ln in lines[:-1]] == [f"{lst}:4", f"{lst}:5", f"{lst}:6", f"{lst}:7"]
    assert "invalid base64" in lines[0] and "signal type 'pdq'" in lines[1]
    assert "also on line 1" in lines[2] and "cannot be a file name" in lines[3]
    assert lines[-1] == "vmatch: 4 of 7 signals failed"
    assert "Traceback" not in err


def test_decode_usage_and_missing_list(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["signal", "decode", str(tmp_path / "x.txt")])   # no -d
    assert e.value.code == 2
    capsys.readouterr()
    rc, _, err = _run(capsys, "signal", "decode", tmp_path / "missing.txt", "-d", tmp_path / "o")
    assert rc == 1 and err == f"vmatch: {tmp_path / 'missing.txt'}: no such file\n"


def test_signal_commands_import_neither_torch_nor_faiss(tmks, tmp_path):
    code = ("import sys\nfrom engine.cli import main\n"
            f"rc = main(['signal', 'encode', {str(tmks[0])!r}])\n"
            "heavy = sorted(m for m in ('torch', 'faiss', 'decord', 'av', 'ray') if m in sys.modules)\n"
            "print(rc, heavy, file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stderr.strip() == "0 []", r.stderr
    assert signals.decode_bytes(r.stdout.strip()) == tmks[0].read_bytes()


# ------------------------------------------------------------------ index add --signals
def _tsv(capsys, ix, needles) -> list[str]:
    rc, out, err = _run(capsys, "query", ix, *needles, "--c1", "-1", "--c2", "0", "--device", "cpu")
    assert rc == 0, err
    return sorted(out.splitlines())


def test_index_add_signals_equals_adding_the_files(capsys, tmks, tmp_path):
    lst = tmp_path / "bank.txt"
    lst.write_text(f"tmk_pdqf {signals.encode(tmks[0].read_bytes())}\tv0\n"
                   f"{base64.b64encode(tmks[1].read_bytes()).decode()}\tv1\n"
                   f"{signals.encode(tmks[2].read_bytes())}\n")
    a, b = tmp_path / "a", tmp_path / "b"
    for ix in (a, b):
        assert _run(capsys, "index", "create", ix, "--shards", "2")[0] == 0
    rc, _, err = _run(capsys, "index", "add", a, "--signals", lst)
    assert rc == 0 and "added 3 items" in err, err
    cid = signals.content_id(tmks[2].read_bytes())
    info = json.loads(_run(capsys, "index", "info", a)[1])
    assert info["count"] == 3
    from engine.index import VideoIndex
    assert VideoIndex(a, device="cpu").ids() == sorted(["v0", "v1", cid])
    (tmp_path / "files").mkdir()
    for name, src in (("v0", tmks[0]), ("v1", tmks[1]), (cid, tmks[2])):
        (tmp_path / "files" / f"{name}.tmk").write_bytes(src.read_bytes())
    assert _run(capsys, "index", "add", b, tmp_path / "files")[0] == 0
    assert _tsv(capsys, a, tmks) == _tsv(capsys, b, tmks)


def test_index_add_signals_is_all_or_nothing(capsys, tmks, tmp_path):
    ix = tmp_path / "ix"
    assert _run(capsys, "index", "create", ix)[0] == 0
    good = signals.encode(tmks[0].read_bytes())
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{good}\tok\n{good[:-8]}\tbroken\n")
    rc, _, err = _run(capsys, "index", "add", ix, "--signals", bad)
    assert rc == 1 and err.startswith(f"vmatch: {bad}:2: ") and "nothing was added" in err, err
    dup = tmp_path / "dup.txt"
    dup.write_text(f"{good}\n{good}\n")           # same content, so the same derived id
    rc, _, err = _run(capsys, "index", "add", ix, "--signals", dup)
    assert rc == 1 and "duplicate id" in err and "nothing was added" in err, err
    assert json.loads(_run(capsys, "index", "info", ix)[1])["count"] == 0
    rc, _, err = _run(capsys, "index", "add", ix, "--signals", tmp_path / "none.txt")
    assert rc == 1 and "no such file" in err
    rc, _, err = _run(capsys, "index", "add", ix, tmks[0], "--signals", dup)
    assert rc == 2 and "either PATH... or --signals" in err


def test_decode_reads_stdin(capsys, tmks, tmp_path, monkeypatch):
    import io
    line = f"tmk_pdqf {signals.encode(tmks[1].read_bytes())}\tfrom-stdin\n".encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\n" + line)))
    rc, out, err = _run(capsys, "signal", "decode", "-", "-d", tmp_path)
    assert rc == 0 and out == err == ""
    assert (tmp_path / "from-stdin.tmk").read_bytes() == tmks[1].read_bytes()
