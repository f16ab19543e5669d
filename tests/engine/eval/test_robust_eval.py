"""`vmatch eval --robust`: pairs scored as their best variant, on .tmk files with border sidecars and on videos."""
from __future__ import annotations

import json
from pathlib import Path

from engine.cli import main
from engine.tmkfile import write_tmk

from .conftest import write_pairs


def _eval(capsys, *argv: str) -> dict:
    code = main(["eval", *argv, "--no-plots", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads((Path(argv[argv.index("-o") + 1]) / "summary.json").read_text())


def test_eval_robust_on_tmk_files(robust_sigs, tmp_path: Path, capsys) -> None:
    for n in ("a", "a_hflip", "a_rot90", "a_lbox", "b", "b_lbox", "b_pbox"):
        s = robust_sigs[n][0]
        write_tmk(tmp_path / f"{n}.tmk", s.main)
        if s.borders is not None:
            write_tmk(tmp_path / f"{n}.borders.tmk", s.borders)
    rows = [("a.tmk", "a_hflip.tmk", 1, "hflip"), ("a.tmk", "a_rot90.tmk", 1, "rotate-90"),
            ("a.tmk", "a_lbox.tmk", 1, "letterbox"), ("b.tmk", "b_pbox.tmk", 1, "pillarbox"),
            ("b_lbox.tmk", "b.tmk", 1, "letterbox"),
            ("a.tmk", "b.tmk", 0, "original"), ("a_lbox.tmk", "b_lbox.tmk", 0, "letterbox"),
            ("a_hflip.tmk", "b_pbox.tmk", 0, "hflip")]
    csv = write_pairs(tmp_path / "pairs.csv", rows)
    plain = _eval(capsys, "--pairs", str(csv), "-o", str(tmp_path / "plain"))
    rob = _eval(capsys, "--pairs", str(csv), "-o", str(tmp_path / "robust"), "--robust")
    assert plain["operating_point"]["tp"] == 0 and "robust" not in plain["inputs"]
    op = rob["operating_point"]
    assert (op["tp"], op["fn"], op["fp"], op["tn"]) == (5, 0, 0, 3)
    assert rob["inputs"]["robust"] is True and rob["inputs"]["with_borders"] == 3
    assert rob["inputs"]["variants"]["matches"] == {"hflip": 1, "rot90": 1, "match-borders": 2, "borders": 1}
    assert rob["inputs"]["variants"]["nonmatches"] == {}


def test_eval_robust_hashes_videos_with_borders(robust_clips, tmp_path: Path, capsys) -> None:
    rows = [(robust_clips["a"], robust_clips["a_lbox"], 1, "letterbox"),
            (robust_clips["b_lbox"], robust_clips["a_lbox"], 0, "letterbox")]
    csv = write_pairs(tmp_path / "pairs.csv", rows)
    cache = tmp_path / "cache"
    s = _eval(capsys, "--pairs", str(csv), "-o", str(tmp_path / "r1"), "--robust", "--cache", str(cache))
    assert s["operating_point"]["tp"] == 1 and s["operating_point"]["fp"] == 0
    assert s["inputs"]["hashed"] == 3 and s["inputs"]["with_borders"] == 2
    assert len(list(cache.glob("*.borders.tmk"))) == 2 and len(list(cache.glob("*.noborders"))) == 1
    again = _eval(capsys, "--pairs", str(csv), "-o", str(tmp_path / "r2"), "--robust", "--cache", str(cache))
    assert again["inputs"]["hashed"] == 0 and again["inputs"]["hash_cache_hits"] == 3
    assert again["operating_point"] == s["operating_point"]
