"""Configuration: typed sections with the defaults, one loader, validated once.

Precedence: these typed defaults < a YAML file (``configs/default.yaml`` by default; the same
file ships inside the package as ``engine/configs/default.yaml`` so an installed, non-editable
vmatch finds it too) < command-line flags.

Each section belongs to one subsystem, which builds its objects from it:
``tmk`` -> `TmkParams` (kernels), ``hash`` -> `VideoHasher.from_config` (engine.hasher),
``score`` -> `Scorer.from_config` (engine.scoring), ``index`` -> the index commands and
`VideoIndex` (engine.index), ``ray`` -> engine.ray (`ray_config`), ``eval`` -> engine.eval.
The loader refuses unknown sections and keys, and values of the wrong type, naming the key;
`ConfigError` (exit 2 in the CLI). tests/engine/test_config.py checks that default.yaml holds
exactly these defaults.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from engine.errors import ConfigError, os_reason
from kernels.params import DEFAULT_PARAMS, TmkParams

#: The packaged copy (always present, also in a wheel).
PACKAGE_CONFIG_DIR = Path(__file__).resolve().parent / "configs"
#: The documented location in a checkout (configs/ next to engine/); equal to the packaged copy.
SOURCE_CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
#: Where the default configuration files are found: the checkout's configs/ when present, else the package's.
CONFIG_DIR = SOURCE_CONFIG_DIR if (SOURCE_CONFIG_DIR / "default.yaml").exists() else PACKAGE_CONFIG_DIR

__all__ = ["Config", "HashConfig", "ScoreConfig", "IndexConfig", "RayConfig", "EvalConfig", "ConfigError",
           "load_config", "CONFIG_DIR", "SECTIONS"]


@dataclass
class HashConfig:
    """``hash:`` (engine.hasher): decoding and hashing of videos."""

    mode: str = "auto"                # exact | fast | auto (exact on CPU, fast on CUDA)
    device: str = "auto"              # auto | cpu | cuda
    backend: str = "auto"             # auto (per input, docs/compatibility.md) | decord | pyav | ffmpeg
    chunk_frames: int = 256           # frames decoded and hashed per batch (bounds memory)
    timeout_s: float | None = 600.0   # per-video decode limit (None: no limit)
    fast_exact_below: float = 32.0    # fast mode: frames with a PDQF norm below this are computed exactly
    torch_threads: int | None = 1     # CPU intra-op threads for the kernels; None: torch's default


@dataclass
class ScoreConfig:
    """``score:`` (engine.scoring): `vmatch score` and `vmatch eval` scoring."""

    c1: float = -1.0
    c2: float = 0.0
    batch_size: int = 0               # 0: 512 on CPU, 32768 on CUDA
    grid: int = 256
    device: str = "auto"


@dataclass
class IndexConfig:
    """``index:`` (engine.index): index creation, queries and clusters."""

    shards: int = 4
    coarse: str = "flat"
    store: str = "fp32"
    ivf_nlist: int = 0
    ivf_nprobe: int = 16
    c1: float = 0.7
    c2: float = 0.7
    batch_rows: int = 0               # 0: 512 on CPU, 4096 on CUDA
    add_workers: int = 8
    cluster_batch: int = 128
    device: str = "auto"
    verify_reads: bool = True


@dataclass
class RayConfig:
    """``ray:`` (engine.ray): `vmatch backfill` and `vmatch query --ray`."""

    address: str | None = None        # None: start a local Ray; "auto" or "host:port": join that cluster
    num_cpus: float | None = None     # local start: CPUs Ray may use (None: all of this machine's)
    num_gpus: float | None = None     # local start: GPUs Ray may use (None: all visible)
    namespace: str = "vmatch"
    decode_actors: int | None = None  # hash/decode actors (None: one per CPU in the cluster)
    cpus_per_actor: float = 1.0       # CPUs reserved by each decode actor
    gpus_per_worker: float = 0.25     # GPU share of each GPU feature actor (0: features in the decode actors)
    feature_actors: int | None = None  # GPU feature actors (None: total GPUs / gpus_per_worker)
    torch_threads: int = 1            # intra-op threads per actor
    timeout_s: float | None = None    # per-video limit (None: hash.timeout_s); a worker past it is killed
    kill_grace_s: float = 30.0        # extra time before the driver kills a worker stuck past timeout_s
    max_attempts: int = 3             # a video whose worker dies this many times is recorded as failed
    index_batch: int = 256            # videos per index commit
    ledger_commit_s: float = 1.0      # at most this long between ledger commits of finished videos
    query_gpus_per_shard: float = 1.0  # sharded query: GPU per shard actor where GPUs exist
    query_batch: int = 256            # sharded query: needles sent to the shard actors per batch


#: The eval grid default (engine.eval.metrics.DEFAULT_GRID is the same list; a test checks it).
_EVAL_GRID = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99)


@dataclass
class EvalConfig:
    """``eval:`` (engine.eval): the operating point and report of `vmatch eval` (flags override it)."""

    c1: float = 0.7
    c2: float = 0.7
    target_fpr: float = 1e-3
    grid: list[float] = field(default_factory=lambda: list(_EVAL_GRID))
    plots: bool = True
    listed: int = 10
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not 0 < self.target_fpr < 1:
            raise ConfigError(None, f"target_fpr must be between 0 and 1 (got {self.target_fpr})")

    @classmethod
    def from_section(cls, values: dict[str, Any], where: str = "eval") -> "EvalConfig":
        """The section over the defaults, validated (kept for callers of the earlier API)."""
        return _section(cls, values, where)


#: Section name -> its type. ``tmk`` is special: it builds kernels' frozen TmkParams.
SECTIONS: dict[str, type] = {"hash": HashConfig, "score": ScoreConfig, "index": IndexConfig,
                             "ray": RayConfig, "eval": EvalConfig}
_TMK_KEYS = ("periods", "fps", "frame_size")


@dataclass
class Config:
    tmk: TmkParams = DEFAULT_PARAMS
    hash: HashConfig = field(default_factory=HashConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    #: The file this was loaded from (None: the typed defaults only).
    source: str | None = None

    def section(self, name: str) -> dict[str, Any]:
        """A section as a plain mapping (every key, defaults filled in)."""
        if name not in SECTIONS:
            raise ConfigError(self.source or "config", f"no section {name!r} (sections: {', '.join(SECTIONS)})")
        return dataclasses.asdict(getattr(self, name))

    @property
    def extra(self) -> dict[str, dict[str, Any]]:  # the earlier untyped sections, for old callers
        return {name: self.section(name) for name in ("index", "ray", "eval")}


# --------------------------------------------------------------------------- validation
def _coerce(value: Any, hint: Any, key: str, where: str) -> Any:
    """`value` checked against the type hint `hint` (ints accepted for floats; None for optionals)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, where)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(where, f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item, key, where) for v in value]
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ConfigError(where, f"{key}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _section(cls: type, values: Any, where: str) -> Any:
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(where, f"expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(where, f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(str, unknown))} "
                                 f"(known: {', '.join(sorted(names))})")
    typed = {k: _coerce(v, hints[k], k, where) for k, v in values.items()}
    try:
        return cls(**typed)
    except ConfigError as e:  # a section's own check (__post_init__): name the file and section
        raise ConfigError(where, e.reason) from None


def _tmk(values: Any, where: str) -> TmkParams:
    if not values:
        return DEFAULT_PARAMS
    if not isinstance(values, dict):
        raise ConfigError(where, f"expected a mapping, got {values!r}")
    unknown = sorted(set(values) - set(_TMK_KEYS))
    if unknown:
        raise ConfigError(where, f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                                 f"(known: {', '.join(_TMK_KEYS)})")
    periods = values.get("periods", list(DEFAULT_PARAMS.periods))
    if not isinstance(periods, list) or not periods or not all(isinstance(p, int) and p > 0 for p in periods):
        raise ConfigError(where, f"periods: expected a list of positive integers, got {periods!r}")
    fps = _coerce(values.get("fps", DEFAULT_PARAMS.fps), int, "fps", where)
    size = _coerce(values.get("frame_size", DEFAULT_PARAMS.frame_size), int, "frame_size", where)
    return TmkParams(periods=tuple(periods), fps=fps, frame_size=size)


def parse_config(data: Any, where: str = "config") -> Config:
    """A Config from a parsed YAML mapping; ConfigError names the file, section and key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(where, "top level must be a mapping")
    unknown = sorted(set(data) - set(SECTIONS) - {"tmk"})
    if unknown:
        raise ConfigError(where, f"unknown section{'s' if len(unknown) > 1 else ''} {', '.join(map(str, unknown))} "
                                 f"(sections: tmk, {', '.join(SECTIONS)})")
    kw: dict[str, Any] = {"tmk": _tmk(data.get("tmk"), f"{where}: tmk")}
    for name, cls in SECTIONS.items():
        kw[name] = _section(cls, data.get(name), f"{where}: {name}")
    return Config(**kw)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load `path` over the typed defaults; without a path, the default file (CONFIG_DIR/default.yaml).

    An explicit path that does not exist or does not parse is a ConfigError.
    """
    import yaml

    explicit = path is not None
    p = Path(path) if explicit else CONFIG_DIR / "default.yaml"
    if not explicit and not p.exists():
        return Config()
    try:
        text = p.read_text()
    except (FileNotFoundError, IsADirectoryError) as e:
        raise ConfigError(p, os_reason(e)) from None
    except OSError as e:
        raise ConfigError(p, f"cannot read config ({os_reason(e)})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(p, f"not valid YAML ({str(e).splitlines()[0]})") from None
    cfg = parse_config(data, str(p))
    cfg.source = str(p)
    return cfg
