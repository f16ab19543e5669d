"""`vmatch index ...`, `vmatch query`, `vmatch cluster`: output formats and one-line errors."""
from __future__ import annotations

import json

import pytest

from engine.cli import main
from tests.engine.index.conftest import passing, real_feats, real_full  # noqa: F401  (fixtures)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def cli_index(tmp_path, ref_tmks, capsys):
    ix = str(tmp_path / "ix")
    assert _run(capsys, "index", "create", ix, "--shards", "3", "--store", "fp32")[0] == 0
    rc, _, err = _run(capsys, "index", "add", ix, str(next(iter(ref_tmks.values())).parent))
    assert rc == 0 and "added 16 items" in err
    return ix


def test_info_query_and_cluster_output(cli_index, ref_tmks, real_full, capsys):
    rc, out, _ = _run(capsys, "index", "info", cli_index)
    info = json.loads(out)
    assert rc == 0 and (info["count"], info["shards"], info["coarse"], info["store"], info["format_version"]) == \
        (16, 3, "flat", "fp32", 1)
    needle = "chair-19-sd-bar"
    rc, out, _ = _run(capsys, "query", cli_index, str(ref_tmks[needle]))
    rows = [line.split("\t") for line in out.splitlines()]
    want = passing(real_full, 0.7, 0.7)[needle]
    assert rc == 0 and {r[3] for r in rows} == set(want) and all(r[2] == needle for r in rows)
    for l1, l2, _, match in rows:
        assert len(l1.split(".")[1]) == 6 and abs(float(l2) - want[match][1]) <= 1e-6
    assert [float(r[1]) for r in rows] == sorted((float(r[1]) for r in rows), reverse=True)
    rc, out, _ = _run(capsys, "query", cli_index, str(ref_tmks[needle]), "--c1", "-1", "--c2", "0", "--top", "3",
                      "--format", "jsonl")
    recs = [json.loads(line) for line in out.splitlines()]
    assert len(recs) == 3 and recs[0]["id"] == needle and len(recs[1]["offsets"]) == 4
    rc, out, _ = _run(capsys, "cluster", cli_index)
    lines = [line.split("\t") for line in out.splitlines()]
    assert rc == 0 and [(c, s) for c, s, _ in lines].count(("0", "8")) == 8 and len(lines) == 12
    rc, out, _ = _run(capsys, "cluster", cli_index, "--format", "jsonl", "--min-size", "5")
    assert [json.loads(line)["size"] for line in out.splitlines()] == [8]


def test_remove_then_query(cli_index, ref_tmks, capsys):
    assert _run(capsys, "index", "remove", cli_index, "chair-20-sd-bar")[0] == 0
    rc, _, err = _run(capsys, "index", "compact", cli_index)
    assert rc == 0 and "compacted" in err
    _, out, _ = _run(capsys, "query", cli_index, str(ref_tmks["chair-19-sd-bar"]))
    assert "chair-20-sd-bar" not in out and out
    assert json.loads(_run(capsys, "index", "info", cli_index)[1])["count"] == 15


@pytest.mark.parametrize("argv,message", [
    (["index", "add", "{ix}", "{tmk}/chair-19-sd-bar.tmk"], "already in the index; nothing was added"),
    (["index", "add", "{ix}", "{tmp}/missing.tmk"], "missing.tmk: no such file"),
    (["index", "remove", "{ix}", "nope"], "no such id"),
    (["query", "{tmp}/nothere", "{tmk}/chair-19-sd-bar.tmk"], "no such index"),
    (["query", "{ix}", "{tmp}/bad.tmk"], "bad.tmk: not a TMK file"),
    (["index", "create", "{ix}"], "already exists"),
])
def test_bad_input_is_one_line_on_stderr(cli_index, ref_tmks, tmp_path, capsys, argv, message):
    (tmp_path / "bad.tmk").write_bytes(b"NOPE" * 20)
    subs = {"ix": cli_index, "tmk": str(next(iter(ref_tmks.values())).parent), "tmp": str(tmp_path)}
    rc, out, err = _run(capsys, *[a.format(**subs) for a in argv])
    assert rc != 0 and not out
    assert len(err.splitlines()) == 1 and err.startswith("vmatch: ") and message in err, err


def test_videos_are_hashed_on_add_and_on_query(tmp_path, ref_dir, ref_tmks, capsys):
    video = ref_dir / "videos" / "doorknob-hd-no-bar.mp4"
    ix = str(tmp_path / "v")
    assert _run(capsys, "index", "create", ix)[0] == 0
    assert _run(capsys, "index", "add", ix, str(video), str(ref_tmks["chair-19-sd-bar"]))[0] == 0
    _, out, _ = _run(capsys, "query", ix, str(ref_tmks["doorknob-hd-no-bar"]), str(video), "--c1", "0.99", "--c2", "0.99")
    assert out == ("1.000000\t1.000000\tdoorknob-hd-no-bar\tdoorknob-hd-no-bar\n" * 2)


def test_cluster_jsonl_summary_and_candidate_search(cli_index, capsys):
    rc, out, err = _run(capsys, "cluster", cli_index, "--format", "jsonl", "--summary", "1")
    lines = [json.loads(line) for line in out.splitlines()]
    assert rc == 0 and [r["size"] for r in lines[:-1]] == [8, 4]
    s = lines[-1]["summary"]
    assert (s["items"], s["clusters"], s["items_in_clusters"]) == (16, 2, 12)
    assert s["largest"] == [{"cluster": 0, "size": 8, "share": 0.5}] and s["largest_share"] == 0.5
    assert s["candidates"] == "exact" and 0 < s["level2_pairs"] <= s["level1_pairs"]
    assert "16 items, 2 clusters" in err
    rc, out2, _ = _run(capsys, "cluster", cli_index, "--format", "jsonl", "--candidates", "ivf", "--nlist", "1")
    assert rc == 0 and [json.loads(line) for line in out2.splitlines()] == lines[:-1]
    from engine.index.neighbours import int8_products_exact

    for precision in ("int8", "fp32") if int8_products_exact() else ("fp32",):   # the answer is the same
        rc, out3, _ = _run(capsys, "cluster", cli_index, "--format", "jsonl", "--summary", "1",
                           "--scan-precision", precision)
        got = [json.loads(line) for line in out3.splitlines()]
        assert rc == 0 and got[:-1] == lines[:-1] and got[-1]["summary"]["scan_precision"] == precision


def test_int8_index_from_the_command_line(tmp_path, ref_tmks, capsys):
    ix = str(tmp_path / "q")
    assert _run(capsys, "index", "create", ix, "--store", "int8")[0] == 0
    assert _run(capsys, "index", "add", ix, str(next(iter(ref_tmks.values())).parent))[0] == 0
    info = json.loads(_run(capsys, "index", "info", ix)[1])
    assert info["store"] == "int8" and info["bytes_per_item"] < 70_000
    rc, out, _ = _run(capsys, "query", ix, str(ref_tmks["chair-19-sd-bar"]), "--top", "1")
    assert rc == 0 and out.split("\t")[3].strip() == "chair-19-sd-bar"
