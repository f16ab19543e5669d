"""Video -> TmkFeatures: decode frames, PDQF per frame, TMK accumulation (the hashing pipeline).

Decoding runs in a background thread one chunk ahead of the feature computation, so on a
machine with two or more cores hashing costs little more than decoding alone.

Exact mode on CPU (the default there) runs the numpy kernels (kernels/pdqf_np.py,
kernels/tmk_np.py: the same bytes as the torch ones), so hashing on CPU never imports torch
(seconds of start-up on a small machine); torch is imported for fast mode and for CUDA only.
"""
from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np

from engine.config import HashConfig
from engine.decode import DecodeError, VideoDecoder, VideoInfo
from engine.features import TmkFeatures
from kernels.device import device_kind, resolve_device, strict_float
from kernels.params import DEFAULT_PARAMS, TmkParams

if TYPE_CHECKING:
    import torch

from engine.progress import ProgressFn  # noqa: E402  (one progress type: engine.progress)


def resolve_mode(mode: str, device: "torch.device | str") -> str:
    """'auto' is exact on CPU (bit-identical, cheap next to decoding) and fast on CUDA.

    ``device``: a torch device or a device type ('cpu', 'cuda')."""
    if mode == "auto":
        return "fast" if getattr(device, "type", str(device)) == "cuda" else "exact"
    if mode not in ("exact", "fast"):
        raise ValueError(f"unknown hashing mode {mode!r} (expected exact, fast or auto)")
    return mode


@dataclass
class HashStats:
    """What one hash cost: frames hashed and the decoder's description of the video (``last_stats``)."""

    frames: int
    info: VideoInfo | None


class VideoHasher:
    """Stateful hasher (reuse it across videos: tables and device setup are kept)."""

    def __init__(self, params: TmkParams = DEFAULT_PARAMS, mode: str = "auto", device: "str | torch.device" = "auto",
                 chunk_frames: int = 256, timeout_s: float | None = 600.0, backend: str = "auto",
                 fast_exact_below: float = 32.0, torch_threads: int | None = None,
                 decode_threads: int = 0) -> None:
        self.params = params
        #: decord's decoding threads (engine.decode.VideoDecoder ``threads``; 0: one per core)
        self.decode_threads = decode_threads
        #: 'cpu' or 'cuda' (known without torch where no GPU driver is present)
        self.device_type = device_kind(device)
        self.mode = resolve_mode(mode, self.device_type)
        #: 'numpy' (exact on CPU: same bytes, no torch) or 'torch' (fast mode, CUDA)
        self.kernels = "numpy" if self.device_type == "cpu" and self.mode == "exact" else "torch"
        self._device: "torch.device | None" = None
        if self.kernels == "torch":
            self._device = resolve_device(device)
            if self._device.type == "cuda":
                strict_float()
            if torch_threads:
                import torch

                # process-wide: the kernels' tensors are small, so extra intra-op threads mostly
                # spin against the decoding thread on small machines
                torch.set_num_threads(torch_threads)
        self.chunk_frames, self.timeout_s, self.backend = chunk_frames, timeout_s, backend
        self.fast_exact_below = fast_exact_below
        self.last_stats: HashStats | None = None

    @property
    def device(self) -> "torch.device":
        """The torch device (importing torch if this hasher runs the numpy kernels)."""
        if self._device is None:
            import torch

            self._device = torch.device(self.device_type)
        return self._device

    def hash_frames(self, chunks: Iterable[np.ndarray], name: str = "",
                    progress: ProgressFn | None = None,
                    on_chunk: Callable[[np.ndarray], None] | None = None) -> TmkFeatures:
        """Hash consecutive uint8 RGB frame chunks [n, 64, 64, 3]; ``on_chunk`` sees each chunk
        (e.g. engine/borders.py's detector)."""
        acc, step = self._accumulator()
        for chunk in chunks:
            if len(chunk) == 0:
                continue
            if on_chunk:
                on_chunk(chunk)
            step(np.ascontiguousarray(chunk))
            if progress:
                progress(len(chunk))
        avg, cos, sin, count = acc.finalize()
        return TmkFeatures(avg, cos, sin, count, self.params, name)

    def _accumulator(self) -> tuple[Any, Callable[[np.ndarray], None]]:
        """A fresh TMK state and the function adding one chunk of frames to it."""
        if self.kernels == "numpy":
            from kernels.pdqf_np import pdqf as pdqf_np
            from kernels.tmk_np import TmkAccumulatorNp

            acc_np = TmkAccumulatorNp(self.params)
            return acc_np, lambda chunk: acc_np.update(pdqf_np(chunk))
        import torch

        from kernels.pdqf import pdqf
        from kernels.tmk import TmkAccumulator

        dev, mode, below = self.device, self.mode, self.fast_exact_below
        acc = TmkAccumulator(self.params, mode, dev)
        return acc, lambda chunk: acc.update(pdqf(torch.from_numpy(chunk).to(dev), mode, below))

    @classmethod
    def from_config(cls, cfg: "HashConfig", params: TmkParams = DEFAULT_PARAMS, **overrides: object) -> "VideoHasher":
        """The one way to build a hasher from the ``hash:`` section; ``overrides`` (flags) win
        where they are not None (e.g. ``device=args.device``)."""
        kw = dict(mode=cfg.mode, device=cfg.device, chunk_frames=cfg.chunk_frames, timeout_s=cfg.timeout_s,
                  backend=cfg.backend, fast_exact_below=cfg.fast_exact_below, torch_threads=cfg.torch_threads)
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(params, **kw)  # type: ignore[arg-type]

    def hash(self, path: str | os.PathLike[str], progress: ProgressFn | None = None,
             on_chunk: Callable[[np.ndarray], None] | None = None) -> TmkFeatures:
        """Hash one video file; raises DecodeError (one-line reason) for unreadable input."""
        with VideoDecoder(path, size=self.params.frame_size, out_fps=self.params.fps,
                          chunk_frames=self.chunk_frames, backend=self.backend,
                          timeout_s=self.timeout_s, threads=self.decode_threads) as dec:
            feats = self.hash_frames(_prefetch(iter(dec), str(path)), _stem(path), progress, on_chunk)
            self.last_stats = HashStats(feats.frame_count, dec.info)
        return feats


def _stem(path: str | os.PathLike[str]) -> str:
    return os.path.splitext(os.path.basename(os.fspath(path)))[0]


_END = object()


def _prefetch(it: Iterator[np.ndarray], path: str, depth: int = 2) -> Iterator[np.ndarray]:
    """Run a chunk iterator in a daemon thread, `depth` chunks ahead; re-raise its errors here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def run() -> None:
        try:
            for item in it:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_END)
        except BaseException as e:  # handed to the consumer thread
            q.put(e)

    t = threading.Thread(target=run, name=f"decode:{os.path.basename(path)}", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def hash_video(path: str | os.PathLike[str], mode: str = "auto", device: str = "auto",
               timeout_s: float | None = 600.0, params: TmkParams = DEFAULT_PARAMS) -> TmkFeatures:
    """Hash one video to its TMK+PDQF signature (see VideoHasher for reuse across videos)."""
    return VideoHasher(params, mode, device, timeout_s=timeout_s).hash(path)


__all__ = ["DecodeError", "HashStats", "VideoHasher", "hash_video", "resolve_mode"]
