"""vmatch's one error model: every expected failure is a `VmatchError` carrying ``(path, reason)``.

``str(e)`` is one line ``"<path>: <reason>"`` (or just the reason when there is no path), so
the CLI prints it as is. The subclasses are the distinctions callers act on:

- `InputError`     an input that cannot be used (missing file, bad id, bad list entry);
  `FormatError`    its subclass for a file whose bytes are not what its format says (`.tmk`,
  hash strings, label lists);
- `IncompatibleError`  two signatures (or a signature and an index) with different TMK
  parameters; raised only by `check_compatible`, the one compatibility check;
- `DecodeError` / `DecodeTimeout`  a video that could not be decoded (in time);
- `IndexError_` family in engine.index (`VideoIndexError`, `IndexCorrupt`, `IndexLocked`) and
  `StorageError` for the machine's refusals (disk full, read-only mount, permission);
- `ConfigError`   a configuration file or option that is missing or invalid.

The classes keep ``(path, reason)`` across pickling (Ray workers hand errors back), and the
older names (`TmkFormatError`, `VideoIndexError`, ...) remain importable where they were,
as subclasses or aliases of these. This module imports nothing from vmatch: every layer may
raise its errors.
"""
from __future__ import annotations

import errno
import os
import re
from typing import Any, Protocol

__all__ = [
    "VmatchError", "InputError", "FormatError", "IncompatibleError", "DecodeError", "DecodeTimeout",
    "StorageError", "ConfigError", "check_compatible", "one_line", "os_reason", "printable", "storage_error",
]

#: Longest reason text kept in an error (reasons are meant to be one short line).
MAX_REASON = 200


def one_line(text: object, limit: int = MAX_REASON) -> str:
    """Squash a library message into one short line without log prefixes or traceback lines."""
    s = str(text).strip()
    # decord/dmlc messages look like "[07:37:15] /project/src/x.cc:154: Check failed: ...".
    s = re.sub(r"\[\d\d:\d\d:\d\d\]\s*\S+:\d+:\s*", "", s)
    lines = [ln.strip() for ln in s.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not re.match(r"(Stack trace|\[bt\]|File \"|Traceback)", ln)]
    s = " ".join(lines[:1]) if lines else "unknown error"
    return s if len(s) <= limit else s[: limit - 3] + "..."


def printable(text: str) -> str:
    """`text` with control characters escaped (\\t, \\n, \\x1b ...), so a message stays one line."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


class VmatchError(Exception):
    """Base of vmatch's expected failures; ``str(e)`` is ``"<path>: <reason>"``, one line.

    ``VmatchError(path, reason)``; ``VmatchError(message)`` for a failure without a path.
    ``exit_code`` is what the CLI exits with (1: an input failed, 2: usage or incompatible input).
    """

    exit_code = 1

    def __init__(self, path: str | os.PathLike[str] | None, reason: str | None = None) -> None:
        if reason is None:  # one-argument form: a message that names its own subject
            path, reason = None, str(path)
        self.path = "" if path is None else str(path)
        self.reason = one_line(reason, 4 * MAX_REASON)
        # the path as given is kept in .path; the message escapes control characters in it
        super().__init__(f"{printable(self.path)}: {self.reason}" if self.path else self.reason)

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the (path, reason) signature across pickling (e.g. Ray/multiprocessing).
        return (type(self), (self.path or None, self.reason))


class InputError(VmatchError):
    """An input that cannot be used: missing, unreadable, a refused id, a bad list entry."""


class FormatError(InputError, ValueError):
    """A file or string whose content is not what its format says (a ValueError, as before)."""


class IncompatibleError(FormatError):
    """Two signatures (or a signature and an index) whose TMK parameters differ (spec 6.1).

    A FormatError too, so code that catches `.tmk` format errors keeps catching it; the CLI
    exits 2 for it (incompatible input), 1 for other bad inputs.
    """

    exit_code = 2


class ConfigError(VmatchError, ValueError):
    """A configuration file that is missing or invalid; the reason names the key."""

    exit_code = 2


class DecodeError(VmatchError):
    """A video could not be decoded; ``str(e)`` is one line ``"<path>: <reason>"``."""

    def __init__(self, path: str | os.PathLike[str] | None, reason: str | None = None) -> None:
        super().__init__(path, None if reason is None else one_line(reason))


class DecodeTimeout(DecodeError):
    """Decoding one video took longer than its ``timeout_s`` budget."""


class StorageError(VmatchError, OSError):
    """The machine refused a write: disk full, read-only mount, permission (``errno`` kept)."""

    def __init__(self, path: str | os.PathLike[str] | None, reason: str | None = None,
                 errno_: int | None = None) -> None:
        VmatchError.__init__(self, path, reason)
        self.errno = errno_

    def __str__(self) -> str:  # OSError's own __str__ would format (errno, strerror)
        return f"{printable(self.path)}: {self.reason}" if self.path else self.reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path or None, self.reason, self.errno))


#: errno values that are the machine's refusal rather than a bad input.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG}


def storage_error(e: OSError, path: str | os.PathLike[str] | None = None, note: str = "") -> VmatchError:
    """The one-line error for an OSError: StorageError for disk full / read-only / permission.

    ``path`` (default: the file the OSError names) is the error's path; ``note`` is appended
    to the reason (e.g. "nothing was changed").
    """
    where = path if path is not None else (e.filename if e.filename is not None else None)
    reason = (e.strerror or one_line(e)) + (f"; {note}" if note else "")
    if e.errno in _STORAGE_ERRNOS:
        return StorageError(where, reason, e.errno)
    return InputError(where, reason)


def os_reason(e: OSError) -> str:
    """The short reason for an OSError met while reading an input: what every reader says."""
    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, IsADirectoryError):
        return "is a directory"
    return e.strerror or str(e)


class _HasParams(Protocol):
    def incompatibility(self, other: Any) -> str | None: ...


def check_compatible(a: _HasParams, b: _HasParams, what: str = "", against: str = "") -> None:
    """The one compatibility check: IncompatibleError naming `what` (the path) when a and b differ.

    ``against`` names the other side in the message ("the index's", "the needle's").
    """
    why = a.incompatibility(b)
    if why:
        raise IncompatibleError(what or None, f"TMK parameters differ{' from ' + against if against else ''} ({why})")
