import numpy as np
import pytest
import torch

from kernels.params import DEFAULT_PARAMS, TmkParams
from kernels.score import TmkScorer, level1, needle_coeffs, pair_coeffs, pair_coeffs_matrix
from kernels.tmk import TWO_PI


def level2_exhaustive(k0: np.ndarray, a: np.ndarray, b: np.ndarray, params: TmkParams = DEFAULT_PARAMS
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Float64 scan of every offset (the definition, for tests): best [B,P], offset [B,P]."""
    j = np.arange(1, params.num_coeffs, dtype=np.float64)
    best = np.empty(k0.shape)
    arg = np.empty(k0.shape, dtype=np.int64)
    for i, period in enumerate(params.periods):
        delta = TWO_PI * np.arange(period) / period
        ang = j[:, None] * delta[None, :]
        k = k0[:, i:i + 1] + a[:, i] @ np.cos(ang) + b[:, i] @ np.sin(ang)
        best[:, i], arg[:, i] = k.max(1), k.argmax(1)
    return best, arg


def _random_features(n: int, seed: int, smooth: float = 1.0):
    """Random unit-norm-per-(i,j) features scaled by sqrt(a_j), like finalised TMK features."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn((n, 4, 32, 256), generator=g)
    s = torch.randn((n, 4, 32, 256), generator=g)
    s[:, :, 0] = 0
    sa = torch.from_numpy(np.sqrt(DEFAULT_PARAMS.coeffs32)).view(1, 1, 32, 1)
    c = c / torch.linalg.vector_norm(c, dim=-1, keepdim=True) * sa
    s = torch.nan_to_num(s / torch.linalg.vector_norm(s, dim=-1, keepdim=True)) * sa
    return c, s


def test_kernel_max_equals_exhaustive_scan_on_random_and_related_pairs():
    c, s = _random_features(6, seed=0)
    # related pairs: the needle plus noise, so the peaks are sharp like real copies
    c2 = c[0:1] + 0.02 * torch.randn_like(c[:3])
    s2 = s[0:1] + 0.02 * torch.randn_like(s[:3])
    bc, bs = torch.cat([c, c2]), torch.cat([s, s2])
    k0, a, b = needle_coeffs(c[0], s[0], bc, bs)
    best, off = TmkScorer().kernel_max(k0, a, b)
    eb, eo = level2_exhaustive(k0.double().numpy(), a.double().numpy(), b.double().numpy())
    assert np.abs(best.numpy() - eb).max() < 2e-6
    # offsets agree except where two offsets are within round-off of each other
    mism = off.numpy() != eo
    if mism.any():
        j = np.arange(1, 32)
        for bi, pi in zip(*np.nonzero(mism)):
            per = DEFAULT_PARAMS.periods[pi]
            def k(o):
                d = 2 * np.pi * o / per
                return k0[bi, pi].item() + (a[bi, pi].double().numpy() * np.cos(j * d)).sum() + (
                    b[bi, pi].double().numpy() * np.sin(j * d)).sum()
            assert abs(k(off[bi, pi].item()) - k(eo[bi, pi])) < 2e-6


def test_self_score_is_one_and_coefficient_paths_agree():
    c, s = _random_features(3, seed=1)
    sc = TmkScorer()
    l2, off = sc.level2(c[0], s[0], c, s)
    assert abs(l2[0].item() - 1.0) < 1e-6 and off[0].tolist() == [0, 0, 0, 0]
    k0, a, b = pair_coeffs(c[0:1].expand(3, -1, -1, -1), s[0:1].expand(3, -1, -1, -1), c, s)
    k0m, am, bm = pair_coeffs_matrix(c[0:1], s[0:1], c, s)
    k0n, an, bn = needle_coeffs(c[0], s[0], c, s)
    for x, y, z in ((k0, k0m[0], k0n), (a, am[0], an), (b, bm[0], bn)):
        assert torch.allclose(x, y, atol=1e-6) and torch.allclose(x, z, atol=1e-6)


def test_one_frame_video_self_score():
    # spec 7.4: sin all zero -> self-score (a_0 + sum a_j) / Z = 0.518350
    c, _ = _random_features(1, seed=3)
    s = torch.zeros_like(c)
    l2, _ = TmkScorer().level2(c[0], s[0], c, s)
    assert abs(l2.item() - 0.518350) < 2e-6


def test_level1_zero_vectors_like_reference():
    z, v = torch.zeros(256), torch.ones(256)
    assert level1(z, z).item() == 0.0
    assert torch.isnan(level1(z, v))
    assert level1(v, -v).item() == pytest.approx(-1.0)


@pytest.mark.cuda
def test_cuda_scores_equal_cpu_scores():
    c, s = _random_features(64, seed=7)
    c2 = c[0:1] + 0.05 * torch.randn_like(c)
    s2 = s[0:1] + 0.05 * torch.randn_like(s)
    cpu = TmkScorer(device="cpu").level2(c[0], s[0], c2, s2)
    gpu = TmkScorer(device="cuda").level2(c[0].cuda(), s[0].cuda(), c2.cuda(), s2.cuda())
    assert torch.allclose(cpu[0], gpu[0].cpu(), atol=1e-6)
    assert level1(c[0, 0, 0].cuda(), c2[:, 0, 0].cuda()).shape == (64,)


def _cand_rows(c: torch.Tensor, s: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(torch.stack([c, s], 1).numpy())          # [B,2,P,m,d]


def _exact_best(nc, ns, rows) -> np.ndarray:
    """max_o K_i(o) in float64 [B,P] (coefficients and offset scan in float64)."""
    n = np.stack([nc.double().numpy(), ns.double().numpy()])             # [2,P,m,d]
    r = rows.astype(np.float64)
    cc = np.einsum("pjd,bpjd->bpj", n[0], r[:, 0])
    ss = np.einsum("pjd,bpjd->bpj", n[1], r[:, 1])
    sc = np.einsum("pjd,bpjd->bpj", n[1], r[:, 0])
    cs = np.einsum("pjd,bpjd->bpj", n[0], r[:, 1])
    return level2_exhaustive(cc[..., 0], (cc + ss)[..., 1:], (sc - cs)[..., 1:])[0]


@pytest.mark.parametrize("nj", [1, 2, 5, 8, 32])
def test_head_bound_is_never_below_the_true_kernel_max(nj):
    from kernels.score_np import block_norms, block_weights, head_bound, needle_block_dots, needle_norms
    c, s = _random_features(5, seed=11)
    nc, ns = c[0], s[0]
    rc = [c, c[0:1] + 0.05 * torch.randn_like(c), -c]                # unrelated, near copies, anti-copies
    rs = [s, s[0:1] + 0.05 * torch.randn_like(s), -s]
    # adversarial: the tail equals the needle's (the Cauchy-Schwarz bound is attained at o = 0),
    # the head is empty or opposite; and rows whose norms are far from sqrt(a_j)
    tc, ts = c[0:1].repeat(2, 1, 1, 1), s[0:1].repeat(2, 1, 1, 1)
    tc[0, :, :nj], ts[0, :, :nj] = 0, 0
    tc[1, :, :nj], ts[1, :, :nj] = -tc[1, :, :nj], -ts[1, :, :nj]
    g = torch.Generator().manual_seed(3)
    wild_c = c[:2] * torch.rand((2, 4, 32, 1), generator=g) * 30
    wild_s = s[:2] * torch.rand((2, 4, 32, 1), generator=g) * 30
    rows = _cand_rows(torch.cat([*rc, tc, wild_c]), torch.cat([*rs, ts, wild_s]))
    for cand, scales in ((rows, None), (rows.astype(np.float16), None)):
        head = needle_block_dots(block_weights(nc, ns), cand, scales, range(nj))
        bound, total = head_bound(head, needle_norms(nc, ns), block_norms(cand))
        exact = _exact_best(nc, ns, cand.astype(np.float32)).T                     # [P,B]
        assert np.all(bound >= exact - 1e-6 * total), (bound - exact).min()
        assert np.all(total >= np.abs(exact))
        if nj < 32 and cand is rows:   # attained where the tail is the needle's and the head empty
            b = 3 * 5
            assert np.allclose(bound[:, b], exact[:, b], rtol=1e-5)


def test_head_may_reach_rejects_only_below_the_threshold():
    from kernels.score_np import block_norms, block_weights, needle_block_dots, needle_norms
    c, s = _random_features(40, seed=12)
    c = torch.cat([c, c[0:1] + 0.3 * torch.randn_like(c[:20]) / 16])
    s = torch.cat([s, s[0:1] + 0.3 * torch.randn_like(s[:20]) / 16])
    rows = _cand_rows(c, s)
    sc = TmkScorer()
    k0, a, b = needle_coeffs(c[0], s[0], c, s)
    l2 = sc.level2_from_coeffs(k0, a, b)[0].numpy()
    head = needle_block_dots(block_weights(c[0], s[0]), rows, None, range(5))
    nn, cn = needle_norms(c[0], s[0]), block_norms(rows)
    for c2 in (0.1, 0.3, 0.5, 0.7, 0.9, *l2[40:45]):       # also exactly at computed scores
        keep = sc.head_may_reach(head, nn, cn, float(c2))
        assert keep[l2 >= c2].all()
    assert not sc.head_may_reach(head, nn, cn, 0.7)[1:40].any()   # unrelated ones are rejected


def test_block_norms_never_below_the_norms_of_the_stored_values():
    from kernels.score_np import block_norms
    c, s = _random_features(3, seed=13)
    rows = _cand_rows(c, s)
    exact = np.sqrt((rows.astype(np.float64) ** 2).sum(-1).sum(1))
    got = block_norms(rows)
    assert got.dtype == np.float32 and np.all(got >= exact) and np.allclose(got, exact, rtol=1e-6)
    # finalised TMK blocks have norm sqrt(a_j) for cos and for sin (spec 4.5; sin of j = 0 is zero)
    a = DEFAULT_PARAMS.coeffs32.astype(np.float64)
    assert np.allclose(got[:, :, 0], np.sqrt(a[0]), rtol=1e-5)
    assert np.allclose(got[:, :, 1:], np.sqrt(2 * a[1:]), rtol=1e-5)
