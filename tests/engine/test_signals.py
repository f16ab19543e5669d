"""engine.signals: both string forms round-trip to the exact bytes; each invalid input says why."""
from __future__ import annotations

import base64
import struct

import numpy as np
import pytest

from engine import signals
from engine.features import TmkFeatures
from engine.signals import SignalError
from engine.tmkfile import HEADER, to_bytes
from kernels.params import DEFAULT_PARAMS


def _sig(seed: int) -> bytes:
    p = DEFAULT_PARAMS
    rng = np.random.default_rng(seed)
    shape = (p.num_periods, p.num_coeffs, p.dim)
    return to_bytes(TmkFeatures(rng.standard_normal(p.dim), rng.standard_normal(shape),
                                rng.standard_normal(shape), 123 + seed, p))


@pytest.fixture(scope="module")
def data() -> bytes:
    return _sig(0)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_canonical_form_is_threatexchange_hash_tmk(data):
    s = signals.encode(data)
    assert s.startswith("TMK1FVECPDQF|") and "\n" not in s and " " not in s
    assert len(s) == 351_125                      # ThreatExchange's length for a default file
    assert base64.b64decode(s[13:]) == data[12:]
    assert signals.decode_bytes(s) == data
    assert signals.encode(signals.decode(s)) == s


def test_plain_base64_form_decodes_to_the_same_bytes(data):
    b = _b64(data)
    assert len(b) == 351_128                      # Tech Against Terrorism's form
    assert signals.decode_bytes(b) == data
    assert signals.normalize(b) == signals.encode(data)
    assert signals.normalize("  " + signals.encode(data) + "\r\n") == signals.encode(data)


def test_reference_hash_round_trips(ref_tmks):
    raw = ref_tmks["doorknob-hd-no-bar"].read_bytes()
    for s in (signals.encode(raw), _b64(raw)):
        assert signals.decode_bytes(s) == raw
    f = signals.decode(signals.encode(raw))
    assert f.frame_count == 62 and to_bytes(f) == raw


def _patch(data: bytes, offset: int, fmt: str, *values) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, *values)
    return bytes(b)


def _bad_cases(data: bytes) -> dict[str, tuple[str, str]]:
    """name -> (string, expected reason fragment)."""
    periods_at = HEADER.size
    avg_at = HEADER.size + 4 * (DEFAULT_PARAMS.num_periods + DEFAULT_PARAMS.num_coeffs)
    cos_at = avg_at + 4 * DEFAULT_PARAMS.dim
    return {
        "empty": ("   ", "empty signal"),
        "short": (_b64(data[:20]), "too short: 20 bytes decoded"),
        "truncated": (signals.encode(data[:-4]), "truncated body"),
        "trailing": (signals.encode(data + b"\0\0\0\0"), "trailing bytes"),
        "magic": (signals.encode(b"TMK2" + data[4:]), "not a TMK file"),
        "file type": (signals.encode(data[:4] + b"FVEX" + data[8:]), "not a feature-vector file"),
        "algorithm": (signals.encode(data[:8] + b"PDQX" + data[12:]), "unknown frame-feature algorithm"),
        "header": (signals.encode(_patch(data, 12, "<i", 0)), "implausible header"),
        "prefix": ("TMK1FVECPDQ|" + _b64(data[12:]), "prefix before '|' is 11 characters"),
        "base64": (signals.encode(data)[:-3] + "*==", "invalid base64"),
        "parameters": (signals.encode(_patch(data, periods_at, "<i", 2732)), "TMK parameters differ"),
        "period": (signals.encode(_patch(data, periods_at, "<i", -1)), "invalid periods"),
        "nan": (signals.encode(_patch(data, cos_at + 40, "<f", float("nan"))), "non-finite values in the cos"),
        "inf": (_b64(_patch(data, avg_at, "<f", float("inf"))), "non-finite values in the avg"),
    }


@pytest.mark.parametrize("case", ["empty", "short", "truncated", "trailing", "magic", "file type", "algorithm",
                                  "header", "prefix", "base64", "parameters", "period", "nan", "inf"])
def test_each_validation_failure_names_its_cause(data, case):
    s, why = _bad_cases(data)[case]
    with pytest.raises(SignalError) as e:
        signals.decode_bytes(s, "bank.txt:7")
    assert str(e.value).startswith("bank.txt:7: ") and why in str(e.value), str(e.value)
    assert isinstance(e.value, ValueError)        # what pytx catches for invalid fingerprints
    with pytest.raises(SignalError):
        signals.normalize(s)


def test_parameters_are_checked_only_when_asked(data):
    other = _patch(data, HEADER.size, "<i", 2732)
    with pytest.raises(SignalError, match="parameters differ"):
        signals.decode_bytes(signals.encode(other))
    assert signals.decode_bytes(signals.encode(other), params=None) == other


def test_validate_bytes_and_content_id(data):
    assert signals.validate_bytes(data).frame_count == 123
    with pytest.raises(SignalError, match="x.tmk: truncated body"):
        signals.validate_bytes(data[:-1], "x.tmk")
    assert signals.content_id(data) == signals.content_id(bytes(data)) != signals.content_id(_sig(1))
    assert len(signals.content_id(data)) == 16


def test_parse_line_forms():
    assert signals.parse_line("tmk_pdqf ABC\tid-1\n", 3) == signals.SignalLine(3, "ABC", "id-1")
    assert signals.parse_line("ABC\r\n", 4) == signals.SignalLine(4, "ABC", None)
    assert signals.parse_line("ABC\t \n", 5) == signals.SignalLine(5, "ABC", None)
    assert signals.parse_line("   \n") is None and signals.parse_line("# comment\n") is None
    with pytest.raises(SignalError, match="signal type 'pdq' is not 'tmk_pdqf'"):
        signals.parse_line("pdq 0123abcd\n", 2)


def test_iter_signal_list_reports_bad_lines_and_goes_on(tmp_path, data):
    good = signals.encode(data)
    lst = tmp_path / "list.txt"
    lst.write_bytes(b"".join([f"tmk_pdqf {good}\tone\n".encode(), b"pdq abc\n", b"\n", "caf\u00e9\n".encode(),
                              _b64(data).encode() + b"\n"]))
    got = list(signals.iter_signal_list(lst))
    assert [type(g).__name__ for g in got] == ["SignalLine", "SignalError", "SignalError", "SignalLine"]
    assert got[0].id == "one" and got[0].signal == good and got[3].lineno == 5
    assert str(got[1]).startswith(f"{lst}:2: ") and str(got[2]) == f"{lst}:4: not ASCII text"
    with pytest.raises(SignalError, match="no such file"):
        list(signals.iter_signal_list(tmp_path / "missing.txt"))
    with pytest.raises(SignalError, match=":2: signal type"):
        list(signals.read_signal_list(lst))
