"""Pairs CSV and groups folder loading: good layouts and one-line errors naming the file and line."""
from __future__ import annotations

from pathlib import Path

import pytest

from engine.eval.labels import LabelError, load_groups, load_pairs_csv


@pytest.fixture
def files(tmp_path: Path) -> Path:
    for name in ("x.tmk", "y.tmk", "z.mp4", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    return tmp_path


def csv(tmp: Path, text: str) -> Path:
    p = tmp / "pairs.csv"
    p.write_text(text)
    return p


def test_pairs_csv_relative_paths_labels_and_transform(files):
    p = csv(files, "# comment\nlabel,b,a,transform\nmatch,y.tmk,x.tmk,crop\n\n0,z.mp4,x.tmk,\n")
    s = load_pairs_csv(p)
    assert [s.display(i) for i in range(len(s.items))] == ["x.tmk", "y.tmk", "z.mp4"]
    assert [(q.a, q.b, q.label, q.transform) for q in s.pairs] == [(0, 1, True, "crop"), (0, 2, False, "")]
    assert s.video_items() == [2]


@pytest.mark.parametrize("text, message", [
    ("", "pairs.csv: empty file"),
    ("a,b\nx.tmk,y.tmk\n", "pairs.csv:1: header must name columns a,b,label (missing label"),
    ("a,b,label\nx.tmk,y.tmk,maybe\n", "pairs.csv:2: label 'maybe' is not one of"),
    ("a,b,label\nx.tmk,y.tmk,1\nx.tmk,gone.tmk,0\n", "pairs.csv:3: gone.tmk: no such file"),
    ("a,b,label\nx.tmk,notes.txt,0\n", "pairs.csv:2: notes.txt: not a .tmk or video file"),
    ("a,b,label\nx.tmk,x.tmk,1\n", "pairs.csv:2: a and b are the same file"),
    ("a,b,label\nx.tmk,y.tmk,1\ny.tmk,x.tmk,0\n", "pairs.csv:3: duplicate pair (first on line 2)"),
    ("a,b,label\nx.tmk,y.tmk,1\nx.tmk,z.mp4,1\n", "need both matching and non-matching pairs (have 2 matches, 0"),
    ("a,b,label\nx.tmk,y.tmk\n", "pairs.csv:2: expected 3 fields, got 2"),
])
def test_pairs_csv_errors(files, text, message):
    with pytest.raises(LabelError) as e:
        load_pairs_csv(csv(files, text))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_pairs_csv_missing_file_and_directory(tmp_path):
    with pytest.raises(LabelError, match="nope.csv: no such file"):
        load_pairs_csv(tmp_path / "nope.csv")
    with pytest.raises(LabelError, match="is a directory"):
        load_pairs_csv(tmp_path)


def test_groups(tmp_path):
    for g, names in {"g1": ["a.tmk", "b.mp4", ".hidden.tmk", "readme.txt"], "g2": ["c.tmk"], "empty": []}.items():
        (tmp_path / g).mkdir()
        for n in names:
            (tmp_path / g / n).write_bytes(b"")
    (tmp_path / "pairs.csv").write_text("ignored at top level")
    s = load_groups(tmp_path)
    assert [s.display(i) for i in range(len(s.items))] == ["g1/a.tmk", "g1/b.mp4", "g2/c.tmk"]
    assert [(q.a, q.b, q.label, q.transform) for q in s.pairs] == [
        (0, 1, True, "same-group"), (0, 2, False, "cross-group"), (1, 2, False, "cross-group")]


def test_groups_tagged_by_edit_names(tmp_path):
    for g, names in {"g1": ["a.mp4", "a__hflip.mp4", "a__logo.mp4"], "g2": ["b.mp4", "b__logo.mp4"]}.items():
        (tmp_path / g).mkdir()
        for n in names:
            (tmp_path / g / n).write_bytes(b"")
    s = load_groups(tmp_path)
    tags = {(s.display(q.a), s.display(q.b)): (q.label, q.transform) for q in s.pairs}
    assert tags[("g1/a.mp4", "g1/a__hflip.mp4")] == (True, "hflip")
    assert tags[("g1/a__hflip.mp4", "g1/a__logo.mp4")] == (True, "mixed-edits")
    assert tags[("g1/a__logo.mp4", "g2/b__logo.mp4")] == (False, "logo")
    assert tags[("g1/a.mp4", "g2/b.mp4")] == (False, "original")
    assert tags[("g1/a.mp4", "g2/b__logo.mp4")] == (False, "logo")


def test_groups_errors(tmp_path):
    with pytest.raises(LabelError, match="no such folder"):
        load_groups(tmp_path / "nope")
    (tmp_path / "g1").mkdir()
    (tmp_path / "g1" / "a.tmk").write_bytes(b"")
    with pytest.raises(LabelError, match="need at least two group sub-folders"):
        load_groups(tmp_path)
    (tmp_path / "g2").mkdir()
    (tmp_path / "g2" / "b.tmk").write_bytes(b"")
    with pytest.raises(LabelError, match="have 0 matches, 1 non-matches"):
        load_groups(tmp_path)
