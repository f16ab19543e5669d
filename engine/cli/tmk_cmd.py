"""`vmatch compare A.tmk B.tmk` and `vmatch info FILE.tmk`."""
from __future__ import annotations

import argparse
import hashlib
import json

from engine.cli.common import CliError

REL_TOL = 1e-6


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="check that two .tmk files hold the same signature",
                       description="Exit 0 iff both files have the same parameters and frame count and every "
                                   f"value is equal within {REL_TOL:g} relative; otherwise exit 1 and say what differs.")
    p.add_argument("a", metavar="A.tmk")
    p.add_argument("b", metavar="B.tmk")
    p.set_defaults(func=run_compare)
    q = sub.add_parser("info", help="header and summary of a .tmk file as JSON")
    q.add_argument("file", metavar="FILE.tmk")
    q.set_defaults(func=run_info)


def _read(path: str):
    from engine.tmkfile import TmkFormatError, read_tmk

    try:
        return read_tmk(path)
    except TmkFormatError as e:
        raise CliError(str(e), 2) from None


def run_compare(args: argparse.Namespace) -> int:
    import numpy as np

    a, b = _read(args.a), _read(args.b)
    why = a.params.incompatibility(b.params)
    diffs: list[str] = []
    if why:
        diffs.append(f"parameters: {why}")
    else:
        if a.frame_count != b.frame_count:
            diffs.append(f"frame count: {a.frame_count} vs {b.frame_count}")
        for field in ("avg", "cos", "sin"):
            x, y = getattr(a, field).astype(np.float64), getattr(b, field).astype(np.float64)
            bad = np.abs(x - y) > REL_TOL * np.maximum(np.abs(x), np.abs(y))
            if bad.any():
                rel = np.abs(x - y) / np.maximum(np.maximum(np.abs(x), np.abs(y)), 1e-30)
                first = np.unravel_index(int(np.argmax(bad)), bad.shape)
                diffs.append(f"{field}: {int(bad.sum())} of {bad.size} values differ "
                             f"(max abs {np.abs(x - y).max():.3g}, max rel {rel.max():.3g}, first at {list(map(int, first))})")
    if diffs:
        for d in diffs:
            print(f"{args.a} vs {args.b}: {d}")
        return 1
    print(f"{args.a} vs {args.b}: equal")
    return 0


def run_info(args: argparse.Namespace) -> int:
    import numpy as np

    from engine.tmkfile import to_bytes

    f = _read(args.file)
    p = f.params
    data = to_bytes(f)  # a validated file re-serialises to exactly its bytes: no second read
    info = {
        "file": args.file,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "project_magic": "TMK1",
        "file_type": "FVEC",
        "algorithm": p.algorithm.decode(),
        "fps": p.fps,
        "periods": list(p.periods),
        "num_coeffs": p.num_coeffs,
        "coeffs": list(p.coeffs),
        "dim": p.dim,
        "frame_count": f.frame_count,
        "duration_s": f.frame_count / p.fps,
        "pure_average_norm": float(np.linalg.norm(f.avg.astype(np.float64))),
        "pure_average_head": [float(x) for x in f.avg[:4]],
    }
    print(json.dumps(info, indent=2))
    return 0
