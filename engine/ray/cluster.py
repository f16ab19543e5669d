"""Old name of engine.ray.session (the Ray connection; "cluster" in vmatch means connected
components, engine.index.cluster). Kept so existing imports work."""
from engine.ray.session import RAY_DEFAULTS, ClusterError, RaySession, connect, ray_config  # noqa: F401

__all__ = ["RAY_DEFAULTS", "ClusterError", "RaySession", "connect", "ray_config"]
