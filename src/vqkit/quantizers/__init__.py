"""Vector-quantization layers shared by every vqkit tokenizer, generator and compressor.

Every quantizer returns a ``QuantizerOutput`` and offers ``codes_from_indices``.
"""

import logging
import sys

# When faiss loads before torch, it binds to its own OpenMP runtime, so the process keeps two
# thread pools whose idle threads spin against each other. On 2 cores this slowed vqkit's CPU
# forward up to 2.4x (benchmarks/quantizers.py).
if "faiss" in sys.modules and "torch" not in sys.modules:
    logging.getLogger(__name__).warning(
        "faiss was imported before torch, so they run separate OpenMP thread pools and CPU "
        "quantization can be several times slower; import torch (or vqkit) before faiss, "
        "or set OMP_WAIT_POLICY=PASSIVE"
    )

from .codebook import Codebook  # noqa: E402
from .fsq import FSQ  # noqa: E402
from .grouped import GroupedVQ  # noqa: E402
from .output import QuantizerOutput, code_perplexity  # noqa: E402
from .residual import ResidualVQ  # noqa: E402
from .search import search  # noqa: E402
from .topk import TopKCodebook  # noqa: E402
from .vq import VectorQuantizer  # noqa: E402

__all__ = [
    "FSQ",
    "Codebook",
    "GroupedVQ",
    "QuantizerOutput",
    "ResidualVQ",
    "TopKCodebook",
    "VectorQuantizer",
    "code_perplexity",
    "search",
]
