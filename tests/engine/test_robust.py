"""--robust scoring (engine/robust.py): transformed stored hashes against hashes of transformed videos,
best-variant results against a brute-force scan, and `vmatch score --robust`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.features import Signatures
from engine.hasher import VideoHasher
from engine.robust import (BORDERS, MAIN, RobustScorer, better, signature_pairs, transformed, variant_name)
from engine.scoring import Scorer
from engine.synthetic import perturbed_features
from engine.tmkfile import write_tmk
from kernels import dihedral
from tests.videos import run_ffmpeg

@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Small tensors: one intra-op thread avoids spin-wait stalls on a busy 2-core box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


#: Measured on this clip: >= 0.99941 (level-1 and level-2, all 8 transforms; spec 12 saw >= 0.9994
#: on 6 other clips); the residue is the 64x64 scaler, which is not exactly mirror-symmetric.
VIDEO_BOUND = 0.998


@pytest.fixture(scope="module")
def transformed_clips(tmp_path_factory) -> dict[str, Path]:
    """The same lavfi source encoded once per transform with the ffmpeg filter (lossless)."""
    d = tmp_path_factory.mktemp("dihedral")
    out = {}
    for n in dihedral.NAMES:
        vf = dihedral.FFMPEG_FILTERS[n]
        p = d / f"{n}.mp4"
        run_ffmpeg("-f", "lavfi", "-i", "testsrc2=size=96x72:rate=30:duration=2", *(["-vf", vf] if vf else []),
                   "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv420p", "-preset", "ultrafast", str(p))
        out[n] = p
    return out


def test_permuted_hash_matches_hash_of_transformed_video(transformed_clips: dict[str, Path]) -> None:
    h = VideoHasher(mode="exact", device="cpu")
    feats = {n: h.hash(p) for n, p in transformed_clips.items()}
    orig = feats["identity"]
    sc = Scorer(orig.params, "cpu")
    for n in dihedral.NAMES:
        l1, l2, _ = sc.pair(transformed(orig, n), feats[n])
        assert l1 >= VIDEO_BOUND and l2 >= VIDEO_BOUND, (n, l1, l2)
        if n != "identity":   # without the permutation the copy is far off
            p1, p2, _ = sc.pair(orig, feats[n])
            assert min(p1, p2) < 0.75, (n, p1, p2)
        # and the right transform is the best of the 8
        best = max(dihedral.NAMES, key=lambda t: sc.pair(transformed(orig, t), feats[n])[1])
        assert best == n


def test_variant_names_and_signature_pairs() -> None:
    assert variant_name("identity") == "identity"
    assert variant_name("hflip") == "hflip"
    assert variant_name("identity", BORDERS) == "borders"
    assert variant_name("hflip", BORDERS) == "hflip+borders"
    assert variant_name("rot90", MAIN, BORDERS) == "rot90+match-borders"
    assert variant_name("identity", BORDERS, BORDERS) == "borders+match-borders"
    assert signature_pairs(False, False) == [(MAIN, MAIN)]
    assert signature_pairs(True, False) == [(MAIN, MAIN), (BORDERS, MAIN)]
    assert signature_pairs(False, True) == [(MAIN, MAIN), (MAIN, BORDERS)]
    # both bordered: their uncropped signatures (bars against bars) are not compared
    assert signature_pairs(True, True) == [(MAIN, BORDERS), (BORDERS, MAIN), (BORDERS, BORDERS)]
    assert better((0.8, 0.9), (0.95, 0.85), "level2") and not better((0.8, 0.9), (0.95, 0.85), "min")
    assert better((0.5, float("nan")), None, "level2")


def _brute(needle: Signatures, items: list[Signatures], sc: Scorer) -> list[list[tuple[float, float, str]]]:
    """Level-1 and full level-2 of every variant of every allowed signature pair, per item."""
    from engine.features import FeatureBatch

    out: list[list[tuple[float, float, str]]] = [[] for _ in items]
    for nk in (MAIN, BORDERS):
        for ik in (MAIN, BORDERS):
            a = needle.main if nk == MAIN else needle.borders
            idx = [i for i, it in enumerate(items) if (nk, ik) in signature_pairs(needle.borders is not None,
                                                                                  it.borders is not None)]
            if a is None or not idx:
                continue
            bank = FeatureBatch.stack([items[i].main if ik == MAIN else items[i].borders for i in idx])
            for t in dihedral.NAMES:
                r = sc.one_to_many(transformed(a, t), bank, -1.0)
                for k, i in enumerate(idx):
                    out[i].append((float(r.level1[k]), float(r.level2[k]), variant_name(t, nk, ik)))
    return out


def _pick(cands: list[tuple[float, float, str]], c1: float, c2: float | None, choose: str):
    best = None
    for l1, l2, v in cands:
        if l1 >= c1 and (c2 is None or l2 >= c2) and better((l1, l2), best and best[:2], choose):
            best = (l1, l2, v)
    return best


def test_robust_scorer_equals_brute_force(robust_sigs) -> None:
    sigs = [s for s, _ in robust_sigs.values()]
    # synthetic neighbours (near copies of transformed signatures) so thresholds cut in between
    base = [transformed(robust_sigs["a"][0].main, "rot180"), robust_sigs["b"][0].main]
    extra = perturbed_features(base, 6, np.array([0.2, 0.2, 0.5, 0.5, 1.2, 1.2], np.float32), seed=7)
    sigs += [Signatures(f) for f in extra]
    sc = Scorer(sigs[0].main.params, "cpu")
    rs = RobustScorer(sc)
    for needle in (robust_sigs["a_lbox"][0], robust_sigs["b_pbox"][0]):
        every = _brute(needle, sigs, sc)
        for c1, c2, choose in ((0.7, 0.7, "level2"), (0.3, 0.5, "level2"), (-1.0, None, "min")):
            got = rs.one_to_many(needle, sigs, c1, c2, choose)
            want = [_pick(c, c1, c2, choose) for c in every]
            assert len(got) == len(want)
            for g, w in zip(got, want):
                assert (g is None) == (w is None)
                if g is not None:
                    assert g.variant == w[2]
                    assert g.level1 == pytest.approx(w[0], abs=1e-6) and g.level2 == pytest.approx(w[1], abs=1e-5)


def test_both_directions_of_border_matching(robust_sigs) -> None:
    sc = Scorer(robust_sigs["a"][0].main.params, "cpu")
    rs = RobustScorer(sc)
    a, lbox, b_lbox = robust_sigs["a"][0], robust_sigs["a_lbox"][0], robust_sigs["b_lbox"][0]
    plain = sc.pair(a.main, lbox.main)
    assert min(plain[:2]) < 0.7                          # as hashed, no match
    r = rs.one_to_many(lbox, [a], 0.7, 0.7)[0]           # letterboxed needle, clean item
    assert r is not None and r.variant == "borders" and min(r.level1, r.level2) >= 0.99
    r = rs.one_to_many(a, [lbox], 0.7, 0.7)[0]           # clean needle, letterboxed item
    assert r is not None and r.variant == "match-borders" and min(r.level1, r.level2) >= 0.99
    r = rs.one_to_many(robust_sigs["a_hflip"][0], [lbox], 0.7, 0.7)[0]   # mirrored and letterboxed
    assert r is not None and r.variant == "hflip+match-borders"
    # two different films with the same bars: the bars are not compared with each other
    assert rs.one_to_many(lbox, [b_lbox], 0.5, 0.5)[0] is None


def test_score_cli(robust_sigs, tmp_path: Path) -> None:
    for n in ("a", "a_hflip", "a_lbox", "b"):
        s = robust_sigs[n][0]
        write_tmk(tmp_path / f"{n}.tmk", s.main)
        if s.borders is not None:
            write_tmk(tmp_path / f"{n}.borders.tmk", s.borders)
    files = sorted(str(p) for p in tmp_path.glob("*.tmk"))
    root = Path(__file__).resolve().parents[2]

    def vm(*args: str) -> list[str]:
        r = subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, cwd=root)
        assert r.returncode == 0, r.stderr
        return r.stdout.splitlines()

    plain = vm("score", *files, "--device", "cpu", "--c1", "0.7", "--c2", "0.7")
    robust = vm("score", "--robust", *files, "--device", "cpu", "--c1", "0.7", "--c2", "0.7")
    # plain: the sidecar is just another file; only a against its own sidecar passes
    assert [ln.split()[2:] for ln in plain] == [[f"{tmp_path}/a.tmk", f"{tmp_path}/a_lbox.borders.tmk"]]
    got = {tuple(Path(x).stem for x in ln.split()[2:4]): ln.split()[4] for ln in robust}
    assert got == {("a", "a_hflip"): "hflip", ("a", "a_lbox"): "match-borders",
                   ("a_hflip", "a_lbox"): "hflip+match-borders"}
    needle = vm("score", "--robust", "--needle", f"{tmp_path}/a_lbox.tmk", *files, "--device", "cpu",
                "--c1", "0.7", "--c2", "0.7")
    assert {Path(ln.split()[3]).stem: ln.split()[4] for ln in needle} == {
        "a": "borders", "a_hflip": "hflip+borders", "a_lbox": "borders+match-borders"}
