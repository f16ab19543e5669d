"""Configuration: typed defaults here, overridden by configs/*.yaml, overridden by CLI flags."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kernels.params import DEFAULT_PARAMS, TmkParams

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class HashConfig:
    mode: str = "auto"
    device: str = "auto"
    backend: str = "auto"
    chunk_frames: int = 256
    timeout_s: float | None = 600.0
    fast_exact_below: float = 32.0
    torch_threads: int | None = 1


@dataclass
class ScoreConfig:
    c1: float = -1.0
    c2: float = 0.0
    batch_size: int = 0
    grid: int = 256
    device: str = "auto"


@dataclass
class Config:
    tmk: TmkParams = DEFAULT_PARAMS
    hash: HashConfig = field(default_factory=HashConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    #: Sections owned by other subsystems (index, ray, eval), kept as plain mappings.
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.extra.get(name, {}))


def _merge(obj: Any, values: dict[str, Any], where: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(obj)}
    unknown = set(values) - set(names)
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    return dataclasses.replace(obj, **values)


def load_config(path: str | Path | None = None) -> Config:
    """Load `path` (default: configs/default.yaml when present) over the typed defaults."""
    if path is None:
        path = CONFIG_DIR / "default.yaml"
        if not path.exists():
            return Config()
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read config ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be a mapping")
    cfg = Config()
    tmk = data.pop("tmk", None) or {}
    if tmk:
        unknown = set(tmk) - {"periods", "fps", "frame_size"}
        if unknown:
            raise ValueError(f"{path}: tmk: unknown keys {sorted(unknown)}")
        cfg.tmk = TmkParams(periods=tuple(tmk.get("periods", DEFAULT_PARAMS.periods)),
                            fps=int(tmk.get("fps", DEFAULT_PARAMS.fps)),
                            frame_size=int(tmk.get("frame_size", DEFAULT_PARAMS.frame_size)))
    cfg.hash = _merge(cfg.hash, data.pop("hash", None) or {}, f"{path}: hash")
    cfg.score = _merge(cfg.score, data.pop("score", None) or {}, f"{path}: score")
    cfg.extra = {k: dict(v or {}) for k, v in data.items()}
    return cfg
