"""TMK level-1 and level-2 scores on CPU in numpy (no torch): the one-to-many query kernel.

The same algorithm, tables and bounds as kernels/score.py's torch `TmkScorer` (which builds its
tables from these), so a CPU query starts without importing torch (about 1.3-3 s of every
command here, more than the query itself).  Level-2 maximises each period's degree-31
trigonometric polynomial K_i(o) over every integer offset: K on a grid of offsets, the
curvature bound max(ends) + M2 h^2 / 8 between neighbouring grid points, and every offset of the
intervals whose bound can still reach the best grid value; the same maximum (and first
maximising offset) as the exhaustive scan, up to float32 round-off.  Tested against the torch
kernel and, through the query commands, against the reference tmk-query.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np

from kernels.params import DEFAULT_PARAMS, TmkParams
from kernels.tmk_np import TWO_PI

#: Grid points per period for the coarse pass of the level-2 offset search.
DEFAULT_GRID = 256

#: Relative slack on the level-2 upper bound, far above float32 round-off of the coefficients.
BOUND_SLACK = 1e-4

#: Absolute margin of the head-first bound, in units of S_i (`head_may_reach`).
HEAD_MARGIN = 1e-4

_F32 = np.float32


def level1(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of pure averages, broadcast over leading axes: [..., d] x [..., d] -> [...] float32.

    Like the reference: 0 when both are zero vectors, NaN when exactly one is."""
    a, b = np.asarray(a, _F32), np.asarray(b, _F32)
    dot = np.einsum("...d,...d->...", a, b)
    na = np.sqrt(np.einsum("...d,...d->...", a, a))
    nb = np.sqrt(np.einsum("...d,...d->...", b, b))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = dot / (na * nb)
    return np.where((na == 0) & (nb == 0), _F32(0), out).astype(_F32)


def block_weights(n_cos: np.ndarray, n_sin: np.ndarray) -> np.ndarray:
    """The needle [P,m,d] (cos, sin) as one [d, 2] matrix per (period, coefficient) block: [P m, d, 2]."""
    p, m, d = n_cos.shape
    return np.ascontiguousarray(np.stack([np.asarray(n_cos, _F32), np.asarray(n_sin, _F32)], -1).reshape(p * m, d, 2))


_BUF_BYTES = 1 << 20

#: Candidate rows of a float16 store from which a CPU scan should have torch loaded for its
#: float16 conversion (`_widener`: F16C, about 2.4 ms less than numpy's per million values here,
#: 0.3 ms a row), which pays for torch's 1.3-3 s import beyond about this many rows; smaller reads
#: (a typical lookup) stay torch-free.  Used by engine/index/snapshot.py and the query read-ahead.
FP16_TORCH_ROWS = 8192


def needle_block_dots(w: np.ndarray, cand: np.ndarray, scales: np.ndarray | None, js: range,
                      idx: np.ndarray | None = None) -> np.ndarray:
    """Dot products of one needle with coefficient blocks `js` of the candidates.

    w: `block_weights` of the needle; cand [B,2,P,m,d] float32, float16 or int8 (then scales
    [B,2,P,m] float32, value = scale * q); idx: only these candidates (default all B).  Returns
    [2, P, len(js), K, 2]: [side of the candidate (cos, sin), period, block, candidate, side of
    the needle (cos, sin)], i.e. [0,...,0] = CC, [0,...,1] = SC, [1,...,0] = CS, [1,...,1] = SS.

    Only blocks `js` of the candidates are read, never whole rows: a batch of widened fp32
    rows would be 4x (int8) or 2x (fp16) the bytes read; the int8 scale is applied to the two
    dot products of each block afterwards (s (q . u) = (s q) . u).
    """
    nb, _, p, m, d = cand.shape
    k = nb if idx is None else len(idx)
    if k == 1:
        # one row: BLAS would take another path (gemv) and round it differently from the same row
        # among others; as two rows it is the same product (other shapes still round by kernel:
        # bit-equal with AVX2 OpenBLAS, last bits apart with AVX-512, within float32 rounding)
        two = np.zeros(2, np.int64) if idx is None else np.repeat(np.asarray(idx, np.int64), 2)
        return needle_block_dots(w, cand, scales, js, two)[:, :, :, :1]
    nj = len(js)
    res = np.empty((2, p, nj, k, 2), _F32)
    if cand.dtype == np.float32 and idx is None:
        # every candidate: one stacked product (a [K,d] x [d,2] BLAS call per (side, period, block)
        # inside numpy) reads the strided blocks directly (measured fastest)
        np.matmul(cand[:, :, :, js.start:js.stop].transpose(1, 2, 3, 0, 4), w.reshape(p, m, d, 2)[None, :, js.start:js.stop],
                  out=res)
    else:
        # Per (side, period), a run of up to `chunk` blocks of the candidates is gathered and
        # widened into a small cache-resident float32 buffer, then multiplied block by block.
        chunk = max(1, min(nj, _BUF_BYTES // max(1, k * d * 4)))
        buf = np.empty((k, chunk, d), _F32)
        widen = _widener(cand, idx)
        for side in range(2):
            for i in range(p):
                for c0 in range(0, nj, chunk):
                    c1 = min(nj, c0 + chunk)
                    widen(buf[:, :c1 - c0], (slice(None), side, i, slice(js.start + c0, js.start + c1)))
                    for t in range(c0, c1):
                        np.matmul(buf[:, t - c0], w[i * m + js.start + t], out=res[side, i, t])
    if scales is not None:
        sc = scales[:, :, :, js.start:js.stop] if idx is None else scales[idx][:, :, :, js.start:js.stop]
        res *= sc.transpose(1, 2, 3, 0)[..., None]
    return res


def _widener(cand: np.ndarray, idx: np.ndarray | None) -> Callable[[np.ndarray, tuple], None]:
    """dst[...] = float32 of cand[where] (rows idx only, when given), gathered and widened in one
    pass.  Where torch is loaded already (a service, a benchmark, anything that imported it) its
    conversion is used: F16C for float16 (5x numpy's here) and vectorised int8; it is never
    imported for this, since a command that does not need it would pay seconds to load it."""
    torch = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "from_numpy"):
        def np_widen(dst: np.ndarray, where: tuple) -> None:
            view = cand[where]
            np.copyto(dst, view if idx is None else view[idx], casting="unsafe")
        return np_widen
    src = torch.from_numpy(cand)
    it = None if idx is None else torch.from_numpy(np.asarray(idx, dtype=np.int64))

    def torch_widen(dst: np.ndarray, where: tuple) -> None:
        view = src[where]
        torch.from_numpy(dst).copy_(view if it is None else view.index_select(0, it))
    return torch_widen


def coeffs_from_dots(dots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`needle_block_dots` of all m blocks -> K0 [B,P], A, B [B,P,m-1] (the pair coefficients)."""
    cc, sc = dots[0, ..., 0], dots[0, ..., 1]        # [P, m, B]
    cs, ss = dots[1, ..., 0], dots[1, ..., 1]
    k0 = np.ascontiguousarray(cc[:, 0].T)
    a = np.ascontiguousarray((cc + ss)[:, 1:].transpose(2, 0, 1))
    b = np.ascontiguousarray((sc - cs)[:, 1:].transpose(2, 0, 1))
    return k0, a, b


def block_norms(rows: np.ndarray, scales: np.ndarray | None = None) -> np.ndarray:
    """Per row and (period, coefficient) block, the norm of the 2d vector [cos_j ; sin_j]:
    rows [B,2,P,m,d] (float32, float16, or int8 q with scales [B,2,P,m]) -> [B,P,m] float32.

    Computed in float64 and rounded up, so it is never below the norm of the stored values:
    what `head_may_reach` needs.  Compute it once per row (at ingest or when a bank is loaded)
    and keep it beside the rows (512 bytes a row for the defaults)."""
    x = np.asarray(rows)
    out = np.empty((x.shape[0], *x.shape[2:4]), _F32)
    for s in range(0, len(x), 64):           # 64 rows at a time: small float64 temporaries
        c = x[s:s + 64]
        sq = np.einsum("bspjd,bspjd->bspj", c, c, dtype=np.float64) if c.dtype != np.int8 else \
            np.einsum("bspjd,bspjd->bspj", c.astype(np.int32), c.astype(np.int32)).astype(np.float64)
        if scales is not None:
            sq = sq * np.square(scales[s:s + 64].astype(np.float64))
        nrm = np.sqrt(sq.sum(1)).astype(_F32)
        out[s:s + 64] = np.nextafter(nrm, _F32(np.inf)) * (nrm > 0)
    return out


def needle_norms(n_cos: np.ndarray, n_sin: np.ndarray) -> np.ndarray:
    """`block_norms` of one needle [P,m,d] (cos, sin) -> [P,m]."""
    return block_norms(np.stack([np.asarray(n_cos), np.asarray(n_sin)])[None])[0]


def head_bound(head: np.ndarray, n_norms: np.ndarray, c_norms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H_i + T_i, S_i) of `head_may_reach` per period and candidate, [P,B] float32 each:
    the upper bound on max_o K_i(o) from the first J blocks `head` [2,P,J,B,2] and the block
    norms, and the round-off scale S_i = sum_j ||u_j|| ||v_j||."""
    cc, sc = head[0, ..., 0], head[0, ..., 1]                                # [P, J, B]
    cs, ss = head[1, ..., 0], head[1, ..., 1]
    nj = head.shape[2]
    hb = np.abs(cc[:, 0]) + np.sqrt(np.square(cc[:, 1:] + ss[:, 1:]) + np.square(sc[:, 1:] - cs[:, 1:])).sum(1)
    nn = n_norms.astype(_F32)
    tail = np.einsum("bpj,pj->pb", c_norms[:, :, nj:], nn[:, nj:])
    return hb + tail, np.einsum("bpj,pj->pb", c_norms, nn)


def head_may_reach(head: np.ndarray, n_norms: np.ndarray, c_norms: np.ndarray, c2: float, z: float) -> np.ndarray:
    """Which candidates may reach level-2 `c2`, from their first J coefficient blocks only.

    head: `needle_block_dots` of blocks 0..J-1 [2,P,J,B,2]; n_norms [P,m], c_norms [B,P,m]:
    `block_norms` of the needle and of the candidates; z: the parameters' Z.  Returns a bool
    mask [B].

    Proof that a rejected candidate has level-2 < c2.  Write u_j = [C^a_j ; S^a_j] (needle)
    and v_j = [C^b_j ; S^b_j] (candidate), 2d-vectors.  For any angle t,
    A_j cos t + B_j sin t = C^a.(C^b cos t - S^b sin t) + S^a.(S^b cos t + C^b sin t)
    = u_j . R_t v_j, where R_t rotates each (cos, sin) coordinate pair of v_j by t, so
    ||R_t v_j|| = ||v_j|| and, by Cauchy-Schwarz, |A_j cos t + B_j sin t| <= ||u_j|| ||v_j||;
    also <= |z_j| = sqrt(A_j^2 + B_j^2).  Hence for every offset o of period i
        K_i(o) <= |K0| + sum_{1<=j<J} |z_j| + sum_{j>=J} ||u_j|| ||v_j||  =: H_i + T_i,
    and level-2 = max_i max_o K_i(o) / Z <= max_i (H_i + T_i) / Z.  Round-off: each computed
    block dot product differs from the exact one of the stored values by at most
    gamma_d ||x|| ||y|| (gamma_256 < 1.6e-5), so a computed A_j, B_j (two of them summed)
    and |z_j| by at most 4e-5 ||u_j|| ||v_j||, and the kernel's float32 offset search adds at
    most ~(m + 8) 2^-24 (|K0| + sum |z_j|) <= 3e-6 S_i, S_i = sum_j ||u_j|| ||v_j||; the norms
    are rounded up (`block_norms`) and the bound itself is evaluated in float32 (sums of at
    most m terms, error < 2e-6 S_i).  So with the margin M_i = 1e-4 S_i (twice the total), a
    candidate with H_i + T_i + M_i < c2 Z for every period has exact and computed level-2
    below c2: it is rejected; the others go on to the full computation (NaN never rejects).
    """
    bound, total = head_bound(head, n_norms, c_norms)
    return ~np.all(bound + HEAD_MARGIN * total < c2 * z, axis=0)


@dataclass(frozen=True)
class PeriodTable:
    """The offset-search tables of one period (float64; each kernel casts them to its dtype)."""

    grid_off: np.ndarray     # int64 [G]  integer offsets of the grid points
    width: int               # W: the widest gap between consecutive grid offsets
    loc: np.ndarray          # [2(m-1), W+1]: rows cos(j eps_h) then sin(j eps_h), eps_h = 2 pi h / T, h = 0..W
    h2: float                # (W in radians)^2


def offset_tables(params: TmkParams, grid: int) -> tuple[int, np.ndarray, list[PeriodTable]]:
    """(grid actually used, grid_cs [P, 2(m-1), G] float64, one `PeriodTable` per period):
    per period, [C; S] (cos / sin of j * delta_g) so that [A, B] @ grid_cs = K - K0 on the grid."""
    m = params.num_coeffs
    j = np.arange(1, m, dtype=np.float64)
    grid = min([grid, *params.periods])
    grid_cs = np.empty((params.num_periods, 2 * (m - 1), grid), np.float64)
    tables = []
    for i, period in enumerate(params.periods):
        off = np.round(np.arange(grid, dtype=np.float64) * period / grid).astype(np.int64)
        ang_g = j[:, None] * (TWO_PI * off.astype(np.float64) / period)[None, :]
        grid_cs[i] = np.concatenate([np.cos(ang_g), np.sin(ang_g)], 0)
        width = int(np.diff(np.concatenate([off, off[:1] + period])).max())
        ang_l = j[:, None] * (TWO_PI * np.arange(width + 1, dtype=np.float64) / period)[None, :]
        tables.append(PeriodTable(off, width, np.concatenate([np.cos(ang_l), np.sin(ang_l)], 0),
                                  (TWO_PI * width / period) ** 2))
    return grid, grid_cs, tables


class TmkScorerNp:
    """Level-2 scorer in numpy float32 with precomputed trig tables for one parameter set."""

    def __init__(self, params: TmkParams = DEFAULT_PARAMS, grid: int = DEFAULT_GRID) -> None:
        self.params = params
        self.z = params.z_norm
        m = params.num_coeffs
        j = np.arange(1, m, dtype=np.float64)
        self._j2 = (j * j).astype(_F32)
        self.grid, grid_cs, tables = offset_tables(params, grid)
        self._grid_cs = grid_cs.astype(_F32)
        self._loc = [t.loc.astype(_F32) for t in tables]
        self._off = [t.grid_off for t in tables]
        self._width = [t.width for t in tables]
        self._h2 = np.array([t.h2 for t in tables], _F32).reshape(-1, 1, 1)

    def kernel_max(self, k0: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """max_o K_i(o) and its first argmax for each pair and period.

        k0 [B,P], a/b [B,P,m-1] -> best [B,P] (float32), offset [B,P] (int64).
        On an interval of width h between grid points, K <= max(K at both ends) + M2 h^2 / 8
        with M2 = sum j^2 |z_j| >= |K''|: only intervals whose bound reaches the best grid value
        are evaluated offset by offset.
        """
        k0, a, b = (np.asarray(v, _F32) for v in (k0, a, b))
        nb, np_ = k0.shape
        x = np.ascontiguousarray(np.concatenate([a, b], 2).transpose(1, 0, 2))   # [P,B,2(m-1)]
        kt = np.ascontiguousarray(k0.T)[:, :, None]                            # [P,B,1]
        # one vector-matrix product per pair and period, not one matrix product: OpenBLAS rounds a
        # row of a matrix product differently with the number of rows, so this way a pair's
        # values never depend on the pairs scored with it (it scores the same in every query and a
        # threshold equal to a score it reported keeps it), at the same speed here
        kg = np.matmul(x[:, :, None, :], self._grid_cs[:, None])[:, :, 0] + kt   # [P,B,G] K at grid offsets
        mag = np.sqrt(a * a + b * b).transpose(1, 0, 2)                        # [P,B,m-1] |z_j|
        m2 = (mag * self._j2).sum(2, keepdims=True)                            # bound on |K''|
        slack = (_F32(0.125) * m2) * self._h2 + _F32(1e-5) * (np.abs(kt) + mag.sum(2, keepdims=True))
        bound = np.maximum(kg, np.roll(kg, -1, 2)) + slack                    # interval g .. g+1
        lower = kg.max(2, keepdims=True)                                       # value at a real offset
        best = np.empty((np_, nb), _F32)
        arg = np.empty((np_, nb), np.int64)
        for i in range(np_):
            pi_, gi = np.nonzero(bound[i] >= lower[i])                        # (pair, interval), by pair
            best[i], arg[i] = self._refine(i, pi_, gi, x[i], kt[i, :, 0], nb)
        return best.T, arg.T

    def _refine(self, i: int, pi_: np.ndarray, gi: np.ndarray, x: np.ndarray, k0: np.ndarray, nb: int
                ) -> tuple[np.ndarray, np.ndarray]:
        """Evaluate every offset of the candidate intervals of period i (both ends included)."""
        period = self.params.periods[i]
        best = np.full(nb, -np.inf, _F32)
        arg = np.full(nb, period, np.int64)
        if not len(pi_):
            return best, arg
        mj = x.shape[1] // 2
        cs = self._grid_cs[i][:, gi].T                                        # [C, 2(m-1)]
        cg, sg = cs[:, :mj], cs[:, mj:]
        xp = x[pi_]
        ap, bp = xp[:, :mj], xp[:, mj:]
        rot = np.concatenate([ap * cg + bp * sg, bp * cg - ap * sg], 1)        # coefficients about delta_g
        vals = k0[pi_][:, None] + np.matmul(rot[:, None, :], self._loc[i])[:, 0]   # [C, W+1] (per row, as above)
        offs = (self._off[i][gi][:, None] + np.arange(self._width[i] + 1)[None, :]) % period
        starts = np.flatnonzero(np.r_[True, pi_[1:] != pi_[:-1]])             # one run of intervals per pair
        owner = pi_[starts]
        best[owner] = np.maximum.reduceat(vals.max(1), starts)
        first = np.where(vals == best[pi_][:, None], offs, period).min(1)
        arg[owner] = np.minimum.reduceat(first, starts)
        return best, arg

    def level2_from_coeffs(self, k0: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Level-2 score [B] and best offset per period [B,P] from pair coefficients."""
        best, arg = self.kernel_max(k0, a, b)
        return (best.max(1) / _F32(self.z)).astype(_F32), arg

    def may_reach(self, k0: np.ndarray, a: np.ndarray, b: np.ndarray, c2: float) -> np.ndarray:
        """Indices of the pairs whose level-2 can reach `c2` (kernels/score.py `TmkScorer.may_reach`:
        |K(o)| <= |K_0| + sum_j |z_j|, with BOUND_SLACK far above float32 round-off)."""
        bound = (np.abs(k0) + np.sqrt(a * a + b * b).sum(-1)).max(1)
        return np.nonzero(bound * _F32(1 + BOUND_SLACK) >= _F32(c2 * self.z))[0]

    def level2_pruned(self, k0: np.ndarray, a: np.ndarray, b: np.ndarray, c2: float | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indices scored, their level-2 [K], best offsets [K,P]): all pairs when c2 is None, else
        those `may_reach` c2 (the others cannot reach it and are left unscored)."""
        todo = np.arange(k0.shape[0]) if c2 is None else self.may_reach(k0, a, b, c2)
        if not len(todo):
            return todo, np.empty(0, _F32), np.empty((0, k0.shape[1]), np.int64)
        sc, off = self.level2_from_coeffs(k0[todo], a[todo], b[todo])
        return todo, sc, off

    def head_may_reach(self, head: np.ndarray, n_norms: np.ndarray, c_norms: np.ndarray, c2: float) -> np.ndarray:
        """`head_may_reach` with this scorer's Z."""
        return head_may_reach(head, n_norms, c_norms, c2, self.z)
