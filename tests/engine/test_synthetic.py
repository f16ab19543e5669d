import numpy as np

from engine.synthetic import random_signatures, synthetic_batch
from kernels.params import DEFAULT_PARAMS


def test_synthetic_batch_keeps_the_invariants_of_real_signatures():
    bases = random_signatures(3, seed=1)
    b = synthetic_batch(10, bases, strength=0.2, seed=2, chunk=2)
    assert len(b) == 10 and b.names[4].endswith(bases[1].name)
    sqrt_a = np.sqrt(DEFAULT_PARAMS.coeffs32.astype(np.float64))
    assert np.allclose(np.linalg.norm(b.cos.astype(np.float64), axis=-1), sqrt_a[None, None, :], rtol=1e-5)
    assert not b.sin[:, :, 0].any()
    cos_to_base = (b.cos[0] * bases[0].cos).sum(-1) / (sqrt_a ** 2)
    assert 0.9 < cos_to_base.mean() < 0.995  # strength 0.2: cosine about 1/sqrt(1.04)
    assert np.isfinite(b.avg).all()
