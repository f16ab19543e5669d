"""Backfill inputs: manifests (text, CSV, Parquet) and folders, streamed path by path.

Nothing here holds the whole input in memory: a manifest of millions of lines is read in
record batches and a folder tree is walked lazily, so the ledger (on disk) is the only place
the full list ever lives.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterable, Iterator
from engine.errors import FormatError

from engine.inputs import VIDEO_EXTENSIONS, walk_videos  # noqa: F401  (one extension list: engine.inputs)
#: Column names accepted as the path column of a CSV or Parquet manifest (first match wins).
PATH_COLUMNS = ("path", "video", "file", "filename", "uri")
_PARQUET = (".parquet", ".pq")


class InputListError(FormatError):
    """An input list that cannot be read; str() is one line `<path>: <reason>`."""


#: The earlier name (the input list was called a manifest; the index's manifest is another file).
ManifestError = InputListError


def _resolve(entry: str, base: Path) -> str:
    """Absolute path of a manifest entry; relative entries are relative to the manifest's folder."""
    p = Path(os.path.expanduser(entry.strip()))
    return os.path.abspath(p if p.is_absolute() else base / p)


def _path_column(names: Iterable[str], manifest: Path) -> str:
    by_lower = {n.strip().lower(): n for n in names}
    for want in PATH_COLUMNS:
        if want in by_lower:
            return by_lower[want]
    raise ManifestError(manifest, f"no path column (expected one of {', '.join(PATH_COLUMNS)}; "
                                  f"found {', '.join(sorted(by_lower)) or 'none'})")


def _text_entries(manifest: Path) -> Iterator[str]:
    with open(manifest, encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            line = line.rstrip("\r\n")
            if line.strip() and not line.lstrip().startswith("#"):
                yield line


def _csv_entries(manifest: Path) -> Iterator[str]:
    with open(manifest, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            return
        col = header.index(_path_column(header, manifest))
        for row in reader:
            if len(row) > col and row[col].strip():
                yield row[col]


def _parquet_entries(manifest: Path, batch: int = 65536) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(manifest)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError with long texts
        raise ManifestError(manifest, f"not a Parquet file ({str(e).splitlines()[0]})") from None
    col = _path_column(pf.schema_arrow.names, manifest)
    for rb in pf.iter_batches(batch_size=batch, columns=[col]):
        for v in rb.column(0).to_pylist():
            if v is not None and str(v).strip():
                yield str(v)


def read_input_list(manifest: str | os.PathLike[str]) -> Iterator[str]:
    """Absolute video paths listed by an input list (`vmatch backfill --list`), in file order.

    `.csv` and `.parquet`/`.pq` manifests need a `path` column (or video/file/filename/uri);
    anything else is a text file with one path per line (blank lines and `#` comments skipped).
    Relative entries are taken relative to the manifest's own folder.
    """
    m = Path(manifest)
    if not m.exists():
        raise ManifestError(m, "no such file")
    if m.is_dir():
        raise ManifestError(m, "is a directory (pass folders as inputs, not as --manifest)")
    base = m.resolve().parent
    suffix = m.suffix.lower()
    entries = (_parquet_entries(m) if suffix in _PARQUET else _csv_entries(m) if suffix == ".csv"
               else _text_entries(m))
    try:
        for e in entries:
            if "\0" in e:
                raise ManifestError(m, "an entry contains a NUL byte (not a list of paths?)")
            yield _resolve(e, base)
    except UnicodeDecodeError as e:
        raise ManifestError(m, f"not a text manifest ({e.reason})") from None
    except OSError as e:
        raise ManifestError(m, e.strerror or str(e)) from None


read_manifest = read_input_list  # the earlier name


def iter_inputs(manifest: str | os.PathLike[str] | None = None,
                paths: Iterable[str | os.PathLike[str]] = ()) -> Iterator[str]:
    """Every input path: the manifest's entries, then each folder walked (files pass through)."""
    if manifest is not None:
        yield from read_input_list(manifest)
    for p in paths:
        if os.path.isdir(p):
            yield from walk_videos(p)
        else:
            yield os.path.abspath(p)
