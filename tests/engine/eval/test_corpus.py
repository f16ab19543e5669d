"""scripts/make_transform_corpus.py on tiny synthetic sources, then `vmatch eval` on its pairs."""
from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main as vmatch

from .conftest import REPO

SCRIPT = REPO / "scripts" / "make_transform_corpus.py"


@pytest.fixture(scope="module")
def corpus_mod():
    spec = importlib.util.spec_from_file_location("make_transform_corpus", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def ffmpeg(corpus_mod):
    try:
        return corpus_mod.find_ffmpeg()
    except corpus_mod.CorpusError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def sources(ffmpeg, tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("src")
    out = []
    for name, src in (("bars-a", "testsrc2=size=160x120:rate=30:duration=3"),
                      ("zoom-b", "mandelbrot=size=160x120:rate=30"),
                      ("bars-c", "testsrc2=size=160x120:rate=30:duration=3,hue=s=0.5")):
        p = d / f"{name}.mp4"
        subprocess.run([ffmpeg, "-loglevel", "error", "-y", "-f", "lavfi", "-i", src, "-t", "3",
                        "-pix_fmt", "yuv420p", str(p)], check=True)
        out.append(p)
    return out


def test_corpus_layout_pairs_and_eval(corpus_mod, sources, tmp_path, capsys):
    out = tmp_path / "corpus"
    argv = [*map(str, sources), "-o", str(out), "--transforms", "hflip,trim-80,greyscale",
            "--family-pattern", "^[a-z]+", "-j", "2"]
    assert corpus_mod.main(argv) == 0
    err = capsys.readouterr().err
    assert "3 sources x 3 transforms" in err and "[9/9]" in err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.mp4")) == sorted(
        [f"bars/bars-{x}{t}.mp4" for x in "ac" for t in ("", "__hflip", "__trim-80", "__greyscale")]
        + [f"zoom/zoom-b{t}.mp4" for t in ("", "__hflip", "__trim-80", "__greyscale")])
    rows = list(csv.DictReader((out / "pairs.csv").open()))
    pos = {(r["a"], r["b"], r["transform"]) for r in rows if r["label"] == "1"}
    assert ("bars/bars-a.mp4", "bars/bars-a__hflip.mp4", "hflip") in pos
    assert ("bars/bars-a.mp4", "bars/bars-c.mp4", "same-family") in pos
    neg = [r for r in rows if r["label"] == "0"]
    assert all(r["a"].split("/")[0] != r["b"].split("/")[0] for r in neg)
    assert ("bars/bars-a__hflip.mp4", "zoom/zoom-b__hflip.mp4", "0", "hflip") in {
        (r["a"], r["b"], r["label"], r["transform"]) for r in neg}
    assert len(pos) == 3 * 3 + 1 and len(neg) == 3 * (2 * 1 + 1 * 2 + 2) + 2
    manifest = json.loads((out / "corpus.json").read_text())
    assert manifest["transforms"]["hflip"]["ffmpeg_args"] == ["-vf", "hflip"]
    assert manifest["variants"]["bars/bars-a__hflip.mp4"] > 0
    # resume: nothing re-encoded, encode times kept
    assert corpus_mod.main(argv) == 0 and "0 to encode" in capsys.readouterr().err
    assert json.loads((out / "corpus.json").read_text())["variants"] == manifest["variants"]

    rep = tmp_path / "rep"
    assert vmatch(["eval", "--pairs", str(out / "pairs.csv"), "-o", str(rep), "--no-plots", "--device", "cpu"]) == 0
    s = json.loads((rep / "summary.json").read_text())
    assert s["inputs"]["videos"] == s["inputs"]["hashed"] == 12
    tags = {(r["transform"], r["label"]) for r in s["per_transform"]}
    assert {("hflip", True), ("greyscale", False), ("original", False), ("same-family", True)} <= tags
    grey = next(r for r in s["per_transform"] if r["transform"] == "greyscale" and r["label"])
    assert grey["n"] == grey["matched"] == 3 and grey["level1_min"] > 0.9  # greyscale barely moves PDQF
    capsys.readouterr()
    assert vmatch(["eval", "--groups", str(out), "-o", str(tmp_path / "rep2"), "--no-plots", "--device", "cpu"]) == 0


def test_bad_arguments(corpus_mod, sources, tmp_path, capsys, monkeypatch):
    assert corpus_mod.main([str(sources[0]), "-o", str(tmp_path), "--transforms", "blur"]) == 2
    assert "unknown transform(s) blur" in capsys.readouterr().err
    assert corpus_mod.main([str(tmp_path / "none.mp4"), "-o", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"make_transform_corpus: {tmp_path / 'none.mp4'}: no such file\n"
    assert corpus_mod.main([str(sources[0]), "-o", str(tmp_path), "--ffmpeg", str(tmp_path / "ff")]) == 2
    assert "ffmpeg executable not found" in capsys.readouterr().err
    notvideo = tmp_path / "x.mp4"
    notvideo.write_text("hello")
    assert corpus_mod.main([str(notvideo), "-o", str(tmp_path / "o")]) == 2
    assert f"{notvideo}: not a readable video" in capsys.readouterr().err


def test_no_ffmpeg_says_so(corpus_mod, monkeypatch):
    monkeypatch.setattr(corpus_mod.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    with pytest.raises(corpus_mod.CorpusError, match="no ffmpeg executable found: install ffmpeg"):
        corpus_mod.find_ffmpeg()


def test_mirror_rotation_and_border_edits(corpus_mod, tmp_path):
    """The edits added for --robust: every mirror and rotation, borders at several ratios, window-box,
    coloured bars, each producing the frame size it says (ffmpeg on a 64x48 clip)."""
    from tests.videos import make_testsrc

    src_path = make_testsrc(tmp_path / "s.mp4", 0.5, 10, size=(64, 48))
    src = corpus_mod.Source(src_path, "s", 0.5)
    ffmpeg = corpus_mod.find_ffmpeg()
    enc = corpus_mod.pick_encoder(ffmpeg)
    want = {"hflip": (64, 48), "vflip": (64, 48), "rotate-90": (48, 64), "rotate-180": (64, 48),
            "rotate-270": (48, 64), "transpose": (48, 64), "antitranspose": (48, 64),
            "letterbox": (64, 72), "letterbox-1.33": (64, 64), "letterbox-2": (64, 96), "pillarbox": (96, 48),
            "pillarbox-1.33": (84, 48), "pillarbox-2": (128, 48), "windowbox": (88, 66),
            "letterbox-blue": (64, 72), "pillarbox-grey": (96, 48)}
    assert set(want) <= set(corpus_mod.TRANSFORMS)
    for name, (w, h) in want.items():
        out = tmp_path / f"s__{name}.mp4"
        corpus_mod.make_variant(ffmpeg, enc, src, name, out)
        r = subprocess.run([ffmpeg, "-hide_banner", "-i", str(out)], capture_output=True, text=True)
        assert f" {w}x{h}" in r.stderr, (name, r.stderr[-300:])
