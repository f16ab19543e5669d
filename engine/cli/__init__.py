"""`vmatch` command line: one module per command group, each with `register(subparsers)`.

Command modules declare their arguments at import and import their implementation (torch,
faiss, Ray, ...) only when a command runs, so building the parser stays light and commands
that do not compute (`--help`, `info`, `compare`, `index info` ...) start in a fraction of
a second.  A module added to COMMAND_MODULES must keep its top-level imports light too
(tests/engine/cli/test_startup.py checks what building the parser imports).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
from typing import Sequence

from engine.cli.common import CliError
from engine.cli.errors import run_command

#: Modules under engine.cli that add subcommands (order = order in --help).
COMMAND_MODULES = [
    "hash_cmd",
    "score_cmd",
    "tmk_cmd",
    "bench_cmd",
    "index_cmd",
    "query_cmd",
    "backfill_cmd",
    "eval_cmd",
    "signal_cmd",
    "serve_cmd",
]

#: Commands whose module imports nothing heavy: only that module is loaded for them, so they
#: run (and start fast) without torch, faiss or decoders being imported.
LIGHT_COMMANDS = {"signal": "signal_cmd", "hash": "hash_cmd"}


#: Commands each module adds, for a clear message when its optional dependency is missing.
_COMMANDS = {
    "index_cmd": ["index", "query", "cluster"],
    "query_cmd": ["query", "cluster"],
    "backfill_cmd": ["backfill"],
    "eval_cmd": ["eval"],
    "serve_cmd": ["serve"],
}
#: Optional packages a module's commands need; checked without importing them (find_spec).
_NEEDS = {
    "index_cmd": ["faiss"],
    "query_cmd": ["faiss"],
}


def _missing(packages: Sequence[str]) -> str | None:
    for name in packages:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):
            return name
    return None


#: The extra that installs a module's optional dependencies (default: cpu).
_EXTRAS = {"serve_cmd": "cpu,serve"}


def _register_missing(sub: argparse._SubParsersAction, module: str, missing: str) -> None:
    """Keep the other commands usable when one group's dependency is not installed."""
    extra = _EXTRAS.get(module, "cpu")

    def run(args: argparse.Namespace) -> int:
        raise CliError(f"'{args.command}' needs the Python package '{missing}', which is not installed "
                       f"(pip install -e \".[{extra}]\"" + (" or \".[gpu]\")" if extra == "cpu" else ")"), 2)

    for cmd in _COMMANDS.get(module, []):
        if cmd not in sub.choices:
            # no option prefixes: every argument (flags too) lands in `rest`, and the message is shown
            p = sub.add_parser(cmd, help=f"(unavailable: needs {missing})", add_help=False, prefix_chars="\x00")
            p.add_argument("rest", nargs=argparse.REMAINDER)
            p.set_defaults(func=run)


def _version() -> str:
    from engine import __version__
    return __version__


def build_parser(modules: Sequence[str] = tuple(COMMAND_MODULES)) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmatch",
        description="Reference-exact TMK+PDQF video hashing and matching, on CPU or GPU.")
    parser.add_argument("--config", metavar="YAML", help="configuration file (default: configs/default.yaml)")
    parser.add_argument("--version", action="version", version=f"vmatch {_version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="diagnostics on stderr (logging: -v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in modules:
        try:
            mod = importlib.import_module(f"engine.cli.{name}")
        except ModuleNotFoundError as e:
            _register_missing(sub, name, e.name or "a dependency")
            continue
        missing = _missing(_NEEDS.get(name, []))
        if missing:
            _register_missing(sub, name, missing)
            continue
        mod.register(sub)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The command word of an argument list (after the global options), if any."""
    it = iter(argv)
    for a in it:
        if a == "--config":
            next(it, None)
        elif not a.startswith("-"):
            return a
    return None


def main(argv: Sequence[str] | None = None) -> int:
    cmd = _command_of(sys.argv[1:] if argv is None else argv)
    parser = build_parser([LIGHT_COMMANDS[cmd]] if cmd in LIGHT_COMMANDS else COMMAND_MODULES)
    args = parser.parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO,
                            format="vmatch: %(name)s: %(message)s", stream=sys.stderr)
    return run_command(lambda: _run(args), args.command)  # engine/cli/errors.py: one line, exit code


def _run(args: argparse.Namespace) -> int:
    if args.config is not None and not os.path.isfile(args.config):  # also for commands that read no config
        from engine.errors import ConfigError
        raise ConfigError(args.config, "is a directory" if os.path.isdir(args.config) else "no such file")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
