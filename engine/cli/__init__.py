"""`vmatch` command line: one module per command group, each with `register(subparsers)`."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from engine.cli.common import CliError, fail

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
LIGHT_COMMANDS = {"signal": "signal_cmd"}


#: Commands each module adds, for a clear message when its optional dependency is missing.
_COMMANDS = {
    "index_cmd": ["index", "query", "cluster"],
    "query_cmd": ["query", "cluster"],
    "backfill_cmd": ["backfill"],
    "eval_cmd": ["eval"],
    "serve_cmd": ["serve"],
}


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


def build_parser(modules: Sequence[str] = tuple(COMMAND_MODULES)) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmatch",
        description="Reference-exact TMK+PDQF video hashing and matching, on CPU or GPU.")
    parser.add_argument("--config", metavar="YAML", help="configuration file (default: configs/default.yaml)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in modules:
        try:
            mod = importlib.import_module(f"engine.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"engine.cli.{name}":
                continue  # command group not built yet
            _register_missing(sub, name, e.name or "a dependency")
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
    try:
        return int(args.func(args) or 0)
    except CliError as e:
        return fail(str(e), e.code)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
