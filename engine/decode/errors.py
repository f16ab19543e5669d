"""Decode errors: one line ``"<path>: <reason>"``, picklable (Ray workers hand them back)."""
from __future__ import annotations

import os
import re
from typing import Any

#: Longest reason text kept in a DecodeError (reasons are meant to be one short line).
_MAX_REASON = 200

__all__ = ["DecodeError", "DecodeTimeout"]


class DecodeError(Exception):
    """A video could not be decoded; ``str(e)`` is one line ``"<path>: <reason>"``."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = _one_line(reason)
        super().__init__(f"{self.path}: {self.reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the (path, reason) signature across pickling (e.g. Ray/multiprocessing).
        return (type(self), (self.path, self.reason))


class DecodeTimeout(DecodeError):
    """Decoding one video took longer than its ``timeout_s`` budget."""


def _one_line(text: object) -> str:
    """Squash a library message into one short line without log prefixes."""
    s = str(text).strip()
    # decord/dmlc messages look like "[07:37:15] /project/src/x.cc:154: Check failed: ...".
    s = re.sub(r"\[\d\d:\d\d:\d\d\]\s*\S+:\d+:\s*", "", s)
    lines = [ln.strip() for ln in s.splitlines() if ln.strip()]
    # Drop traceback-ish lines ("Stack trace:", "  [bt] (0) ...", "File ...").
    lines = [ln for ln in lines if not re.match(r"(Stack trace|\[bt\]|File \"|Traceback)", ln)]
    s = " ".join(lines[:1]) if lines else "unknown error"
    return s if len(s) <= _MAX_REASON else s[: _MAX_REASON - 3] + "..."
