"""Configuration: typed sections with the defaults, one loader, validated once.

Precedence: these typed defaults < a YAML file (``configs/default.yaml`` by default; the same
file ships inside the package as ``engine/configs/default.yaml`` so an installed, non-editable
vmatch finds it too) < command-line flags.

Each section belongs to one subsystem, which builds its objects from it:
``tmk`` -> `TmkParams` (kernels), ``hash`` -> `VideoHasher.from_config` (engine.hasher),
``score`` -> `Scorer.from_config` (engine.scoring), ``index`` -> the index commands and
`VideoIndex` (engine.index), ``ray`` -> engine.ray (`ray_config`), ``eval`` -> engine.eval.
The server's settings are a file of their own, ``configs/serve.yaml`` (`load_serve_config` ->
`ServeConfig`, owned by engine.serve; its ``ray:`` block is `ServeRayConfig`), read by the same
validation.  The loader refuses unknown sections and keys, and values of the wrong type, naming the key;
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
           "ServeConfig", "ServeRayConfig", "load_config", "load_serve_config", "CONFIG_DIR", "SECTIONS"]


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


def _between(name: str, v: float, lo: float, hi: float) -> None:
    if not lo <= v <= hi:
        raise ConfigError(None, f"{name} must be between {lo:g} and {hi:g} (got {v!r})")


def _choice(name: str, v: object, choices: tuple[object, ...]) -> None:
    if v not in choices:
        raise ConfigError(None, f"{name} must be one of {', '.join(map(str, choices))} (got {v!r})")


@dataclass
class ServeRayConfig:
    """``ray:`` of serve.yaml (engine.serve.ray_app): `vmatch serve --ray`."""

    address: str | None = None        # None: a local Ray; "auto" or "host:port": join a cluster
    hashers: int = 1                  # hasher replicas
    hasher_gpus: float | str = "auto"  # GPU share per hasher replica (auto: one GPU each where present)
    matchers: int = 2                 # matcher replicas (each holds every bank's level-1 in memory)
    matcher_gpus: float | str = "auto"  # GPU share per matcher replica (auto: a share of what hashers leave)
    batch_max: int = 32               # lookups batched into one index query (serve.batch)
    batch_wait_s: float = 0.005       # longest wait to fill a batch

    def __post_init__(self) -> None:
        for k in ("hasher_gpus", "matcher_gpus"):
            v = getattr(self, k)
            if isinstance(v, str) and v != "auto":
                raise ConfigError(None, f"{k} must be a number or auto (got {v!r})")
        if self.hashers < 1 or self.matchers < 1 or self.batch_max < 1:
            raise ConfigError(None, "hashers, matchers and batch_max must be at least 1")


@dataclass
class ServeConfig:
    """configs/serve.yaml (engine.serve): `vmatch serve` (command-line flags override it)."""

    host: str = "127.0.0.1"           # without --token-file only a loopback address is accepted
    port: int = 5000
    c1: float = 0.7                   # server-wide thresholds (inclusive); a bank may set its own
    c2: float = 0.7
    max_body_mb: float = 256          # largest request body (uploads included): 413 beyond
    request_timeout_s: float = 30.0   # per-request limit for lookups and writes: 504 beyond
    hash_timeout_s: float = 600.0     # per-upload hashing limit (also the decoder's timeout)
    hash_workers: int = 1             # videos hashed at once per serving process
    hash_queue: int = 4               # uploads waiting for a hasher per serving process; beyond: 503
    lookup_threads: int = 0           # 0: lookups on the event loop, in arrival order; N: N threads batching them
    poll_s: float = 0.25              # how often commits made by other processes are looked for
    bank_shards: int = 1              # shards of a new bank's index
    bank_store: str = "fp32"          # fp32 keeps the exact signal; fp16 halves the disk
    device: str = "auto"              # matching device (auto: CUDA when present)
    torch_threads: int | None = 1     # intra-op threads per serving process
    workers: int = 1                  # serving processes sharing the port and the banks (one per core on CPU)
    compact_segments: int = 16        # a bank with more segments per shard is compacted in the background (0: never)
    ray: ServeRayConfig = field(default_factory=ServeRayConfig)

    def __post_init__(self) -> None:
        _between("c1", self.c1, -1.0, 1.0)
        _between("c2", self.c2, -1.0, 1.0)
        _between("port", self.port, 0, 65535)
        _choice("device", self.device, ("auto", "cpu", "cuda"))
        _choice("bank_store", self.bank_store, ("fp32", "fp16", "int8"))
        for k in ("workers", "hash_workers", "bank_shards"):
            if getattr(self, k) < 1:
                raise ConfigError(None, f"{k} must be at least 1 (got {getattr(self, k)})")
        for k in ("hash_queue", "compact_segments", "lookup_threads"):
            if getattr(self, k) < 0:
                raise ConfigError(None, f"{k} must be at least 0 (got {getattr(self, k)})")
        for k in ("max_body_mb", "request_timeout_s", "hash_timeout_s", "poll_s"):
            if not getattr(self, k) > 0:
                raise ConfigError(None, f"{k} must be above 0 (got {getattr(self, k)})")


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
    elif dataclasses.is_dataclass(hint):   # a nested block (serve.yaml's ray:)
        return _section(hint, value, f"{where}: {key}")
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


def _read_yaml(path: str | os.PathLike[str] | None, default: str) -> tuple[Any, Path | None]:
    """The parsed file at `path` (None: CONFIG_DIR/`default`, skipped when absent) and its path."""
    import yaml

    explicit = path is not None
    p = Path(path) if explicit else CONFIG_DIR / default
    if not explicit and not p.exists():
        return None, None
    try:
        text = p.read_text()
    except (FileNotFoundError, IsADirectoryError) as e:
        raise ConfigError(p, os_reason(e)) from None
    except OSError as e:
        raise ConfigError(p, f"cannot read config ({os_reason(e)})") from None
    try:
        return yaml.safe_load(text), p
    except yaml.YAMLError as e:
        raise ConfigError(p, f"not valid YAML ({str(e).splitlines()[0]})") from None


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load `path` over the typed defaults; without a path, the default file (CONFIG_DIR/default.yaml).

    An explicit path that does not exist or does not parse is a ConfigError.
    """
    data, p = _read_yaml(path, "default.yaml")
    if p is None:
        return Config()
    cfg = parse_config(data, str(p))
    cfg.source = str(p)
    return cfg


def load_serve_config(path: str | os.PathLike[str] | None = None) -> ServeConfig:
    """The server's settings: `path` (None: CONFIG_DIR/serve.yaml) over `ServeConfig`'s defaults.

    Unknown keys, wrong types and out-of-range values are a ConfigError naming the file and key;
    an explicit path that does not exist is one too."""
    data, p = _read_yaml(path, "serve.yaml")
    if p is None:
        return ServeConfig()
    if data is not None and not isinstance(data, dict):
        raise ConfigError(p, "top level must be a mapping")
    return _section(ServeConfig, data, str(p))
