import math

import numpy as np

from kernels.params import DEFAULT_PARAMS, TmkParams


def _bessel_i(j: int, x: float, terms: int = 200) -> float:
    """Modified Bessel function of the first kind by its power series (independent check)."""
    total, term = 0.0, (x / 2) ** j / math.factorial(j)
    for k in range(terms):
        total += term
        term *= (x / 2) ** 2 / ((k + 1) * (k + 1 + j))
    return total


def test_coefficients_are_f32_of_the_bessel_formula():
    beta = 32.0
    want = [(_bessel_i(0, beta) - math.exp(-beta)) / (2 * math.sinh(beta))]
    want += [_bessel_i(j, beta) / math.sinh(beta) for j in range(1, 32)]
    assert np.array_equal(np.asarray(want, dtype=np.float32), DEFAULT_PARAMS.coeffs32)


def test_z_norm_matches_reference_constant():
    assert DEFAULT_PARAMS.z_norm == float.fromhex("0x1.eddfcap+0")


def test_compatibility_rules():
    other = TmkParams(periods=(2731, 4391, 9767, 14654))
    assert "periods" in DEFAULT_PARAMS.incompatibility(other)
    nudged = TmkParams(coeffs=tuple(c * (1 + 1e-7) for c in DEFAULT_PARAMS.coeffs))
    assert DEFAULT_PARAMS.incompatibility(nudged) is None
    far = TmkParams(coeffs=tuple(c * (1 + 1e-4) for c in DEFAULT_PARAMS.coeffs))
    assert DEFAULT_PARAMS.incompatibility(far) == "Fourier coefficients differ"
