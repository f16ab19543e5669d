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
