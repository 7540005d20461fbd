"""Behaviour of the quantizer core: gradients, codebook learning, restarts, round trips, dtypes."""

import torch  # before faiss, so that both share torch's OpenMP thread pool

import faiss
import pytest
from safetensors.torch import load_file, save_file
from torch import nn

from vqkit.quantizers import FSQ, GroupedVQ, ResidualVQ, TopKCodebook, VectorQuantizer, search


def gaussian_mixture(num_points, dim, components, seed, sample_seed=None, spread=4.0):
    """Points around `components` centres drawn from `seed`; `sample_seed` draws the points, so
    two calls that differ only in it sample the same mixture. Returns (num_points, dim) fp32."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(components, dim, generator=generator) * spread
    generator.manual_seed(seed if sample_seed is None else sample_seed)
    labels = torch.randint(components, (num_points,), generator=generator)
    return centres[labels] + torch.randn(num_points, dim, generator=generator)


def faiss_kmeans_mse(train, held_out, k, seed=0):
    kmeans = faiss.Kmeans(train.shape[1], k, niter=25, seed=seed, verbose=False)
    kmeans.train(train.numpy())
    distances, _ = kmeans.index.search(held_out.numpy(), 1)
    return float(distances.mean()) / train.shape[1]


def all_quantizers():
    return {
        "vq": VectorQuantizer(8, 32, seed=0),
        "vq-cosine": VectorQuantizer(8, 32, distance="cosine", seed=0),
        "vq-grad": VectorQuantizer(8, 32, ema_decay=None, rotation_trick=True, seed=0),
        "rvq": ResidualVQ(8, 32, depth=3, seed=0),
        "rvq-separate": ResidualVQ(8, 32, depth=3, shared_codebook=False, ema_decay=None, seed=0),
        "grouped": GroupedVQ(8, 16, groups=2, seed=0),
        "fsq": FSQ([5, 4, 3], dim=8),
        "topk": TopKCodebook(8, 32, k=4, seed=0),
    }


# ---- gradients ----------------------------------------------------------------------------------


def test_straight_through_reaches_encoder():
    torch.manual_seed(0)
    encoder = nn.Linear(4, 8)
    vq = VectorQuantizer(8, 16, seed=0)
    x = torch.randn(64, 4)
    out = vq(encoder(x))
    target = torch.randn_like(out.quantized)
    ((out.quantized - target) ** 2).sum().backward()

    # With the straight-through copy the encoder output receives d(loss)/d(quantized) unchanged.
    grad_quantized = 2 * (out.quantized.detach() - target)
    expected = grad_quantized.t() @ x
    assert encoder.weight.grad is not None
    assert torch.allclose(encoder.weight.grad, expected, atol=1e-5)


def test_rotation_trick_gradient_differs_from_copy():
    torch.manual_seed(0)
    x = torch.randn(32, 8, requires_grad=True)
    vq = VectorQuantizer(8, 16, rotation_trick=True, seed=0)
    out = vq(x)
    out.quantized.sum().backward()
    copied = torch.ones_like(x)

    assert x.grad.abs().sum() > 0
    assert not torch.allclose(x.grad, copied)
    vq.eval()
    assert torch.equal(vq(x.detach()).quantized, vq.codes_from_indices(out.indices))


def test_gradient_codebook_receives_codebook_loss():
    vq = VectorQuantizer(8, 16, ema_decay=None, seed=0)
    out = vq(torch.randn(64, 8))
    out.loss.backward()
    assert out.codebook_loss > 0
    assert vq.codebook.weight.grad is not None
    assert vq.codebook.weight.grad.abs().sum() > 0


# ---- codebook learning --------------------------------------------------------------------------


def test_ema_codebook_matches_faiss_kmeans():
    torch.manual_seed(0)
    dim, k = 16, 64
    train = gaussian_mixture(32768, dim, components=128, seed=1)
    held_out = gaussian_mixture(8192, dim, components=128, seed=1, sample_seed=100)
    vq = VectorQuantizer(dim, k, ema_decay=0.99, dead_code_threshold=20, seed=0)

    for epoch in range(3):
        for batch in train[torch.randperm(train.shape[0])].split(1024):
            vq(batch)
    vq.eval()
    vqkit_mse = float(vq(held_out).commitment_loss) / vq.commitment_weight
    reference = faiss_kmeans_mse(train, held_out, k)
    usage = vq(held_out).indices.unique().numel() / k

    assert vqkit_mse <= 1.05 * reference, f"vqkit held-out MSE {vqkit_mse:.4f} vs faiss.Kmeans {reference:.4f}"
    assert usage >= 0.95


def test_kmeans_init_on_first_batch():
    torch.manual_seed(0)
    data = gaussian_mixture(2048, 8, components=32, seed=2)
    vq = VectorQuantizer(8, 32, seed=0)
    assert not bool(vq.codebook.initialized)
    out = vq(data)
    assert bool(vq.codebook.initialized)
    assert out.perplexity > 16


def test_kmeans_init_waits_for_enough_vectors():
    vq = VectorQuantizer(4, 64, kmeans_init_points=100, seed=0)
    weight = vq.codebook.weight.clone()
    vq(torch.randn(60, 4))
    assert not bool(vq.codebook.initialized)
    assert torch.equal(vq.codebook.weight, weight), "codes must not move before the fit"
    vq(torch.randn(60, 4))
    assert bool(vq.codebook.initialized)


def test_kmeans_init_points_default():
    assert VectorQuantizer(4, 64).codebook.kmeans_init_points == 1024
    assert VectorQuantizer(4, 2**16).codebook.kmeans_init_points == 2**18
    assert VectorQuantizer(4, 2**19).codebook.kmeans_init_points == 2**19
    assert VectorQuantizer(4, 64, kmeans_init_points=10).codebook.kmeans_init_points == 64


def test_dead_codes_restart():
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 16, kmeans_init=False, dead_code_threshold=3, seed=0)
    # Move half the codes far from the data so nothing selects them.
    codes = torch.randn(16, 4)
    codes[8:] += 1000.0
    vq.codebook.set_codes(codes)
    data = torch.randn(256, 4)

    dead_seen = [int(vq(data).dead_codes) for _ in range(3)]
    assert dead_seen == [0, 0, 8]
    assert vq.codebook.weight.abs().max() < 100, "restarted codes should sit on data vectors"
    assert int(vq(data).dead_codes) == 0


def test_eval_reports_dead_codes_without_restart():
    vq = VectorQuantizer(4, 16, kmeans_init=False, dead_code_threshold=2, seed=0)
    vq.codebook.steps_since_used[:5] = 2
    vq.eval()
    weight = vq.codebook.weight.clone()
    assert int(vq(torch.randn(10, 4)).dead_codes) == 5
    assert torch.equal(vq.codebook.weight, weight)


# ---- residual -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shared", [True, False])
def test_residual_prefix_decoding(shared):
    torch.manual_seed(0)
    data = gaussian_mixture(4096, 8, components=64, seed=3)
    rvq = ResidualVQ(8, 32, depth=4, shared_codebook=shared, seed=0)
    for batch in data.split(512):
        rvq(batch)
    rvq.eval()
    out = rvq(data)

    errors = []
    for depth in range(1, 5):
        partial = rvq.codes_from_indices(out.indices[:, :depth])
        by_hand = sum(rvq.codebook_at(level).weight[out.indices[:, level]] for level in range(depth))
        assert torch.allclose(partial, by_hand, atol=1e-5)
        errors.append(float((partial - data).pow(2).mean()))
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 0.5 * errors[0]
    assert torch.equal(rvq.codes_from_indices(out.indices), out.quantized)


def test_residual_rejects_too_many_levels():
    rvq = ResidualVQ(8, 32, depth=2)
    with pytest.raises(ValueError, match="depth=2"):
        rvq.codes_from_indices(torch.zeros(4, 3, dtype=torch.long))


# ---- round trips, layouts, dtypes -----------------------------------------------------------------


@pytest.mark.parametrize("name", list(all_quantizers()))
def test_indices_to_codes_exact(name):
    torch.manual_seed(0)
    quantizer = all_quantizers()[name]
    x = torch.randn(4, 16, 8)
    quantizer(x)  # one training step: initialisation and updates
    quantizer.eval()
    out = quantizer(x)
    assert out.quantized.dtype == x.dtype
    assert out.quantized.shape == x.shape
    assert torch.equal(quantizer.codes_from_indices(out.indices), out.quantized)


def test_channel_first_matches_channel_last():
    torch.manual_seed(0)
    last = VectorQuantizer(8, 16, seed=0).eval()
    first = VectorQuantizer(8, 16, channel_first=True, seed=0).eval()
    first.load_state_dict(last.state_dict())
    fmap = torch.randn(2, 8, 5, 7)

    out_first = first(fmap)
    out_last = last(fmap.permute(0, 2, 3, 1))
    assert out_first.indices.shape == (2, 5, 7)
    assert torch.equal(out_first.indices, out_last.indices)
    assert torch.equal(out_first.quantized, out_last.quantized.permute(0, 3, 1, 2))
    assert torch.equal(first.codes_from_indices(out_first.indices), out_first.quantized)


@pytest.mark.parametrize("name", ["vq", "rvq", "grouped", "fsq", "topk"])
def test_bf16_input_same_indices_as_fp32(name):
    torch.manual_seed(0)
    quantizer = all_quantizers()[name]
    quantizer(torch.randn(256, 8))
    quantizer.eval()
    x_bf16 = torch.randn(512, 8).bfloat16()

    out_bf16 = quantizer(x_bf16)
    out_fp32 = quantizer(x_bf16.float())
    assert out_bf16.quantized.dtype == torch.bfloat16
    assert torch.equal(out_bf16.indices, out_fp32.indices)


def test_search_runs_in_fp32_under_autocast():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 64, seed=0)
    vq(torch.randn(512, 8))
    vq.eval()
    x = torch.randn(1024, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_autocast = vq(x)
    assert torch.equal(out_autocast.indices, vq(x).indices)
    assert out_autocast.quantized.dtype == torch.float32


def test_faiss_and_torch_search_agree():
    torch.manual_seed(0)
    x, codebook = torch.randn(3000, 32), torch.randn(500, 32)
    for metric in ("l2", "ip"):
        scores_f, ids_f = search(x, codebook, k=3, metric=metric, backend="faiss")
        scores_t, ids_t = search(x, codebook, k=3, metric=metric, backend="torch")
        assert (ids_f == ids_t).float().mean() > 0.999
        assert torch.allclose(scores_f, scores_t, rtol=1e-4, atol=1e-3)


def test_empty_batch():
    for name, quantizer in all_quantizers().items():
        out = quantizer(torch.randn(0, 8))
        assert out.quantized.shape == (0, 8), name
        assert torch.isfinite(out.loss), name


def test_perplexity_of_uniform_usage():
    fsq = FSQ([4], dim=1).eval()
    x = torch.tensor([[-2.0], [-0.6], [0.0], [2.0]])
    out = fsq(x)
    assert out.indices.unique().numel() == 4
    assert torch.allclose(out.perplexity, torch.tensor(4.0))


def test_topk_indices_are_best_projections():
    torch.manual_seed(0)
    topk = TopKCodebook(8, 32, k=3, seed=0).eval()
    x = torch.randn(100, 8)
    out = topk(x)
    weight = topk.codebook.weight
    scores = x @ (weight / weight.norm(dim=1, keepdim=True)).t()
    assert torch.equal(out.indices, scores.topk(3, dim=1).indices)
    assert torch.allclose(out.quantized, weight[out.indices].mean(dim=1))


# ---- persistence --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(all_quantizers()))
def test_state_dict_round_trip_through_safetensors(name, tmp_path):
    torch.manual_seed(0)
    trained = all_quantizers()[name]
    x = torch.randn(4, 16, 8)
    trained(x)
    trained.eval()
    save_file(trained.state_dict(), tmp_path / "q.safetensors")

    fresh = all_quantizers()[name].eval()
    fresh.load_state_dict(load_file(tmp_path / "q.safetensors"))
    assert torch.equal(fresh(x).indices, trained(x).indices)
    assert torch.equal(fresh(x).quantized, trained(x).quantized)


# ---- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: VectorQuantizer(8, 0), "codebook_size must be an integer >= 1, got 0"),
        (lambda: VectorQuantizer(0, 8), "dim must be an integer >= 1, got 0"),
        (lambda: ResidualVQ(8, 16, depth=0), "depth must be an integer >= 1, got 0"),
        (lambda: VectorQuantizer(8, 16, distance="manhattan"), "distance must be 'l2' or 'cosine'"),
        (lambda: VectorQuantizer(8, 16, ema_decay=1.5), "ema_decay must be in"),
        (lambda: GroupedVQ(10, 16, groups=3), "dim=10 must be divisible by groups=3"),
        (lambda: FSQ([5, 1]), "levels must be a non-empty list of integers >= 2"),
        (lambda: TopKCodebook(8, 16, k=17), "k=17 is larger than codebook_size=16"),
    ],
)
def test_constructor_rejects_bad_arguments(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize("name", list(all_quantizers()))
def test_forward_rejects_bad_input(name):
    quantizer = all_quantizers()[name]
    with pytest.raises(ValueError, match="expected dim=8"):
        quantizer(torch.randn(4, 7))
    with pytest.raises(ValueError, match="floating-point"):
        quantizer(torch.ones(4, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="1 non-finite"):
        bad = torch.randn(4, 8)
        bad[1, 2] = float("nan")
        quantizer(bad)


def test_codes_from_indices_rejects_out_of_range():
    vq = VectorQuantizer(8, 16)
    with pytest.raises(ValueError, match=r"contains 16, outside the valid range \[0, 15\]"):
        vq.codes_from_indices(torch.tensor([0, 16]))
    with pytest.raises(ValueError, match="contains -1"):
        vq.codes_from_indices(torch.tensor([-1]))
    with pytest.raises(ValueError, match="integer dtype"):
        vq.codes_from_indices(torch.tensor([0.0]))


def test_channel_first_error_names_layout():
    vq = VectorQuantizer(8, 16, channel_first=True)
    with pytest.raises(ValueError, match=r"3 channels on axis 1, expected dim=8"):
        vq(torch.randn(2, 3, 4, 4))


@pytest.mark.parametrize("name", list(all_quantizers()))
def test_save_pretrained_round_trip(name, tmp_path):
    torch.manual_seed(0)
    trained = all_quantizers()[name]
    x = torch.randn(4, 16, 8)
    trained(x)
    trained.eval()
    trained.save_pretrained(tmp_path / name)

    loaded = type(trained).from_pretrained(tmp_path / name).eval()
    assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert torch.equal(loaded(x).quantized, trained(x).quantized)
    assert torch.equal(loaded(x).indices, trained(x).indices)
