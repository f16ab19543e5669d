"""engine.inputs: one extension list, one id rule; ids with control characters are refused
everywhere ids are made (index add, the API, query needles, cluster's index, backfill's ledger)."""
from __future__ import annotations

from pathlib import Path

import pytest

from engine.cli import main
from engine.errors import InputError, printable
from engine.inputs import VIDEO_EXTENSIONS, check_id, id_problem, is_tmk, is_video, item_id
from engine.synthetic import random_signatures
from engine.tmkfile import write_tmk

BAD_NAMES = ["a\tb", "c\nd", "e\rf", "g\x1bh", "i\u2028j"]


def test_id_rule():
    assert check_id("door-knob 2 (copy)") == "door-knob 2 (copy)"
    assert id_problem("") == "empty item id"
    for name in BAD_NAMES:
        with pytest.raises(InputError, match="control character"):
            check_id(name, f"/x/{name}.tmk")
    with pytest.raises(InputError) as e:
        item_id("/x/a\tb.tmk")
    assert str(e.value) == "/x/a\\tb.tmk: item id 'a\\tb' contains a control character (\\t); rename the file"
    assert e.value.path == "/x/a\tb.tmk"
    assert is_tmk("X.TMK") and not is_tmk("x.mp4") and is_video("x.MP4") and ".y4m" in VIDEO_EXTENSIONS
    from engine.eval.labels import VIDEO_EXTS
    from engine.ray.manifest import VIDEO_EXTENSIONS as ray_exts
    assert VIDEO_EXTS is VIDEO_EXTENSIONS and ray_exts is VIDEO_EXTENSIONS


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ids")
    a, b, c = random_signatures(3, seed=21)
    write_tmk(d / "good.tmk", a)
    write_tmk(d / "a\tb.tmk", b)
    write_tmk(d / "c\nd.tmk", c)
    ix = d / "ix"
    assert main(["index", "create", str(ix), "--shards", "1"]) == 0
    assert main(["index", "add", str(ix), str(d / "good.tmk")]) == 0
    return {"dir": d, "ix": ix, "good": d / "good.tmk", "tab": d / "a\tb.tmk", "nl": d / "c\nd.tmk"}


@pytest.mark.parametrize("which", ["tab", "nl"])
def test_cli_refuses_control_characters_in_ids(capsys, files, which):
    bad = files[which]
    for argv in (["index", "add", files["ix"], bad], ["index", "add", files["ix"], files["good"].parent],
                 ["query", files["ix"], bad], ["query", files["ix"], files["good"].parent]):
        capsys.readouterr()
        rc = main([str(a) for a in argv])
        err = capsys.readouterr().err
        assert rc == 1 and err.count("vmatch: ") == 1 and err.endswith("\n") and "Traceback" not in err
        named = bad if argv[-1] == bad else files["tab"]  # a folder: its first bad file (sorted)
        assert err.startswith(f"vmatch: {printable(str(named))}: item id ") and "contains a control character" in err, err
    capsys.readouterr()
    assert main(["cluster", str(files["ix"]), "--c1", "-1", "--c2", "-1", "--min-size", "1"]) == 0
    assert capsys.readouterr().out == "0\t1\tgood\n"  # nothing was added: cluster's ids are clean


def test_api_refuses_control_characters(files):
    from engine.index import VideoIndex
    from engine.index.needles import load_needles

    ix = VideoIndex(files["ix"], device="cpu")
    f = random_signatures(1, seed=3)[0]
    for name in BAD_NAMES:
        with pytest.raises(InputError, match="control character"):
            ix.add([f], ids=[name])
    with pytest.raises(InputError, match="control character"):
        ix.add_paths([files["tab"]])
    with pytest.raises(InputError, match="control character"):
        load_needles([files["nl"]])
    assert len(ix) == 1


def test_backfill_ledger_records_a_refused_id_as_failed(tmp_path):
    from engine.ray.ledger import Ledger

    (tmp_path / "ok.mp4").write_bytes(b"x")
    (tmp_path / "a\tb.mp4").write_bytes(b"x")
    led = Ledger(tmp_path / "l.sqlite", {"mode": "exact"})
    run = led.new_run()
    res = led.scan([str(tmp_path / "ok.mp4"), str(tmp_path / "a\tb.mp4")], run)
    assert res.todo == 1 and res.missing == 1
    fails = list(led.failures(run))
    assert [(Path(p).name, k) for p, k, _ in fails] == [("a\tb.mp4", "refused")]
    assert "control character" in fails[0][2]
    led.close()
