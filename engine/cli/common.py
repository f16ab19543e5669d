"""Shared CLI plumbing: config loading; the error mapping (engine/cli/errors.py) and the
progress display (engine/progress.py) are importable from here as before."""
from __future__ import annotations

import argparse
import gc
import importlib
import sys
import threading
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Iterator

from engine.cli.errors import CliError, fail  # noqa: F401
from engine.progress import Progress  # noqa: F401

if TYPE_CHECKING:   # engine.config imports numpy (via kernels.params): only when a command runs
    from engine.config import Config


def config_from(args: argparse.Namespace) -> "Config":
    """The configuration of this run (--config, else the default file); ConfigError exits 2."""
    from engine.config import load_config

    return load_config(getattr(args, "config", None))


def import_heavy(module: str) -> ModuleType:
    """Import `module` (one that pulls in torch) with the cyclic garbage collector paused, then
    freeze what the import created.  The import builds about a million objects and no cyclic
    garbage, so collections during it are wasted (about 10% of importing torch: 1.47 s of CPU
    instead of 1.63 s, docs/benchmarks.md), and frozen they are not scanned by later ones."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return importlib.import_module(module)
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _import_quietly(*modules: str) -> None:
    for module in modules:
        try:
            import_heavy(module)
        except BaseException:   # the caller imports it again and reports the failure itself
            pass


@contextmanager
def importing(*modules: str) -> Iterator[None]:
    """Import `modules` (as `import_heavy`, in order) in a thread while the block runs, joined when it ends:
    importing torch holds the GIL for most of its ~1.5 s of one core, while reading files,
    checksums and stat calls mostly do not, so the block's work runs on the other core.  The
    caller then imports the module itself (at once, or meeting the import's error itself).

    Meanwhile the GIL switch interval is 0.5 ms instead of 5: each time the block's thread comes
    back from a system call it waits up to one interval for the importing thread to yield, so
    20,000 `stat` calls took 1.9 s instead of 0.2 s at 5 ms, 0.6 s at 0.5 ms (loaded 2-core box)."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(min(interval, 0.0005))
    loader = threading.Thread(target=_import_quietly, args=modules, name="vmatch-import", daemon=True)
    loader.start()
    try:
        yield
    finally:
        loader.join()
        sys.setswitchinterval(interval)
