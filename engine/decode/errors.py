"""Decode errors: one line ``"<path>: <reason>"``, picklable (Ray workers hand them back).

One error model: the classes are engine.errors' (VmatchError subclasses, picklable with
(path, reason)); this module keeps the names where engine.decode's modules import them.
"""
from __future__ import annotations

from engine.errors import MAX_REASON as _MAX_REASON  # noqa: F401
from engine.errors import DecodeError, DecodeTimeout
from engine.errors import one_line as _one_line  # noqa: F401  (squash a library message into one line)

__all__ = ["DecodeError", "DecodeTimeout"]
