"""Labelled pairs for evaluation: a pairs CSV, or a folder of groups (same folder = same content).

Pairs CSV: a header row naming at least the columns ``a``, ``b`` and ``label`` (any order; an
optional ``transform`` column tags each pair, e.g. the edit that made ``b`` from ``a``). Paths are
``.tmk`` signatures or videos, absolute or relative to the CSV's folder. Labels: 1/0, true/false,
yes/no, match/nonmatch (also non-match, no-match). Blank lines and lines starting with ``#`` are skipped.

Groups folder: every sub-folder is one group; all ``.tmk`` and video files inside it (recursively)
show the same content. Every pair inside a group is a match and every pair across groups a
non-match. Files directly in the top folder (a pairs CSV, notes) and hidden files are ignored.
Pairs are tagged ``same-group`` / ``cross-group``; when files follow the naming of
scripts/make_transform_corpus.py (``<stem>__<edit>.<ext>``), they are tagged by edit instead: the
edit for an edited file against an unedited one or for two files with the same edit, ``original``
for two unedited files, ``mixed-edits`` otherwise (see ``edit_tag``).

Errors are LabelError, whose text is one line ``<file>[:<line>]: <reason>``.
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from engine.errors import FormatError
from engine.inputs import VIDEO_EXTENSIONS, is_tmk

#: Files treated as videos (hashed); ``.tmk`` files are read as signatures.
VIDEO_EXTS = VIDEO_EXTENSIONS  # one extension list (engine.inputs)
_TRUE = {"1", "true", "yes", "y", "match", "same", "positive"}
_FALSE = {"0", "false", "no", "n", "nonmatch", "non-match", "no-match", "different", "negative"}


class LabelError(FormatError):
    """Invalid labelled input; str() is ``<where>: <reason>``."""

    @property
    def where(self) -> str:
        return self.path


@dataclass(frozen=True)
class Pair:
    """Indices into LabelledSet.items, the label (True = same content) and an optional tag."""

    a: int
    b: int
    label: bool
    transform: str = ""


@dataclass
class LabelledSet:
    """Unique input files (resolved paths, first-seen order) and the labelled pairs over them."""

    source: Path
    kind: str  # "pairs" or "groups"
    items: list[Path] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)

    def display(self, i: int) -> str:
        """Item path relative to the source folder when inside it (for tables and CSVs)."""
        root = self.source if self.kind == "groups" else self.source.parent
        try:
            return self.items[i].relative_to(root).as_posix()
        except ValueError:
            return str(self.items[i])

    @property
    def n_matches(self) -> int:
        return sum(p.label for p in self.pairs)

    @property
    def n_nonmatches(self) -> int:
        return len(self.pairs) - self.n_matches

    def video_items(self) -> list[int]:
        return [i for i, p in enumerate(self.items) if not is_tmk(p)]


def is_media(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTS or is_tmk(path)


def parse_label(text: str) -> bool | None:
    t = text.strip().lower()
    return True if t in _TRUE else False if t in _FALSE else None


def _require_both(lset: LabelledSet) -> LabelledSet:
    if not lset.pairs:
        raise LabelError(lset.source, "no labelled pairs")
    if lset.n_matches == 0 or lset.n_nonmatches == 0:
        raise LabelError(lset.source, f"need both matching and non-matching pairs "
                                      f"(have {lset.n_matches} matches, {lset.n_nonmatches} non-matches)")
    return lset


def load_pairs_csv(path: str | os.PathLike[str]) -> LabelledSet:
    """Read and validate a pairs CSV (see the module docstring)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise LabelError(path, "no such file") from None
    except IsADirectoryError:
        raise LabelError(path, "is a directory (use --groups for a folder of groups)") from None
    except UnicodeDecodeError:
        raise LabelError(path, "not a UTF-8 text file") from None
    except OSError as e:
        raise LabelError(path, e.strerror or str(e)) from None
    rows = [(n, r) for n, r in enumerate(csv.reader(text.splitlines()), 1)
            if r and any(c.strip() for c in r) and not r[0].lstrip().startswith("#")]
    if not rows:
        raise LabelError(path, "empty file (expected a header a,b,label[,transform])")
    hline, header = rows[0]
    cols = [c.strip().lower() for c in header]
    missing = [c for c in ("a", "b", "label") if c not in cols]
    if missing:
        raise LabelError(f"{path}:{hline}", f"header must name columns a,b,label (missing {','.join(missing)}; "
                                            f"got {','.join(cols)})")
    ia, ib, il = cols.index("a"), cols.index("b"), cols.index("label")
    it = cols.index("transform") if "transform" in cols else None
    lset = LabelledSet(path, "pairs")
    index: dict[Path, int] = {}
    seen: dict[tuple[int, int], int] = {}
    base = path.parent
    for n, row in rows[1:]:
        where = f"{path}:{n}"
        if len(row) < len(cols):
            raise LabelError(where, f"expected {len(cols)} fields, got {len(row)}")
        label = parse_label(row[il])
        if label is None:
            raise LabelError(where, f"label {row[il].strip()!r} is not one of 1/0, true/false, yes/no, match/nonmatch")
        ids = []
        for col in (ia, ib):
            name = row[col].strip()
            if not name:
                raise LabelError(where, f"empty {'a' if col == ia else 'b'} path")
            p = Path(name).expanduser()
            p = (p if p.is_absolute() else base / p).resolve()
            if p not in index:
                if not p.is_file():
                    raise LabelError(where, f"{name}: {'is a directory' if p.is_dir() else 'no such file'}")
                if not is_media(p):
                    raise LabelError(where, f"{name}: not a .tmk or video file (extension {p.suffix or 'none'!r})")
                index[p] = len(lset.items)
                lset.items.append(p)
            ids.append(index[p])
        if ids[0] == ids[1]:
            raise LabelError(where, "a and b are the same file")
        key = (min(ids), max(ids))
        if key in seen:
            raise LabelError(where, f"duplicate pair (first on line {seen[key]})")
        seen[key] = n
        lset.pairs.append(Pair(ids[0], ids[1], label, row[it].strip() if it is not None else ""))
    return _require_both(lset)


def edit_of(path: Path) -> str | None:
    """The edit named in a ``<stem>__<edit>`` file name, else None."""
    m = re.search(r"__([^_][^/]*)$", path.stem)
    return m.group(1) if m else None


def edit_tag(a: str | None, b: str | None) -> str:
    """Tag of a pair by the edits of its two files (None = unedited)."""
    if a is None and b is None:
        return "original"
    if a is None or b is None or a == b:
        return a or b or ""
    return "mixed-edits"


def load_groups(path: str | os.PathLike[str]) -> LabelledSet:
    """Read a folder of groups: all within-group pairs match, all cross-group pairs do not."""
    path = Path(path)
    if not path.exists():
        raise LabelError(path, "no such folder")
    if not path.is_dir():
        raise LabelError(path, "not a folder (use --pairs for a CSV)")
    lset = LabelledSet(path.resolve(), "groups")
    groups: list[list[int]] = []
    for g in sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")):
        files = sorted(f for f in g.rglob("*") if f.is_file() and is_media(f)
                       and not any(part.startswith(".") for part in f.relative_to(g).parts))
        if files:
            groups.append(list(range(len(lset.items), len(lset.items) + len(files))))
            lset.items.extend(f.resolve() for f in files)
    if len(groups) < 2:
        raise LabelError(path, f"need at least two group sub-folders holding .tmk or video files "
                               f"(found {len(groups)})")
    owner = {i: gi for gi, members in enumerate(groups) for i in members}
    edits = [edit_of(p) for p in lset.items]
    by_edit = any(e is not None for e in edits)
    for i, j in combinations(range(len(lset.items)), 2):
        same = owner[i] == owner[j]
        tag = edit_tag(edits[i], edits[j]) if by_edit else "same-group" if same else "cross-group"
        lset.pairs.append(Pair(i, j, same, tag))
    return _require_both(lset)
