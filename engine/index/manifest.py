"""The index manifest: the single file whose atomic replacement commits every change.

Everything else in an index directory is written once under a fresh name and never
modified, so a reader that has read one manifest sees one consistent snapshot, and a writer
killed before it replaces the manifest leaves only unreferenced files behind.
"""
from __future__ import annotations

import json
import os
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import VmatchError
from engine.tmkfile import atomic_write_bytes
from kernels.params import TmkParams

MANIFEST_NAME = "MANIFEST.json"
FORMAT_NAME = "vmatch-index"
FORMAT_VERSION = 1
COARSE_KINDS = ("flat", "ivf")
STORE_KINDS = ("fp32", "fp16", "int8")


class VideoIndexError(VmatchError):
    """Base of index failures; str() is one line `<path>: <reason>` (the CLI prints it as is)."""


class IndexCorruptError(VideoIndexError):
    """A manifest or data file whose size or checksum is not what the manifest recorded."""


class IndexFormatError(VideoIndexError):
    """Not an index, an index of a newer format, or a request the index cannot serve."""


class IndexLockedError(IndexFormatError):
    """Another writer changed or holds the index; retry the operation."""


#: Short names of the engine.errors family (the classes above keep their names).
IndexCorrupt = IndexCorruptError
IndexLocked = IndexLockedError


@dataclass
class FileRef:
    """One immutable data file: name relative to the index root, byte size, CRC-32 (or None)."""

    name: str
    size: int
    crc32: int | None = None


@dataclass
class Segment:
    """Rows added to one shard by one `add` call; ``deleted`` holds tombstoned row numbers."""

    name: str
    count: int
    l1: FileRef
    store: FileRef
    ids: FileRef
    ivf: FileRef | None = None
    deleted: list[int] = field(default_factory=list)

    @property
    def live(self) -> int:
        return self.count - len(self.deleted)


@dataclass
class Manifest:
    """The whole committed state of an index."""

    params: TmkParams
    shards: int
    coarse: str = "flat"
    store: str = "fp32"
    ivf_nlist: int = 0
    ivf_nprobe: int = 16
    ivf_trained: FileRef | None = None
    generation: int = 0
    segments: list[list[Segment]] = field(default_factory=list)
    format_version: int = FORMAT_VERSION
    #: Files of segments replaced by `compact`, with the time they were retired: readers of an
    #: older manifest may still open them, so they are deleted only after a grace period.
    retired: list[tuple[float, list[FileRef]]] = field(default_factory=list)
    #: Border-cropped signatures (engine/index/borders.py): segments under ``borders/`` whose rows
    #: are keyed by item id; absent from the JSON when empty, so indexes without any stay as before.
    borders: list[Segment] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.segments:
            self.segments = [[] for _ in range(self.shards)]

    @property
    def count(self) -> int:
        return sum(s.live for shard in self.segments for s in shard)

    def all_files(self) -> list[FileRef]:
        refs = [self.ivf_trained] if self.ivf_trained else []
        for shard in self.segments:
            for s in shard:
                refs += [r for r in (s.l1, s.store, s.ids, s.ivf) if r is not None]
        for s in self.borders:
            refs += [s.l1, s.store, s.ids]
        return refs

    def to_json(self) -> dict[str, Any]:
        p = self.params
        body = {
            "format": FORMAT_NAME, "format_version": self.format_version, "generation": self.generation,
            "params": {"periods": list(p.periods), "coeffs_hex": [float(c).hex() for c in p.coeffs],
                       "fps": p.fps, "dim": p.dim, "frame_size": p.frame_size,
                       "algorithm": p.algorithm.decode("ascii")},
            "shards": self.shards, "coarse": self.coarse, "store": self.store,
            "ivf": {"nlist": self.ivf_nlist, "nprobe": self.ivf_nprobe,
                    "trained": asdict(self.ivf_trained) if self.ivf_trained else None},
            "count": self.count,
            "segments": [[asdict(s) for s in shard] for shard in self.segments],
            "retired": [{"time": t, "files": [asdict(f) for f in files]} for t, files in self.retired],
        }
        if self.borders:
            body["borders"] = [asdict(s) for s in self.borders]
        return body


def _ref(d: dict[str, Any] | None) -> FileRef | None:
    return FileRef(**d) if d else None


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def write_manifest(root: Path, m: Manifest) -> None:
    """Atomically replace the manifest (temp file, fsync, rename, fsync of the folder)."""
    body = m.to_json()
    body["checksum"] = zlib.crc32(_canonical(body))
    atomic_write_bytes(root / MANIFEST_NAME, json.dumps(body, indent=1).encode() + b"\n")
    fsync_dir(root)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(root: Path) -> Manifest:
    """Read and validate the manifest; every failure names the file and the cause."""
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise IndexFormatError(root, "no such index (not a directory)")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise IndexFormatError(root, f"not an index ({MANIFEST_NAME} missing)") from None
    try:
        body = json.loads(raw)
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise IndexCorruptError(path, f"corrupt manifest (unreadable JSON: {e})") from None
    if body.get("format") != FORMAT_NAME:
        raise IndexFormatError(path, f"not a vmatch index manifest (format {body.get('format')!r})")
    version = body.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise IndexFormatError(path, f"index format version {version} is newer than this vmatch supports "
                                     f"({FORMAT_VERSION}); upgrade vmatch to read it")
    want = body.pop("checksum", None)
    if want != zlib.crc32(_canonical(body)):
        raise IndexCorruptError(path, "corrupt manifest (checksum mismatch)")
    try:
        p = body["params"]
        params = TmkParams(periods=tuple(p["periods"]), coeffs=tuple(float.fromhex(c) for c in p["coeffs_hex"]),
                           fps=p["fps"], dim=p["dim"], frame_size=p["frame_size"],
                           algorithm=p["algorithm"].encode("ascii"))
        def seg(s: dict[str, Any]) -> Segment:
            return Segment(name=s["name"], count=s["count"], l1=FileRef(**s["l1"]), store=FileRef(**s["store"]),
                           ids=FileRef(**s["ids"]), ivf=_ref(s.get("ivf")), deleted=list(s["deleted"]))

        segs = [[seg(s) for s in shard] for shard in body["segments"]]
        ivf = body["ivf"]
        return Manifest(params=params, shards=body["shards"], coarse=body["coarse"], store=body["store"],
                        ivf_nlist=ivf["nlist"], ivf_nprobe=ivf["nprobe"], ivf_trained=_ref(ivf["trained"]),
                        generation=body["generation"], segments=segs, format_version=version,
                        retired=[(r["time"], [FileRef(**f) for f in r["files"]]) for r in body.get("retired", [])],
                        borders=[seg(s) for s in body.get("borders", [])])
    except (KeyError, TypeError, ValueError) as e:
        raise IndexCorruptError(path, f"corrupt manifest (bad field: {e})") from None


def describe(root: Path, m: Manifest) -> dict[str, object]:
    """The summary `vmatch index info` prints (needs only the manifest: no torch, no faiss)."""
    size = sum(f.size for f in m.all_files()) + (root / MANIFEST_NAME).stat().st_size
    params = m.params
    return {"path": str(root), "format_version": m.format_version, "count": m.count,
            "shards": m.shards, "coarse": m.coarse, "store": m.store, "generation": m.generation,
            "segments": sum(len(s) for s in m.segments),
            "shard_counts": [sum(s.live for s in sh) for sh in m.segments],
            "deleted": sum(len(s.deleted) for sh in m.segments for s in sh),
            "retired_files": sum(len(files) for _, files in m.retired),
            "ivf": {"nlist": m.ivf_nlist, "nprobe": m.ivf_nprobe, "trained": m.ivf_trained is not None},
            "bytes": size, "bytes_per_item": round(size / m.count) if m.count else None,
            "params": {"periods": list(params.periods), "fps": params.fps, "dim": params.dim}}
