"""Level-2 scoring of (needle, candidate) pairs, one bounded batch of candidate rows at a time.

Candidates arrive as rows of the store (float32 or float16, [B, 2, P, m, d]); each row is read
once per query call however many needles it serves.  Pairs are scored needle-first (the
reference's argument order).  When a level-2 threshold is given, a pair whose rigorous upper
bound |K_0| + sum_j |z_j| (the triangle inequality on the trigonometric polynomial) is below it
cannot match and skips the offset search; the answers are unchanged.

On CPU everything runs in numpy (kernels/score_np.py), so a CPU query never imports torch;
torch scores rows on a GPU and the torch rows of in-memory banks.  With the candidates' block
norms (`kernels.score_np.block_norms`, kept beside the rows) a CPU query reads the first
`head_blocks` coefficient blocks of each candidate first: the coefficient weights a_j fall fast
with j, so the exact head plus a Cauchy-Schwarz bound on the tail (`head_may_reach`, proven in
kernels/score_np.py) rejects most unrelated candidates after reading
5 of their 32 blocks (a second check after 8); only the survivors are read in full.  The
answers are unchanged.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from engine.index import int8
from kernels import score_np
from kernels.device import device_type
from kernels.params import TmkParams
from kernels.score_np import BOUND_SLACK, DEFAULT_GRID  # noqa: F401  (the bound lives with the kernel)

if TYPE_CHECKING:
    import torch

#: Largest level-2 change from storing one side in float16: each stored value carries a relative
#: error <= 2^-11, so each block dot product moves by <= 2^-11 a_j and K(o) by
#: <= 2^-11 (a_0 + 2 sqrt(2) sum a_j) <= 2^-11 sqrt(2) Z (docs/index.md).  Both sides from an fp16
#: store (clusters): twice this.
FP16_LEVEL2_BOUND = 2.0 ** -11 * 2 ** 0.5 + 1e-6


def _np(x: Any) -> np.ndarray:
    """A numpy view of x (a numpy array, or a torch tensor, copied off its device if need be)."""
    return x if isinstance(x, np.ndarray) else x.cpu().numpy()


def _tensor(x: Any, device: "str | torch.device") -> "torch.Tensor":
    import torch

    return (torch.from_numpy(x) if isinstance(x, np.ndarray) else x).to(device)


class PairScorer:
    """Scores pair batches on one device: the pair front end of the one scoring core
    (kernels.score.TmkScorer, with its pruning bound); engine.scoring.Scorer is the
    one-to-many front end of the same core."""

    def __init__(self, params: TmkParams, device: "str | torch.device", grid: int = DEFAULT_GRID,
                 pair_chunk: int = 2048, gather_pairs: bool | None = None) -> None:
        self.params, self.device, self.pair_chunk = params, device, pair_chunk
        self.device_type = device_type(device)
        self.small_group = 32   # rows per needle below which pair_coeffs is used (measured)
        self.matrix_pairs = 1 << 17   # largest needles x rows block scored as one matrix product
        #: Score many needles as gathered pairs (GPU default) rather than needle by needle (CPU).
        self.gather_pairs = self.device_type == "cuda" if gather_pairs is None else gather_pairs
        #: The one scoring core: numpy on CPU (a CPU query never imports torch), torch elsewhere.
        self.kernel: Any
        if self.device_type == "cpu":
            self.kernel = score_np.TmkScorerNp(params, grid)
        else:
            from kernels.score import TmkScorer
            self.kernel = TmkScorer(params, device, grid)
        self.z = params.z_norm
        #: Blocks per (side, period) read before each head-first check (measured best on CPU).
        self.head_blocks: tuple[int, ...] = (5, 8)

    def rows_to_device(self, rows: np.ndarray | torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Store rows [B,2,P,m,d] (float32 or float16) -> float32 on the device (cos = [:, 0], sin = [:, 1]).

        ``out``: a reusable float32 buffer of at least B rows on the device for widening float16;
        fresh memory costs a page fault per 4 KB, five times the conversion itself on CPU.
        """
        import torch

        if isinstance(rows, np.ndarray) and rows.dtype == np.uint8:     # int8 records
            p = self.params
            shape = (2, p.num_periods, p.num_coeffs, p.dim)
            if self.device_type == "cpu":
                dst = out[:len(rows)].numpy() if out is not None else None
                return torch.from_numpy(int8.dequantize(rows, shape, dst))
            q, sc = int8.split(rows, shape)
            t = torch.from_numpy(np.ascontiguousarray(q)).to(self.device).to(torch.float32)
            return t.mul_(torch.from_numpy(sc).to(self.device).unsqueeze(-1))
        t = rows if isinstance(rows, torch.Tensor) else torch.from_numpy(rows)
        if t.dtype == torch.float32 or out is None:
            return t.to(self.device).to(torch.float32)
        dst = out[:len(t)]
        dst.copy_(t.to(self.device))
        return dst

    def coeffs(self, n_cos: torch.Tensor, n_sin: torch.Tensor, pair_needle: np.ndarray, pair_slot: np.ndarray,
               c_cos: torch.Tensor, c_sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """K0 [K,P], A, B [K,P,m-1] of needle `pair_needle[k]` against candidate slot `pair_slot[k]`
        (torch: rows on a GPU, or torch rows of an in-memory bank)."""
        import torch

        from kernels.score import needle_coeffs, pair_coeffs, pair_coeffs_matrix

        n_cos, n_sin = _tensor(n_cos, self.device), _tensor(n_sin, self.device)
        k = len(pair_needle)
        p, m = self.params.num_periods, self.params.num_coeffs
        uniq, first = np.unique(pair_needle, return_index=True)
        k0 = torch.empty((k, p), device=self.device)
        a = torch.empty((k, p, m - 1), device=self.device)
        b = torch.empty_like(a)
        nrows = c_cos.shape[0]
        if len(uniq) > 8 and k >= 0.5 * len(uniq) * nrows and len(uniq) * nrows <= self.matrix_pairs:
            # dense: every (needle, row) block as one matrix product, then pick the pairs
            ui = torch.from_numpy(np.searchsorted(uniq, pair_needle)).to(self.device)
            ut = torch.from_numpy(uniq).to(self.device)
            ps = torch.from_numpy(pair_slot).to(self.device)
            mk0, ma, mb = pair_coeffs_matrix(n_cos[ut], n_sin[ut], c_cos, c_sin)
            return mk0[ui, ps], ma[ui, ps], mb[ui, ps]
        if self.gather_pairs and len(uniq) > 8:   # many needles: gathered pairs, bounded chunks
            pn = torch.from_numpy(pair_needle).to(self.device)
            ps = torch.from_numpy(pair_slot).to(self.device)
            for s in range(0, k, self.pair_chunk):
                i, j = pn[s:s + self.pair_chunk], ps[s:s + self.pair_chunk]
                k0[s:s + len(i)], a[s:s + len(i)], b[s:s + len(i)] = pair_coeffs(n_cos[i], n_sin[i], c_cos[j], c_sin[j])
            return k0, a, b
        order = np.argsort(pair_needle, kind="stable")
        bounds = np.append(np.searchsorted(pair_needle[order], uniq), k)
        for u, s, e in zip(uniq, bounds[:-1], bounds[1:]):
            pos = order[s:e]
            slots = pair_slot[pos]
            if len(slots) == c_cos.shape[0] and np.array_equal(slots, np.arange(len(slots))):
                cc, cs = c_cos, c_sin
            else:
                st = torch.from_numpy(slots).to(self.device)
                cc, cs = c_cos[st], c_sin[st]
            pt = torch.from_numpy(pos).to(self.device)
            # a few rows: four broadcast products beat needle_coeffs' 2 P m small matrix products
            small = len(slots) < self.small_group
            k0[pt], a[pt], b[pt] = (pair_coeffs if small else needle_coeffs)(n_cos[u], n_sin[u], cc, cs)
        return k0, a, b

    def score(self, n_cos: Any, n_sin: Any, pair_needle: np.ndarray, pair_slot: np.ndarray,
              rows: Any, c2: float | None = None, norms: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        """Level-2 [K] (NaN where the bound proves level-2 < c2) and best offsets [K,P] (-1 there).

        ``rows``: store rows as read on CPU (numpy: `score_raw`), or `rows_to_device` of the
        candidate batch; pair k is needle ``pair_needle[k]`` (of ``n_cos``, ``n_sin`` [Q,P,m,d],
        numpy or torch) against row ``pair_slot[k]``.  ``norms``: `block_norms` of the rows
        [B,P,m]; with them and c2 > 0 on CPU, candidates are read head first (`head_first`).
        """
        if isinstance(rows, np.ndarray):
            return self.score_raw(n_cos, n_sin, pair_needle, pair_slot, rows, c2, norms)
        if norms is not None and c2 is not None and c2 > 0 and self.device_type == "cpu":
            return self.head_first(n_cos, n_sin, pair_needle, pair_slot, rows.numpy(), None, norms, c2)
        k0, a, b = self.coeffs(n_cos, n_sin, pair_needle, pair_slot, rows[:, 0], rows[:, 1])
        return self.finish(k0, a, b, c2)

    def score_raw(self, n_cos: Any, n_sin: Any, pair_needle: np.ndarray, pair_slot: np.ndarray,
                  raw: np.ndarray, c2: float | None = None, norms: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """`score` on CPU from store rows as read (float32 or float16 [B,2,P,m,d], or int8
        records), in numpy, reading one coefficient block at a time and never widening whole
        rows (kernels.score_np.needle_block_dots); ``norms`` as in `score`."""
        p = self.params
        shape = (2, p.num_periods, p.num_coeffs, p.dim)
        q, scales = int8.split(raw, shape) if raw.dtype == np.uint8 else (raw, None)
        if norms is not None and c2 is not None and c2 > 0:
            return self.head_first(n_cos, n_sin, pair_needle, pair_slot, q, scales, norms, c2)
        k, m = len(pair_needle), p.num_coeffs
        k0 = np.empty((k, p.num_periods), np.float32)
        a = np.empty((k, p.num_periods, m - 1), np.float32)
        b = np.empty_like(a)
        for u, pos, slots, every in _by_needle(pair_needle, pair_slot, len(q)):
            w = score_np.block_weights(_np(n_cos[u]), _np(n_sin[u]))
            dots = score_np.needle_block_dots(w, q, scales, range(m), None if every else slots)
            k0[pos], a[pos], b[pos] = score_np.coeffs_from_dots(dots)
        return self.finish(k0, a, b, c2)

    def head_first(self, n_cos: Any, n_sin: Any, pair_needle: np.ndarray, pair_slot: np.ndarray,
                   q: np.ndarray, scales: np.ndarray | None, norms: np.ndarray, c2: float
                   ) -> tuple[np.ndarray, np.ndarray]:
        """`score` on CPU reading the first `head_blocks[0]` blocks of each candidate, then the
        next ones up to `head_blocks[1]`, ..., of the survivors of `head_may_reach` only, and
        the rest of the last survivors (kernels/score_np.py, where the bound is proven).

        q [B,2,P,m,d] float32/float16/int8 (then scales [B,2,P,m]); norms [B,P,m] = block_norms
        of the rows as stored.  Rejected pairs are NaN / -1 like the other pruned ones.
        """
        p, m = self.params.num_periods, self.params.num_coeffs
        stages = sorted({min(max(1, j), m) for j in self.head_blocks} | {m})
        k = len(pair_needle)
        l2 = np.full(k, np.nan, dtype=np.float32)
        offs = np.full((k, p), -1, dtype=np.int64)
        for u, pos, slots, every in _by_needle(pair_needle, pair_slot, len(q)):
            nc, ns = _np(n_cos[u]), _np(n_sin[u])
            w = score_np.block_weights(nc, ns)
            nn = score_np.needle_norms(nc, ns)
            alive = None if every else slots                  # candidates still possible
            where = np.arange(len(slots))                     # their positions in `pos`
            dots = np.empty((2, p, m, len(slots), 2), np.float32)
            j0 = 0
            for j1 in stages:
                if j0 and every and 2 * len(where) > len(q):
                    # most rows still alive: read the next blocks of all of them (the direct
                    # strided product for fp32) and keep the survivors' columns
                    dots[:, :, j0:j1, where] = score_np.needle_block_dots(w, q, scales, range(j0, j1))[:, :, :, alive]
                else:
                    dots[:, :, j0:j1, where] = score_np.needle_block_dots(w, q, scales, range(j0, j1), alive)
                if j1 < m:
                    if j0 and 2 * len(where) > len(slots):
                        j0 = j1
                        continue      # the last check kept most: no more checks, read the rest
                    rows = np.arange(len(q)) if alive is None else alive
                    keep = np.nonzero(self.kernel.head_may_reach(dots[:, :, :j1, where], nn, norms[rows], c2))[0]
                    where, alive = where[keep], rows[keep]
                    if not len(where):
                        break
                j0 = j1
            if not len(where):
                continue
            sc, off = self.finish(*score_np.coeffs_from_dots(dots[:, :, :, where]), c2)
            l2[pos[where]], offs[pos[where]] = sc, off
        return l2, offs

    def score_pairs(self, a_blocks: "torch.Tensor", b_blocks: "torch.Tensor", c2: float | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Level-2 of pair k = (needle a_blocks[k], candidate b_blocks[k]), both block-major
        [K,P,m,2,d] float32 (`blocks_to_device`): for pairs that share few rows (clusters)."""
        import torch

        from kernels.score import pair_coeffs_blocks

        k = len(a_blocks)
        p, m = self.params.num_periods, self.params.num_coeffs
        k0 = torch.empty((k, p), device=self.device)
        a = torch.empty((k, p, m - 1), device=self.device)
        b = torch.empty_like(a)
        for s in range(0, k, self.pair_chunk):
            x, y = a_blocks[s:s + self.pair_chunk], b_blocks[s:s + self.pair_chunk]
            k0[s:s + len(x)], a[s:s + len(x)], b[s:s + len(x)] = pair_coeffs_blocks(x, y)
        return self.finish(k0, a, b, c2)

    def blocks_to_device(self, rows: "np.ndarray | torch.Tensor", out: "torch.Tensor | None" = None) -> "torch.Tensor":
        """Store rows (int8 records, or [B,2,P,m,d] float) -> block-major float32 [B,P,m,2,d] on
        the device, into `out` (a reusable buffer of at least B rows) when given."""
        import torch

        p = self.params
        shape = (2, p.num_periods, p.num_coeffs, p.dim)
        n = len(rows)
        dst = out[:n] if out is not None else None
        if isinstance(rows, np.ndarray) and rows.dtype == np.uint8 and self.device_type == "cpu":
            return torch.from_numpy(int8.dequantize_blocks(rows, shape, None if dst is None else dst.numpy()))
        t = self.rows_to_device(rows).permute(0, 2, 3, 1, 4)
        if dst is None:
            return t.contiguous()
        dst.copy_(t)
        return dst

    def finish(self, k0: Any, a: Any, b: Any, c2: float | None) -> tuple[np.ndarray, np.ndarray]:
        """Level-2 [K] and offsets [K,P] from pair coefficients (numpy or torch), skipping pairs
        the bound rules out."""
        n = k0.shape[0]
        l2 = np.full(n, np.nan, dtype=np.float32)
        offs = np.full((n, self.params.num_periods), -1, dtype=np.int64)
        if isinstance(self.kernel, score_np.TmkScorerNp):       # the one core (kernels/score_np.py)
            todo, sc, off = self.kernel.level2_pruned(_np(k0), _np(a), _np(b), c2)
        else:                                                   # its torch twin (kernels/score.py)
            todo, sc, off = (_np(x) for x in self.kernel.level2_pruned(*(_tensor(x, self.device) for x in (k0, a, b)),
                                                                        c2))
        if len(todo):
            l2[todo] = sc
            offs[todo] = off
        return l2, offs


def _by_needle(pair_needle: np.ndarray, pair_slot: np.ndarray, rows: int
               ) -> Iterator[tuple[int, np.ndarray, np.ndarray, bool]]:
    """Group pairs by needle: (needle, positions in the pair arrays, their row slots, whether
    the slots are exactly rows 0..rows-1 in order, so the whole batch is used as it is)."""
    uniq = np.unique(pair_needle)
    order = np.argsort(pair_needle, kind="stable")
    bounds = np.append(np.searchsorted(pair_needle[order], uniq), len(pair_needle))
    for u, s, e in zip(uniq, bounds[:-1], bounds[1:]):
        pos = order[s:e]
        slots = pair_slot[pos]
        yield int(u), pos, slots, len(slots) == rows and np.array_equal(slots, np.arange(len(slots)))
