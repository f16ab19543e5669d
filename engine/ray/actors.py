"""Ray actors of a backfill: decode(+hash) workers and GPU feature workers.

`HashWorker` holds a reusable hasher and hashes one video per call.  Without GPUs it decodes and
computes PDQF/TMK itself (on the CPU, one torch thread: exact mode gives .tmk files identical to
`vmatch hash`).  With GPUs it decodes and streams the frame chunks to a `FeatureWorker`, which
runs PDQF and the TMK accumulation as batched torch tensors on its GPU.

Workers never raise for a bad video: they return a result dict (see `_result`) so that the driver
can tell a bad input (recorded, the run goes on) from a dead worker (the video is retried on a
fresh worker).  A worker whose decode timed out asks to be replaced (`recycle`): the stuck decode
thread cannot be stopped inside the process, only with it.
"""
from __future__ import annotations

import os
import time
import uuid
from collections import OrderedDict
from typing import Any, Callable

import numpy as np

HasherFactory = Callable[[dict[str, Any]], Any]

#: Feature states a FeatureWorker keeps at most (states of decoders killed mid-video are dropped).
MAX_FEATURE_STATES = 4096
#: Frame chunks a decoder may have in flight to its feature worker (bounds memory per decoder).
CHUNKS_IN_FLIGHT = 2


def _result(item_id: int, ok: bool, **kw: Any) -> dict[str, Any]:
    """ok: tmk (bytes), frames, seconds; not ok: kind (decode|timeout|error|lost), reason, recycle."""
    return {"id": item_id, "ok": ok, **kw}


def default_hasher(settings: dict[str, Any]) -> Any:
    """A CPU VideoHasher with the run's parameters (what `vmatch hash` uses)."""
    from engine.config import HashConfig
    from engine.hasher import VideoHasher

    hc = HashConfig(mode=settings["mode"], device="cpu", chunk_frames=settings["chunk_frames"],
                    timeout_s=settings["timeout_s"], backend=settings["backend"],
                    fast_exact_below=settings["fast_exact_below"], torch_threads=None)
    return VideoHasher.from_config(hc, settings["params"])  # the one way (engine.hasher), as `vmatch hash`


class HashWorker:
    """Decode and hash videos, one per `hash` call (the body of a Ray actor)."""

    def __init__(self, settings: dict[str, Any], feature_actor: Any = None,
                 hasher_factory: HasherFactory | None = None) -> None:
        import torch

        torch.set_num_threads(max(1, int(settings.get("torch_threads") or 1)))
        for lib in ("decord", "av"):  # import the decoders now, not inside the first video's time limit
            try:
                __import__(lib)
            except ImportError:
                pass
        self.settings = settings
        self.feature_actor = feature_actor
        self.hasher = None if feature_actor is not None else (hasher_factory or default_hasher)(settings)

    def ready(self) -> int:
        """The worker's process id, once constructed (the driver waits on this before sending work)."""
        return os.getpid()

    def hash(self, item_id: int, path: str, token: str) -> dict[str, Any]:
        from engine.decode import DecodeError, DecodeTimeout
        from engine.tmkfile import to_bytes

        t0 = time.perf_counter()
        try:
            if self.feature_actor is not None:
                tmk, frames = self._hash_remote(path, token)
            else:
                feats = self.hasher.hash(path)
                tmk, frames = to_bytes(feats), feats.frame_count
        except DecodeTimeout as e:
            return _result(item_id, False, kind="timeout", reason=e.reason, recycle=True)
        except DecodeError as e:
            return _result(item_id, False, kind="decode", reason=e.reason, recycle=False)
        except MemoryError:
            return _result(item_id, False, kind="error", reason="out of memory", recycle=True)
        except _FeatureLost as e:
            return _result(item_id, False, kind="lost", reason=str(e), recycle=False)
        except Exception as e:  # noqa: BLE001 - one bad input must not stop the run
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            return _result(item_id, False, kind="error", reason=f"{type(e).__name__}: {msg}".rstrip(": "),
                           recycle=False)
        return _result(item_id, True, tmk=tmk, frames=int(frames), seconds=time.perf_counter() - t0)

    def _hash_remote(self, path: str, token: str) -> tuple[bytes, int]:
        """Decode here, compute features on the feature actor, chunk by chunk (ordered calls)."""
        import ray

        from engine.decode import VideoDecoder

        s, fa = self.settings, self.feature_actor
        p = s["params"]
        try:
            with VideoDecoder(path, size=p.frame_size, out_fps=p.fps, chunk_frames=s["chunk_frames"],
                              backend=s["backend"], timeout_s=s["timeout_s"]) as dec:
                inflight = [fa.begin.remote(token)]
                for chunk in dec:
                    inflight.append(fa.update.remote(token, chunk))
                    if len(inflight) > CHUNKS_IN_FLIGHT:
                        ray.get(inflight.pop(0))   # backpressure, and errors surface here
                ray.get(inflight)
            return ray.get(fa.finish.remote(token))
        except ray.exceptions.RayActorError as e:
            raise _FeatureLost(f"feature worker died ({type(e).__name__})") from None
        except ray.exceptions.RayTaskError as e:
            if isinstance(getattr(e, "cause", None), KeyError):  # the feature worker restarted mid-video
                raise _FeatureLost("feature worker restarted") from None
            raise
        except BaseException:
            try:
                fa.abort.remote(token)
            except Exception:  # noqa: BLE001 - best effort
                pass
            raise


class _FeatureLost(Exception):
    """The GPU feature worker went away mid-video: the video must be redone (not a bad input)."""


class FeatureWorker:
    """PDQF + TMK on a GPU for frame chunks streamed by decoders (the body of a Ray actor).

    Calls from one decoder run in order (Ray actor semantics), so one video's chunks are
    accumulated in sequence; states of several decoders' videos are kept side by side.
    A state must be opened with `begin`: after a restart the actor has no state, and an
    `update` for an unknown video fails instead of silently hashing a partial video.
    """

    def __init__(self, params: Any, mode: str, fast_exact_below: float = 32.0, torch_threads: int = 1) -> None:
        import torch

        from kernels.device import resolve_device, strict_float

        torch.set_num_threads(max(1, int(torch_threads)))
        self.device = resolve_device("auto")
        if self.device.type == "cuda":
            strict_float()
        self.params, self.mode, self.fast_exact_below = params, mode, fast_exact_below
        self.states: OrderedDict[str, Any] = OrderedDict()
        self.uid = uuid.uuid4().hex[:8]

    def ready(self) -> tuple[int, str]:
        return os.getpid(), str(self.device)

    def begin(self, token: str) -> None:
        from kernels.tmk import TmkAccumulator

        self.states[token] = TmkAccumulator(self.params, self.mode, self.device)
        while len(self.states) > MAX_FEATURE_STATES:
            self.states.popitem(last=False)

    def update(self, token: str, chunk: np.ndarray) -> None:
        import torch

        from kernels.pdqf import pdqf

        acc = self.states.get(token)
        if acc is None:
            raise KeyError(f"no feature state for {token} (feature worker restarted)")
        if len(chunk):
            x = torch.from_numpy(np.ascontiguousarray(chunk)).to(self.device)
            acc.update(pdqf(x, self.mode, self.fast_exact_below))

    def finish(self, token: str) -> tuple[bytes, int]:
        from engine.features import TmkFeatures
        from engine.tmkfile import to_bytes

        acc = self.states.pop(token, None)
        if acc is None:
            raise KeyError(f"no feature state for {token} (feature worker restarted)")
        avg, cos, sin, count = acc.finalize()
        return to_bytes(TmkFeatures(avg, cos, sin, count, self.params)), int(count)

    def abort(self, token: str) -> None:
        self.states.pop(token, None)
