"""Starting or joining Ray for vmatch: local by default (offline, no dashboard), or a cluster."""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any
from engine.config import RayConfig
from engine.errors import VmatchError

#: Defaults of the `ray:` config section (typed in engine.config.RayConfig; configs/default.yaml and
#: configs/cluster.yaml override them). Kept as a mapping: the Ray code takes plain options.
RAY_DEFAULTS: dict[str, Any] = dataclasses.asdict(RayConfig())


class ClusterError(VmatchError, RuntimeError):
    """Ray could not be started or joined; str() is one line."""


def ray_config(section: dict[str, Any]) -> dict[str, Any]:
    """The `ray:` section over RAY_DEFAULTS, validated by the one loader (ConfigError names the key)."""
    from engine.config import _section

    return dataclasses.asdict(_section(RayConfig, section, "config: ray"))


@dataclass
class RaySession:
    """What `connect` did: whether it started Ray (and so must stop it) and the cluster's resources."""

    started: bool
    address: str
    cpus: float
    gpus: float

    def close(self) -> None:
        import ray

        if self.started and ray.is_initialized():
            ray.shutdown()


def connect(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
            namespace: str = "vmatch") -> RaySession:
    """Join `address` ("auto", "host:port", "ray://host:port"), or start a local Ray.

    A local start needs no network (usage stats off, dashboard off, logs kept in Ray's
    session folder). If Ray is already initialised in this process it is used as is.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DISABLE_IMPORT_WARNING", "1")
    import ray

    if ray.is_initialized():
        return _session(False)
    kw: dict[str, Any] = {"namespace": namespace, "logging_level": logging.ERROR, "log_to_driver": False,
                          "configure_logging": True}
    if address in (None, "", "local"):
        # "local": always a new instance (never whatever RAY_ADDRESS or a `ray start` here points to)
        kw.update(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False)
        if num_gpus is not None:
            kw["num_gpus"] = num_gpus
        where = "a local Ray instance"
    else:
        kw["address"] = address
        where = f"the Ray cluster at {address}"
    try:
        ray.init(**kw)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = ""
        if address not in (None, "", "local") and not os.environ.get("RAY_AUTH_MODE"):
            # `ray start` enables token authentication by default since Ray 2.59; a driver only
            # sends the token (RAY_AUTH_TOKEN or ~/.ray/auth_token) with RAY_AUTH_MODE=token.
            hint = " (if the cluster uses token authentication, set RAY_AUTH_MODE=token and its token)"
        raise ClusterError(f"cannot start or join {where}: {first}{hint}") from None
    return _session(True)


def _session(started: bool) -> RaySession:
    import ray

    res = ray.cluster_resources()
    ctx = ray.get_runtime_context()
    addr = getattr(ctx, "gcs_address", "") or ""
    return RaySession(started, str(addr), float(res.get("CPU", 0)), float(res.get("GPU", 0)))
