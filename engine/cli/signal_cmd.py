"""`vmatch signal encode|decode`: `.tmk` files to and from the one-line strings hash exchanges carry.

Imports nothing heavy (no torch, no faiss, no decoders): converting strings is I/O and base64,
and this command runs where only the exchange tooling is installed.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from engine.cli.common import CliError, fail
from engine.signals import SignalError, decode_bytes, encode, iter_signal_list, validate_bytes
from engine.tmkfile import atomic_write_bytes


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("signal", help="convert .tmk files to and from exchange hash strings (tmk_pdqf)",
                       description="TMK signatures as one-line strings: the ThreatExchange HASH_TMK form "
                                   "'TMK1FVECPDQF|<base64 of the rest>' (written) or base64 of the whole "
                                   "file (also read). Both decode to exactly the original bytes.")
    ssub = p.add_subparsers(dest="signal_command", metavar="ACTION", required=True)
    e = ssub.add_parser("encode", help="print one canonical string per .tmk file, in argument order")
    e.add_argument("files", nargs="+", metavar="FILE.tmk")
    e.set_defaults(func=run_encode)
    d = ssub.add_parser("decode", help="write one .tmk per line of a signal list",
                        description="LIST: one signal a line ('-' for stdin), optionally prefixed by "
                                    "'tmk_pdqf ' and optionally followed by a tab and an id. Each line "
                                    "becomes OUTDIR/<id>.tmk, or OUTDIR/<line number>.tmk without an id. "
                                    "A bad line is reported as LIST:LINE and the others are still written.")
    d.add_argument("list", metavar="LIST")
    d.add_argument("-d", "--outdir", metavar="OUTDIR", required=True)
    d.set_defaults(func=run_decode)


def run_encode(args: argparse.Namespace) -> int:
    failures = 0
    out = sys.stdout
    for path in args.files:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
            validate_bytes(data, path)
            line = encode(data)
        except SignalError as e:
            failures += 1
            fail(str(e))
            continue
        except IsADirectoryError:
            failures += 1
            fail(f"{path}: is a directory")
            continue
        except OSError as e:
            failures += 1
            fail(f"{path}: {e.strerror or e}")
            continue
        out.write(line + "\n")
    out.flush()
    if failures:
        return fail(f"{failures} of {len(args.files)} inputs failed")
    return 0


def _file_name(ident: str) -> str | None:
    """Why an id cannot name a file in OUTDIR, or None when it can."""
    if ident in (".", "..") or "/" in ident or "\0" in ident or (os.sep != "/" and os.sep in ident):
        return f"id {ident!r} cannot be a file name"
    return None


def run_decode(args: argparse.Namespace) -> int:
    outdir = Path(args.outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CliError(f"{outdir}: cannot create ({e.strerror or e})") from None
    where = "<stdin>" if args.list == "-" else str(Path(args.list))
    written: dict[str, int] = {}
    lines = failures = 0
    try:
        for entry in iter_signal_list(args.list):
            lines += 1
            if isinstance(entry, SignalError):
                failures += 1
                fail(str(entry))
                continue
            at = f"{where}:{entry.lineno}"
            name = entry.id if entry.id is not None else str(entry.lineno)
            why = _file_name(name)
            if why is None and name in written:
                why = f"id {name!r} also on line {written[name]}"
            if why:
                failures += 1
                fail(f"{at}: {why}")
                continue
            try:
                data = decode_bytes(entry.signal, at)
            except SignalError as e:
                failures += 1
                fail(str(e))
                continue
            target = outdir / f"{name}.tmk"
            try:
                atomic_write_bytes(target, data)
            except OSError as e:
                failures += 1
                fail(f"{target}: cannot write ({e.strerror or e})")
                continue
            written[name] = entry.lineno
    except SignalError as e:  # the list itself cannot be read
        raise CliError(str(e)) from None
    if failures:
        return fail(f"{failures} of {lines} signals failed")
    return 0
