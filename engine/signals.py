"""TMK signatures as one-line strings: the forms hash exchanges carry.

Canonical form (ThreatExchange ``HASH_TMK``): the first 12 bytes of the `.tmk` file as
ASCII (``TMK1FVECPDQF``), ``|``, then standard base64 of the rest of the file.
Also accepted as input: plain base64 of the whole file (Tech Against Terrorism's form).
Either form decodes to exactly the original bytes.

Signal lists (``vmatch signal decode``, ``index add --signals``, pytx's ``local_file``)
hold one signal a line, optionally prefixed by the type (``tmk_pdqf <signal>``) and
optionally followed by a tab and an id.

Imports only numpy and the `.tmk` codec: cheap enough for a CLI that does not compute.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from engine.errors import os_reason
from engine.tmkfile import HEADER, TmkFormatError, from_bytes, to_bytes
from engine.features import TmkFeatures
from kernels.params import DEFAULT_PARAMS, TmkParams

__all__ = [
    "SIGNAL_TYPE", "SignalError", "SignalLine", "encode", "decode_bytes", "decode",
    "normalize", "parse_line", "read_signal_list", "iter_signal_list", "content_id", "validate_bytes",
]

#: pytx / HMA name of the signal type.
SIGNAL_TYPE = "tmk_pdqf"
_PREFIX_LEN = 12  # b"TMK1" b"FVEC" b"PDQF"
_SEP = "|"
#: Longest accepted string: a default file is 351,125 characters; allow other parameters too.
_MAX_CHARS = 64 << 20


class SignalError(TmkFormatError):
    """An invalid signal string; str() is ``<where>: <reason>``."""


def encode(tmk: bytes | TmkFeatures) -> str:
    """The canonical (ThreatExchange) string of a `.tmk` file image or signature."""
    data = to_bytes(tmk) if isinstance(tmk, TmkFeatures) else bytes(tmk)
    if len(data) < _PREFIX_LEN:
        raise SignalError("<bytes>", f"too short for a .tmk file ({len(data)} bytes)")
    head = data[:_PREFIX_LEN]
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise SignalError("<bytes>", f"header {head!r} is not ASCII") from None
    return text + _SEP + base64.b64encode(data[_PREFIX_LEN:]).decode("ascii")


def _b64(s: str, where: str) -> bytes:
    try:
        return binascii.a2b_base64(s, strict_mode=True)   # b64decode(validate=True) without a copy
    except (binascii.Error, ValueError, UnicodeEncodeError) as e:
        raise SignalError(where, f"invalid base64 ({e})") from None


def decode_bytes(s: str, where: str = "<signal>", params: TmkParams | None = DEFAULT_PARAMS) -> bytes:
    """The `.tmk` bytes of a string in either form, validated.

    Checks length, magic, header, parameters (against ``params``; None accepts any valid
    set) and that every value is finite.
    """
    data = _raw_bytes(s, where)
    _validate(data, where, params)
    return data


def _raw_bytes(s: str, where: str) -> bytes:
    """The bytes a string in either form carries, before any `.tmk` validation."""
    if not isinstance(s, str):
        raise SignalError(where, f"expected a string, got {type(s).__name__}")
    s = s.strip()
    if not s:
        raise SignalError(where, "empty signal")
    if len(s) > _MAX_CHARS:
        raise SignalError(where, f"too long ({len(s)} characters)")
    if _SEP in s:
        head, _, body = s.partition(_SEP)
        if len(head) != _PREFIX_LEN:
            raise SignalError(where, f"prefix before '|' is {len(head)} characters, expected {_PREFIX_LEN}")
        try:
            data = head.encode("ascii") + _b64(body, where)
        except UnicodeEncodeError:
            raise SignalError(where, "prefix before '|' is not ASCII") from None
    else:
        data = _b64(s, where)
    return data


def validate_bytes(data: bytes, where: str = "<bytes>", params: TmkParams | None = DEFAULT_PARAMS) -> TmkFeatures:
    """The signature a `.tmk` file image holds, validated as in `decode_bytes` (SignalError otherwise)."""
    return _validate(data, where, params)


def content_id(data: bytes) -> str:
    """An id derived from a signature's bytes (first 16 hex digits of their SHA-256), for
    signals that arrive without one: the same signature gets the same id everywhere."""
    return hashlib.sha256(data).hexdigest()[:16]


def _validate(data: bytes, where: str, params: TmkParams | None) -> TmkFeatures:
    if len(data) < HEADER.size:
        raise SignalError(where, f"too short: {len(data)} bytes decoded, a .tmk header alone is {HEADER.size}")
    try:
        feats = from_bytes(data, where)
    except SignalError:
        raise
    except TmkFormatError as e:
        raise SignalError(where, e.reason) from None
    if params is not None:
        why = params.incompatibility(feats.params)
        if why:
            raise SignalError(where, f"TMK parameters differ from the reference defaults: {why}")
    for name in ("avg", "cos", "sin"):
        if not np.all(np.isfinite(getattr(feats, name))):
            raise SignalError(where, f"non-finite values in the {name} features")
    return feats


def decode(s: str, where: str = "<signal>", params: TmkParams | None = DEFAULT_PARAMS) -> TmkFeatures:
    """The signature a string holds (either form), validated as in `decode_bytes`."""
    feats = _validate(_raw_bytes(s, where), where, params)  # parsed once: validation's parse is the result
    feats.name = ""
    return feats


def normalize(s: str, where: str = "<signal>") -> str:
    """The canonical string of a valid signal in either form."""
    return encode(decode_bytes(s, where))


@dataclass(frozen=True)
class SignalLine:
    """One entry of a signal list: the line number (1-based), the signal and its id (if any)."""

    lineno: int
    signal: str
    id: str | None


def parse_line(line: str, lineno: int = 0) -> SignalLine | None:
    """``[tmk_pdqf ]SIGNAL[<TAB>ID]``; None for blank lines and ``#`` comments."""
    text = line.rstrip("\r\n")
    if not text.strip() or text.lstrip().startswith("#"):
        return None
    sig, tab, ident = text.partition("\t")
    sig = sig.strip()
    if sig.startswith(SIGNAL_TYPE + " "):
        sig = sig[len(SIGNAL_TYPE) + 1:].strip()
    elif " " in sig:
        kind = sig.split(" ", 1)[0]
        raise SignalError(f"line {lineno}", f"signal type {kind!r} is not {SIGNAL_TYPE!r}")
    return SignalLine(lineno, sig, ident.strip() if tab and ident.strip() else None)


def _open_list(path: str | os.PathLike[str], mode: str, **kw: str):
    try:
        return open(path, mode, **kw)
    except OSError as e:
        raise SignalError(path, os_reason(e)) from None


def iter_signal_list(path: str | os.PathLike[str]) -> Iterator[SignalLine | SignalError]:
    """Every entry of a signal list, streamed, with a bad line yielded as its SignalError
    (``<file>:<line>: <reason>``) instead of ending the stream, so a batch can go on.

    ``-`` reads standard input.  The signals themselves are not decoded here.
    """
    where = "<stdin>" if str(path) == "-" else str(Path(path))
    fh = sys.stdin.buffer if str(path) == "-" else _open_list(path, "rb")
    try:
        for n, raw in enumerate(fh, 1):
            try:
                line = raw.decode("ascii")
            except UnicodeDecodeError:
                yield SignalError(f"{where}:{n}", "not ASCII text")
                continue
            try:
                entry = parse_line(line, n)
            except SignalError as e:
                yield SignalError(f"{where}:{n}", e.reason)
                continue
            if entry is not None:
                yield entry
    finally:
        if fh is not sys.stdin.buffer:
            fh.close()


def read_signal_list(path: str | os.PathLike[str]) -> Iterator[SignalLine]:
    """The entries of a signal list file, streamed; the first bad line raises (naming file and line)."""
    for entry in iter_signal_list(path):
        if isinstance(entry, SignalError):
            raise entry
        yield entry
