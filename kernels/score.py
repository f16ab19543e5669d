"""TMK level-1 and level-2 scores (spec section 6), batched over many pairs in torch.

Level-2 maximises a degree-31 trigonometric polynomial K_i(o) over every integer offset
o in [0, T_i) for each period.  Evaluating all 31,542 offsets per pair is ~4 MFLOP; instead
``kernel_max`` evaluates K on a grid of integer offsets, bounds K between neighbouring grid
points with the curvature bound max(ends) + M2 h^2 / 8, and evaluates every offset only in
the intervals whose bound can still reach the best grid value.  The result is the same maximum (and first
maximising offset) as the exhaustive scan, up to float32 round-off.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kernels.params import DEFAULT_PARAMS, TmkParams
# The torch-free pieces (tables, block dot products, norms, bounds) live with the numpy kernel
# and are shared by this one: a CPU query never imports torch (kernels/score_np.py).
from kernels.score_np import BOUND_SLACK, DEFAULT_GRID, head_may_reach, offset_tables


def level1(a_avg: torch.Tensor, b_avg: torch.Tensor) -> torch.Tensor:
    """Cosine of pure averages, broadcast over leading axes: [..., d] x [..., d] -> [...].

    Like the reference: 0 when both are zero vectors, NaN when exactly one is.
    """
    a = a_avg.to(torch.float32)
    b = b_avg.to(torch.float32)
    dot = (a * b).sum(-1)
    na = torch.linalg.vector_norm(a, dim=-1)
    nb = torch.linalg.vector_norm(b, dim=-1)
    out = dot / (na * nb)
    return torch.where((na == 0) & (nb == 0), torch.zeros_like(out), out)


def pair_coeffs(a_cos: torch.Tensor, a_sin: torch.Tensor, b_cos: torch.Tensor, b_sin: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair trig-polynomial coefficients, broadcast over a leading batch axis.

    Inputs [..., P, m, d]; returns K0 [..., P], A = CC+SS and B = SC-CS [..., P, m-1].
    """
    cc = (a_cos * b_cos).sum(-1)
    ss = (a_sin * b_sin).sum(-1)
    sc = (a_sin * b_cos).sum(-1)
    cs = (a_cos * b_sin).sum(-1)
    return cc[..., 0], (cc + ss)[..., 1:], (sc - cs)[..., 1:]


def needle_coeffs(n_cos: torch.Tensor, n_sin: torch.Tensor, c_cos: torch.Tensor, c_sin: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One needle [P,m,d] against candidates [B,P,m,d] -> K0 [B,P], A, B [B,P,m-1].

    Per (period, coefficient) block one [B,d] x [d,2] product against (cos, sin) of the
    needle, reading each candidate once.  On CPU numpy's BLAS call takes the strided rows
    directly (about 6x faster than torch's broadcasted multiply-and-sum here).
    """
    p, m, d = n_cos.shape
    nb = c_cos.shape[0]
    if c_cos.device.type == "cpu":
        w = np.ascontiguousarray(torch.stack([n_cos, n_sin], -1).reshape(p * m, d, 2).numpy())
        cc_, sc_ = c_cos.reshape(nb, p * m, d).numpy(), c_sin.reshape(nb, p * m, d).numpy()
        oc = np.empty((p * m, nb, 2), dtype=np.float32)
        os_ = np.empty_like(oc)
        for k in range(p * m):
            np.matmul(cc_[:, k, :], w[k], out=oc[k])
            np.matmul(sc_[:, k, :], w[k], out=os_[k])
        oc_t, os_t = torch.from_numpy(oc), torch.from_numpy(os_)
    else:
        w = torch.stack([n_cos, n_sin], -1).reshape(p * m, d, 2)
        oc_t = torch.bmm(c_cos.reshape(nb, p * m, d).transpose(0, 1), w)
        os_t = torch.bmm(c_sin.reshape(nb, p * m, d).transpose(0, 1), w)
    # oc[..., 0] = C^b.C^a = CC, oc[..., 1] = C^b.S^a = SC; os[..., 0] = S^b.C^a = CS, os[..., 1] = SS
    cc = oc_t[..., 0].T.reshape(nb, p, m)
    sc = oc_t[..., 1].T.reshape(nb, p, m)
    cs = os_t[..., 0].T.reshape(nb, p, m)
    ss = os_t[..., 1].T.reshape(nb, p, m)
    return cc[..., 0], (cc + ss)[..., 1:], (sc - cs)[..., 1:]


def pair_coeffs_blocks(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`pair_coeffs` of pair k = (a[k], b[k]) given block-major rows [K,P,m,2,d] (each block's
    cos and sin side by side): one batched [2,d] x [d,2] product per block, no transposed
    copies (the store is widened straight into this layout, engine/index/int8.py)."""
    k, p, m, _, d = a.shape
    g = torch.bmm(a.reshape(k * p * m, 2, d), b.reshape(k * p * m, 2, d).transpose(1, 2)).reshape(k, p, m, 2, 2)
    cc, cs, sc, ss = g[..., 0, 0], g[..., 0, 1], g[..., 1, 0], g[..., 1, 1]
    return cc[..., 0], (cc + ss)[..., 1:], (sc - cs)[..., 1:]


def pair_coeffs_matrix(a_cos: torch.Tensor, a_sin: torch.Tensor, b_cos: torch.Tensor, b_sin: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All-pairs coefficients: a [N,P,m,d] x b [B,P,m,d] -> K0 [N,B,P], A, B [N,B,P,m-1].

    Each (period, coefficient) block is a matrix product, which is how many needles against
    many candidates stay compute-efficient.
    """
    def mm(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # [N,P,m,d],[B,P,m,d] -> [N,B,P,m]
        return torch.matmul(x.permute(1, 2, 0, 3), y.permute(1, 2, 3, 0)).permute(2, 3, 0, 1)

    cc, ss = mm(a_cos, b_cos), mm(a_sin, b_sin)
    sc, cs = mm(a_sin, b_cos), mm(a_cos, b_sin)
    return cc[..., 0], (cc + ss)[..., 1:], (sc - cs)[..., 1:]


@dataclass
class _PeriodTables:
    grid_off: torch.Tensor   # int64 [G]  integer offsets of the grid points
    width: int               # W: the widest gap between consecutive grid offsets
    loc: torch.Tensor        # [2(m-1), W+1]: rows cos(j eps_h) then sin(j eps_h), eps_h = 2 pi h / T, h = 0..W
    h2: float                # (W in radians)^2


class TmkScorer:
    """Level-2 scorer with precomputed trig tables for one parameter set and device."""

    def __init__(self, params: TmkParams = DEFAULT_PARAMS, device: torch.device | str = "cpu",
                 grid: int = DEFAULT_GRID, dtype: torch.dtype = torch.float32) -> None:
        self.params, self.device, self.dtype = params, torch.device(device), dtype
        self.z = params.z_norm
        m = params.num_coeffs
        j = torch.arange(1, m, dtype=torch.float64)
        self._j2 = (j * j).to(self.device, dtype)
        # the numpy kernel's tables (float64), so both kernels search the same grid
        self.grid, grid_cs, tabs = offset_tables(params, grid)
        self.tables = [_PeriodTables(torch.from_numpy(t.grid_off).to(self.device), t.width,
                                     torch.from_numpy(t.loc).to(self.device, dtype), t.h2) for t in tabs]
        self._grid_cs = torch.from_numpy(grid_cs).to(self.device, dtype)
        self._h2 = torch.tensor([t.h2 for t in self.tables], dtype=dtype, device=self.device).view(-1, 1, 1)

    def kernel_max(self, k0: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """max_o K_i(o) and its first argmax for each pair and period.

        k0 [B,P], a/b [B,P,m-1] -> best [B,P] (float32), offset [B,P] (int64).
        On an interval of width h between grid points, K <= max(K at both ends) + M2 h^2 / 8
        with M2 = sum j^2 |z_j| >= |K''|: only intervals whose bound reaches the best grid value
        are evaluated offset by offset.
        """
        k0, a, b = (x.to(self.device, self.dtype) for x in (k0, a, b))
        nb, np_ = k0.shape
        x = torch.cat([a, b], 2).transpose(0, 1)                              # [P,B,2(m-1)]
        kt = k0.T.unsqueeze(2)                                                 # [P,B,1]
        kg = torch.bmm(x, self._grid_cs) + kt                                  # [P,B,G] K at grid offsets
        mag = torch.sqrt(a * a + b * b).transpose(0, 1)                        # [P,B,m-1] |z_j|
        m2 = (mag * self._j2).sum(2, keepdim=True)                             # bound on |K''|
        slack = (0.125 * m2) * self._h2 + 1e-5 * (kt.abs() + mag.sum(2, keepdim=True))
        bound = torch.maximum(kg, torch.roll(kg, -1, 2)) + slack               # interval g .. g+1
        lower = torch.amax(kg, 2, keepdim=True)                                # value at a real offset
        cand = (bound >= lower).nonzero()                                      # [C,3] (period, pair, interval)
        best = torch.empty((np_, nb), dtype=self.dtype, device=self.device)
        arg = torch.empty((np_, nb), dtype=torch.int64, device=self.device)
        for i, tab in enumerate(self.tables):
            sel = cand[cand[:, 0] == i]
            best[i], arg[i] = self._refine(i, tab, sel[:, 1], sel[:, 2], x[i], kt[i, :, 0], nb)
        return best.T, arg.T

    def _refine(self, i: int, tab: _PeriodTables, pi_: torch.Tensor, gi: torch.Tensor, x: torch.Tensor,
                k0: torch.Tensor, nb: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluate every offset of the candidate intervals of period i (both ends included)."""
        period = self.params.periods[i]
        mj = x.shape[1] // 2
        cs = self._grid_cs[i][:, gi].T                                         # [C, 2(m-1)]
        cg, sg = cs[:, :mj], cs[:, mj:]
        xp = x[pi_]
        ap, bp = xp[:, :mj], xp[:, mj:]
        rot = torch.cat([ap * cg + bp * sg, bp * cg - ap * sg], 1)             # coefficients about delta_g
        vals = k0[pi_].unsqueeze(1) + rot @ tab.loc                            # [C, W+1]
        offs = (tab.grid_off[gi].unsqueeze(1)
                + torch.arange(tab.width + 1, device=self.device).unsqueeze(0)) % period
        best = torch.full((nb,), float("-inf"), dtype=self.dtype, device=self.device)
        best.scatter_reduce_(0, pi_.unsqueeze(1).expand_as(vals).reshape(-1), vals.reshape(-1), "amax")
        is_best = vals == best[pi_].unsqueeze(1)
        arg = torch.full((nb,), period, dtype=torch.int64, device=self.device)
        arg.scatter_reduce_(0, pi_.unsqueeze(1).expand_as(offs).reshape(-1),
                            torch.where(is_best, offs, torch.full_like(offs, period)).reshape(-1), "amin")
        return best, arg

    def level2_from_coeffs(self, k0: torch.Tensor, a: torch.Tensor, b: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """Level-2 score [B] and best offset per period [B,P] from pair coefficients."""
        best, arg = self.kernel_max(k0, a, b)
        return torch.amax(best, 1) / self.z, arg

    def may_reach(self, k0: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c2: float) -> torch.Tensor:
        """Indices of the pairs whose level-2 can reach `c2`: the pruning bound, for every caller.

        |K(o)| <= |K_0| + sum_j |z_j| (triangle inequality on the trigonometric polynomial), so a
        pair whose bound (with BOUND_SLACK, far above float32 round-off) is below c2 Z cannot
        pass level-2 and needs no offset search; the answers for the others are unchanged.
        """
        bound = (k0.abs() + torch.sqrt(a * a + b * b).sum(-1)).max(1).values
        return (bound * (1 + BOUND_SLACK) >= c2 * self.z).nonzero().flatten()

    def head_may_reach(self, head: np.ndarray, n_norms: np.ndarray, c_norms: np.ndarray, c2: float) -> np.ndarray:
        """Which candidates may reach level-2 `c2` from their first blocks (the bound and its
        proof: kernels/score_np.py `head_may_reach`)."""
        return head_may_reach(head, n_norms, c_norms, c2, self.z)

    def level2_pruned(self, k0: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c2: float | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(indices scored, their level-2 [K], best offsets [K,P]): all pairs when c2 is None, else
        those `may_reach` c2 (the others cannot reach it and are left unscored)."""
        todo = torch.arange(k0.shape[0], device=k0.device) if c2 is None else self.may_reach(k0, a, b, c2)
        if not len(todo):
            return todo, k0.new_empty(0), torch.empty((0, k0.shape[1]), dtype=torch.int64, device=k0.device)
        sc, off = self.level2_from_coeffs(k0[todo], a[todo], b[todo])
        return todo, sc, off

    def level2(self, a_cos: torch.Tensor, a_sin: torch.Tensor, b_cos: torch.Tensor, b_sin: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """One needle (a: [P,m,d]) or paired batch (a: [B,P,m,d]) against b [B,P,m,d]."""
        dev, dt = self.device, self.dtype
        a_cos, a_sin, b_cos, b_sin = (x.to(dev, dt).contiguous() for x in (a_cos, a_sin, b_cos, b_sin))
        if b_cos.dim() == 3:
            b_cos, b_sin = b_cos.unsqueeze(0), b_sin.unsqueeze(0)
        if a_cos.dim() == 3:
            k0, a, b = needle_coeffs(a_cos, a_sin, b_cos, b_sin)
        else:
            k0, a, b = pair_coeffs(a_cos, a_sin, b_cos, b_sin)
        return self.level2_from_coeffs(k0, a, b)
