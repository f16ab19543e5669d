"""The index's side table of border-cropped signatures (see engine/borders.py and docs/index.md).

A video added with borders detected gets, besides its ordinary row in its shard, one row in the
side table: segments under ``borders/`` with the same three files as a shard segment (``.l1``,
``.store`` always float32, ``.ids.json``), listed in the manifest's optional ``borders`` key and
committed by the same manifest write as the item.  Rows are keyed by item id; removing an item
tombstones its border row too.  Only ``--robust`` matching reads the table, so plain answers are
unchanged, and an index without border signatures has no ``borders`` key at all (older vmatch
versions open either kind; they ignore the table).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from engine.features import TmkFeatures
from engine.index.manifest import FileRef, Manifest
from engine.index.segment import Prepared, SegmentReader, SegmentWriter, read_checked
from kernels.params import TmkParams

BORDERS_DIR = "borders"
#: Border rows are few (only videos with borders) and always kept in float32.
BORDER_STORE = "fp32"


#: ``vmatch hash --borders`` writes a video's border-cropped signature as STEM.borders.tmk.
SIDECAR_SUFFIX = ".borders.tmk"


def sidecar_path(main: Path) -> Path:
    """STEM.borders.tmk beside STEM.tmk."""
    return main.with_name(main.name[: -len(".tmk")] + SIDECAR_SUFFIX) if main.name.lower().endswith(".tmk") \
        else main.with_name(main.name + SIDECAR_SUFFIX)


def is_sidecar(p: Path) -> bool:
    return p.name.lower().endswith(SIDECAR_SUFFIX)


def split_sidecars(paths: Sequence[Path]) -> tuple[list[Path], dict[Path, Path]]:
    """(paths without the sidecars of listed mains, {main .tmk: its sidecar} for sidecars on disk).

    A ``X.borders.tmk`` listed without ``X.tmk`` stays an ordinary item."""
    mains = {p for p in paths if p.suffix.lower() == ".tmk" and not is_sidecar(p)}
    kept = [p for p in paths if not (is_sidecar(p) and p.with_name(p.name[: -len(SIDECAR_SUFFIX)] + ".tmk") in mains)]
    side = {p: sidecar_path(p) for p in mains if sidecar_path(p).is_file()}
    return kept, side


def border_writer(root: Path, name: str) -> SegmentWriter:
    return SegmentWriter(root, 0, name, rel=f"{BORDERS_DIR}/{name}")


def tombstone(root: Path, m: Manifest, ids: Sequence[str]) -> None:
    """Mark the border rows of ``ids`` deleted in ``m`` (the caller writes the manifest)."""
    gone = set(ids)
    for seg in m.borders:
        seg_ids = json.loads(read_checked(root, seg.ids))["id"]
        dead = set(seg.deleted)
        seg.deleted.extend(i for i, x in enumerate(seg_ids) if x in gone and i not in dead)


class BorderTable:
    """Read side: live border rows of one manifest (ids, unit averages, rows on demand)."""

    def __init__(self, root: Path, m: Manifest, params: TmkParams, verify_reads: bool = True) -> None:
        self.params = params
        self.readers = [SegmentReader(root, s, params, BORDER_STORE, verify_reads) for s in m.borders]
        first = np.concatenate([[0], np.cumsum([s.count for s in m.borders])]).astype(np.int64)
        self.first = first
        self.ids: list[str] = [i for r in self.readers for i in r.ids]
        live = np.ones(int(first[-1]), dtype=bool)
        for s, f in zip(m.borders, first):
            live[np.asarray(s.deleted, dtype=np.int64) + f] = False
        d = params.dim
        self.l1 = np.concatenate([r.load_l1() for r in self.readers]) if self.readers else np.zeros((0, d), np.float32)
        #: id -> table row of every live border signature (a later row wins: re-adds after removal)
        self.row_of: dict[str, int] = {self.ids[r]: int(r) for r in np.nonzero(live)[0]}

    def __len__(self) -> int:
        return len(self.row_of)

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """float32 store rows [n, 2, P, m, d] of sorted table rows."""
        seg = np.searchsorted(self.first, rows, side="right") - 1
        parts = [self.readers[s].rows(rows[seg == s] - self.first[s]) for s in np.unique(seg)]
        if not parts:
            p = self.params
            return np.zeros((0, 2, p.num_periods, p.num_coeffs, p.dim), np.float32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def features(self, item_id: str) -> TmkFeatures | None:
        """The border signature of an item (unit pure average), or None."""
        r = self.row_of.get(item_id)
        if r is None:
            return None
        row = np.asarray(self.rows(np.array([r], dtype=np.int64))[0], np.float32)
        return TmkFeatures(self.l1[r], row[0], row[1], 0, self.params, item_id)


def compact_table(root: Path, m: Manifest, name: str) -> list[FileRef] | None:
    """Rewrite the side table as one segment of its live rows (``m.borders`` replaced) when it has
    several segments or tombstones; returns the replaced files (to retire), or None if unchanged."""
    if len(m.borders) <= 1 and not any(s.deleted for s in m.borders):
        return None
    table = BorderTable(root, m, m.params)
    w = border_writer(root, name)
    try:
        cols_of = [json.loads(read_checked(root, s.ids)) for s in m.borders]
        for r in sorted(table.row_of.values()):
            seg = int(np.searchsorted(table.first, r, side="right") - 1)
            i, cols = r - int(table.first[seg]), cols_of[seg]
            row = table.rows(np.array([r], dtype=np.int64))[0]
            w.append([Prepared(cols["id"][i], cols["source"][i], cols["frame_count"][i], table.l1[r],
                               (np.ascontiguousarray(row),), cols["row_sum64"][i], cols["content_hash"][i],
                               cols["time_added"][i])])
        retired = [f for s in m.borders for f in (s.l1, s.store, s.ids)]
        m.borders = [w.finish()] if w.count else []
        return retired
    except BaseException:
        w.abort()
        raise
