"""Metrics of the codebook-feature language models: TokFSM transition and code metrics, and the
text code search and steering rate.

The TokFSM metrics are checked against two reference models with known results: an oracle
that outputs the machine's true next-digit distribution, and a model that is uniform over digits.
"""

from __future__ import annotations

import math
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn
from transformers import PreTrainedTokenizerFast

from vqkit.data.fsm import FSM, FSMSequences
from vqkit.evals.codebook_text_metrics import (
    TOKEN_SETS,
    Activations,
    code_contexts,
    collect_activations,
    search_codes,
    steering_rate,
    token_set_ids,
)
from vqkit.evals.tokfsm_metrics import (
    first_transition_accuracy,
    js_divergence,
    next_state_distribution,
    state_prefixes,
    state_purity,
    steering_by_layer,
    transition_accuracy,
)
from vqkit.models.codebook_lm import CodebookLM

TINY_LLAMA = {
    "model_type": "llama",
    "vocab_size": 11,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}


class OracleModel(nn.Module):
    """A model that outputs the true next-digit distribution of `fsm` as log-probabilities at every position.

    The current state is decoded from the digits read so far. After BOS alone the next state
    is uniform, as it is in `FSMSequences`. A digit prefix that no successor starts with gets
    a uniform digit distribution, so every row stays a valid distribution.
    """

    def __init__(self, fsm: FSM):
        super().__init__()
        self.fsm = fsm
        self.anchor = nn.Parameter(torch.zeros(()))  # the metrics read the device from the parameters
        self.state_digits = torch.tensor([fsm.state_tokens(state) for state in range(fsm.num_states)])

    def next_token_probs(self, tokens: list[int]) -> torch.Tensor:
        fsm = self.fsm
        digits = tokens[1:]
        complete = len(digits) // fsm.digits
        partial = digits[complete * fsm.digits :]
        state = fsm.decode(tokens[: 1 + complete * fsm.digits])[-1] if complete else None
        if state is None:
            weights = torch.full((fsm.num_states,), 1.0 / fsm.num_states)
        else:
            weights = fsm.transition_matrix[state].clone()
        matches = (self.state_digits[:, : len(partial)] == torch.tensor(partial, dtype=torch.long)).all(dim=1)
        weights = weights * matches
        probs = torch.zeros(fsm.vocab_size)
        probs.index_add_(0, self.state_digits[:, len(partial)], weights)
        if float(probs.sum()) == 0.0:
            probs[: fsm.base] = 1.0
        return probs / probs.sum()

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        rows = []
        for sequence in input_ids.tolist():
            rows.append(torch.stack([self.next_token_probs(sequence[: end + 1]) for end in range(len(sequence))]))
        return SimpleNamespace(logits=torch.stack(rows).log())

    def sample(self, input_ids: torch.Tensor, max_new_tokens: int, *, seed: int | None = None, **kwargs) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed if seed is not None else 0)
        tokens = input_ids
        for _ in range(max_new_tokens):
            probs = self(tokens).logits[:, -1].exp()
            tokens = torch.cat([tokens, torch.multinomial(probs, 1, generator=generator)], dim=1)
        return tokens[:, input_ids.shape[1] :]


class UniformDigitModel(OracleModel):
    """A model with equal probability on every digit and none on BOS."""

    def next_token_probs(self, tokens: list[int]) -> torch.Tensor:
        probs = torch.zeros(self.fsm.vocab_size)
        probs[: self.fsm.base] = 1.0 / self.fsm.base
        return probs


@pytest.fixture(scope="module")
def fsm() -> FSM:
    return FSM()


def make_codebook_lm(codebook_size: int = 8, k: int = 1) -> CodebookLM:
    """Return a tiny Llama `CodebookLM` over TokFSM tokens, its codebooks fitted on one batch of walks."""
    torch.manual_seed(0)
    model = CodebookLM(TINY_LLAMA, codebook_size=codebook_size, k=k, dead_code_threshold=None)
    walks = FSMSequences(FSM(), num_states_per_sequence=8, seed=5)
    model.train()
    with torch.no_grad():
        model(torch.stack([walks[index] for index in range(8)]))
    return model.eval()


@pytest.fixture(scope="module")
def codebook_lm() -> CodebookLM:
    return make_codebook_lm()


# ---- next_state_distribution and first_transition_accuracy ------------------------------------------


def test_oracle_distribution_equals_transition_rows(fsm):
    states = [0, 7, 42, 99]
    distribution = next_state_distribution(OracleModel(fsm), fsm, state_prefixes(fsm, states))

    assert distribution.shape == (4, 100)
    torch.testing.assert_close(distribution, fsm.transition_matrix[states])


def test_oracle_distribution_after_longer_walks(fsm):
    generator = np.random.default_rng(0)
    walks = [fsm.walk(5, generator) for _ in range(3)]
    prefixes = torch.stack([fsm.encode(walk) for walk in walks])

    distribution = next_state_distribution(OracleModel(fsm), fsm, prefixes)

    torch.testing.assert_close(distribution, fsm.transition_matrix[[walk[-1] for walk in walks]])


def test_oracle_distribution_with_three_digit_states():
    machine = FSM(num_states=20, num_edges=3, base=3, seed=1)
    assert machine.digits == 3
    states = list(range(20))

    distribution = next_state_distribution(OracleModel(machine), machine, state_prefixes(machine, states))

    torch.testing.assert_close(distribution, machine.transition_matrix)


def test_oracle_first_transition_accuracy_is_one(fsm):
    assert first_transition_accuracy(OracleModel(fsm), fsm) == 1.0


def test_uniform_model_distribution_is_uniform(fsm):
    distribution = next_state_distribution(UniformDigitModel(fsm), fsm, state_prefixes(fsm, [3, 50]))
    torch.testing.assert_close(distribution, torch.full((2, 100), 0.01))


def test_uniform_model_accuracy_is_chance(fsm):
    accuracy = first_transition_accuracy(UniformDigitModel(fsm), fsm)
    assert abs(accuracy - fsm.num_edges / fsm.num_states) < 0.05


def test_distribution_drops_digits_past_last_state():
    # 50 states in two decimal digits: the strings 50..99 name no state.
    machine = FSM(num_states=50, num_edges=5)
    prefixes = state_prefixes(machine, [0, 49])

    uniform = next_state_distribution(UniformDigitModel(machine), machine, prefixes)
    oracle = next_state_distribution(OracleModel(machine), machine, prefixes)

    torch.testing.assert_close(uniform.sum(dim=1), torch.full((2,), 0.5))
    torch.testing.assert_close(oracle, machine.transition_matrix[[0, 49]])


def test_state_prefixes_are_bos_and_digits(fsm):
    assert state_prefixes(fsm, [42, 7]).tolist() == [[10, 4, 2], [10, 0, 7]]


def test_codebook_lm_distribution_is_normalised(fsm, codebook_lm):
    distribution = next_state_distribution(codebook_lm, fsm, state_prefixes(fsm, [1, 2, 3]))

    assert distribution.shape == (3, 100)
    assert float(distribution.min()) >= 0.0
    # 100 states use every two-digit string, so only the mass on BOS is dropped.
    assert bool((distribution.sum(dim=1) <= 1.0 + 1e-5).all())
    assert bool((distribution.sum(dim=1) > 0.5).all())


def test_override_with_own_codes_keeps_distribution(fsm, codebook_lm):
    prefixes = state_prefixes(fsm, [12, 34])
    own = codebook_lm.encode_codes(prefixes, ["layers.1.mlp"])["layers.1.mlp"][:, -fsm.digits :]  # (B, digits, G, k)

    plain = next_state_distribution(codebook_lm, fsm, prefixes)
    forced = next_state_distribution(codebook_lm, fsm, prefixes, override_sites={"layers.1.mlp": own})

    torch.testing.assert_close(forced, plain)


def test_override_with_other_codes_changes_distribution(fsm, codebook_lm):
    prefixes = state_prefixes(fsm, [12])
    own = codebook_lm.encode_codes(prefixes, ["layers.1.mlp"])["layers.1.mlp"][:, -fsm.digits :]
    other = (own + 1) % 8

    plain = next_state_distribution(codebook_lm, fsm, prefixes)
    forced = next_state_distribution(codebook_lm, fsm, prefixes, override_sites={"layers.1.mlp": other})

    assert not torch.allclose(forced, plain)


# ---- transition_accuracy ---------------------------------------------------------------------------


def test_oracle_transition_accuracy_is_one(fsm):
    assert transition_accuracy(OracleModel(fsm), fsm, num_sequences=10, length=16) == 1.0


def test_uniform_model_transition_accuracy_is_low(fsm):
    accuracy = transition_accuracy(UniformDigitModel(fsm), fsm, num_sequences=10, length=40)
    assert accuracy < 0.3


def test_transition_accuracy_of_codebook_lm(fsm, codebook_lm):
    accuracy = transition_accuracy(codebook_lm, fsm, num_sequences=3, length=8)
    assert 0.0 <= accuracy <= 1.0


def test_transition_accuracy_is_deterministic_by_seed(fsm):
    oracle = UniformDigitModel(fsm)
    first = transition_accuracy(oracle, fsm, num_sequences=5, length=20, seed=3)
    again = transition_accuracy(oracle, fsm, num_sequences=5, length=20, seed=3)
    assert first == again


# ---- js_divergence --------------------------------------------------------------------------------------


def test_js_divergence_of_identical_distributions_is_zero():
    p = torch.tensor([0.2, 0.3, 0.5])
    assert float(js_divergence(p, p)) == pytest.approx(0.0, abs=1e-7)


def test_js_divergence_of_disjoint_distributions_is_one_bit():
    assert float(js_divergence(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))) == pytest.approx(1.0)


def test_js_divergence_known_value_and_symmetry():
    p, q = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5])
    mean = [0.75, 0.25]
    expected = 0.5 * math.log2(1 / mean[0]) + 0.5 * (0.5 * math.log2(0.5 / mean[0]) + 0.5 * math.log2(0.5 / mean[1]))

    assert float(js_divergence(p, q)) == pytest.approx(expected, rel=1e-5)
    assert float(js_divergence(q, p)) == pytest.approx(expected, rel=1e-5)


def test_js_divergence_normalises_inputs_per_row():
    p = torch.tensor([[2.0, 2.0], [1.0, 0.0]])
    q = torch.tensor([[0.5, 0.5], [0.0, 3.0]])

    divergence = js_divergence(p, q)

    assert divergence.shape == (2,)
    assert float(divergence[0]) == pytest.approx(0.0, abs=1e-7)
    assert float(divergence[1]) == pytest.approx(1.0)


# ---- state_purity --------------------------------------------------------------------------------------


def test_state_purity_of_single_code(fsm):
    model = make_codebook_lm(codebook_size=1)
    walks = FSMSequences(fsm, 64, seed=1)
    counts = Counter(state for index in range(4) for state in fsm.decode(walks[index]))
    expected = max(counts.values()) / sum(counts.values())

    result = state_purity(model, fsm, num_sequences=4, seed=1, min_count=1)

    assert sorted(result) == sorted(model.sites)
    for site, row in result.items():
        assert row["mean_purity"] == pytest.approx(expected), site
        assert row["weighted_purity"] == pytest.approx(expected), site
    assert result["layers.0.attn"]["codes"] == 2
    assert result["layers.0.mlp"]["codes"] == 1


def test_state_purity_without_frequent_codes_is_nan(fsm, codebook_lm):
    result = state_purity(codebook_lm, fsm, num_sequences=2, min_count=10_000)
    for row in result.values():
        assert math.isnan(row["mean_purity"])
        assert math.isnan(row["weighted_purity"])
        assert row["codes"] == 0


def test_state_purity_values_are_shares(fsm, codebook_lm):
    result = state_purity(codebook_lm, fsm, num_sequences=4, min_count=1)
    for row in result.values():
        assert 1 <= row["codes"] <= 16
        assert 0.0 < row["mean_purity"] <= 1.0
        assert 0.0 < row["weighted_purity"] <= 1.0


# ---- steering_by_layer ---------------------------------------------------------------------------------


def test_steering_by_layer_rows(fsm, codebook_lm):
    rows = steering_by_layer(codebook_lm, fsm, num_pairs=2, context_states=3)

    assert [row["sites"] for row in rows] == ["layers.0", "layers.1"]
    for row in rows:
        assert 0.0 <= row["success"] <= 1.0
        assert 0.0 <= row["unpatched_success"] <= 1.0
        assert 0.0 <= row["js_to_b"] <= 1.0


def test_steering_by_layer_custom_site_sets(fsm, codebook_lm):
    site_sets = {"attention": ["layers.0.attn", "layers.1.attn"], "last mlp": ["layers.1.mlp"]}
    rows = steering_by_layer(codebook_lm, fsm, num_pairs=1, context_states=2, site_sets=site_sets)

    assert [row["sites"] for row in rows] == ["attention", "last mlp"]
    # The unpatched mass depends on the pairs only, not on the site set.
    assert rows[0]["unpatched_success"] == pytest.approx(rows[1]["unpatched_success"])


def test_steering_by_layer_is_deterministic_by_seed(fsm, codebook_lm):
    first = steering_by_layer(codebook_lm, fsm, num_pairs=1, context_states=2, seed=4)
    again = steering_by_layer(codebook_lm, fsm, num_pairs=1, context_states=2, seed=4)
    assert first == again


# ---- text: token sets, code search, contexts and steering rate ------------------------------------------------

TEXT_WORDS = ["[UNK]", "the", "2024", "7", "def", "return", "int", "dict", "cat", "x1", "\u0661\u0662"]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel({word: index for index, word in enumerate(TEXT_WORDS)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


@pytest.mark.parametrize(
    ("name", "members"),
    [("digits", ["2024", "7"]), ("python_keywords", ["def", "return"]), ("builtin_types", ["int", "dict"])],
)
def test_token_set_ids_select_members(tokenizer, name, members):
    mask = token_set_ids(tokenizer, name)

    assert mask.dtype == torch.bool
    assert mask.shape == (len(TEXT_WORDS),)
    assert [TEXT_WORDS[index] for index in torch.nonzero(mask).flatten().tolist()] == members


def test_token_set_ids_rejects_unknown_set(tokenizer):
    with pytest.raises(ValueError, match=f"unknown token set 'colours'; valid sets: {', '.join(TOKEN_SETS)}"):
        token_set_ids(tokenizer, "colours")


def synthetic_activations() -> tuple[Activations, torch.Tensor]:
    """Return activations where code 3 of group 1 fires exactly on set tokens, and the set mask."""
    tokens = torch.tensor([[0, 2, 1, 3, 2], [3, 1, 1, 0, 2]])
    in_set = torch.tensor([False, False, True, True])  # tokens 2 and 3 are in the set
    member = in_set[tokens]
    group_0 = torch.zeros_like(tokens)  # code 0 everywhere
    group_1 = torch.where(member, 3, 1)
    codes = torch.stack([group_0, group_1], dim=-1)[..., None]  # (W, T, G=2, k=1)
    return Activations(tokens, {"layers.0.attn": codes}), in_set


def test_search_codes_ranks_set_code_first():
    activations, in_set = synthetic_activations()

    rows = search_codes(activations, in_set, min_count=1, top=5)

    assert rows[0] == {"site": "layers.0.attn", "group": 1, "code": 3, "precision": 1.0, "recall": 1.0, "count": 5}
    assert rows[1]["code"] == 0
    assert rows[1]["precision"] == pytest.approx(0.5)
    assert rows[1]["recall"] == pytest.approx(1.0)
    # Code 1 of group 1 never fires on the set, so it is no candidate.
    assert len(rows) == 2


def test_search_codes_min_count_and_top():
    activations, in_set = synthetic_activations()

    assert [row["code"] for row in search_codes(activations, in_set, min_count=6)] == [0]
    assert len(search_codes(activations, in_set, min_count=1, top=2)) == 2


def test_code_contexts_show_surrounding_tokens(tokenizer):
    activations, _ = synthetic_activations()

    contexts = code_contexts(tokenizer, activations, "layers.0.attn", code=3, group=1, width=1, limit=10)

    # Code 3 fires at (0, 1), (0, 3), (0, 4), (1, 0) and (1, 4).
    assert len(contexts) == 5
    assert contexts[0] == ("[UNK]", "2024", "the")
    assert contexts[3] == ("", "7", "the")
    assert contexts[4] == ("[UNK]", "2024", "")


def test_code_contexts_limit(tokenizer):
    activations, _ = synthetic_activations()
    assert len(code_contexts(tokenizer, activations, "layers.0.attn", code=3, group=1, limit=2)) == 2


def test_code_contexts_invalid_site_or_group(tokenizer):
    activations, _ = synthetic_activations()
    with pytest.raises(ValueError, match="unknown codebook site 'layers.9.mlp'; valid sites: layers.0.attn"):
        code_contexts(tokenizer, activations, "layers.9.mlp", code=0)
    with pytest.raises(ValueError, match=r"group 2 does not exist at layers.0.attn; valid groups are 0..1"):
        code_contexts(tokenizer, activations, "layers.0.attn", code=0, group=2)


def test_collect_activations_matches_encode_codes(codebook_lm):
    windows = [torch.randint(0, 11, (6,), generator=torch.Generator().manual_seed(index)) for index in range(5)]

    activations = collect_activations(codebook_lm, windows, batch_size=2)
    expected = codebook_lm.encode_codes(torch.stack(windows))

    assert torch.equal(activations.tokens, torch.stack(windows))
    assert sorted(activations.codes) == sorted(codebook_lm.sites)
    for site, codes in expected.items():
        assert torch.equal(activations.codes[site], codes)


def test_steering_rate_counts_set_tokens(codebook_lm):
    prompts = [torch.tensor([10, 1, 2]), torch.tensor([10, 3])]
    everything = torch.ones(11, dtype=torch.bool)
    nothing = torch.zeros(11, dtype=torch.bool)

    full = steering_rate(codebook_lm, prompts, everything, [("layers.1.mlp", 0, 2)], max_new_tokens=4)
    empty = steering_rate(codebook_lm, prompts, nothing, [("layers.1.mlp", 0, 2)], max_new_tokens=4)

    assert full == {"unsteered_rate": 1.0, "steered_rate": 1.0}
    assert empty == {"unsteered_rate": 0.0, "steered_rate": 0.0}


def test_steering_rate_is_deterministic(codebook_lm):
    prompts = [torch.tensor([10, 1, 2])]
    digits = torch.zeros(11, dtype=torch.bool)
    digits[:5] = True

    first = steering_rate(codebook_lm, prompts, digits, [("layers.0.attn", 1, 1)], max_new_tokens=6)
    again = steering_rate(codebook_lm, prompts, digits, [("layers.0.attn", 1, 1)], max_new_tokens=6)

    assert first == again
    assert 0.0 <= first["steered_rate"] <= 1.0
    assert codebook_lm.bottleneck("layers.0.attn").override is None


def test_steering_rate_forces_group_code(codebook_lm):
    seen = []
    bottleneck = codebook_lm.bottleneck("layers.0.attn")
    handle = bottleneck.register_forward_hook(
        lambda module, args, output: seen.append(module.override.codes.clone()) if module.override is not None else None
    )
    try:
        steering_rate(codebook_lm, [torch.tensor([10, 1])], torch.ones(11, dtype=torch.bool), [("layers.0.attn", 1, 5)], max_new_tokens=2)
    finally:
        handle.remove()

    assert seen
    assert seen[0].tolist() == [[-1], [5]]


def test_steering_rate_forces_codes_exclusively(codebook_lm):
    recorded = []
    bottleneck = codebook_lm.bottleneck("layers.0.attn")
    handle = bottleneck.register_forward_hook(
        lambda module, args, output: recorded.append(module.override.exclusive) if module.override is not None else None
    )
    try:
        steering_rate(codebook_lm, [torch.tensor([10, 1])], torch.ones(11, dtype=torch.bool), [("layers.0.attn", 1, 5)], max_new_tokens=2)
    finally:
        handle.remove()

    assert recorded == [True, True]


def test_steering_rate_rejects_two_codes_in_one_group(codebook_lm):
    with pytest.raises(ValueError, match="group 1 of layers.0.attn"):
        steering_rate(
            codebook_lm,
            [torch.tensor([10, 1])],
            torch.ones(11, dtype=torch.bool),
            [("layers.0.attn", 1, 5), ("layers.0.attn", 1, 6)],
            max_new_tokens=2,
        )


def test_eval_rejects_out_file(tmp_path, capsys):
    from vqkit.evals import codebook_lm as codebook_lm_eval

    out = tmp_path / "results"
    out.write_text("a file")

    assert codebook_lm_eval.main(["--out", str(out)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_eval_rejects_plain_model_as_codebook_model(codebook_lm):
    from vqkit.evals.codebook_lm import check_role
    from vqkit.models.causal_lm import CausalLM

    plain = CausalLM(TINY_LLAMA)

    with pytest.raises(ValueError, match="is a plain model"):
        check_role(plain, "tokfsm_codebook", "plain-model")
    check_role(codebook_lm, "tokfsm_codebook", "codebook-model")


def test_eval_rejects_text_model_for_tokfsm():
    from vqkit.evals.codebook_lm import check_role
    from vqkit.models.causal_lm import CausalLM

    text_like = CausalLM({**TINY_LLAMA, "vocab_size": 300})

    with pytest.raises(ValueError, match="300 tokens"):
        check_role(text_like, "tokfsm_plain", "text-model")
