"""python-threatexchange extension: the `tmk_pdqf` signal type backed by vmatch.

Enable it with ``threatexchange config extensions add engine.pytx``; HMA operators import
`TmkPdqfSignal` in their OMM config instead (HMA does not read TX_MANIFEST).

Every threatexchange CLI start imports every registered extension, so this package imports
only pytx, numpy and vmatch's string codec; torch, faiss and the decoders load on the first
hash, comparison or query.
"""
from threatexchange.extensions.manifest import ThreatExchangeExtensionManifest

from engine.pytx.index import TmkPdqfIndex, TmkPdqfSimilarityInfo
from engine.pytx.signal import TmkPdqfSignal

TX_MANIFEST = ThreatExchangeExtensionManifest(signal_types=(TmkPdqfSignal,))

__all__ = ["TX_MANIFEST", "TmkPdqfSignal", "TmkPdqfIndex", "TmkPdqfSimilarityInfo"]
