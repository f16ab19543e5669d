"""TmkPdqfSignal: the pytx signal type `tmk_pdqf` (TMK+PDQF video hashes, ThreatExchange HASH_TMK).

Hashing and scoring are vmatch's (reference-exact `.tmk` bytes on CPU; level-1/level-2 as
`vmatch score`); torch and the decoders are imported on the first call, not at import.
"""
from __future__ import annotations

import logging
import pathlib
import threading
import typing as t

import numpy as np
from threatexchange.content_type.content_base import ContentType
from threatexchange.content_type.video import VideoContent
from threatexchange.exchanges.impl.fb_threatexchange_signal import HasFbThreatExchangeIndicatorType
from threatexchange.signal_type import signal_base
from threatexchange.signal_type.index import SignalTypeIndex

from engine import signals
from engine.features import TmkFeatures
from engine.pytx.index import TmkPdqfIndex, TmkPdqfSimilarityInfo
from engine.tmkfile import to_bytes
from kernels.params import DEFAULT_PARAMS

log = logging.getLogger(__name__)


def synthetic_signature(rng: np.random.Generator, frames: int = 300) -> TmkFeatures:
    """A random signature with the invariants of real ones (each cos/sin block of norm sqrt(a_j),
    the sin block of j = 0 zero), made with numpy only so listing examples stays cheap."""
    p = DEFAULT_PARAMS
    shape = (p.num_periods, p.num_coeffs, p.dim)
    scale = np.sqrt(p.coeffs32.astype(np.float64)).reshape(1, -1, 1)

    def blocks() -> np.ndarray:
        g = rng.standard_normal(shape)
        return (g / np.linalg.norm(g, axis=-1, keepdims=True) * scale).astype(np.float32)

    cos, sin = blocks(), blocks()
    sin[:, 0] = 0
    return TmkFeatures((rng.standard_normal(p.dim) * 100).astype(np.float32), cos, sin, frames, p)


class TmkPdqfSignal(signal_base.SignalType, signal_base.FileHasher, signal_base.CanGenerateRandomSignal,
                    HasFbThreatExchangeIndicatorType):
    """TMK+PDQF video signature; the signal string is the ThreatExchange form
    ``TMK1FVECPDQF|<base64>`` (plain base64 of the whole `.tmk` is accepted and normalised)."""

    INDICATOR_TYPE = "HASH_TMK"
    #: compare_hash thresholds (inclusive), the reference tmk-query defaults.
    LEVEL1_THRESHOLD = 0.7
    LEVEL2_THRESHOLD = 0.7

    _hasher: t.Any = None
    _scorer: t.Any = None
    _lock = threading.Lock()          # creating the hasher and the scorer
    _hash_lock = threading.Lock()     # the hasher is stateful: one video at a time

    @classmethod
    def get_name(cls) -> str:
        return signals.SIGNAL_TYPE

    @classmethod
    def get_content_types(cls) -> t.List[t.Type[ContentType]]:
        return [VideoContent]

    @classmethod
    def get_index_cls(cls) -> t.Type[SignalTypeIndex]:
        return TmkPdqfIndex

    @classmethod
    def validate_signal_str(cls, signal_str: str) -> str:
        """The canonical string; ValueError (engine.signals.SignalError) naming the cause otherwise."""
        return signals.normalize(signal_str)

    @classmethod
    def normalize_fb_threatexchange_indicator(cls, tx_type: str, tx_indicator: str,
                                              tx_tag: t.Optional[str]) -> str:
        """ThreatExchange HASH_TMK indicators in the canonical form (the exchange does not call
        validate_signal_str); an invalid one is passed on as is and refused by the index."""
        try:
            return signals.normalize(tx_indicator)
        except signals.SignalError as e:
            log.warning("tmk_pdqf: invalid %s indicator: %s", tx_type, e.reason)
            return tx_indicator

    # ------------------------------------------------------------------ hashing
    @classmethod
    def _video_hasher(cls) -> t.Any:
        with cls._lock:
            if cls._hasher is None:
                from engine.config import load_config
                from engine.hasher import VideoHasher

                cfg = load_config()
                h = cfg.hash
                cls._hasher = VideoHasher(cfg.tmk, mode=h.mode, device=h.device, chunk_frames=h.chunk_frames,
                                          timeout_s=h.timeout_s, backend=h.backend,
                                          fast_exact_below=h.fast_exact_below, torch_threads=h.torch_threads)
            return cls._hasher

    @classmethod
    def hash_from_file(cls, file: pathlib.Path) -> str:
        """The canonical string of a video's hash ("" when it cannot be decoded, as pytx expects)."""
        from engine.decode import DecodeError

        hasher = cls._video_hasher()
        try:
            with cls._hash_lock:
                feats = hasher.hash(str(file))
        except (DecodeError, OSError) as e:
            log.warning("tmk_pdqf: cannot hash %s: %s", file, e)   # shown by `threatexchange -v`
            return ""
        return signals.encode(feats)

    # ------------------------------------------------------------------ matching
    @classmethod
    def _pair_scorer(cls) -> t.Any:
        with cls._lock:
            if cls._scorer is None:
                from engine.scoring import Scorer

                cls._scorer = Scorer(DEFAULT_PARAMS, TmkPdqfIndex.DEVICE)
            return cls._scorer

    @classmethod
    def compare_hash(cls, hash1: str, hash2: str, level1_threshold: float | None = None,
                     level2_threshold: float | None = None) -> signal_base.SignalComparisonResult:
        """Level-1 and level-2 of hash1 (needle) against hash2; a match when both reach their thresholds."""
        a = signals.decode(hash1, "hash1")
        b = signals.decode(hash2, "hash2")
        l1, l2, _ = cls._pair_scorer().pair(a, b)
        c1 = cls.LEVEL1_THRESHOLD if level1_threshold is None else level1_threshold
        c2 = cls.LEVEL2_THRESHOLD if level2_threshold is None else level2_threshold
        return signal_base.SignalComparisonResult(bool(l1 >= c1 and l2 >= c2), TmkPdqfSimilarityInfo(l1, l2))

    # ------------------------------------------------------------------ samples
    @staticmethod
    def get_examples() -> t.List[str]:
        """Two fixed synthetic signatures (valid strings, unrelated to any video)."""
        return [signals.encode(to_bytes(synthetic_signature(np.random.default_rng(seed)))) for seed in (1, 2)]

    @classmethod
    def get_random_signal(cls) -> str:
        return signals.encode(to_bytes(synthetic_signature(np.random.default_rng())))
