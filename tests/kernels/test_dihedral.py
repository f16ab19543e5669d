"""Mirrors and quarter turns as signed permutations of PDQF/TMK features (kernels/dihedral.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels import dihedral as d
from kernels.pdqf import pdqf


def _frames(n: int = 3, seed: int = 0) -> np.ndarray:
    """Smooth random RGB frames (structure at every DCT frequency kept by PDQF)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 16, 16, 3)).astype(np.float64)
    up = np.kron(base, np.ones((1, 4, 4, 1)))                   # 64x64, blocky
    noise = rng.integers(-20, 21, up.shape)
    return np.clip(up + noise, 0, 255).astype(np.uint8)


def test_tables_are_signed_permutations() -> None:
    for n in d.NAMES:
        perm, sign = d.table(n)
        assert sorted(perm.tolist()) == list(range(256)), n
        assert set(np.unique(sign).tolist()) <= {-1.0, 1.0}, n
    assert len({(d.table(n)[0].tobytes(), d.table(n)[1].tobytes()) for n in d.NAMES}) == 8


@pytest.mark.parametrize("name", d.NAMES)
def test_pdqf_of_transformed_frames(name: str) -> None:
    """PDQF (exact reference order) of the transformed frame = the transformed PDQF, up to round-off."""
    fr = _frames()
    f = pdqf(torch.from_numpy(fr), "exact").numpy()
    g = pdqf(torch.from_numpy(d.frame_transform(fr, name)), "exact").numpy()
    want = d.apply(f, name)
    scale = np.abs(f).max()
    assert scale > 50
    assert np.abs(g - want).max() <= 2e-6 * scale * 64, name
    if name != "identity":   # and the transform does change the feature
        assert np.abs(g - f).max() > 0.1 * scale


def test_group_laws() -> None:
    tab = d.composition_table()
    names = d.NAMES
    x = np.random.default_rng(1).standard_normal((2, 256)).astype(np.float32)
    for a in names:
        assert d.compose("identity", a) == a == d.compose(a, "identity")
        assert d.compose(a, d.inverse(a)) == "identity" == d.compose(d.inverse(a), a)
        for b in names:
            # the table is what applying the two in turn does
            np.testing.assert_array_equal(d.apply(d.apply(x, a), b), d.apply(x, tab[(a, b)]))
            for c in names:
                assert d.compose(d.compose(a, b), c) == d.compose(a, d.compose(b, c))
        # every row of the table is a permutation of the group (Latin square)
        assert sorted(tab[(a, b)] for b in names) == sorted(names)
    assert d.inverse("rot90") == "rot270" and d.compose("rot90", "rot90") == "rot180"
    assert all(d.inverse(n) == n for n in ("hflip", "vflip", "rot180", "transpose", "antitranspose"))
    assert d.compose("hflip", "vflip") == "rot180"
    assert d.compose("transpose", "hflip") == "rot90"      # ffmpeg: transpose=clock = transpose, then hflip
    # the frame transforms compose the same way
    fr = _frames(1)
    for a in names:
        for b in names:
            np.testing.assert_array_equal(d.frame_transform(d.frame_transform(fr, a), b),
                                          d.frame_transform(fr, tab[(a, b)]))


def test_batched_numpy_and_torch_agree() -> None:
    x = np.random.default_rng(2).standard_normal((3, 4, 256)).astype(np.float32)
    all_np = d.apply_all(x)
    all_t = d.apply_all(torch.from_numpy(x))
    assert all_np.shape == (8, 3, 4, 256) and tuple(all_t.shape) == (8, 3, 4, 256)
    for i, n in enumerate(d.NAMES):
        np.testing.assert_array_equal(all_np[i], d.apply(x, n))
        np.testing.assert_array_equal(all_t[i].numpy(), d.apply(x, n))
        np.testing.assert_array_equal(d.apply(torch.from_numpy(x), n).numpy(), d.apply(x, n))
    # orthogonal: norms and dot products are kept, so one side of a pair can carry the transform
    y = np.random.default_rng(3).standard_normal(256).astype(np.float32)
    for n in d.NAMES:
        assert np.isclose(d.apply(x[0, 0], n) @ y, x[0, 0] @ d.apply(y, d.inverse(n)), rtol=1e-5)
    with pytest.raises(ValueError):
        d.apply(x, "rot45")


@pytest.mark.cuda
def test_cuda_matches_cpu() -> None:
    x = torch.randn(5, 2, 256)
    got = d.apply_all(x.cuda()).cpu()
    torch.testing.assert_close(got, d.apply_all(x), rtol=0, atol=0)


def test_all_dots_equals_transformed_products() -> None:
    """The 8 variants' dot products from 4 parity blocks equal the products of the transformed vectors."""
    rng = np.random.default_rng(4)
    bank = rng.standard_normal((50, 256)).astype(np.float32)
    x = rng.standard_normal((3, 256)).astype(np.float32)
    got = d.all_dots(torch.from_numpy(d.blocked(bank)), torch.from_numpy(x)).numpy()
    assert d.blocked(bank).shape == (4, 50, 64)
    want = np.einsum("gbd,nd->gbn", d.apply_all(x), bank)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    order, signs, tr = d.parity_blocks()
    assert sorted(order.tolist()) == list(range(256)) and tr.sum() == 4 and signs.shape == (8, 4)
