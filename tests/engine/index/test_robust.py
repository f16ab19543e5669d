"""--robust query and clusters over an index (engine/index/robust.py) and its border side table."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.features import Signatures
from engine.index import VideoIndex, robust
from engine.index.cluster import connected_components
from engine.robust import RobustScorer, transformed
from engine.scoring import Scorer
from engine.synthetic import perturbed_features

C1, C2 = 0.7, 0.7


@pytest.fixture(scope="module")
def bank_sigs(robust_sigs) -> list[Signatures]:
    """The clips (with border signatures) and near / far synthetic copies of transformed clips."""
    clips = [s for s, _ in robust_sigs.values()]
    a, b = robust_sigs["a"][0].main, robust_sigs["b"][0].main
    base = [transformed(a, "rot90"), transformed(b, "vflip"), a]
    extra = perturbed_features(base, 9, np.array([0.15, 0.15, 0.15, 0.5, 0.5, 0.5, 1.5, 1.5, 1.5], np.float32),
                               seed=11, prefix="syn")
    return clips + [Signatures(f) for f in extra]


@pytest.fixture(scope="module")
def index(bank_sigs, tmp_path_factory) -> VideoIndex:
    ix = VideoIndex.create(tmp_path_factory.mktemp("rix") / "ix", shards=3, device="cpu")
    ix.add(bank_sigs)
    return ix


def _brute(ix: VideoIndex, needles: list[Signatures], c1: float, c2: float) -> list[dict[str, tuple]]:
    """Every variant of every signature pair of every needle against every stored item."""
    ids = ix.ids()
    items = robust.stored_signatures(ix, ids)
    rs = RobustScorer(Scorer(ix.params, "cpu"))
    out = []
    for n in needles:
        res = rs.one_to_many(n, items, c1, c2)
        out.append({i: (r.level1, r.level2, r.variant) for i, r in zip(ids, res) if r is not None})
    return out


def test_side_table(index: VideoIndex, robust_sigs) -> None:
    t = index.border_table()
    assert sorted(t.row_of) == ["a_lbox", "a_wbox", "b_lbox", "b_pbox"]
    m = json.loads((index.root / "MANIFEST.json").read_text())
    assert len(m["borders"]) == 1 and m["borders"][0]["count"] == 4
    got = t.features("b_pbox")
    np.testing.assert_array_equal(got.cos, robust_sigs["b_pbox"][0].borders.cos)
    assert t.features("a") is None


@pytest.mark.parametrize("blocks", [True, False])
def test_query_equals_brute_force(index: VideoIndex, robust_sigs, blocks: bool, monkeypatch) -> None:
    """Level-1 from block products (flat) or from the coarse searcher (as IVF): same as brute force."""
    from engine.index import robust as robust_mod

    monkeypatch.setattr(robust_mod, "BLOCK_LEVEL1", blocks)
    needles = [robust_sigs[n][0] for n in ("a", "a_lbox", "a_rot90", "b_pbox", "a_dark")]
    for c1, c2 in ((C1, C2), (0.5, 0.6), (-1.0, 0.2)):
        got = robust.query(index, needles, c1, c2)
        want = _brute(index, needles, c1, c2)
        for g, w in zip(got, want):
            assert {m.id for m in g} == set(w)
            for m in g:
                l1, l2, v = w[m.id]
                assert m.variant == v, (m.needle, m.id)
                assert m.level1 == pytest.approx(l1, abs=1e-5) and m.level2 == pytest.approx(l2, abs=1e-5)
            assert [m.level2 for m in g] == sorted((m.level2 for m in g), reverse=True)
    assert index.last_stats.needles == len(needles)


def test_both_directions(index: VideoIndex, robust_sigs) -> None:
    """A letterboxed needle finds the clean film, a clean needle the letterboxed copy."""
    res = robust.query(index, [robust_sigs["a_lbox"][0], robust_sigs["a"][0]], C1, C2)
    v = [{m.id: m.variant for m in r} for r in res]
    assert v[0]["a"] == "borders" and v[0]["a_hflip"] == "hflip+borders" and v[0]["a_rot90"] == "rot90+borders"
    assert v[1]["a_lbox"] == "match-borders" and v[1]["a_wbox"] == "match-borders" and v[1]["a_hflip"] == "hflip"
    assert "b_lbox" not in v[0]       # same bars, other film
    plain = index.query([robust_sigs["a_lbox"][0].main, robust_sigs["a"][0].main], C1, C2)
    assert {m.id for m in plain[1] if not m.id.startswith("syn")} == {"a", "a_dark"}
    assert all(m.variant == "" for m in plain[1])


def test_plain_answers_unchanged(index: VideoIndex, bank_sigs, tmp_path: Path) -> None:
    """Without --robust the border table changes nothing: same answers as an index without it."""
    other = VideoIndex.create(tmp_path / "plain", shards=3, device="cpu")
    other.add([s.main for s in bank_sigs])
    assert "borders" not in json.loads((other.root / "MANIFEST.json").read_text())
    needles = [s.main for s in bank_sigs[:6]]
    for c1, c2 in ((C1, C2), (0.3, 0.3)):
        a, b = index.query(needles, c1, c2), other.query(needles, c1, c2)
        assert [[(m.id, m.level1, m.level2, m.offsets) for m in r] for r in a] == \
               [[(m.id, m.level1, m.level2, m.offsets) for m in r] for r in b]
    assert index.clusters(C1, C2) == other.clusters(C1, C2)
    # an index without border signatures answers --robust with mirror variants only
    r = robust.query(other, [bank_sigs[0]], C1, C2)[0]
    assert {m.id: m.variant for m in r}["a_rot90"] == "rot90" and "a_lbox" not in {m.id for m in r}


def test_clusters_equal_brute_force(index: VideoIndex) -> None:
    ids = index.ids()
    items = robust.stored_signatures(index, ids)
    rs = RobustScorer(Scorer(index.params, "cpu"))
    edges = [(i, j) for i in range(len(ids))
             for j, r in enumerate(rs.one_to_many(items[i], items, C1, C2)) if j > i and r is not None]
    want = [[ids[k] for k in c] for c in connected_components(len(ids), np.array(edges, np.int64).reshape(-1, 2))
            if len(c) >= 2]
    got = robust.clusters(index, C1, C2)
    assert got == want
    a_group = next(c for c in got if "a" in c)
    assert {"a", "a_hflip", "a_rot90", "a_lbox", "a_wbox", "a_dark"} <= set(a_group)
    assert not set(a_group) & {"b", "b_lbox", "b_pbox"}


def test_remove_drops_border_row(bank_sigs, robust_sigs, tmp_path: Path) -> None:
    ix = VideoIndex.create(tmp_path / "ix", shards=2, device="cpu")
    ix.add(bank_sigs[:5])
    assert "a_lbox" in ix.border_table().row_of
    ix.remove(["a_lbox"])
    assert "a_lbox" not in ix.border_table().row_of
    assert "a_lbox" not in {m.id for m in robust.query(ix, [robust_sigs["a"][0]], C1, C2)[0]}
    ix.add([bank_sigs[3]])                    # re-added: its border row is back
    assert "a_lbox" in ix.border_table().row_of
    before = ix.border_table().row_of.keys()
    assert before == {"a_lbox", "a_wbox"}
    ix.compact()
    assert len(ix.manifest.borders) == 1 and not ix.manifest.borders[0].deleted
    assert ix.border_table().row_of.keys() == before
    np.testing.assert_array_equal(ix.border_table().features("a_lbox").cos, bank_sigs[3].borders.cos)
    VideoIndex(ix.root, device="cpu").verify()


def test_cli_add_videos_and_query(robust_clips, tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[3]

    def vm(*args: object) -> str:
        r = subprocess.run([sys.executable, "-m", "engine.cli", *map(str, args)], capture_output=True, text=True,
                           cwd=root)
        assert r.returncode == 0, r.stderr
        return r.stdout

    ix = tmp_path / "ix"
    vm("index", "create", ix, "--shards", "2")
    vm("index", "add", ix, robust_clips["a_lbox"], robust_clips["b"], "--device", "cpu")
    assert VideoIndex(ix, device="cpu").border_table().row_of.keys() == {"a_lbox"}
    plain = vm("query", ix, robust_clips["a"], "--device", "cpu")
    assert plain == ""
    tsv = vm("query", ix, robust_clips["a"], "--robust", "--device", "cpu")
    assert [ln.split("\t")[2:] for ln in tsv.splitlines()] == [["a", "a_lbox", "match-borders"]]
    js = [json.loads(ln) for ln in vm("query", ix, robust_clips["a_hflip"], "--robust", "--format", "jsonl",
                                      "--device", "cpu").splitlines()]
    assert [(j["id"], j["variant"]) for j in js] == [("a_lbox", "hflip+match-borders")]
    assert vm("cluster", ix, "--robust") == ""
