import numpy as np

from engine.synthetic import random_signatures, synthetic_batch
from kernels.params import DEFAULT_PARAMS


def test_synthetic_batch_keeps_the_invariants_of_real_signatures():
    bases = random_signatures(3, seed=1)
    b = synthetic_batch(10, bases, strength=0.2, seed=2, chunk=2)
    assert len(b) == 10 and b.names[4].endswith(bases[1].name)
    sqrt_a = np.sqrt(DEFAULT_PARAMS.coeffs32.astype(np.float64))
    # Measured: norms within 2.6e-7 (relative) of sqrt(a_j); block cosines to the base average
    # 0.98071-0.98080 against 1/sqrt(1 + 0.2^2) = 0.98058. Limits: about 3-4x those deviations.
    assert np.allclose(np.linalg.norm(b.cos.astype(np.float64), axis=-1), sqrt_a[None, None, :], rtol=1e-6, atol=0)
    assert not b.sin[:, :, 0].any()
    for k in range(3):
        cos_to_base = (b.cos[k] * bases[k].cos).sum(-1) / (sqrt_a ** 2)
        assert abs(cos_to_base.mean() - 1 / np.sqrt(1.04)) <= 7e-4, k
    assert np.isfinite(b.avg).all()
