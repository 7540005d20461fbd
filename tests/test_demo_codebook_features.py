"""The demo's Codebook features tab, called through gradio_client on loopback servers.

The tab reads two tiny, untrained `CodebookLM` checkpoints written by the tests: a text model
with a byte-level BPE tokenizer trained on `HELD_OUT_TEXT`, and a TokFSM model.
"""

from __future__ import annotations

import itertools
import re

import pytest
import torch

gradio = pytest.importorskip("gradio")
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from vqkit import registry  # noqa: E402
from vqkit.data.fsm import FSM, FSMSequences  # noqa: E402
from vqkit.data.text import load_documents, split_documents, train_tokenizer  # noqa: E402
from vqkit.data.text_tokenizer import encode_texts  # noqa: E402
from vqkit.demos import codebook_features as tab  # noqa: E402
from vqkit.demos import tabs  # noqa: E402
from vqkit.models.codebook_bottleneck import CodeOverride  # noqa: E402
from vqkit.models.codebook_lm import CodebookLM  # noqa: E402

# One ASCII line, so that every context the browser shows is a substring of it.
HELD_OUT_TEXT = " ".join(
    [
        "In March 2021 the team wrote def main(): return 42 while the loop ran for 7 days.",
        "On May 15 we import os and return 3.14 for x in range(10) if x is not None.",
        "The report of June 30 lists 128 errors, and class Parser raises ValueError 12 times.",
        "From January 1 to April 9, 365 jobs passed; try the fix, else break and continue.",
    ]
    * 4
)
TEXT_MODEL = "tiny-text"
TOKFSM_MODEL = "tiny-tokfsm"
CONTEXT_LENGTH = 64


def tiny_llama(vocab_size: int, **overrides) -> dict:
    # initializer_range 1.0 gives peaked next-token distributions, so forcing a code changes samples.
    return {
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": CONTEXT_LENGTH,
        "initializer_range": 1.0,
        **overrides,
    }


@pytest.fixture(scope="module")
def text_model() -> CodebookLM:
    tokenizer = train_tokenizer([HELD_OUT_TEXT], vocab_size=300)
    torch.manual_seed(0)
    model = CodebookLM(lm_config=tiny_llama(len(tokenizer)), codebook_size=16, k=2).eval()
    model.tokenizer = tokenizer
    return model


@pytest.fixture(scope="module")
def tokfsm_model() -> CodebookLM:
    torch.manual_seed(1)
    config = tiny_llama(11, bos_token_id=10, eos_token_id=10, pad_token_id=10)
    return CodebookLM(lm_config=config, codebook_size=16, k=1).eval()


@pytest.fixture(scope="module")
def model_choices(text_model, tokfsm_model, tmp_path_factory) -> list[tab.ModelChoice]:
    folder = tmp_path_factory.mktemp("codebook-models")
    text_model.save_pretrained(folder / "text")
    tokfsm_model.save_pretrained(folder / "tokfsm")
    return [
        tab.ModelChoice(TEXT_MODEL, str(folder / "text"), held_out_texts=(HELD_OUT_TEXT,)),
        tab.ModelChoice(TOKFSM_MODEL, str(folder / "tokfsm")),
    ]


@pytest.fixture
def client(model_choices, loopback_only, serve) -> Client:
    with gradio.Blocks() as app:
        tab.build_tab(models=model_choices)
    yield Client(serve(app), verbose=False)
    assert loopback_only == []


def sample_generate(model: CodebookLM, prompt_ids: list[int], max_new_tokens: int, seed: int, pad: int) -> list[int]:
    """Sample at temperature 1 as the tab does, without forced codes."""
    input_ids = torch.tensor([prompt_ids])
    torch.manual_seed(seed)
    output = model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=max_new_tokens,
        do_sample=True,
        top_k=0,
        top_p=1.0,
        temperature=1.0,
        eos_token_id=None,
        pad_token_id=pad,
    )
    return output[0, len(prompt_ids) :].tolist()


def test_tab_follows_image_tokenizer_tab():
    titles = [entry.title for entry in tabs.list_tabs()]

    assert "Codebook features" in titles
    assert titles.index("Codebook features") == titles.index("Image tokenizer") + 1


def test_load_model_lists_sites(client):
    summary, browse_site, steer_site = client.predict(TEXT_MODEL, api_name="/codebook_load_model")

    assert "a text model with 4 codebook sites" in summary
    assert "Every group has 16 codes (ids 0 to 15), and k = 2 of them" in summary
    sites = ["layers.0.attn", "layers.0.mlp", "layers.1.attn", "layers.1.mlp"]
    for update in (browse_site, steer_site):
        assert [value for value, _ in update["choices"]] == sites
        assert update["value"] == "layers.0.attn"


def test_browse_shows_contexts_of_code(client, text_model):
    tokenizer = text_model.tokenizer
    windows = tab.text_windows(tokenizer, [HELD_OUT_TEXT], CONTEXT_LENGTH)
    codes = text_model.encode_codes(windows)["layers.1.attn"][:, :, 1]  # (W, T, k)
    code = int(codes[0, 3, 0])
    hits = torch.nonzero((codes == code).any(dim=-1)).tolist()

    summary, table = client.predict(TEXT_MODEL, "layers.1.attn", 1, code, api_name="/codebook_browse_code")

    assert f"Code {code} of group 1 at `layers.1.attn` is active on {len(hits)} of {windows.numel()}" in summary
    rows = table["data"]
    assert len(rows) == min(len(hits), tab.MAX_CONTEXTS)
    width = tab.CONTEXT_TOKENS
    expected_rows = [
        [
            tokenizer.decode(windows[w, max(0, p - width) : p].tolist()),
            tokenizer.decode([windows[w, p].item()]).replace(" ", tab.SPACE_MARK),
            tokenizer.decode(windows[w, p + 1 : p + 1 + width].tolist()),
        ]
        for w, p in hits[: tab.MAX_CONTEXTS]
    ]
    assert rows == expected_rows
    firing_tokens = {tokenizer.decode([windows[w, p].item()]) for w, p in hits}
    for left, token, right in rows:
        token = token.replace(tab.SPACE_MARK, " ")
        assert token in firing_tokens
        assert left + token + right in HELD_OUT_TEXT


def tokfsm_walks() -> torch.Tensor:
    """The held-out walks of the tab for a model with CONTEXT_LENGTH positions: (SAMPLE_WINDOWS, 63)."""
    walks = FSMSequences(FSM(), (CONTEXT_LENGTH - 1) // 2, seed=tab.HELD_OUT_FSM_SEED)
    return torch.stack([walks[index] for index in range(tab.SAMPLE_WINDOWS)])


def expected_tokfsm_row(states: list[int], position: int) -> list[str]:
    """The browser's row for a code firing at token `position` of a walk through `states`."""
    labels = [f"{state:02d}" for state in states]
    width = tab.CONTEXT_STATES
    if position == 0:
        return ["", "BOS", " ".join(labels[:width])]
    index, digit = divmod(position - 1, 2)
    digits = list(labels[index])
    digits[digit] = f"[{digits[digit]}]"
    left = (["BOS"] if index <= width else []) + labels[max(0, index - width) : index]
    return [" ".join(left), "".join(digits), " ".join(labels[index + 1 : index + 1 + width])]


def test_browse_renders_tokfsm_states(client, tokfsm_model):
    fsm = FSM()
    walks = tokfsm_walks()
    codes = tokfsm_model.encode_codes(walks)["layers.0.mlp"][:, :, 0, 0]  # (W, T), k = 1
    code = int(codes[0, 6])
    hits = torch.nonzero(codes == code).tolist()

    summary, table = client.predict(TOKFSM_MODEL, "layers.0.mlp", 0, code, api_name="/codebook_browse_code")

    assert f"Code {code} of group 0 at `layers.0.mlp` is active on {len(hits)} of {walks.numel()}" in summary
    rows = table["data"]
    assert len(rows) == min(len(hits), tab.MAX_CONTEXTS)
    assert rows == [expected_tokfsm_row(fsm.decode(walks[w]), p) for w, p in hits[: tab.MAX_CONTEXTS]]
    for left_text, token, right_text in rows:
        assert re.fullmatch(r"BOS|\[\d\]\d|\d\[\d\]", token), token
        shown = f"{left_text} {token.replace('[', '').replace(']', '')} {right_text}".split()
        path = [int(label) for label in shown if label != "BOS"]
        for source, target in itertools.pairwise(path):
            assert fsm.is_transition(source, target), f"{source} -> {target} in {shown}"


def test_find_codes_ranks_by_precision(client, text_model):
    tokenizer = text_model.tokenizer
    windows = tab.text_windows(tokenizer, [HELD_OUT_TEXT], CONTEXT_LENGTH)
    is_digit = torch.tensor([tokenizer.decode([i]).strip().isdigit() for i in range(len(tokenizer))])
    codes = text_model.encode_codes(windows)

    summary, table, _ = client.predict(TEXT_MODEL, "digits", 2, api_name="/codebook_find_codes")

    assert f"has {int(is_digit[windows].sum())} tokens of the set 'digits'" in summary
    rows = table["data"]
    assert rows
    precisions = [float(row[3]) for row in rows]
    assert precisions == sorted(precisions, reverse=True)
    site, group, code = rows[0][0], int(rows[0][1]), int(rows[0][2])
    active = (codes[site][:, :, group] == code).any(dim=-1)
    assert int(rows[0][5]) == int(active.sum())
    assert float(rows[0][3]) == pytest.approx(float(is_digit[windows[active]].float().mean()), abs=1e-3)

    picked = client.predict(f"{site} | group {group} | code {code}", api_name="/codebook_pick_code")
    assert picked == (site, group, code)


def test_find_codes_by_tokfsm_state(client, tokfsm_model):
    walks = tokfsm_walks()
    # Position 2 + 2 i is the last digit of state i of a walk.
    at_state = torch.zeros_like(walks, dtype=torch.bool)
    at_state[:, 2::2] = (walks[:, 1::2] * 10 + walks[:, 2::2]) == 42
    codes = tokfsm_model.encode_codes(walks)

    summary, table, _ = client.predict(TOKFSM_MODEL, "42", 1, api_name="/codebook_find_codes")

    assert f"has {int(at_state.sum())} occurrences of state 42 (counted at its last digit)" in summary
    rows = table["data"]
    assert rows, summary
    site, group, code = rows[0][0], int(rows[0][1]), int(rows[0][2])
    active = (codes[site][:, :, group] == code).any(dim=-1)
    assert float(rows[0][3]) == pytest.approx(float(at_state[active].float().mean()), abs=1e-3)


def test_steer_forces_codes_on_text(client, text_model):
    tokenizer = text_model.tokenizer
    prompt = "In March the team wrote"
    prompt_ids = [tokenizer.bos_token_id, *encode_texts(tokenizer, [prompt], progress=False)[0]]
    forced = torch.tensor([[3, 5]])

    summary, unsteered, steered = client.predict(
        TEXT_MODEL, prompt, "layers.1.mlp", 0, "3, 5", 24, 7, api_name="/codebook_steer"
    )

    assert "Forced codes 3, 5 of group 0 at `layers.1.mlp` on every position" in summary
    expected = sample_generate(text_model, prompt_ids, 24, seed=7, pad=tokenizer.pad_token_id)
    assert unsteered == tokenizer.decode(expected)
    assert steered != unsteered
    with text_model.steering({"layers.1.mlp": CodeOverride(forced)}):
        active = text_model.encode_codes(torch.tensor([prompt_ids]))["layers.1.mlp"][0, :, 0]  # (T, k)
    assert (active[:, :2] == forced[0]).all()


def test_steer_tokfsm_shows_states(client, tokfsm_model):
    fsm = FSM()
    # A second state that 42 cannot move to, so the summary must flag the prompt.
    second = next(state for state in range(fsm.num_states) if not fsm.is_transition(42, state))
    prompt = f"42 {second:02d}"

    summary, unsteered, steered = client.predict(
        TOKFSM_MODEL, prompt, "layers.1.mlp", 0, "9", 12, 0, api_name="/codebook_steer"
    )

    expected = sample_generate(tokfsm_model, fsm.encode([42, second]).tolist(), 12, seed=0, pad=fsm.bos_id)
    assert unsteered == tab.render_fsm_tokens(fsm, expected)
    assert steered != unsteered
    for output in (unsteered, steered):
        labels = output.split()
        assert len(labels) == 6
        assert all(re.fullmatch(r"\d\d|BOS", label) for label in labels), output
    valid, total = fsm.transition_accuracy(fsm.encode([second]).tolist() + expected)
    assert f"Valid FSM transitions, unsteered: {valid} of {total}, from the last prompt state on." in summary
    assert "Valid FSM transitions, steered: " in summary
    assert f"the prompt's step 42 → {second:02d} is not an FSM transition" in summary


# Endpoint, inputs and a part of the expected message that names the invalid value.
INVALID_REQUESTS = [
    ("/codebook_browse_code", (TEXT_MODEL, "layers.9.mlp", 0, 0), "unknown site 'layers.9.mlp'"),
    ("/codebook_browse_code", (TEXT_MODEL, "layers.0.attn", 2, 0), "group 2 is out of range at layers.0.attn"),
    ("/codebook_browse_code", (TEXT_MODEL, "layers.0.mlp", 1, 0), "group 1 is out of range at layers.0.mlp"),
    ("/codebook_browse_code", (TEXT_MODEL, "layers.0.mlp", 0, 16), "code id 16 is out of range at layers.0.mlp"),
    ("/codebook_find_codes", (TEXT_MODEL, "weekdays", 1), "unknown token set 'weekdays'"),
    ("/codebook_find_codes", (TOKFSM_MODEL, "digits", 1), "invalid TokFSM search target 'digits'"),
    ("/codebook_pick_code", ("layers.0.mlp code 3",), "invalid search result 'layers.0.mlp code 3'"),
    (
        "/codebook_steer",
        (TEXT_MODEL, "def main", "layers.0.mlp", 0, "1, 2, 3", 8, 0),
        "3 codes listed ('1, 2, 3'), but layers.0.mlp has k=2",
    ),
    ("/codebook_steer", (TEXT_MODEL, "def main", "layers.0.mlp", 0, "1, x", 8, 0), "invalid code id 'x'"),
    ("/codebook_steer", (TEXT_MODEL, "def main", "layers.0.mlp", 0, "1, 1", 8, 0), "code id 1 is listed twice"),
    ("/codebook_steer", (TEXT_MODEL, "def main", "layers.0.mlp", 0, "16", 8, 0), "code id 16 is out of range"),
    ("/codebook_steer", (TEXT_MODEL, "   ", "layers.0.mlp", 0, "1", 8, 0), "The prompt is empty"),
    ("/codebook_steer", (TEXT_MODEL, "def main", "layers.0.mlp", 0, "1", 80, 0), "80 new tokens would exceed"),
    ("/codebook_steer", (TOKFSM_MODEL, "42a7", "layers.0.mlp", 0, "1", 8, 0), "invalid TokFSM prompt '42a7': 'a'"),
    ("/codebook_steer", (TOKFSM_MODEL, "421", "layers.0.mlp", 0, "1", 8, 0), "invalid TokFSM prompt '421': its 3"),
    ("/codebook_steer", (TOKFSM_MODEL, "4217", "layers.0.mlp", 0, "1, 2", 8, 0), "2 codes listed ('1, 2')"),
]


def test_invalid_requests_name_value(client):
    for api_name, inputs, message in INVALID_REQUESTS:
        with pytest.raises(AppError) as raised:
            client.predict(*inputs, api_name=api_name)
        assert message in str(raised.value), f"{api_name}{inputs}"


def test_missing_checkpoint_names_train_command(monkeypatch, tmp_path, loopback_only, serve):
    monkeypatch.delenv(tab.TEXT_MODEL_ENV, raising=False)
    monkeypatch.delenv(tab.TOKFSM_MODEL_ENV, raising=False)
    monkeypatch.setattr(registry, "checkpoints_root", lambda: tmp_path)
    command = registry.get_model_entry(tab.DEFAULT_TEXT_MODEL).train_command
    with gradio.Blocks() as app:
        tab.build_tab()
    client = Client(serve(app), verbose=False)

    with pytest.raises(AppError) as raised:
        client.predict(tab.DEFAULT_TEXT_MODEL, api_name="/codebook_load_model")

    assert f"Model '{tab.DEFAULT_TEXT_MODEL}' could not be loaded" in str(raised.value)
    assert command in str(raised.value)
    assert f"not trained yet. Train it with `{command}`" in tab.describe_choices(tab.default_choices())
    assert loopback_only == []


def test_held_out_text_defaults_to_test_split(text_model):
    loaded = tab.LoadedModel(tab.ModelChoice("default-text", lambda: text_model), text_model, fsm=None)
    first_document = split_documents(load_documents())["test"][0].text

    windows = tab.held_out_windows(loaded)

    assert windows.shape == (tab.SAMPLE_WINDOWS, CONTEXT_LENGTH)
    # A multi-byte character cut at token 16 decodes to U+FFFD, so that is stripped.
    assert first_document.startswith(text_model.tokenizer.decode(windows[0, :16].tolist()).rstrip("\ufffd"))


def test_find_codes_reports_empty_result(client):
    summary, table, pick = client.predict(TEXT_MODEL, "digits", 10**6, api_name="/codebook_find_codes")

    assert "No code has 1000000 activations: lower the minimum." in summary
    assert table["data"] == []
    assert pick["choices"] == []
