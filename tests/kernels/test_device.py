"""kernels.device: device resolution (the review found it untested)."""
from __future__ import annotations

import pytest
import torch

from kernels.device import resolve_device


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type == resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA was requested"):
            resolve_device("cuda")


def test_query_device_and_device_type_without_torch_on_cpu():
    from kernels.device import device_type, query_device
    assert query_device("cpu") == "cpu" and device_type("cpu") == "cpu" and device_type("cuda:1") == "cuda"
    assert device_type(torch.device("cpu")) == "cpu"


def test_blas_threads_limits_numpy_blas_and_restores_it():
    import numpy as np
    from threadpoolctl import ThreadpoolController

    from kernels.device import blas_threads
    np.ones((2, 2)) @ np.ones((2, 2))                     # numpy's BLAS loaded
    ctl = ThreadpoolController()
    before = [p["num_threads"] for p in ctl.info() if p["user_api"] == "blas"]
    assert before
    with blas_threads(1):
        assert all(p["num_threads"] == 1 for p in ThreadpoolController().info() if p["user_api"] == "blas")
    assert [p["num_threads"] for p in ThreadpoolController().info() if p["user_api"] == "blas"] == before
