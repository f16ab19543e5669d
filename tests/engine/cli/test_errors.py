"""The one error mapping (engine/cli/errors.py): every command, on incompatible and on corrupt
input, prints exactly one line `vmatch: <path>: <reason>` and exits 2 (incompatible / usage) or
1 (a bad input); the machine's refusals (disk full, read-only mount) are one line too."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from engine.cli import main
from engine.errors import IncompatibleError, StorageError, VmatchError, check_compatible
from engine.features import TmkFeatures
from engine.synthetic import random_signatures
from engine.tmkfile import write_tmk
from kernels.params import DEFAULT_PARAMS, TmkParams

FOREIGN = TmkParams(periods=(2731, 4391, 9767, 14654))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    a, b, c = random_signatures(3, seed=11)
    write_tmk(d / "a.tmk", a)
    write_tmk(d / "b.tmk", b)
    write_tmk(d / "foreign.tmk", TmkFeatures(c.avg, c.cos, c.sin, c.frame_count, FOREIGN))
    (d / "corrupt.tmk").write_bytes(b"TMK1FVECPDQF" + b"\x00" * 40)
    (d / "foreign.yaml").write_text("tmk:\n  periods: [2731, 4391, 9767, 14654]\n")
    (d / "pairs.csv").write_text("a,b,label\na.tmk,foreign.tmk,1\na.tmk,b.tmk,0\n")
    (d / "corrupt_pairs.csv").write_text("a,b,label\na.tmk,corrupt.tmk,1\na.tmk,b.tmk,0\n")
    ix = d / "ix"
    assert main(["index", "create", str(ix), "--shards", "1"]) == 0
    assert main(["index", "add", str(ix), str(d / "a.tmk"), str(d / "b.tmk")]) == 0
    bad = d / "badix"
    bad.mkdir()
    (bad / "MANIFEST.json").write_text("{ not json")
    return {"dir": d, "ix": ix, "badix": bad, **{p.stem: p for p in d.glob("*.tmk")},
            "foreign_cfg": d / "foreign.yaml", "pairs": d / "pairs.csv", "corrupt_pairs": d / "corrupt_pairs.csv"}


def _one_line(capsys, argv: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines()  # a batch reports each input, then its closing count
             if not ln.endswith((" inputs failed", " files could not be read"))]
    assert len(lines) == 1 and lines[0].startswith("vmatch: "), (argv, err)
    assert "Traceback" not in err
    return rc, lines[0]


# (command line, exit code, text the line contains); {name} is replaced by the input's path
CASES = [
    (["score", "{a}", "{foreign}"], 2, "{foreign}: TMK parameters differ"),
    (["score", "--needle", "{a}", "{foreign}"], 2, "{foreign}: TMK parameters differ"),
    (["score", "{a}", "{corrupt}"], 1, "{corrupt}: implausible header"),
    (["info", "{corrupt}"], 2, "{corrupt}: implausible header"),
    (["compare", "{a}", "{corrupt}"], 2, "{corrupt}: implausible header"),
    (["index", "add", "{ix}", "{foreign}"], 2, "{foreign}: TMK parameters differ from the index's"),
    (["index", "add", "{ix}", "{corrupt}"], 1, "{corrupt}: implausible header"),
    (["index", "info", "{badix}"], 1, "{badix}"),
    (["index", "verify", "{badix}"], 1, "{badix}"),
    (["index", "add", "{badix}", "{a}"], 1, "{badix}"),
    (["query", "{ix}", "{foreign}"], 2, "{foreign}: TMK parameters differ from the index's"),
    (["query", "{ix}", "{corrupt}"], 1, "{corrupt}: implausible header"),
    (["query", "{badix}", "{a}"], 1, "{badix}"),
    (["cluster", "{badix}"], 1, "{badix}"),
    (["eval", "--pairs", "{pairs}", "-o", "{dir}/rep", "--no-plots"], 2, "TMK parameters differ"),
    (["eval", "--pairs", "{corrupt_pairs}", "-o", "{dir}/rep2", "--no-plots"], 1, "{corrupt}: implausible header"),
    (["signal", "encode", "{corrupt}"], 1, "{corrupt}: implausible header"),
    (["bench", "score", "--pairs", "8", "--repeat", "1", "--from", "{corrupt}"], 1, "{corrupt}: implausible header"),
    (["--config", "{foreign_cfg}", "backfill", "{dir}", "--index", "{ix}"], 2,
     "{ix}: TMK parameters differ from the index's"),
    (["backfill", "--manifest", "{corrupt}", "-d", "{dir}/out"], 1, "{corrupt}"),
]


@pytest.mark.parametrize("argv,code,text", CASES, ids=[" ".join(c[0][:2]) + f"-{i}" for i, c in enumerate(CASES)])
def test_every_command_maps_bad_input_to_one_line(capsys, inputs, argv, code, text):
    fill = {k: str(v) for k, v in inputs.items()}
    rc, line = _one_line(capsys, [a.format(**fill) for a in argv])
    assert text.format(**fill) in line, line
    assert rc == code, line


def test_missing_config_is_a_usage_error(capsys, inputs):
    rc, line = _one_line(capsys, ["--config", inputs["dir"] / "missing.yaml", "score", inputs["a"], inputs["b"]])
    assert rc == 2 and f"{inputs['dir'] / 'missing.yaml'}: " in line and "no such file" in line.lower()
    rc, line = _one_line(capsys, ["--config", inputs["dir"] / "missing.yaml", "info", inputs["a"]])  # reads no config
    assert rc == 2 and line == f"vmatch: {inputs['dir'] / 'missing.yaml'}: no such file"


def test_score_of_different_parameters_in_a_fresh_process(inputs):
    """The traceback of the issue, as a user sees it: one line, exit 2."""
    r = subprocess.run([sys.executable, "-m", "engine.cli", "score", str(inputs["a"]), str(inputs["foreign"])],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parents[3])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == (f"vmatch: {inputs['foreign']}: TMK parameters differ from {inputs['a']}'s "
                                "(periods differ: (2731, 4391, 9767, 14653) vs (2731, 4391, 9767, 14654))"), r.stderr


def test_errors_keep_path_and_reason_across_pickling():
    import pickle

    from engine.decode import DecodeTimeout
    from engine.index import IndexCorruptError
    from engine.tmkfile import TmkFormatError

    for e in [VmatchError("p.mp4", "bad"), DecodeTimeout("v.mp4", "over 3 s"), IndexCorruptError("ix", "crc"),
              TmkFormatError("a.tmk", "truncated"), StorageError("ix", "No space left on device", errno.ENOSPC)]:
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is type(e) and str(back) == str(e) and back.path == e.path and back.reason == e.reason
    with pytest.raises(IncompatibleError, match=r"^x\.tmk: TMK parameters differ \(periods"):
        check_compatible(DEFAULT_PARAMS, FOREIGN, "x.tmk")
    assert issubclass(IncompatibleError, TmkFormatError) and issubclass(StorageError, OSError)


# --------------------------------------------------------------------- the machine's refusals
def _try_mount(target: Path, options: str) -> bool:
    if os.geteuid() != 0:
        return False
    target.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
    return r.returncode == 0


def _umount(target: Path) -> None:
    subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root); elsewhere a folder whose segment writes fail with ENOSPC."""
    d = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    if _try_mount(d, "size=1m"):
        yield d, None
        _umount(d)
    else:
        d.mkdir()
        yield d, "simulated"


def test_disk_full_during_index_add_is_one_line_and_the_index_stays_intact(capsys, inputs, small_disk, monkeypatch):
    disk, simulated = small_disk
    ix = disk / "ix"
    assert main(["index", "create", str(ix), "--shards", "1"]) == 0
    assert main(["index", "add", str(ix), str(inputs["a"])]) == 0  # 263 KB: fits
    many = inputs["dir"] / "many"
    many.mkdir(exist_ok=True)
    for i, f in enumerate(random_signatures(8, seed=5)):  # ~2 MB: does not fit in 1 MiB
        write_tmk(many / f"m{i}.tmk", f)
    if simulated:
        from engine.index import segment

        def full(*_a, **_k):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(ix / "shard-000" / "x.store"))
        monkeypatch.setattr(segment.SegmentWriter, "add", full)
    rc, line = _one_line(capsys, ["index", "add", ix, many])
    assert rc == 1 and line == f"vmatch: {ix}: No space left on device; nothing was changed"
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["index", "verify", str(ix)]) == 0  # intact: still the first item only
    assert '"count": 1' in capsys.readouterr().out
    # the next writer reclaims the space the failed one left: a small add fits again
    assert main(["index", "add", str(ix), str(inputs["b"])]) == 0


@pytest.fixture
def read_only_index(tmp_path, inputs):
    """An index on a read-only mount (root: a tmpfs remounted ro); elsewhere writes fail with EROFS."""
    d = tmp_path / f"ro-{uuid.uuid4().hex[:6]}"
    mounted = _try_mount(d, "size=8m")
    ix = d / "ix"
    assert main(["index", "create", str(ix), "--shards", "1"]) == 0
    assert main(["index", "add", str(ix), str(inputs["a"]), str(inputs["b"])]) == 0
    if mounted and subprocess.run(["mount", "-o", "remount,ro", str(d)], capture_output=True).returncode == 0:
        yield ix, None
        _umount(d)
    else:
        yield ix, "simulated"
        if mounted:
            _umount(d)


def test_add_to_a_read_only_index_is_one_line_and_queries_still_work(capsys, inputs, read_only_index, monkeypatch,
                                                                    tmp_path):
    ix, simulated = read_only_index
    new = tmp_path / "new.tmk"
    write_tmk(new, random_signatures(1, seed=99)[0])
    if simulated:
        real_open = os.open

        def ro_open(path, flags, *a, **k):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and str(path).startswith(str(ix)):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_open(path, flags, *a, **k)
        monkeypatch.setattr(os, "open", ro_open)
    rc, line = _one_line(capsys, ["index", "add", ix, new])
    assert rc == 1 and line == f"vmatch: {ix}: Read-only file system", line
    capsys.readouterr()
    assert main(["query", str(ix), str(inputs["a"]), "--c1", "0.99", "--c2", "0.99"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [ln.split("\t")[2:] for ln in out] == [["a", "a"]]
