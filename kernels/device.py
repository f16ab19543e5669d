"""Device selection and float settings shared by the kernels.

torch is imported only when a torch device is needed: ``device_kind`` answers "cpu" without
it wherever no GPU driver is present, so CPU hashing and CPU queries (numpy kernels) start
without torch.  ``blas_threads`` keeps numpy's BLAS to one thread inside scans that run a
worker per core.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import torch

#: Device nodes one of which exists wherever a CUDA (or ROCm / WSL) GPU can be used on Linux.
_GPU_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")


def cuda_possible() -> bool:
    """False when CUDA certainly cannot be available (Linux without a GPU driver's device
    nodes, or CUDA_VISIBLE_DEVICES hiding every device); True means "ask torch"."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    if sys.platform.startswith("linux"):
        return any(os.path.exists(p) for p in _GPU_NODES)
    return True


def device_kind(device: "str | torch.device | None" = "auto") -> str:
    """The device type ('cpu', 'cuda', ...) ``resolve_device`` would give, importing torch only
    when the answer depends on it (auto with a GPU driver present, or a non-CPU device)."""
    name = "auto" if device is None else str(device)
    if name == "cpu" or (name == "auto" and not cuda_possible()):
        return "cpu"
    return resolve_device(device).type


def query_device(device: "str | torch.device | None" = "auto") -> "str | torch.device":
    """`resolve_device`, except that a CPU answer reached without torch stays the string "cpu"
    (which torch takes wherever it takes a device): CPU queries and scores never import torch."""
    return "cpu" if device_kind(device) == "cpu" else resolve_device(device)


def device_type(device: "str | torch.device") -> str:
    """'cpu', 'cuda', ... of a torch device or a device name ("cpu", "cuda:1")."""
    return device.partition(":")[0] if isinstance(device, str) else device.type


def resolve_device(device: "str | torch.device | None" = "auto") -> "torch.device":
    """'auto' -> cuda when available, else cpu; explicit 'cuda' without CUDA is an error."""
    import torch

    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA was requested but no CUDA device is available")
    return dev


def strict_float() -> None:
    """Disable TF32 and reduced-precision reductions: the fast kernels promise 1e-5 parity."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False


@lru_cache(maxsize=1)
def _blas_controller():   # found once per process: it walks the loaded libraries
    from threadpoolctl import ThreadpoolController
    return ThreadpoolController()


@contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """At most `n` threads in the BLAS numpy (and faiss) loaded, for the duration: a CPU scan runs one
    worker thread per core, each making many small products, and OpenBLAS's own threads on top
    of them spin-wait for a core (measured 1.5x the whole `vmatch query` time on 2 cores,
    docs/benchmarks.md).  Process-wide while it lasts (threadpoolctl), restored afterwards."""
    with _blas_controller().limit(limits=n, user_api="blas"):
        yield
