"""`vmatch score`: level-1/level-2 of every pair, or of a needle against others."""
from __future__ import annotations

import argparse
import sys

from engine.cli.common import CliError, config_from, fail
from engine.cli.errors import exit_code_of


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="level-1 and level-2 scores of .tmk files",
                       description="Print '%%.6f %%.6f nameA nameB' (level-1, level-2) for every unordered pair, "
                                   "the lexicographically smaller name first, like the reference "
                                   "tmk-two-level-score; or, with --needle, the needle against each file.")
    p.add_argument("files", nargs="+", metavar="FILE.tmk")
    p.add_argument("--needle", metavar="N.tmk", help="score this file against each FILE only")
    p.add_argument("--c1", type=float, help="level-1 threshold: level-2 is computed where level-1 >= c1")
    p.add_argument("--c2", type=float, help="level-2 threshold: print pairs with level-2 >= c2")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--robust", action="store_true",
                   help="best of every mirror / quarter-turn variant and border signature (X.borders.tmk "
                        "beside X.tmk, not scored as a file of its own); the variant is a 5th column")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.scoring import IncompatibleError, Scorer
    from engine.tmkfile import TmkFormatError, iter_batches, read_batch, read_tmk

    cfg = config_from(args).score
    c1 = cfg.c1 if args.c1 is None else args.c1
    c2 = cfg.c2 if args.c2 is None else args.c2
    if args.robust:
        return _run_robust(args, c1, c2, cfg)
    out = sys.stdout
    try:
        if args.needle:
            # the files stream through one reused buffer: memory stays bounded however many there are
            # a bad file is reported on stderr and skipped; the exit status says some failed
            needle = read_tmk(args.needle)
            scorer = Scorer.from_config(cfg, needle.params, args.device)
            errors: list = []
            for s, hay in _enumerate_batches(iter_batches(args.files, 512, params=needle.params, owner="the needle's",
                                                          errors=errors), 512):
                bad = {i - s for i, _ in errors if i >= s}
                res = scorer.one_to_many(needle, hay, c1)
                for k, (name, l1, l2) in enumerate(zip(args.files[s:s + len(hay)], res.level1, res.level2)):
                    if l1 >= c1 and l2 >= c2 and k not in bad:
                        out.write(_line(l1, l2, args.needle, name))
            for _, e in errors:
                fail(str(e))
            if errors:  # exit 2 when a file's TMK parameters differ (incompatible input), else 1
                raise CliError(f"{len(errors)} of {len(args.files)} files could not be read",
                               max(exit_code_of(e) for _, e in errors))
            return 0
        names = list(args.files)
        order = sorted(range(len(names)), key=lambda i: names[i])
        bank = read_batch([names[i] for i in order])  # stacked once; each row scores the views after it
        scorer = Scorer.from_config(cfg, bank.params, args.device)
        for pos, i in enumerate(order[:-1]):
            res = scorer.one_to_many(bank[pos], bank.view(pos + 1), c1)
            for j, l1, l2 in zip(order[pos + 1:], res.level1, res.level2):
                if l1 >= c1 and l2 >= c2:
                    out.write(_line(l1, l2, names[i], names[j]))
    except TmkFormatError as e:  # IncompatibleError included: exit 2 (engine/cli/errors.py)
        raise CliError.of(e) from None
    except IncompatibleError as e:
        raise CliError.of(e) from None
    return 0


def _enumerate_batches(batches, size: int):
    for k, b in enumerate(batches):
        yield k * size, b


def _line(l1: float, l2: float, a: str, b: str) -> str:
    return f"{l1:.6f} {l2:.6f} {a} {b}\n"


def _run_robust(args: argparse.Namespace, c1: float, c2: float, cfg) -> int:
    """--robust: like run, each pair scored as its best variant (engine/robust.py)."""
    from pathlib import Path

    from engine.features import Signatures
    from engine.index.borders import split_sidecars
    from engine.robust import RobustScorer
    from engine.scoring import IncompatibleError, Scorer
    from engine.tmkfile import TmkFormatError, read_many

    names = ([args.needle] if args.needle else []) + list(args.files)
    kept, side = split_sidecars([Path(n) for n in names])
    keep = set(kept)
    names = [n for n in names if Path(n) in keep]
    try:
        feats = read_many(names)
        extra = dict(zip(side, read_many(list(side.values()))))
    except TmkFormatError as e:
        raise CliError(str(e)) from None
    sigs = [Signatures(f, extra.get(Path(n))) for n, f in zip(names, feats)]
    out = sys.stdout
    try:
        rs = RobustScorer(Scorer(feats[0].params, args.device or cfg.device, cfg.batch_size, cfg.grid))
        if args.needle:
            for name, r in zip(names[1:], rs.one_to_many(sigs[0], sigs[1:], c1, c2)):
                if r is not None:
                    out.write(_line(r.level1, r.level2, names[0], name).rstrip("\n") + f" {r.variant}\n")
            return 0
        order = sorted(range(len(names)), key=lambda i: names[i])
        for pos, i in enumerate(order[:-1]):
            rest = order[pos + 1:]
            for j, r in zip(rest, rs.one_to_many(sigs[i], [sigs[k] for k in rest], c1, c2)):
                if r is not None:
                    out.write(_line(r.level1, r.level2, names[i], names[j]).rstrip("\n") + f" {r.variant}\n")
    except IncompatibleError as e:
        raise CliError(str(e)) from None
    return 0
