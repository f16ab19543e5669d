"""Shared CLI plumbing: config loading; the error mapping (engine/cli/errors.py) and the
progress display (engine/progress.py) are importable from here as before."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from engine.cli.errors import CliError, fail  # noqa: F401
from engine.progress import Progress  # noqa: F401

if TYPE_CHECKING:   # engine.config imports numpy (via kernels.params): only when a command runs
    from engine.config import Config


def config_from(args: argparse.Namespace) -> "Config":
    """The configuration of this run (--config, else the default file); ConfigError exits 2."""
    from engine.config import load_config

    return load_config(getattr(args, "config", None))
