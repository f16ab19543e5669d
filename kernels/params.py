"""The TMK+PDQF parameters: the one place they are defined (spec sections 4.1, 5, 6.3)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Binary32 Fourier coefficients a_j of the reference (spec appendix A), as exact hex floats.
_COEFFS_HEX = (
    "0x1.220392p-4", "0x1.1d7228p-3", "0x1.102c70p-3", "0x1.f6d934p-4",
    "0x1.c21026p-4", "0x1.86552ap-4", "0x1.48158ap-4", "0x1.0b4d16p-4",
    "0x1.a647a0p-5", "0x1.43765ep-5", "0x1.e0aa14p-6", "0x1.5a8270p-6",
    "0x1.e4e0d0p-7", "0x1.495c44p-7", "0x1.b28bb2p-8", "0x1.167e4cp-8",
    "0x1.5aea94p-9", "0x1.a42406p-10", "0x1.eeddc8p-11", "0x1.1b8e8ap-11",
    "0x1.3c490ap-12", "0x1.57838ap-13", "0x1.6b6adep-14", "0x1.76a844p-15",
    "0x1.7887b6p-16", "0x1.7109f0p-17", "0x1.60dfcap-18", "0x1.495072p-19",
    "0x1.2c0fa6p-20", "0x1.0b0b06p-21", "0x1.d06d36p-23", "0x1.8abeb0p-24",
)

DEFAULT_PERIODS: tuple[int, ...] = (2731, 4391, 9767, 14653)
DEFAULT_COEFFS: tuple[float, ...] = tuple(float.fromhex(h) for h in _COEFFS_HEX)

#: Algorithm magic of the only frame feature the reference supports.
ALGORITHM_PDQF = b"PDQF"


@dataclass(frozen=True)
class TmkParams:
    """Parameters of a TMK+PDQF signature; equal params are required to compare two signatures."""

    periods: tuple[int, ...] = DEFAULT_PERIODS
    coeffs: tuple[float, ...] = DEFAULT_COEFFS
    fps: int = 15
    dim: int = 256
    frame_size: int = 64
    algorithm: bytes = ALGORITHM_PDQF
    _coeffs32: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        c = np.asarray(self.coeffs, dtype=np.float32)
        object.__setattr__(self, "_coeffs32", c)
        object.__setattr__(self, "coeffs", tuple(float(x) for x in c))
        object.__setattr__(self, "periods", tuple(int(p) for p in self.periods))

    @property
    def num_periods(self) -> int:
        return len(self.periods)

    @property
    def num_coeffs(self) -> int:
        return len(self.coeffs)

    @property
    def coeffs32(self) -> np.ndarray:
        """The coefficients as binary32 (a copy)."""
        return self._coeffs32.copy()

    @property
    def z_norm(self) -> float:
        """Z = a_0 + 2*sum_{j>=1} a_j accumulated in binary32 (spec 6.3): a video's self-score."""
        a = self._coeffs32
        z = np.float32(a[0])
        for x in a[1:]:
            z = np.float32(z + np.float32(np.float32(2.0) * x))
        return float(z)

    def compatible_with(self, other: "TmkParams") -> bool:
        """Reference compatibility rule (spec 6.1): coefficients equal within 1e-6 relative."""
        if (self.algorithm, self.fps, self.dim, self.periods) != (
            other.algorithm, other.fps, other.dim, other.periods,
        ) or self.num_coeffs != other.num_coeffs:
            return False
        a, b = self._coeffs32.astype(np.float64), other._coeffs32.astype(np.float64)
        return bool(np.all(np.abs(a - b) <= 1e-6 * np.maximum(np.abs(a), np.abs(b))))

    def incompatibility(self, other: "TmkParams") -> str | None:
        """A one-line reason why two parameter sets cannot be compared, or None."""
        for name in ("algorithm", "fps", "dim", "periods"):
            if getattr(self, name) != getattr(other, name):
                return f"{name} differ: {getattr(self, name)!r} vs {getattr(other, name)!r}"
        if not self.compatible_with(other):
            return "Fourier coefficients differ"
        return None


DEFAULT_PARAMS = TmkParams()
