"""Progress reporting, one type for every layer: `Reporter` (what library code takes) and
`Progress`, the implementation the CLI hands in (a tqdm bar on a terminal, periodic log lines
otherwise). Library code never prints: it calls the reporter it was given, or nothing.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, Protocol

__all__ = ["ProgressFn", "Reporter", "Progress", "NullProgress"]

#: The per-item callback form (``progress(n)``) taken by hashing and the index's add.
ProgressFn = Callable[[int], None]


class Reporter(Protocol):
    """What long-running library code reports to: counts, and one-line messages for the user."""

    def update(self, n: int = 1, **postfix: Any) -> None: ...

    def write(self, line: str) -> None: ...

    def close(self) -> None: ...


class NullProgress:
    """A reporter that shows nothing (quiet runs, tests)."""

    def update(self, n: int = 1, **postfix: Any) -> None:
        pass

    def write(self, line: str) -> None:
        pass

    def close(self) -> None:
        pass


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
