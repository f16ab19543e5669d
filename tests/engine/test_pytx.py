"""engine.pytx with the real python-threatexchange 1.2.17: its CLI (inner_main with a temporary
state dir, as pytx's own end-to-end tests drive it) and its Python API (signal type, index,
pickling through the base class, as HMA reloads indexes)."""
from __future__ import annotations

import io
import pickle
import subprocess
import sys
from contextlib import redirect_stdout
from dataclasses import is_dataclass
from pathlib import Path

import pytest
from threatexchange.cli.exceptions import CommandError
from threatexchange.cli.main import inner_main
from threatexchange.content_type.video import VideoContent
from threatexchange.exchanges.impl.fb_threatexchange_signal import HasFbThreatExchangeIndicatorType
from threatexchange.signal_type.index import SignalSimilarityInfo, SignalTypeIndex
from threatexchange.signal_type.signal_base import CanGenerateRandomSignal, FileHasher

from engine import signals
from engine.cli import main as vmatch
from engine.pytx import TX_MANIFEST, TmkPdqfIndex, TmkPdqfSignal, TmkPdqfSimilarityInfo
from tests.videos import make_testsrc, run_ffmpeg

ROOT = Path(__file__).resolve().parents[2]
DOOR = "doorknob-hd-no-bar"


def tx(state: Path, *args: object) -> str:
    """One threatexchange CLI command; its stdout. A non-zero SystemExit fails the test."""
    buf = io.StringIO()
    with redirect_stdout(buf):
        try:
            inner_main([str(a) for a in args], state_dir=state)
        except SystemExit as e:
            if e.code not in (0, None):
                pytest.fail(f"threatexchange {' '.join(map(str, args))} exited {e.code}: {buf.getvalue()}")
    return buf.getvalue()


@pytest.fixture(scope="module")
def videos(tmp_path_factory, ref_dir) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    door = ref_dir / "videos" / f"{DOOR}.mp4"
    copy = d / "door-reencoded.mp4"   # smaller, recompressed, another container
    run_ffmpeg("-i", str(door), "-vf", "scale=480:-2", "-c:v", "libx264", "-crf", "32", "-preset", "ultrafast",
               "-an", str(copy.with_suffix(".mkv")))
    copy = copy.with_suffix(".mkv")
    other = make_testsrc(d / "unrelated.mp4", 3, 30, (160, 120))
    return {"door": door, "copy": copy, "other": other}


@pytest.fixture(scope="module")
def session(tmp_path_factory, videos, ref_tmks):
    """extension add -> hash video -> local_file bank -> fetch, recorded for the tests below."""
    state = tmp_path_factory.mktemp("txstate")
    rec = {"state": state}
    rec["ext"] = tx(state, "config", "extensions", "add", "engine.pytx")
    rec["hash"] = tx(state, "hash", "video", videos["door"])
    bank = state.parent / "bank.txt"
    door_line = [ln for ln in rec["hash"].splitlines() if ln.startswith("tmk_pdqf ")]
    # a second bank entry, in the plain base64 form, of an unrelated reference video
    other = ref_tmks["pattern-hd-no-bar"].read_bytes()
    import base64
    bank.write_text("\n".join(door_line + [f"tmk_pdqf {base64.b64encode(other).decode()}"]) + "\n")
    rec["bank"] = bank
    rec["collab"] = tx(state, "config", "collab", "edit", "local_file", "--create", "--filename", bank, "TmkBank")
    rec["fetch"] = tx(state, "fetch")
    return rec


def test_extension_add_registers_tmk_pdqf(session):
    assert "tmk_pdqf - TmkPdqfSignal" in session["ext"]
    assert TX_MANIFEST.signal_types == (TmkPdqfSignal,)
    out = tx(session["state"], "config", "extensions", "list")
    assert "engine.pytx" in out and "tmk_pdqf" in out


def test_hash_video_equals_vmatch_hash_and_reference(session, videos, ref_tmks, tmp_path):
    lines = session["hash"].splitlines()
    assert [ln.split(" ")[0] for ln in lines] == ["video_md5", "video_sha256", "tmk_pdqf"]
    sig = lines[2].split(" ", 1)[1]
    assert sig.startswith("TMK1FVECPDQF|") and len(sig) == 351_125
    out = tmp_path / "door.tmk"
    assert vmatch(["hash", str(videos["door"]), "-o", str(out), "--device", "cpu"]) == 0
    assert signals.decode_bytes(sig) == out.read_bytes() == ref_tmks[DOOR].read_bytes()


def test_match_video_finds_the_reencoded_copy_only(session, videos):
    out = tx(session["state"], "match", "video", videos["copy"])
    assert len(out.splitlines()) == 1, out
    kind, scores, collab, category = out.split()
    assert (kind, collab, category) == ("tmk_pdqf", "(TmkBank)", "INVESTIGATION_SEED")
    l1, l2 = map(float, scores.split("/"))
    assert l1 >= 0.7 and l2 >= 0.7
    assert tx(session["state"], "match", "video", videos["other"]) == ""


def test_a_file_that_is_not_a_video_hashes_and_matches_to_nothing(session, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video\n")
    assert [ln.split(" ")[0] for ln in tx(session["state"], "hash", "video", bad).splitlines()] == \
        ["video_md5", "video_sha256"]
    assert tx(session["state"], "match", "video", bad) == ""


def test_match_hashes(session, tmp_path):
    door = signals.decode_bytes(session["bank"].read_text().splitlines()[0].split(" ", 1)[1])
    good = tmp_path / "good.txt"
    good.write_text(signals.encode(door) + "\n" + __import__("base64").b64encode(door).decode() + "\n")
    out = tx(session["state"], "match", "-A", "-H", "-S", "tmk_pdqf", "video", good)
    assert out.splitlines() == ["tmk_pdqf 1.0000/1.0000 (TmkBank) INVESTIGATION_SEED"] * 2, out
    bad = tmp_path / "bad.txt"
    bad.write_text("TMK1FVECPDQF|" + signals.encode(door)[13:-40] + "\n")
    with pytest.raises(CommandError) as e:
        tx(session["state"], "match", "-H", "-S", "tmk_pdqf", "video", bad)
    assert e.value.returncode == 2
    assert "is not a valid hash for tmk_pdqf" in str(e.value) and str(bad) in str(e.value)


def test_cli_index_is_ours_and_small(session):
    path = session["state"] / "index" / "tmk_pdqf.index"
    with path.open("rb") as fh:
        ix = SignalTypeIndex.deserialize(fh)
    assert type(ix) is TmkPdqfIndex and len(ix) == 2
    assert path.stat().st_size < 2 * 0.76 * 351_125          # 351 KB strings are not what is stored


# --------------------------------------------------------------------------- Python API
def test_signal_type_interface():
    S = TmkPdqfSignal
    assert S.get_name() == "tmk_pdqf" and S.get_content_types() == [VideoContent]
    assert S.get_index_cls() is TmkPdqfIndex and S.INDICATOR_TYPE == "HASH_TMK"
    assert issubclass(S, FileHasher) and issubclass(S, CanGenerateRandomSignal)
    assert issubclass(S, HasFbThreatExchangeIndicatorType)
    ex = S.get_examples()
    assert len(ex) == 2 and ex == S.get_examples() and all(S.validate_signal_str(e) == e for e in ex)
    r1, r2 = S.get_random_signal(), S.get_random_signal()
    assert r1 != r2 and S.validate_signal_str(r1) == r1
    with pytest.raises(ValueError, match="truncated body"):
        S.validate_signal_str(ex[0][:-8])


def test_compare_hash_scores_thresholds_and_info(ref_tmks, ref_pairs):
    a, b = "chair-19-sd-bar", "chair-20-sd-bar"
    l1, l2 = next((p[0], p[1]) for p in ref_pairs if (p[2], p[3]) in ((a + ".tmk", b + ".tmk"), (a, b)))
    ha = signals.encode(ref_tmks[a].read_bytes())
    hb = __import__("base64").b64encode(ref_tmks[b].read_bytes()).decode()
    r = TmkPdqfSignal.compare_hash(ha, hb)
    info = r.distance
    assert isinstance(info, TmkPdqfSimilarityInfo) and isinstance(info, SignalSimilarityInfo) and is_dataclass(info)
    assert abs(info.level1 - l1) <= 2e-6 and abs(info.level2 - l2) <= 2e-6
    assert r.match == (l1 >= 0.7 and l2 >= 0.7)
    s = info.pretty_str()
    assert s == f"{info.level1:.4f}/{info.level2:.4f}" and len(s.split()) == 1
    strict = TmkPdqfSignal.compare_hash(ha, hb, level1_threshold=l1 + 1e-3)
    assert not strict.match and strict.distance == info
    loose = TmkPdqfSignal.compare_hash(ha, hb, level1_threshold=l1 - 1e-3, level2_threshold=l2 - 1e-3)
    assert loose.match
    other = TmkPdqfSignal.compare_hash(ha, signals.encode(ref_tmks[DOOR].read_bytes()))
    assert not other.match and info < other.distance      # closer sorts first (pytx: a distance)


def test_threatexchange_hash_tmk_maps_to_tmk_pdqf(ref_tmks):
    from threatexchange.exchanges.impl.fb_threatexchange_api import _make_indicator_type_mapping
    assert _make_indicator_type_mapping([TmkPdqfSignal])["HASH_TMK"] == {None: [TmkPdqfSignal]}
    raw = ref_tmks[DOOR].read_bytes()
    b64 = __import__("base64").b64encode(raw).decode()
    assert TmkPdqfSignal.normalize_fb_threatexchange_indicator("HASH_TMK", b64, None) == signals.encode(raw)
    assert TmkPdqfSignal.normalize_fb_threatexchange_indicator("HASH_TMK", "junk", None) == "junk"


def test_build_skips_invalid_signals_with_a_warning(caplog):
    ex = TmkPdqfSignal.get_examples()
    ix = TmkPdqfIndex.build([(ex[0], "a"), ("junk!", "b"), (ex[1][:-8], "c")])
    assert len(ix) == 1 and [m.metadata for m in ix.query(ex[0])] == ["a"]
    warn = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("'b'" in w and "invalid base64" in w for w in warn)
    assert any("'c'" in w and "truncated body" in w for w in warn) and warn[-1].endswith("2 invalid signals skipped")
    with pytest.raises(ValueError):
        ix.add("junk", "d")


def test_hash_from_file_of_a_non_video_is_empty(tmp_path):
    bad = tmp_path / "x.mp4"
    bad.write_text("not a video\n")
    assert TmkPdqfSignal.hash_from_file(bad) == ""


def test_importing_the_extension_or_unpickling_an_index_skips_torch(tmp_path, ref_tmks):
    ix = TmkPdqfIndex.build([(signals.encode(ref_tmks[DOOR].read_bytes()), "door")])
    blob = tmp_path / "ix.pickle"
    with blob.open("wb") as fh:
        ix.serialize(fh)
    code = ("import sys, pickle\nimport engine.pytx\n"
            f"ix = pickle.load(open({str(blob)!r}, 'rb'))\n"
            "print(len(ix), sorted(m for m in ('torch', 'faiss', 'decord', 'av') if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "1 []", r.stderr


def _vmatch_query(capsys, tmp_path, bank: Path, store: str, needles: list[Path]) -> dict[tuple[str, str], tuple]:
    ix = tmp_path / f"ix-{store}"
    assert vmatch(["index", "create", str(ix), "--store", store, "--shards", "3"]) == 0
    assert vmatch(["index", "add", str(ix), "--signals", str(bank)]) == 0
    capsys.readouterr()
    assert vmatch(["query", str(ix), *map(str, needles), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    got = {}
    for ln in out.splitlines():
        l1, l2, needle, item = ln.split("\t")
        got[(needle, item)] = (float(l1), float(l2))
    return got


@pytest.mark.parametrize("store", ["fp32", "fp16"])
def test_index_round_trip_through_base_deserialize_equals_vmatch_query(capsys, tmp_path, ref_tmks, store):
    names = sorted(ref_tmks)
    bank = tmp_path / "bank.txt"
    bank.write_text("".join(f"tmk_pdqf {signals.encode(ref_tmks[n].read_bytes())}\t{n}\n" for n in names))
    want = _vmatch_query(capsys, tmp_path, bank, store, [ref_tmks[n] for n in names])
    assert len(want) > len(names)                 # copies match each other, not only themselves

    half = len(names) // 2
    ix = TmkPdqfIndex.build([(signals.encode(ref_tmks[n].read_bytes()), n) for n in names[:half]], store=store)
    for n in names[half:]:                        # add, in the other string form
        ix.add(__import__("base64").b64encode(ref_tmks[n].read_bytes()).decode(), n)
    buf = io.BytesIO()
    ix.serialize(buf)
    size = buf.tell()
    per_hash = size / len(names)
    print(f"pickled TmkPdqfIndex ({store}): {size} bytes for {len(names)} hashes = {per_hash:.0f} bytes/hash")
    assert per_hash < (0.76 if store == "fp32" else 0.38) * 351_125
    buf.seek(0)
    loaded = SignalTypeIndex.deserialize(buf)
    assert type(loaded) is TmkPdqfIndex and len(loaded) == len(names)

    got = {}
    for n in names:
        for m in loaded.query(signals.encode(ref_tmks[n].read_bytes())):
            assert isinstance(m.similarity_info, TmkPdqfSimilarityInfo)
            got[(n, m.metadata)] = (m.similarity_info.level1, m.similarity_info.level2)
    # the same matches; scores equal up to float32 rounding (batches are grouped differently) and
    # vmatch query's 6 printed decimals
    assert sorted(got) == sorted(want)
    for k, (l1, l2) in want.items():
        assert abs(got[k][0] - l1) <= 2e-6 and abs(got[k][1] - l2) <= 2e-6, k

    # after reloading: more entries, a duplicate signal keeps both entries, best first
    loaded.add(signals.encode(ref_tmks[DOOR].read_bytes()), "door-again")
    res = loaded.query(signals.encode(ref_tmks[DOOR].read_bytes()))
    assert [m.metadata for m in res][:2] == [DOOR, "door-again"] and len(loaded) == len(names)
    assert res == sorted(res, key=lambda m: m.similarity_info)
    with pytest.raises(ValueError):
        loaded.query("TMK1FVECPDQF|AAAA")


def test_empty_index_and_thresholds():
    ix = TmkPdqfIndex()
    ex = TmkPdqfSignal.get_examples()
    assert ix.query(ex[0]) == []
    ix = TmkPdqfIndex.build([(ex[0], "a"), (ex[1], "b")], level1_threshold=-1.0, level2_threshold=-1.0)
    assert sorted(m.metadata for m in ix.query(ex[0])) == ["a", "b"]
    again = pickle.loads(pickle.dumps(ix))
    assert again.level1_threshold == -1.0 and sorted(m.metadata for m in again.query(ex[0])) == ["a", "b"]
    with pytest.raises(ValueError, match="unknown store"):
        TmkPdqfIndex(store="int8")
