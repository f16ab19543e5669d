"""engine.config: one loader, typed sections validated once, the same defaults in code, YAML and
signatures, the packaged copy of configs/ equal to the documented one."""
from __future__ import annotations

import dataclasses
import filecmp
import inspect
from pathlib import Path

import pytest
import yaml

from engine.config import (CONFIG_DIR, PACKAGE_CONFIG_DIR, SECTIONS, SOURCE_CONFIG_DIR, Config, ConfigError,
                           HashConfig, load_config, parse_config)
from kernels.params import DEFAULT_PARAMS

REPO = Path(__file__).resolve().parents[2]


def test_default_yaml_holds_exactly_the_code_defaults():
    data = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    assert set(data) == {"tmk", *SECTIONS}
    code = Config()
    for name, cls in SECTIONS.items():
        assert data[name] == dataclasses.asdict(cls()), name  # every key, same values
    assert data["tmk"] == {"periods": list(DEFAULT_PARAMS.periods), "fps": DEFAULT_PARAMS.fps,
                           "frame_size": DEFAULT_PARAMS.frame_size}
    assert load_config() == dataclasses.replace(code, source=str(CONFIG_DIR / "default.yaml"))


def test_packaged_configs_equal_the_documented_ones():
    """configs/ is where users look; engine/configs/ is what a wheel installs (package data)."""
    names = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))
    assert names and names == sorted(p.name for p in PACKAGE_CONFIG_DIR.glob("*.yaml"))
    for n in names:
        assert filecmp.cmp(REPO / "configs" / n, PACKAGE_CONFIG_DIR / n, shallow=False), n
    assert SOURCE_CONFIG_DIR == REPO / "configs"
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"configs/*.yaml"' in pyproject
    import importlib.resources

    assert (importlib.resources.files("engine") / "configs" / "default.yaml").is_file()


def test_signature_defaults_match_the_config():
    from engine.hasher import VideoHasher
    from engine.scoring import Scorer

    sig = inspect.signature(VideoHasher.__init__).parameters
    for f in dataclasses.fields(HashConfig):
        if f.name == "torch_threads":  # the API leaves the process-wide thread count alone unless asked
            assert sig[f.name].default is None
            continue
        assert sig[f.name].default == getattr(HashConfig(), f.name), f.name
    ssig = inspect.signature(Scorer.__init__).parameters
    sc = SECTIONS["score"]()
    assert (ssig["batch_size"].default, ssig["grid"].default, ssig["device"].default) == (sc.batch_size, sc.grid, sc.device)
    from engine.eval.metrics import DEFAULT_GRID
    assert list(DEFAULT_GRID) == SECTIONS["eval"]().grid
    from engine.ray.cluster import RAY_DEFAULTS
    assert RAY_DEFAULTS == dataclasses.asdict(SECTIONS["ray"]())


@pytest.mark.parametrize("text,where,why", [
    ("hash:\n  mode: exact\n  chunk: 3\n", "hash", "unknown key chunk"),
    ("index:\n  shards: four\n", "index", "shards: expected int, got 'four'"),
    ("index:\n  verify_reads: 1\n", "index", "verify_reads: expected bool"),
    ("ray:\n  timeout_s: soon\n", "ray", "timeout_s: expected float"),
    ("eval:\n  grid: 0.5\n", "eval", "grid: expected a list"),
    ("eval:\n  target_fpr: 2\n", "eval", "target_fpr must be between 0 and 1"),
    ("tmk:\n  periods: [1, -2]\n", "tmk", "periods: expected a list of positive integers"),
    ("tmk:\n  fsp: 15\n", "tmk", "unknown key fsp"),
    ("serv:\n  port: 1\n", "", "unknown section serv"),
    ("- a\n- b\n", "", "top level must be a mapping"),
    ("hash: [1\n", "", "not valid YAML"),
])
def test_bad_configs_name_the_key(tmp_path, text, where, why):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).startswith(f"{p}: {where + ': ' if where else ''}") and why in str(e.value), str(e.value)
    assert e.value.exit_code == 2


def test_overrides_and_types(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("hash:\n  timeout_s: 30\n  torch_threads: null\nindex:\n  c1: 1\nray:\n  address: auto\n")
    cfg = load_config(p)
    assert cfg.hash.timeout_s == 30.0 and isinstance(cfg.hash.timeout_s, float) and cfg.hash.torch_threads is None
    assert cfg.index.c1 == 1.0 and cfg.index.shards == 4 and cfg.ray.address == "auto"
    assert cfg.section("index")["c1"] == 1.0 and cfg.source == str(p)
    assert parse_config(None) == Config()
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_one_way_to_build_a_hasher_and_a_scorer():
    from engine.hasher import VideoHasher
    from engine.scoring import Scorer

    h = VideoHasher.from_config(HashConfig(timeout_s=5.0, chunk_frames=64, torch_threads=None), mode="exact",
                                device=None)
    assert (h.timeout_s, h.chunk_frames, h.mode, h.device.type) == (5.0, 64, "exact", "cpu")
    s = Scorer.from_config(SECTIONS["score"](batch_size=7), DEFAULT_PARAMS, "cpu")
    assert s.batch_size == 7 and s.device.type == "cpu"


def test_cluster_yaml_loads():
    cfg = load_config(REPO / "configs" / "cluster.yaml")
    assert cfg.index.shards == 16 and cfg.ray.address == "auto"


def test_serve_yaml_holds_exactly_the_serve_defaults():
    from engine.config import ServeConfig, load_serve_config

    data = yaml.safe_load((REPO / "configs" / "serve.yaml").read_text())
    assert data == dataclasses.asdict(ServeConfig())           # every key, same values, ray: included
    assert load_serve_config() == ServeConfig()
    assert load_serve_config(REPO / "configs" / "serve.yaml") == ServeConfig()


@pytest.mark.parametrize("text,where,why", [
    ("workers: 0\n", "", "workers must be at least 1"),
    ("wokers: 2\n", "", "unknown key wokers"),
    ("port: fifty\n", "", "port: expected int"),
    ("c1: 1.5\n", "", "c1 must be between -1 and 1"),
    ("device: tpu\n", "", "device must be one of auto, cpu, cuda"),
    ("ray:\n  matchers: two\n", "ray", "matchers: expected int"),
    ("ray:\n  hasher_gpus: lots\n", "ray", "hasher_gpus must be a number or auto"),
    ("ray:\n  replicas: 2\n", "ray", "unknown key replicas"),
    ("- a\n", "", "top level must be a mapping"),
    ("port: [1\n", "", "not valid YAML"),
])
def test_bad_serve_configs_name_the_key(tmp_path, text, where, why):
    from engine.config import load_serve_config

    p = tmp_path / "serve.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_serve_config(p)
    assert str(e.value).startswith(f"{p}: {where + ': ' if where else ''}") and why in str(e.value), str(e.value)


def test_serve_config_overrides_and_the_cli(tmp_path, capsys):
    from engine.cli import main
    from engine.config import ServeConfig, load_serve_config

    p = tmp_path / "serve.yaml"
    p.write_text("workers: 3\nmax_body_mb: 8\nray:\n  hasher_gpus: 0.5\n")
    s = load_serve_config(p)
    assert (s.workers, s.max_body_mb, s.ray.hasher_gpus, s.ray.matchers) == (3, 8.0, 0.5, 2)
    assert s.port == ServeConfig().port and isinstance(s.max_body_mb, float)
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match="no such file"):
        load_serve_config(missing)
    capsys.readouterr()
    assert main(["serve", "--data", str(tmp_path / "d"), "--serve-config", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(missing) in err and "no such file" in err and len(err.splitlines()) == 1, err
    assert main(["serve", "--data", str(tmp_path / "d"), "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--workers must be at least 1" in err and len(err.splitlines()) == 1, err
