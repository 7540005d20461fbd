"""Vector-quantization layers shared by every vqkit tokenizer, generator and compressor.

Every quantizer returns a ``QuantizerOutput`` and offers ``codes_from_indices``.
"""

from .codebook import Codebook
from .fsq import FSQ
from .grouped import GroupedVQ
from .output import QuantizerOutput, code_perplexity
from .residual import ResidualVQ
from .search import search
from .topk import TopKCodebook
from .vq import VectorQuantizer

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
