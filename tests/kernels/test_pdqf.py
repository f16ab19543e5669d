import numpy as np
import pytest
import torch

from kernels.pdqf import dct_matrix, luma, pdqf


def test_dct_matrix_check_values():
    d = dct_matrix()
    assert d.dtype == np.float32 and d.shape == (16, 64)
    assert d[0, 0] == np.float32(0.17672345) and d[0, 63] == np.float32(-0.17672345)
    assert d[15, 0] == np.float32(0.16332036) and d[15, 63] == np.float32(0.16332036)


def _numpy_exact(frame: np.ndarray) -> np.ndarray:
    """Scalar float32 emulation of spec 3.2-3.4, loop for loop (independent of the torch code)."""
    f32 = np.float32
    cr, cg, cb = f32(0.299), f32(0.587), f32(0.114)
    y = np.empty((64, 64), np.float32)
    for i in range(64):
        for j in range(64):
            r, g, b = (f32(v) for v in frame[i, j])
            y[i, j] = f32(f32(f32(cr * r) + f32(cg * g)) + f32(cb * b))
    d = dct_matrix()
    t = np.zeros((16, 64), np.float32)
    for k in range(64):  # sequential over y, vectorised over (u, x): same rounding per element
        t = (t + (d[:, k:k + 1] * y[k:k + 1, :]).astype(np.float32)).astype(np.float32)
    f = np.zeros((16, 16), np.float32)
    for k in range(64):
        f = (f + (t[:, k:k + 1] * d[:, k][None, :]).astype(np.float32)).astype(np.float32)
    return f.reshape(256)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    rng = np.random.default_rng(1)
    out = rng.integers(0, 256, size=(5, 64, 64, 3), dtype=np.uint8)
    out[1] = 126  # uniform grey: a feature of pure round-off (spec 3.6)
    out[2] = 0  # black: exactly zero
    out[3, :, :, :] = np.arange(64, dtype=np.uint8)[None, :, None] * 3  # varies along one axis only
    return out


def test_exact_matches_scalar_emulation(frames):
    got = pdqf(torch.from_numpy(frames), "exact").numpy()
    for i in range(len(frames)):
        assert np.array_equal(got[i].view(np.uint32), _numpy_exact(frames[i]).view(np.uint32)), i
    assert not got[2].any()
    assert 0 < np.linalg.norm(got[1]) < 1e-6


def test_fast_equals_exact_on_degenerate_frames_and_is_close_elsewhere(frames):
    x = torch.from_numpy(frames)
    exact, fast = pdqf(x, "exact"), pdqf(x, "fast")
    for i in (1, 2, 3):  # near-zero features are recomputed in exact order
        assert torch.equal(exact[i], fast[i])
    assert torch.allclose(exact[0], fast[0], rtol=0, atol=2e-3)


def test_luma_uses_binary32_products():
    px = torch.tensor([[[[255, 128, 1]]]], dtype=torch.uint8)
    f32 = np.float32
    want = f32(f32(f32(0.299) * f32(255)) + f32(f32(0.587) * f32(128))) + f32(f32(0.114) * f32(1))
    assert luma(px).item() == want


def test_unknown_mode():
    with pytest.raises(ValueError, match="unknown mode"):
        pdqf(torch.zeros((1, 64, 64, 3), dtype=torch.uint8), "approx")


@pytest.mark.cuda
def test_cuda_exact_is_bit_identical_to_cpu(frames):
    torch.backends.cuda.matmul.allow_tf32 = False
    cpu = pdqf(torch.from_numpy(frames), "exact")
    gpu = pdqf(torch.from_numpy(frames).cuda(), "exact").cpu()
    assert torch.equal(cpu.view(torch.int32), gpu.view(torch.int32))
    fast = pdqf(torch.from_numpy(frames).cuda(), "fast").cpu()
    assert torch.allclose(cpu, fast, rtol=0, atol=2e-3)
