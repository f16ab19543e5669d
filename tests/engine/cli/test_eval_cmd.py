"""`vmatch eval` end to end: reported rates against the reference tool's own scores, groups layout,
video inputs hashed once (and cached), and one-line errors for bad input."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from engine.cli import main

from tests.engine.eval.conftest import family, family_pairs_csv, ref, ref_tmks, write_pairs  # noqa: F401  (fixtures)


def run_eval(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["eval", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def reference_scores(ref: Path) -> dict[frozenset, tuple[float, float]]:
    out = {}
    for ln in (ref / "pair-scores.txt").read_text().splitlines():
        l1, l2, a, b = ln.split()
        out[frozenset((a, b))] = (float(l1), float(l2))
    return out


def test_pairs_report_matches_independent_count(ref, family_pairs_csv, tmp_path, capsys):
    rep = tmp_path / "rep"
    code, out, err = run_eval(capsys, "--pairs", str(family_pairs_csv), "-o", str(rep), "--device", "cpu")
    assert code == 0, err
    s = json.loads((rep / "summary.json").read_text())
    assert s["inputs"]["pairs"] == 105 and s["inputs"]["matches"] == 46
    # independent count: the reference tool's printed scores, family labels, inclusive thresholds
    scores = reference_scores(ref)
    labels = {k: family(min(k)) == family(max(k)) for k in scores}

    def count(c1, c2):
        acc = {k: v[0] >= c1 and v[1] >= c2 for k, v in scores.items()}
        return (sum(acc[k] and labels[k] for k in acc), sum(acc[k] and not labels[k] for k in acc))

    op = s["operating_point"]
    assert (op["c1"], op["c2"]) == (0.7, 0.7)
    assert (op["tp"], op["fp"]) == count(0.7, 0.7)
    assert op["tn"] == 59 - op["fp"] and op["fn"] == 46 - op["tp"]
    assert op["tpr"] == pytest.approx(op["tp"] / 46) and op["fpr"] == pytest.approx(op["fp"] / 59)
    for row in s["rules"]["level1"]["grid"]:
        assert (row["tp"], row["fp"]) == count(row["threshold"], -2), row
    for row in s["rules"]["level2"]["grid"]:
        assert (row["tp"], row["fp"]) == count(-2, row["threshold"]), row
    for row in s["rules"]["two_level"]["grid"]:
        assert (row["tp"], row["fp"]) == count(row["c1"], row["c2"]), row
    # families are separable on these samples: a threshold below the weakest match, no false match
    for name in ("level1", "level2", "two_level"):
        r = s["rules"][name]
        assert r["auc"] == 1.0 and r["average_precision"] == pytest.approx(1.0)
        assert r["target_fpr"]["tpr"] == 1.0 and r["target_fpr"]["fp"] == 0
    assert s["rules"]["level1"]["target_fpr"]["threshold"] == pytest.approx(0.389181, abs=2e-6)
    by = {(r["transform"], r["label"]): r for r in s["per_transform"]}
    assert by[("cross", False)]["matched"] == 0 and by[("chair", True)]["n"] == 36
    # report: self-contained HTML with the plots embedded
    page = (rep / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5
    assert not re.search(r'src="(?!data:)', page)
    for name in s["plots"].values():
        assert (rep / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (rep / "scores.csv").read_text().splitlines()[0] == "a,b,label,transform,level1,level2"
    assert "c1=0.7 c2=0.7: tp=32 fp=0" in out and "report:" in out


def test_groups_layout_and_flags(ref, ref_tmks, tmp_path, capsys):
    root = tmp_path / "groups"
    for t in ref_tmks:
        (root / family(t.name)).mkdir(parents=True, exist_ok=True)
        (root / family(t.name) / t.name).symlink_to(t)
    rep = tmp_path / "rep"
    code, out, err = run_eval(capsys, "--groups", str(root), "-o", str(rep), "--c1", "0.9", "--c2", "0.8",
                              "--target-fpr", "0.05", "--grid", "0.6,0.9", "--no-plots", "--device", "cpu")
    assert code == 0, err
    s = json.loads((rep / "summary.json").read_text())
    assert s["inputs"]["kind"] == "groups" and s["inputs"]["pairs"] == 105
    assert s["thresholds"]["c1"] == 0.9 and s["thresholds"]["target_fpr"] == 0.05
    assert [r["threshold"] for r in s["rules"]["level1"]["grid"]] == [0.6, 0.9]
    assert s["plots"] == {} and not list(rep.glob("*.png"))
    expected = sum(l1 >= 0.9 and l2 >= 0.8 for l1, l2 in reference_scores(ref).values())
    assert (s["operating_point"]["tp"], s["operating_point"]["fp"]) == (expected, 0)


def test_video_inputs_hashed_once_and_cached(ref, tmp_path, capsys):
    v = ref / "videos" / "doorknob-hd-no-bar.mp4"
    rows = [(v, ref / "tmk" / "doorknob-hd-no-bar.tmk", 1, "same"),
            (v, ref / "tmk" / "pattern-hd-no-bar.tmk", 0, "other"),
            (ref / "tmk" / "chair-19-sd-bar.tmk", v, 0, "other")]
    pairs = write_pairs(tmp_path / "p.csv", rows)
    args = ["--pairs", str(pairs), "--no-plots", "--device", "cpu", "--mode", "exact", "--cache", str(tmp_path / "c")]
    code, _, err = run_eval(capsys, *args, "-o", str(tmp_path / "r1"))
    assert code == 0, err
    s1 = json.loads((tmp_path / "r1" / "summary.json").read_text())
    assert (s1["inputs"]["videos"], s1["inputs"]["hashed"], s1["inputs"]["hash_cache_hits"]) == (1, 1, 0)
    first = (tmp_path / "r1" / "scores.csv").read_text().splitlines()[1].split(",")
    assert first[-2:] == ["1.000000", "1.000000"]  # exact hash of the video == its published .tmk
    code, _, err = run_eval(capsys, *args, "-o", str(tmp_path / "r2"))
    s2 = json.loads((tmp_path / "r2" / "summary.json").read_text())
    assert code == 0 and (s2["inputs"]["hashed"], s2["inputs"]["hash_cache_hits"]) == (0, 1)
    assert (tmp_path / "r1" / "scores.csv").read_text() == (tmp_path / "r2" / "scores.csv").read_text()


def test_bad_inputs_one_line_errors(ref, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,label\nx.tmk,y.tmk,1\n")
    code, _, err = run_eval(capsys, "--pairs", str(bad), "-o", str(tmp_path / "r"))
    assert code == 2 and err == f"vmatch: {bad}:2: x.tmk: no such file\n"
    broken = tmp_path / "broken.tmk"
    broken.write_bytes(b"TMK1")
    rows = [(broken, ref / "tmk" / "doorknob-hd-no-bar.tmk", 1, ""),
            (broken, ref / "tmk" / "pattern-hd-no-bar.tmk", 0, "")]
    code, _, err = run_eval(capsys, "--pairs", str(write_pairs(tmp_path / "p.csv", rows)), "-o", str(tmp_path / "r"))
    assert code == 1 and err.startswith(f"vmatch: {broken}: truncated header") and err.count("\n") == 1
    code, _, err = run_eval(capsys, "--groups", str(tmp_path / "none"), "-o", str(tmp_path / "r"))
    assert code == 2 and err == f"vmatch: {tmp_path / 'none'}: no such folder\n"
    code, _, err = run_eval(capsys, "--pairs", str(bad), "-o", str(tmp_path / "r"), "--target-fpr", "2")
    assert code == 2 and "--target-fpr must be between 0 and 1" in err


def test_index_option(ref_tmks, family_pairs_csv, tmp_path, capsys):
    """--index takes the index's stored signatures (id = file stem)."""
    from engine.index import VideoIndex

    code, _, err = run_eval(capsys, "--pairs", str(family_pairs_csv), "-o", str(tmp_path / "r0"),
                            "--index", str(tmp_path / "nothing"))
    assert code == 2 and err.startswith(f"vmatch: {tmp_path / 'nothing'}") and err.count("\n") == 1
    idx = VideoIndex.create(tmp_path / "idx", shards=1, device="cpu")
    idx.add_paths(ref_tmks[:3])
    code, _, err = run_eval(capsys, "--pairs", str(family_pairs_csv), "-o", str(tmp_path / "r"), "--no-plots",
                            "--device", "cpu", "--index", str(tmp_path / "idx"))
    assert code == 0, err
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["inputs"]["from_index"] == 3
    assert (s["operating_point"]["tp"], s["operating_point"]["fp"]) == (32, 0)


def test_missing_matplotlib_is_one_line(family_pairs_csv, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, err = run_eval(capsys, "--pairs", str(family_pairs_csv), "-o", str(tmp_path / "r"), "--device", "cpu")
    assert code == 2 and err == "vmatch: matplotlib is not installed (pip install matplotlib), or pass --no-plots\n"
    assert not (tmp_path / "r").exists()  # refused before any work


def test_undecodable_video_is_one_line(ref, tmp_path, capsys):
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"not a video at all")
    rows = [(fake, ref / "tmk" / "doorknob-hd-no-bar.tmk", 1, ""), (fake, ref / "tmk" / "pattern-hd-no-bar.tmk", 0, "")]
    code, _, err = run_eval(capsys, "--pairs", str(write_pairs(tmp_path / "p.csv", rows)), "-o", str(tmp_path / "r"),
                            "--device", "cpu", "--no-plots")
    assert code == 1 and err.startswith(f"vmatch: {fake}: ") and err.count("\n") == 1, err
