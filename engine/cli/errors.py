"""The one place where failures become what a user sees: one line on stderr and an exit code.

Exit codes: 0 ok, 1 some inputs failed (or the machine refused: disk full, read-only),
2 usage or incompatible input, 130 interrupted. Every command runs under `run_command`, so no
traceback reaches a user for any input; an unexpected exception is reported in one line too
(VMATCH_DEBUG=1 shows its traceback).
"""
from __future__ import annotations

import enum
import logging
import os
import sys
from typing import Callable

from engine.errors import VmatchError, one_line, storage_error

__all__ = ["ExitCode", "CliError", "fail", "exit_code_of", "run_command"]

LOG = logging.getLogger("engine.cli")


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1       # some inputs failed, or the machine refused a write
    USAGE = 2        # usage error or incompatible input
    INTERRUPTED = 130


class CliError(VmatchError):
    """An expected failure: printed as `vmatch: <message>`, no traceback; ``code`` is the exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(None, message)
        self.code = self.exit_code = code

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.reason, self.code))

    @classmethod
    def of(cls, e: BaseException) -> "CliError":
        """The CLI error for a library error, keeping its exit code (2 for incompatible input)."""
        return cls(str(e), exit_code_of(e))


def fail(message: str, code: int = 1) -> int:
    print(f"vmatch: {message}", file=sys.stderr, flush=True)
    return code


def exit_code_of(e: BaseException) -> int:
    if isinstance(e, VmatchError):
        return int(getattr(e, "exit_code", ExitCode.FAILED))
    return int(ExitCode.FAILED)


def run_command(func: Callable[[], int | None], command: str | None = None) -> int:
    """Run one command; map every failure to one line and an exit code."""
    try:
        return int(func() or 0)
    except VmatchError as e:
        return fail(str(e), exit_code_of(e))
    except KeyboardInterrupt:
        return fail("interrupted", ExitCode.INTERRUPTED)
    except BrokenPipeError:
        return 0
    except ModuleNotFoundError as e:  # an optional package imported only when the command runs
        if not e.name or e.name.split(".")[0] in ("engine", "kernels"):
            return _unexpected(e)
        return fail(f"'{command}' needs the Python package '{e.name.split('.')[0]}', which is not "
                    "installed (pip install -e \".[cpu]\" or \".[gpu]\")", ExitCode.USAGE)
    except OSError as e:  # disk full, read-only mount, permission, missing file not caught below
        return fail(str(storage_error(e)), ExitCode.FAILED)
    except MemoryError:
        return fail("out of memory", ExitCode.FAILED)
    except Exception as e:  # noqa: BLE001 - a bug, but still one line for the user
        return _unexpected(e)


def _unexpected(e: BaseException) -> int:
    if os.environ.get("VMATCH_DEBUG"):
        raise e
    LOG.debug("unexpected error", exc_info=e)
    return fail(f"internal error: {type(e).__name__}: {one_line(e)} (VMATCH_DEBUG=1 shows the traceback)",
                ExitCode.FAILED)
