"""Codebook-feature language models: the per-site bottleneck, `CausalLM` and `CodebookLM`.

Every model here is a tiny transformers decoder built from a local config (hidden size 32,
two layers, two heads), so nothing is downloaded.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    PreTrainedTokenizerFast,
)

from vqkit.models.causal_lm import CausalLM
from vqkit.models.codebook_bottleneck import (
    CodebookBottleneck,
    CodeOverride,
    _merge_forced,
)
from vqkit.models.codebook_lm import DECODER_LAYOUTS, CodebookLM

VOCAB_SIZE = 11
TINY_LLAMA = {
    "model_type": "llama",
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}
ALL_SITES = ["layers.0.attn", "layers.0.mlp", "layers.1.attn", "layers.1.mlp"]
WORDS = ["[UNK]", "the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "home"]


def make_codebook_lm(**overrides) -> CodebookLM:
    """Return a tiny Llama `CodebookLM` in eval mode whose codebooks were fitted by one training forward."""
    torch.manual_seed(0)
    settings = {"codebook_size": 8, "k": 2, "dead_code_threshold": None, **overrides}
    model = CodebookLM(TINY_LLAMA, **settings)
    model.train()
    with torch.no_grad():
        model(torch.randint(0, VOCAB_SIZE, (4, 16)))
    return model.eval()


@pytest.fixture(scope="module")
def codebook_lm() -> CodebookLM:
    return make_codebook_lm()


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB_SIZE, (2, 9), generator=torch.Generator().manual_seed(1))


def make_tokenizer() -> PreTrainedTokenizerFast:
    """Return a whitespace word-level tokenizer whose 11 words match VOCAB_SIZE."""
    backend = Tokenizer(models.WordLevel({word: index for index, word in enumerate(WORDS)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


# ---- CodebookBottleneck ------------------------------------------------------------------------------


def make_bottleneck(groups: int = 2, k: int = 2, codebook_size: int = 6) -> CodebookBottleneck:
    torch.manual_seed(0)
    bottleneck = CodebookBottleneck(8, codebook_size, k, groups=groups, kmeans_init=False)
    return bottleneck.eval()


def unforced_ranking(bottleneck: CodebookBottleneck, x: torch.Tensor, group: int) -> torch.Tensor:
    """Return every code of `group` for each (B, T) vector, sorted by x.c / ||c||, best first."""
    part = x.chunk(bottleneck.groups, dim=-1)[group]
    unit_codes = nn.functional.normalize(bottleneck.codebooks[group].codebook.weight, dim=-1)
    return (part @ unit_codes.T).argsort(dim=-1, descending=True)


def test_bottleneck_output_and_indices_shapes():
    bottleneck = make_bottleneck()
    bottleneck.recording = True
    x = torch.randn(3, 5, 8)

    output = bottleneck(x)

    assert output.shape == (3, 5, 8)
    assert bottleneck.last_indices.shape == (3, 5, 2, 2)
    assert bottleneck.last_indices.dtype == torch.long
    assert bottleneck.last_loss.ndim == 0


def test_bottleneck_without_recording_keeps_no_indices():
    bottleneck = make_bottleneck()
    bottleneck(torch.randn(1, 4, 8))
    assert bottleneck.last_indices is None


def test_bottleneck_output_is_mean_of_selected_codes():
    bottleneck = make_bottleneck()
    bottleneck.recording = True
    x = torch.randn(2, 4, 8)

    output = bottleneck(x)

    for group in range(2):
        weight = bottleneck.codebooks[group].codebook.weight
        expected = weight[bottleneck.last_indices[:, :, group]].mean(dim=-2)
        assert torch.equal(output[..., group * 4 : (group + 1) * 4], expected)


def test_bottleneck_selects_best_codes():
    bottleneck = make_bottleneck()
    bottleneck.recording = True
    x = torch.randn(2, 4, 8)

    bottleneck(x)

    for group in range(2):
        ranking = unforced_ranking(bottleneck, x, group)
        assert torch.equal(bottleneck.last_indices[:, :, group], ranking[..., :2])


def test_disabled_bottleneck_passes_input_through():
    bottleneck = make_bottleneck()
    bottleneck.enabled = False
    x = torch.randn(2, 3, 8)

    assert torch.equal(bottleneck(x), x)
    assert bottleneck.last_loss is None


def test_bottleneck_rejects_indivisible_groups():
    with pytest.raises(ValueError, match="dim=8 must be divisible by groups=3"):
        CodebookBottleneck(8, 4, 1, groups=3)


def test_bottleneck_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match=r"expected activations with 8 channels, got shape \(1, 2, 6\)"):
        make_bottleneck()(torch.randn(1, 2, 6))


def test_override_forces_codes_at_positions():
    bottleneck = make_bottleneck()
    bottleneck.recording = True
    x = torch.randn(2, 5, 8)
    bottleneck(x)
    unforced = bottleneck.last_indices.clone()
    ranking = unforced_ranking(bottleneck, x, 0)

    bottleneck.override = CodeOverride(torch.tensor([[3], [-1]]), positions=[1, -1])
    bottleneck(x)
    forced = bottleneck.last_indices

    for position in (1, 4):
        assert torch.equal(forced[:, position, 0, 0], torch.tensor([3, 3]))
        # The remaining k - n slot contains the best code other than the forced one.
        for row in range(2):
            best_other = next(code for code in ranking[row, position].tolist() if code != 3)
            assert int(forced[row, position, 0, 1]) == best_other
    for position in (0, 2, 3):
        assert torch.equal(forced[:, position], unforced[:, position])
    # The group whose codes are all -1 keeps its own codes everywhere.
    assert torch.equal(forced[:, :, 1], unforced[:, :, 1])


def test_override_of_k_codes_replaces_all():
    bottleneck = make_bottleneck()
    bottleneck.recording = True
    x = torch.randn(2, 5, 8)
    codes = torch.tensor([[4, 1], [2, 5]])

    bottleneck.override = CodeOverride(codes)
    output = bottleneck(x)

    assert torch.equal(bottleneck.last_indices, codes.expand(2, 5, 2, 2))
    expected = torch.cat([bottleneck.codebooks[g].codebook.weight[codes[g]].mean(dim=0) for g in range(2)])
    assert torch.equal(output, expected.expand(2, 5, 8))
    assert bottleneck.last_loss is None


def test_override_with_codes_per_position():
    bottleneck = make_bottleneck(groups=1, k=1)
    bottleneck.recording = True
    x = torch.randn(1, 4, 8)
    bottleneck(x)
    unforced = bottleneck.last_indices.clone()

    bottleneck.override = CodeOverride(torch.tensor([[[5]], [[0]]]), positions=[0, 2])
    bottleneck(x)

    assert bottleneck.last_indices[0, :, 0, 0].tolist() == [5, int(unforced[0, 1, 0, 0]), 0, int(unforced[0, 3, 0, 0])]


def test_override_with_own_codes_keeps_output():
    bottleneck = make_bottleneck()
    bottleneck.recording = True
    x = torch.randn(1, 3, 8)
    plain = bottleneck(x)
    own = bottleneck.last_indices[0]  # (T, G, k)

    bottleneck.override = CodeOverride(own, positions=[0, 1, 2])
    steered = bottleneck(x)

    torch.testing.assert_close(steered, plain, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("codes", "message"),
    [
        (torch.tensor([[1], [1], [1]]), r"shaped \(groups=2, n\) or \(positions, 2, n\), got \(3, 1\)"),
        (torch.tensor([1, 2]), r"got \(2,\)"),
        (torch.tensor([[1, 2, 3], [1, 2, 3]]), "1 to k=2 codes per group, got 3"),
        (torch.tensor([[6], [0]]), r"code ids must lie in \[0, 5\] \(or be -1\), got 6"),
        (torch.tensor([[-1, 2], [0, 1]]), "must be all -1"),
        (torch.tensor([[-1], [-1]]), "every entry is -1"),
        (torch.tensor([[[1], [-1]], [[-1], [-1]]]), "-1 at every position or at none"),
    ],
)
def test_invalid_override_codes_raise(codes, message):
    bottleneck = make_bottleneck()
    with pytest.raises(ValueError, match=message):
        bottleneck.check_codes(codes)


def test_override_code_count_must_match_positions():
    bottleneck = make_bottleneck(groups=1, k=1)
    bottleneck.override = CodeOverride(torch.tensor([[[1]], [[2]]]), positions=[0, 1, 2])
    with pytest.raises(ValueError, match="codes for 2 positions but lists 3"):
        bottleneck(torch.randn(1, 4, 8))


def test_override_rejects_position_past_sequence():
    bottleneck = make_bottleneck(groups=1, k=1)
    bottleneck.override = CodeOverride(torch.tensor([[1]]), positions=[7])
    with pytest.raises(ValueError):
        bottleneck(torch.randn(1, 5, 8))


def test_override_during_training_raises():
    bottleneck = make_bottleneck()
    bottleneck.train()
    bottleneck.override = CodeOverride(torch.tensor([[1], [2]]))
    with pytest.raises(RuntimeError, match="call model.eval"):
        bottleneck(torch.randn(1, 3, 8))


def test_merge_forced_puts_forced_codes_first():
    candidates = torch.tensor([[[5, 3, 7, 1]]])

    assert _merge_forced(candidates, torch.tensor([[[7]]]), k=3).tolist() == [[[7, 5, 3]]]
    assert _merge_forced(candidates, torch.tensor([[[9]]]), k=3).tolist() == [[[9, 5, 3]]]
    assert _merge_forced(candidates, torch.tensor([[[1, 5]]]), k=2).tolist() == [[[1, 5]]]


# ---- CodebookLM: construction and sites -----------------------------------------------------------------


def test_sites_cover_every_block(codebook_lm):
    assert codebook_lm.sites == ALL_SITES


def test_site_groups_and_dims(codebook_lm):
    attention = codebook_lm.bottleneck("layers.0.attn")
    mlp = codebook_lm.bottleneck("layers.1.mlp")

    assert attention.dim == 32
    assert attention.groups == 2
    assert attention.k == 2
    assert attention.codebook_size == 8
    assert mlp.dim == 32
    assert mlp.groups == 1


def test_sites_and_layers_select_bottlenecks():
    model = CodebookLM(TINY_LLAMA, codebook_size=4, sites=("mlp",), layers=[1])
    assert model.sites == ["layers.1.mlp"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sites": ("ffn",)}, r"sites must be a non-empty subset of \('attn', 'mlp'\), got \['ffn'\]"),
        ({"sites": ()}, "sites must be a non-empty subset"),
        ({"layers": [2]}, r"layers \[2\] do not exist; this model has layers 0..1"),
        ({"codebook_size": 4, "k": 5}, "k=5 is larger than codebook_size=4"),
    ],
)
def test_invalid_codebook_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CodebookLM(TINY_LLAMA, **{"codebook_size": 8, **kwargs})


def test_lm_config_without_model_type_raises():
    with pytest.raises(ValueError, match="lm_config must be a dict with a 'model_type' entry"):
        CausalLM({"vocab_size": 11})


def test_unknown_site_raises_with_valid_sites(codebook_lm, tokens):
    with pytest.raises(ValueError, match="unknown codebook site 'layers.5.mlp'; valid sites: layers.0.attn, "):
        codebook_lm.bottleneck("layers.5.mlp")
    with pytest.raises(ValueError, match="unknown codebook site 'mlp'"), codebook_lm.recording(["mlp"]):
        pass
    override = CodeOverride(torch.tensor([[1]]))
    with pytest.raises(ValueError, match="unknown codebook site 'layers.0.ffn'"), codebook_lm.steering({"layers.0.ffn": override}):
        pass


def test_code_vector_is_codebook_row(codebook_lm):
    vector = codebook_lm.code_vector("layers.0.attn", 3, group=1)
    expected = codebook_lm.bottleneck("layers.0.attn").codebooks[1].codebook.weight[3]

    assert vector.shape == (16,)
    assert torch.equal(vector, expected)


@pytest.mark.parametrize(
    ("code", "group", "message"),
    [(8, 0, r"code 8 does not exist; valid codes are 0..7"), (0, 2, r"group 2 does not exist at layers.0.attn")],
)
def test_code_vector_rejects_invalid_code_or_group(codebook_lm, code, group, message):
    with pytest.raises(ValueError, match=message):
        codebook_lm.code_vector("layers.0.attn", code, group=group)


# ---- input checks ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("input_ids", "message"),
    [
        (torch.zeros(1, 0, dtype=torch.long), "input_ids is empty"),
        (torch.zeros(4, dtype=torch.long), r"shaped \(batch, tokens\), got \(4,\)"),
        (torch.zeros(1, 4, dtype=torch.int32), "dtype torch.long, got torch.int32"),
        (torch.tensor([[1, 11]]), r"token ids must lie in \[0, 10\], got values in \[1, 11\]"),
        (torch.tensor([[-1, 3]]), r"got values in \[-1, 3\]"),
        ([[1, 2]], "got list"),
    ],
)
def test_invalid_input_ids_raise(codebook_lm, input_ids, message):
    with pytest.raises(ValueError, match=message):
        codebook_lm(input_ids)


def test_empty_batch_raises_value_error(codebook_lm):
    with pytest.raises(ValueError, match="input_ids is empty"):
        codebook_lm.check_token_ids(torch.zeros(0, 5, dtype=torch.long))


def test_generate_checks_input_ids(codebook_lm):
    with pytest.raises(ValueError, match="input_ids is empty"):
        codebook_lm.generate(torch.zeros(1, 0, dtype=torch.long), max_new_tokens=2)


# ---- forward, recording and steering ---------------------------------------------------------------


def test_forward_losses_add_up(codebook_lm, tokens):
    with torch.no_grad():
        output = codebook_lm(tokens, labels=tokens)

    assert output.logits.shape == (2, 9, VOCAB_SIZE)
    assert float(output.codebook_loss) > 0
    torch.testing.assert_close(output.loss, output.lm_loss + output.codebook_loss)


def test_forward_without_labels_has_no_loss(codebook_lm, tokens):
    with torch.no_grad():
        output = codebook_lm(tokens)
    assert output.loss is None
    assert output.lm_loss is None


def test_codebook_loss_weight_scales_codebook_loss(tokens):
    model = make_codebook_lm(codebook_loss_weight=0.5)
    with torch.no_grad():
        output = model(tokens, labels=tokens)
    torch.testing.assert_close(output.loss, output.lm_loss + 0.5 * output.codebook_loss)


def test_recording_shapes(codebook_lm, tokens):
    with torch.no_grad(), codebook_lm.recording() as codes:
        codebook_lm(tokens)

    assert sorted(codes) == sorted(ALL_SITES)
    assert codes["layers.0.attn"].shape == (2, 9, 2, 2)
    assert codes["layers.1.mlp"].shape == (2, 9, 1, 2)
    for site_codes in codes.values():
        assert site_codes.dtype == torch.long
        assert int(site_codes.min()) >= 0
        assert int(site_codes.max()) < 8


def test_recording_selected_sites_and_cleanup(codebook_lm, tokens):
    with torch.no_grad(), codebook_lm.recording(["layers.1.attn"]) as codes:
        codebook_lm(tokens)

    assert list(codes) == ["layers.1.attn"]
    bottleneck = codebook_lm.bottleneck("layers.1.attn")
    assert bottleneck.recording is False
    assert bottleneck.last_indices is None


def test_encode_codes_matches_recording(codebook_lm, tokens):
    with torch.no_grad(), codebook_lm.recording() as recorded:
        codebook_lm(tokens)
    encoded = codebook_lm.encode_codes(tokens)

    assert sorted(encoded) == sorted(recorded)
    for site in ALL_SITES:
        assert torch.equal(encoded[site], recorded[site])


def test_steering_last_position_only(codebook_lm, tokens):
    with torch.no_grad():
        plain = codebook_lm(tokens).logits
        own = codebook_lm.encode_codes(tokens, ["layers.1.mlp"])["layers.1.mlp"]
    # Force two codes that the first row does not use at its last position.
    unused = [code for code in range(8) if code not in own[0, -1, 0].tolist()][:2]
    override = CodeOverride(torch.tensor([unused]), positions=[-1])

    with torch.no_grad(), codebook_lm.steering({"layers.1.mlp": override}), codebook_lm.recording() as codes:
        steered = codebook_lm(tokens).logits

    assert codes["layers.1.mlp"][0, -1, 0].tolist() == unused
    assert not torch.allclose(steered[:, -1], plain[:, -1])
    torch.testing.assert_close(steered[:, :-1], plain[:, :-1])


def test_steering_is_undone_after_block(codebook_lm, tokens):
    override = CodeOverride(torch.tensor([[1, 2]]))
    with torch.no_grad():
        plain = codebook_lm(tokens).logits
        with pytest.raises(KeyError), codebook_lm.steering({"layers.0.mlp": override}):
            raise KeyError("leave the block early")
        after = codebook_lm(tokens).logits

    assert codebook_lm.bottleneck("layers.0.mlp").override is None
    assert torch.equal(after, plain)


def test_steering_checks_codes_before_block(codebook_lm):
    entered = False
    override = CodeOverride(torch.tensor([[8, 1]]))
    with pytest.raises(ValueError, match="code ids must lie in"), codebook_lm.steering({"layers.0.mlp": override}):
        entered = True
    assert not entered
    assert codebook_lm.bottleneck("layers.0.mlp").override is None


def test_steering_in_training_mode_raises(tokens):
    model = make_codebook_lm()
    model.train()
    override = CodeOverride(torch.tensor([[1]]))
    with pytest.raises(RuntimeError, match="code overrides are for evaluation"), model.steering({"layers.0.mlp": override}):
        model(tokens)


def test_steering_applies_to_generated_tokens(codebook_lm):
    prompt = torch.tensor([[1, 2, 3]])
    forced = torch.tensor([[5, 6]])
    seen = []
    bottleneck = codebook_lm.bottleneck("layers.1.mlp")
    handle = bottleneck.register_forward_hook(lambda module, args, output: seen.append(module.last_indices.clone()))
    try:
        with torch.no_grad(), codebook_lm.steering({"layers.1.mlp": CodeOverride(forced)}), codebook_lm.recording():
            generated = codebook_lm.generate(
                prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=3, do_sample=False, eos_token_id=None
            )
    finally:
        handle.remove()

    assert generated.shape == (1, 6)
    assert len(seen) == 3
    for indices in seen:
        assert torch.equal(indices[0, :, 0], forced.expand(indices.shape[1], 2))


# ---- codebooks_disabled -------------------------------------------------------------------------------


def plain_llama_with_weights(model: CodebookLM) -> LlamaForCausalLM:
    plain = LlamaForCausalLM(LlamaConfig(**{key: value for key, value in TINY_LLAMA.items() if key != "model_type"}))
    plain.load_state_dict(model.lm.state_dict())
    return plain.eval()


def test_codebooks_disabled_matches_plain_model(codebook_lm, tokens):
    plain = plain_llama_with_weights(codebook_lm)
    with torch.no_grad():
        expected = plain(tokens, labels=tokens)
        with codebook_lm.codebooks_disabled():
            disabled = codebook_lm(tokens, labels=tokens)
        enabled = codebook_lm(tokens).logits

    assert torch.equal(disabled.logits, expected.logits)
    assert torch.equal(disabled.lm_loss, expected.loss)
    assert float(disabled.codebook_loss) == 0.0
    assert not torch.allclose(enabled, expected.logits)


def test_codebooks_disabled_restores_previous_flags(codebook_lm):
    codebook_lm.bottleneck("layers.0.mlp").enabled = False
    try:
        with codebook_lm.codebooks_disabled():
            assert not any(codebook_lm.bottleneck(site).enabled for site in ALL_SITES)
        assert codebook_lm.bottleneck("layers.0.mlp").enabled is False
        assert codebook_lm.bottleneck("layers.1.mlp").enabled is True
    finally:
        codebook_lm.bottleneck("layers.0.mlp").enabled = True


# ---- checkpoints -----------------------------------------------------------------------------------------


def test_save_and_load_round_trip_with_tokenizer(codebook_lm, tokens, tmp_path):
    codebook_lm.tokenizer = make_tokenizer()
    try:
        codebook_lm.save_pretrained(tmp_path / "model")
    finally:
        codebook_lm.tokenizer = None

    loaded = CodebookLM.from_pretrained(tmp_path / "model")
    with torch.no_grad():
        expected = codebook_lm(tokens).logits
        actual = loaded(tokens).logits

    assert type(loaded) is CodebookLM
    assert loaded.sites == ALL_SITES
    assert loaded.training is False
    assert torch.equal(actual, expected)
    assert loaded.tokenizer is not None
    assert loaded.tokenizer("the cat sat")["input_ids"] == [1, 2, 3]
    assert loaded.tokenizer.get_vocab() == make_tokenizer().get_vocab()


def test_checkpoint_config_holds_codebook_settings(codebook_lm, tmp_path):
    codebook_lm.save_pretrained(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())

    assert config["codebook_size"] == 8
    assert config["k"] == 2
    assert config["lm_config"]["model_type"] == "llama"
    assert not (tmp_path / "model" / "tokenizer_config.json").exists()
    assert CodebookLM.from_pretrained(tmp_path / "model").tokenizer is None


def test_causal_lm_round_trip(tmp_path, tokens):
    torch.manual_seed(0)
    model = CausalLM(TINY_LLAMA).eval()
    model.save_pretrained(tmp_path / "plain")
    loaded = CausalLM.from_pretrained(tmp_path / "plain")

    with torch.no_grad():
        assert torch.equal(loaded(tokens).logits, model(tokens).logits)


# ---- from_hf ------------------------------------------------------------------------------------------


def tiny_hf_model(model_type: str):
    """Return a randomly initialised two-layer transformers causal LM of `model_type`, in eval mode."""
    torch.manual_seed(0)
    if model_type == "gpt2":
        config = GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=0, eos_token_id=0)
        return GPT2LMHeadModel(config).eval()
    if model_type == "gpt_neox":
        config = GPTNeoXConfig(
            vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64,
        )
        return GPTNeoXForCausalLM(config).eval()
    config = AutoConfig.for_model(
        model_type, vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
    )
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("model_type", sorted(DECODER_LAYOUTS))
def test_from_hf_wraps_every_supported_decoder(model_type):
    lm = tiny_hf_model(model_type)
    x = torch.randint(0, 50, (1, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = lm(x).logits

    model = CodebookLM.from_hf(lm, codebook_size=4, k=1, dead_code_threshold=None, kmeans_init=False)
    with torch.no_grad():
        with model.codebooks_disabled():
            disabled = model(x).logits
        with model.recording() as codes:
            enabled = model(x).logits

    assert model.lm is lm
    assert model.sites == ALL_SITES
    assert torch.equal(disabled, reference)
    assert not torch.allclose(enabled, reference)
    assert codes["layers.1.attn"].shape == (1, 6, 2, 1)
    assert codes["layers.1.mlp"].shape == (1, 6, 1, 1)


@pytest.mark.parametrize("model_type", ["gpt_neox", "gpt2"])
def test_from_hf_round_trip(model_type, tmp_path):
    model = CodebookLM.from_hf(tiny_hf_model(model_type), codebook_size=4, k=1, dead_code_threshold=None)
    x = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()

    model.save_pretrained(tmp_path / "model")
    loaded = CodebookLM.from_pretrained(tmp_path / "model")

    assert loaded.config.model_type == model_type
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)


def test_from_hf_keeps_tokenizer_and_settings():
    tokenizer = make_tokenizer()
    lm = LlamaForCausalLM(LlamaConfig(**{key: value for key, value in TINY_LLAMA.items() if key != "model_type"}))

    model = CodebookLM.from_hf(lm, tokenizer=tokenizer, codebook_size=5, k=3, sites=("attn",))

    assert model.tokenizer is tokenizer
    assert model.sites == ["layers.0.attn", "layers.1.attn"]
    assert model.bottleneck("layers.0.attn").k == 3


def test_from_hf_unsupported_model_type():
    config = OPTConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, ffn_dim=64, word_embed_proj_dim=32,
        max_position_embeddings=64,
    )
    with pytest.raises(ValueError, match="model_type 'opt'") as error:
        CodebookLM.from_hf(OPTForCausalLM(config), codebook_size=4)
    for model_type in DECODER_LAYOUTS:
        assert model_type in str(error.value)


def test_from_hf_rejects_non_transformers_module():
    with pytest.raises(TypeError, match="PreTrainedModel, got Linear"):
        CodebookLM.from_hf(nn.Linear(2, 2))


# ---- perplexity and training -------------------------------------------------------------------------


def test_perplexity_is_exp_mean_loss(tokens):
    torch.manual_seed(0)
    model = CausalLM(TINY_LLAMA)
    model.train()
    windows = list(tokens) + [tokens[0].flip(0)]
    with torch.no_grad():
        loss = model.eval()(torch.stack(windows), labels=torch.stack(windows)).loss
    model.train()

    perplexity = model.perplexity(windows, batch_size=2)

    assert perplexity == pytest.approx(math.exp(float(loss)), rel=1e-5)
    assert model.training is True


def test_perplexity_without_windows_raises(codebook_lm):
    with pytest.raises(ValueError, match="at least one window"):
        codebook_lm.perplexity([])


def test_perplexity_excludes_codebook_loss(codebook_lm, tokens):
    with torch.no_grad():
        output = codebook_lm(tokens, labels=tokens)
    assert codebook_lm.perplexity(list(tokens)) == pytest.approx(math.exp(float(output.lm_loss)), rel=1e-5)


def test_training_reduces_loss_on_fixed_batch():
    from vqkit.data.fsm import FSM, FSMSequences

    fsm = FSM()
    dataset = FSMSequences(fsm, num_states_per_sequence=8)
    batch = torch.stack([dataset[index] for index in range(8)])
    torch.manual_seed(0)
    model = CodebookLM(TINY_LLAMA, codebook_size=16, k=1, dead_code_threshold=None).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    losses = []
    for _ in range(20):
        output = model(batch, labels=batch)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        losses.append(float(output.lm_loss.detach()))

    assert losses[-1] < losses[0] - 0.3, losses
    assert all(bool(model.bottleneck(site).codebooks[0].codebook.initialized) for site in ALL_SITES)


def test_exclusive_override_outputs_forced_code(codebook_lm):
    codebook_lm.eval()
    bottleneck = codebook_lm.bottleneck("layers.0.mlp")
    tokens = torch.tensor([[10, 1, 2, 3, 4]])
    forced = torch.tensor([[3]])
    seen = []
    handle = bottleneck.register_forward_hook(lambda module, args, output: seen.append(output.detach()))
    try:
        with codebook_lm.steering({"layers.0.mlp": CodeOverride(forced, exclusive=True)}), codebook_lm.recording() as codes:
            codebook_lm(tokens)
    finally:
        handle.remove()

    expected = bottleneck.codebooks[0].codebook.weight[3].detach()
    torch.testing.assert_close(seen[0][0, -1], expected.to(seen[0].dtype))
    assert (codes["layers.0.mlp"][0, :, 0] == 3).all()


def test_exclusive_override_needs_divisor_of_k():
    model = make_codebook_lm(k=4)
    codes = torch.tensor([[0, 1, 2]])

    with pytest.raises(ValueError, match="divides k=4"), model.steering({"layers.0.mlp": CodeOverride(codes, exclusive=True)}):
        model(torch.tensor([[10, 1, 2]]))


def test_repeated_layers_raise():
    with pytest.raises(ValueError, match="repeats a layer"):
        CodebookLM(TINY_LLAMA, codebook_size=8, k=2, layers=[0, 0])


def test_single_site_string_is_accepted():
    model = CodebookLM(TINY_LLAMA, codebook_size=8, k=2, sites="mlp")

    assert model.sites == ["layers.0.mlp", "layers.1.mlp"]


def test_recording_accepts_one_site_name(codebook_lm, tokens):
    codes = codebook_lm.encode_codes(tokens, sites="layers.0.attn")

    assert list(codes) == ["layers.0.attn"]


def test_float_override_codes_raise(codebook_lm, tokens):
    with pytest.raises(ValueError, match="integer code ids"), codebook_lm.steering(
        {"layers.0.mlp": CodeOverride(torch.tensor([[1.7]]))}
    ):
        codebook_lm(tokens)


def test_non_integer_positions_raise(codebook_lm, tokens):
    with pytest.raises(ValueError, match="list of ints"), codebook_lm.steering(
        {"layers.0.mlp": CodeOverride(torch.tensor([[1]]), positions="last")}
    ):
        codebook_lm(tokens)
