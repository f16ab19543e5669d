"""The int8 level-2 store: 8-bit features with one float32 scale per feature vector.

A stored row (one signature's cos and sin features, [2, P, m, d] float32, 256 KB for the
defaults) becomes one record of ``2 P m d`` int8 values followed by ``2 P m`` float32
scales (65,536 + 1,024 = 66,560 bytes, a quarter of fp32): each length-d vector ``v``
(one period, one coefficient, cos or sin) is stored as ``q = round(v / s)`` with
``s = max|v_i| / 127`` (``s = 0``, ``q = 0`` for a zero vector), read back as ``s q``.

Error bound (proof).  The read-back error ``e = s q - v`` has ``|e_i| <= s/2``, so
``||e||_2 <= sqrt(d) s / 2 = sqrt(d) ||v||_inf / 254 <= sqrt(d) / 254 * ||v||_2``.  Write
``r(v) = ||e||_2 / ||v||_2`` for the relative error of a vector (computed exactly at write
time by `row_error`) and ``eps`` for its maximum over a row's vectors; ``eps <= sqrt(d)/254``
always (0.063 for d = 256), 0.016-0.030 for the reference hashes.  By Cauchy-Schwarz, a needle
vector ``u`` against a stored vector moves the dot product by ``|u . e| <= ||u|| ||e||
<= eps ||u|| ||v||``, and TMK feature vectors of coefficient j have norm ``sqrt(a_j)``, so each
block dot product moves by at most ``eps a_j``.  Level-2 is ``max_o K(o) / Z`` with
``K(o) = CC_0 + sum_{j>=1} A_j cos(j w o) + B_j sin(j w o)``, ``A_j = CC_j + SS_j``,
``B_j = SC_j - CS_j``: ``|dA_j|, |dB_j| <= 2 eps a_j`` and ``|dA_j cos + dB_j sin| <=
sqrt(dA_j^2 + dB_j^2) <= 2 sqrt(2) eps a_j``, so every ``K(o)`` moves by at most
``eps (a_0 + 2 sqrt(2) sum_{j>=1} a_j) <= sqrt(2) eps Z`` and so does the maximum over o:
**|level-2(int8) - level-2(fp32)| <= sqrt(2) eps** with one side from the store (a query),
``sqrt(2) (eps_a + eps_b + eps_a eps_b)`` with both (clusters), up to float32 round-off.
The measured errors are in docs/index.md; tests/engine/index/test_int8.py checks the bound.
"""
from __future__ import annotations

import numpy as np

QMAX = 127


def record_bytes(shape: tuple[int, ...]) -> int:
    """Bytes of one int8 record for rows of `shape` = (2, P, m, d)."""
    vecs = int(np.prod(shape[:-1]))
    return vecs * shape[-1] + 4 * vecs


def worst_case_eps(d: int) -> float:
    """The data-independent bound on a vector's relative error: sqrt(d) / (2 * 127)."""
    return float(np.sqrt(d)) / (2 * QMAX)


def level2_bound(eps_a: float, eps_b: float = 0.0) -> float:
    """Largest level-2 change when one (eps_b = 0) or both sides come from int8 (module docstring)."""
    return float(np.sqrt(2.0) * (eps_a + eps_b + eps_a * eps_b)) + 1e-6


def quantize(rows: np.ndarray) -> np.ndarray:
    """float32 rows [B, 2, P, m, d] (or one row [2, P, m, d]) -> uint8 records [B, record_bytes]."""
    x = np.asarray(rows, dtype=np.float32)
    one = x.ndim == 4
    if one:
        x = x[None]
    out = quantize_into((x,), np.empty((x.shape[0], record_bytes(x.shape[1:])), np.uint8))
    return out[0] if one else out


#: Rows quantised per step of `quantize_into`: its temporaries (256 KB per row here) stay in
#: the core's cache instead of streaming through memory once per operation.
BLOCK_ROWS = 8


def quantize_into(parts: tuple[np.ndarray, ...], out: np.ndarray, block: int = BLOCK_ROWS) -> np.ndarray:
    """Records of B float32 rows written into ``out`` [>= B, record_bytes]; returns out[:B].

    Row i is the concatenation of ``part[i]`` over `parts` (e.g. (cos, sin), each [B, P, m, d],
    or one [B, 2, P, m, d] array), so a bulk add quantises its read buffers without stacking them.
    Exactly ``q = rint(v / s)``, ``s = max|v_i| / 127`` per length-d vector (the module docstring),
    in blocks of rows with reused temporaries: |v| is taken as the float's bits with the sign
    cleared (their integer maximum is the bits of max|v_i|, about 2x numpy's float maximum), and
    there is no clip (for finite v, |v / s| <= 127 by construction)."""
    b = parts[0].shape[0]
    d = parts[0].shape[-1]
    sizes = [int(np.prod(p.shape[1:])) // d for p in parts]     # vectors per row in each part
    nv = sum(sizes)
    nq = nv * d
    out = out[:b]
    if b == 0:
        return out
    k = min(block, b)
    tmp = np.empty((k, max(sizes), d), np.float32)
    bits = tmp.view(np.uint32)
    amax = np.empty((k, max(sizes)), np.uint32)
    q_all = out[:, :nq].view(np.int8).reshape(b, nv, d)
    s_all = out[:, nq:]
    for s in range(0, b, k):
        e = min(s + k, b)
        n = e - s
        at = 0
        for part, size in zip(parts, sizes):
            v = np.ascontiguousarray(part[s:e], dtype=np.float32).reshape(n, size, d)
            t, a = tmp[:n, :size], amax[:n, :size]
            np.bitwise_and(v.view(np.uint32), np.uint32(0x7FFFFFFF), out=bits[:n, :size])
            np.max(bits[:n, :size], axis=-1, out=a)
            scale = a.view(np.float32)
            np.divide(scale, np.float32(QMAX), out=scale)
            s_all[s:e, 4 * at:4 * (at + size)] = scale.view(np.uint8)
            np.divide(v, np.where(scale > 0, scale, np.float32(1))[..., None], out=t)
            np.rint(t, out=t)
            np.copyto(q_all[s:e, at:at + size], t, casting="unsafe")
            at += size
    return out


def split(records: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Records [B, record_bytes] -> views q int8 [B, 2, P, m, d], scales float32 [B, 2, P, m]."""
    b = records.shape[0]
    nq = int(np.prod(shape))
    q = records[:, :nq].view(np.int8).reshape(b, *shape)
    s = np.ascontiguousarray(records[:, nq:]).view(np.float32).reshape(b, *shape[:-1])
    return q, s


def dequantize(records: np.ndarray, shape: tuple[int, ...], out: np.ndarray | None = None) -> np.ndarray:
    """Records -> float32 rows [B, 2, P, m, d] (s q), into `out` when given."""
    q, s = split(records, shape)
    if out is None:
        out = np.empty((records.shape[0], *shape), np.float32)
    np.multiply(q, s[..., None], out=out, dtype=np.float32)
    return out


def dequantize_blocks(records: np.ndarray, shape: tuple[int, ...], out: np.ndarray | None = None) -> np.ndarray:
    """Records -> float32 [B, P, m, 2, d]: s q with each block's cos and sin vectors side by
    side (what pair scoring multiplies), in one strided pass into `out` when given."""
    q, s = split(records, shape)
    b, _, p, m, d = q.shape
    if out is None:
        out = np.empty((b, p, m, 2, d), np.float32)
    np.multiply(q.transpose(0, 2, 3, 1, 4), s.transpose(0, 2, 3, 1)[..., None], out=out, dtype=np.float32)
    return out


def block_norms(records: np.ndarray, shape: tuple[int, ...], chunk: int = 256) -> np.ndarray:
    """`kernels.score.block_norms` of the stored values s q of records [B, record_bytes] ->
    [B, P, m] float32 (the head-first bound of engine.index.level2 needs these), `chunk` records
    at a time so only small int32 temporaries are made."""
    from kernels.score_np import block_norms as norms
    out = np.empty((records.shape[0], *shape[1:-1]), np.float32)
    for s in range(0, len(records), chunk):
        q, sc = split(records[s:s + chunk], shape)
        out[s:s + chunk] = norms(q, sc)
    return out


def row_error(rows: np.ndarray) -> np.ndarray:
    """eps of each row: the largest ||s q - v|| / ||v|| over its vectors (0 for zero vectors)."""
    x = np.asarray(rows, dtype=np.float32)
    if x.ndim == 4:
        x = x[None]
    back = dequantize(quantize(x), x.shape[1:]).astype(np.float64)
    err = np.linalg.norm(back - x, axis=-1)
    nrm = np.linalg.norm(x.astype(np.float64), axis=-1)
    rel = np.where(nrm > 0, err / np.where(nrm > 0, nrm, 1), 0.0)
    return rel.reshape(len(x), -1).max(axis=1)
