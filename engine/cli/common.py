"""Shared CLI plumbing: config loading; the error mapping (engine/cli/errors.py) and the
progress display (engine/progress.py) are importable from here as before."""
from __future__ import annotations

import argparse
import gc
import importlib
from types import ModuleType
from typing import TYPE_CHECKING

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
