"""Shared helper of the issue-13 benchmark scripts: a folder of perturbed `.tmk` files.

Item i perturbs real reference hash i mod 15 (engine/synthetic.py); a fraction `near_fraction`
are near copies (cosine ~0.96 to their base), the rest far (~0.3): realistic banks, mostly
unrelated videos.  Files are kept (with a COMPLETE marker) so reruns reuse them.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

REF = REPO.parent / "shared/reference/threatexchange"


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def load_bases():
    from engine.tmkfile import iter_tmk_paths, read_many
    paths = [p for p in iter_tmk_paths([REF / "tmk"]) if p.stem != "test-padded-dimensions"]
    if not paths:
        raise SystemExit(f"reference hashes not found in {REF / 'tmk'}")
    return read_many(paths)


def make_bank_files(folder: Path, n: int, near_fraction: float = 0.002, seed: int = 0) -> list[Path]:
    import torch
    from engine.features import TmkFeatures
    from engine.synthetic import mixed_strengths, perturb_rows
    from engine.tmkfile import to_bytes

    folder.mkdir(parents=True, exist_ok=True)
    done = folder / "COMPLETE"
    names = [folder / f"syn-{i:07d}.tmk" for i in range(n)]
    if done.exists() and done.read_text() == f"{n} {near_fraction} {seed}":
        return names
    bases = load_bases()
    log(f"writing {n} perturbed .tmk files to {folder}")
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    strengths = mixed_strengths(n, near_fraction, seed)
    for i in range(n):
        b = bases[i % len(bases)]
        avg, rows = perturb_rows(torch.from_numpy(b.avg), torch.from_numpy(np.stack([b.cos, b.sin])),
                                 torch.tensor([float(strengths[i])]), gen)
        f = TmkFeatures(avg[0].numpy(), rows[0, 0].numpy(), rows[0, 1].numpy(), b.frame_count, b.params)
        names[i].write_bytes(to_bytes(f))
    done.write_text(f"{n} {near_fraction} {seed}")
    log(f"  {n / (time.perf_counter() - t0):.0f} files/s")
    return names
