"""vector-quantize-pytorch, the optional contender of the quantizer benchmark.

It is a test extra, not a vqkit dependency. Where it is missing, `VectorQuantize` is None and
`VQP_IMPORT_ERROR` contains the import error, and both parts of the benchmark skip it.
"""

from __future__ import annotations

VQP_IMPORT_ERROR: str | None = None
try:
    from vector_quantize_pytorch import VectorQuantize
except ImportError as error:  # a test extra, not a vqkit dependency
    VectorQuantize = None
    VQP_IMPORT_ERROR = str(error)
