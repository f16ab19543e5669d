"""Numeric kernels of vmatch: PDQF frame features, TMK accumulation and TMK scores, in torch (CPU and CUDA)."""
from kernels.params import DEFAULT_PARAMS, TmkParams

__all__ = ["DEFAULT_PARAMS", "TmkParams"]
