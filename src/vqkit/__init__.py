"""vqkit: vector-quantized tokenizers and models for PyTorch.

Importing vqkit is cheap: it loads neither torch-heavy model code nor gradio. Use
`vqkit.list_models()` for the names of the shipped pretrained models and
`vqkit.load(name, device)` to load one.
"""

from vqkit.registry import list_models, load

__version__ = "0.1.0"

# Quantizers import torch and FAISS, so they load on first access: `vqkit.VectorQuantizer`.
_QUANTIZER_EXPORTS = (
    "FSQ",
    "GroupedVQ",
    "QuantizerOutput",
    "ResidualVQ",
    "TopKCodebook",
    "VectorQuantizer",
)

__all__ = ["__version__", "list_models", "load", *_QUANTIZER_EXPORTS]


def __getattr__(name: str):
    if name in _QUANTIZER_EXPORTS:
        from vqkit import quantizers

        return getattr(quantizers, name)
    raise AttributeError(f"module 'vqkit' has no attribute {name!r}")
