"""Shared CLI plumbing: one-line errors on stderr, config loading, progress display."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from engine.config import Config, load_config


# CliError and fail live in engine.cli.errors (the one error mapping); importable from here as before.
from engine.cli.errors import CliError, fail  # noqa: E402,F401


def config_from(args: argparse.Namespace) -> Config:
    try:
        return load_config(getattr(args, "config", None))
    except ValueError as e:
        raise CliError(str(e), 2) from None


# Progress lives in engine/progress.py (one progress type for every layer); importable from here as before.
from engine.progress import Progress  # noqa: E402,F401
