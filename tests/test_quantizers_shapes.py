"""Every quantizer under hypothesis-generated shapes, layouts and modes."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqkit.quantizers import FSQ, GroupedVQ, ResidualVQ, TopKCodebook, VectorQuantizer


def build(kind, dim, codebook_size, channel_first):
    if kind == "vq":
        return VectorQuantizer(dim, codebook_size, channel_first=channel_first, seed=0), 0
    if kind == "vq-cosine-grad":
        return VectorQuantizer(dim, codebook_size, distance="cosine", ema_decay=None, channel_first=channel_first, seed=0), 0
    if kind == "rvq":
        return ResidualVQ(dim, codebook_size, depth=3, channel_first=channel_first, seed=0), 3
    if kind == "grouped":
        return GroupedVQ(dim * 2, codebook_size, groups=2, channel_first=channel_first, seed=0), 2
    if kind == "fsq":
        return FSQ([3, 4], dim=dim, channel_first=channel_first), 0
    return TopKCodebook(dim, codebook_size, k=min(2, codebook_size), channel_first=channel_first, seed=0), min(2, codebook_size)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["vq", "vq-cosine-grad", "rvq", "grouped", "fsq", "topk"]),
    lead=st.lists(st.integers(0, 4), min_size=1, max_size=3),
    dim=st.integers(1, 6),
    codebook_size=st.integers(1, 12),
    channel_first=st.booleans(),
    training=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]),
)
def test_quantizer_shapes(kind, lead, dim, codebook_size, channel_first, training, dtype):
    quantizer, index_axis = build(kind, dim, codebook_size, channel_first)
    dim = quantizer.dim
    quantizer.train(training)

    channel_last_shape = (*lead, dim)
    x = torch.randn(channel_last_shape, dtype=dtype)
    if channel_first:
        x = x.movedim(-1, 1)

    out = quantizer(x)
    expected_indices = tuple(lead) + ((index_axis,) if index_axis else ())
    assert out.quantized.shape == x.shape
    assert out.quantized.dtype == dtype
    assert out.indices.shape == expected_indices
    assert out.indices.dtype == torch.long
    if out.indices.numel():
        assert int(out.indices.min()) >= 0
        assert int(out.indices.max()) < quantizer.codebook_size
    for value in (out.loss, out.commitment_loss, out.codebook_loss, out.perplexity):
        assert value.ndim == 0
        assert torch.isfinite(value)
    assert out.dead_codes.dtype == torch.long
    assert 1.0 - 1e-4 <= float(out.perplexity) <= quantizer.codebook_size + 1e-3 or out.indices.numel() == 0

    quantizer.eval()
    out = quantizer(x)
    assert torch.equal(quantizer.codes_from_indices(out.indices).to(dtype), out.quantized)
