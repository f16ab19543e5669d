"""Input resolution, in one place: what is a video, a `.tmk` file, a folder; how an id is derived.

An item's id is its file stem (``vmatch hash -d`` names files the same way). Ids are printed
in TSV and JSON outputs, so an id with a control character (TAB, newline, ...) could split a
line into forged fields or lines downstream: `check_id` refuses it with one clear error, and
every path that makes ids (index add, the API, query needles, backfill) goes through it.
"""
from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Iterable, Iterator

from engine.errors import InputError

__all__ = ["TMK_SUFFIX", "VIDEO_EXTENSIONS", "is_tmk", "is_video", "id_problem", "check_id", "item_id",
           "expand_tmk_paths", "walk_videos"]

TMK_SUFFIX = ".tmk"
#: File name endings taken as videos (walking folders, telling videos from other files).
VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".wmv", ".flv", ".mpg", ".mpeg", ".ts", ".mts",
    ".m2ts", ".3gp", ".3g2", ".ogv", ".vob", ".mxf", ".asf", ".f4v", ".y4m",
})


def is_tmk(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() == TMK_SUFFIX


def is_video(path: str | os.PathLike[str]) -> bool:
    """A file whose name says video (by extension); anything not `.tmk` is still hashed when given."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def id_problem(item_id: str) -> str | None:
    """Why `item_id` cannot be an id (None when it can): empty, or a control character in it."""
    if not item_id:
        return "empty item id"
    for ch in item_id:
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") and ch != "\u200d":
            return f"item id {item_id!r} contains a control character ({ascii(ch)[1:-1]}); rename the file"
    return None


def check_id(item_id: str, where: str | os.PathLike[str] | None = None) -> str:
    """`item_id` if it can be an id; else InputError naming `where` (default: the id itself)."""
    why = id_problem(item_id)
    if why:
        raise InputError(where if where is not None else None, why)
    return item_id


def item_id(path: str | os.PathLike[str]) -> str:
    """The id of a file: its stem, checked."""
    return check_id(Path(path).stem, path)


def expand_tmk_paths(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand folders to the `.tmk` files inside them (sorted, recursively); files pass through."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*" + TMK_SUFFIX) if q.is_file()))
        else:
            out.append(p)
    return out


def walk_videos(folder: str | os.PathLike[str]) -> Iterator[str]:
    """Video files under a folder (by extension), depth first in sorted order, lazily."""
    root = os.path.abspath(folder)
    for dirpath, dirnames, filenames in os.walk(root, onerror=None, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            if is_video(name) and not name.startswith("."):
                yield os.path.join(dirpath, name)
