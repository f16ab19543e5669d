"""Shared CLI plumbing: one-line errors on stderr, config loading, progress display."""
from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:   # engine.config imports numpy (via kernels.params): only when a command runs
    from engine.config import Config


class CliError(Exception):
    """An expected failure: printed as `vmatch: <message>`, no traceback."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str, code: int = 1) -> int:
    print(f"vmatch: {message}", file=sys.stderr, flush=True)
    return code


def config_from(args: argparse.Namespace) -> "Config":
    from engine.config import load_config

    try:
        return load_config(getattr(args, "config", None))
    except ValueError as e:
        raise CliError(str(e), 2) from None


class Progress:
    """A tqdm bar on a terminal; plain periodic log lines on stderr otherwise."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", every_s: float = 10.0) -> None:
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.n, self._t0, self._last = 0, time.monotonic(), time.monotonic()
        self._bar: Any = None
        if sys.stderr.isatty():
            from tqdm import tqdm
            self._bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            return
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            rate = self.n / max(now - self._t0, 1e-9)
            tot = f"/{self.total}" if self.total else ""
            extra = " ".join(f"{k}={v}" for k, v in postfix.items())
            print(f"{self.desc}: {self.n}{tot} {self.unit} ({rate:.1f} {self.unit}/s) {extra}".rstrip(),
                  file=sys.stderr, flush=True)

    def write(self, line: str) -> None:
        """Print a line on stderr without breaking the bar."""
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
