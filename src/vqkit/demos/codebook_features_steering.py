"""Steering in the demo's "Codebook features" tab: continue a prompt without and with chosen codes forced on."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import gradio as gr
import torch
from torch import Tensor

from vqkit.data.fsm import FSM
from vqkit.data.text_tokenizer import encode_texts
from vqkit.demos.codebook_features_browse import (
    check_group,
    check_int,
    check_site,
    parse_forced_codes,
    state_label,
)
from vqkit.demos.codebook_features_models import LoadedModel, ModelStore
from vqkit.models.codebook_bottleneck import CodeOverride

MAX_NEW_TOKENS = 256
MAX_SEED = 2**32 - 1


def steer(
    store: ModelStore,
    model_name: str | None,
    prompt: str | None,
    site: str | None,
    group: Any,
    codes: str | None,
    max_new_tokens: Any,
    seed: Any,
) -> tuple[str, str, str]:
    """Continue `prompt` twice from the same seed, without and with `codes` forced on in `group` at `site`.

    Both continuations sample at temperature 1. The codes are forced at every position, the
    prompt's and each generated token's. Returns a summary and the two continuations.
    """
    loaded = store.get(model_name)
    model = loaded.model
    site = check_site(loaded, site)
    bottleneck = model.bottleneck(site)
    group = check_group(site, bottleneck, group)
    forced = parse_forced_codes(codes, site, bottleneck)
    max_new_tokens = check_int("max new tokens", max_new_tokens, 1, MAX_NEW_TOKENS)
    seed = check_int("seed", seed, 0, MAX_SEED)
    prompt_ids = encode_prompt(loaded, prompt)
    positions = int(model.config.max_position_embeddings)
    if len(prompt_ids) + max_new_tokens > positions:
        raise gr.Error(
            f"The prompt has {len(prompt_ids)} tokens, and {max_new_tokens} new tokens would exceed the model's "
            f"context of {positions} tokens: shorten the prompt or lower max new tokens."
        )

    override_codes = torch.full((bottleneck.groups, len(forced)), -1, dtype=torch.long)
    override_codes[group] = torch.tensor(forced)
    input_ids = torch.tensor([prompt_ids], dtype=torch.long)
    with loaded.lock:
        unsteered = generate(loaded, input_ids, max_new_tokens, seed, {})
        steered = generate(loaded, input_ids, max_new_tokens, seed, {site: CodeOverride(override_codes)})

    listed = ", ".join(str(code) for code in forced)
    lines = [
        (
            f"Forced code{'s' if len(forced) > 1 else ''} {listed} of group {group} at `{site}` on every position. "
            f"Both continuations sample at temperature 1 from seed {seed}."
        )
    ]
    changed = sum(a != b for a, b in zip(unsteered, steered)) + abs(len(unsteered) - len(steered))
    lines.append(f"The steered continuation differs from the unsteered one at {changed} of {len(steered)} tokens.")
    if loaded.fsm is None:
        tokenizer = model.tokenizer
        return "\n\n".join(lines), tokenizer.decode(unsteered), tokenizer.decode(steered)

    fsm = loaded.fsm
    prompt_states = fsm.decode(prompt_ids)
    for source, target in itertools.pairwise(prompt_states):
        if not fsm.is_transition(source, target):
            lines.append(
                f"Note: the prompt's step {state_label(fsm, source)} → {state_label(fsm, target)} is not an FSM transition."
            )
    for name, generated in (("unsteered", unsteered), ("steered", steered)):
        valid, total = count_valid_transitions(fsm, prompt_states[-1], generated)
        lines.append(f"Valid FSM transitions, {name}: {valid} of {total}, from the last prompt state on.")
    return "\n\n".join(lines), render_fsm_tokens(fsm, unsteered), render_fsm_tokens(fsm, steered)


def encode_prompt(loaded: LoadedModel, prompt: str | None) -> list[int]:
    """Return the token ids of `prompt`, starting with BOS. Raises gr.Error for an empty or invalid prompt."""
    fsm = loaded.fsm
    if fsm is None:
        if not prompt or not prompt.strip():
            raise gr.Error("The prompt is empty: type some text for the model to continue.")
        tokenizer = loaded.model.tokenizer
        bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
        return bos + encode_texts(tokenizer, [prompt], progress=False)[0]

    example = "for example '4217' for states 42 and 17" if fsm.digits == 2 else "each state zero-padded"
    digits = "".join((prompt or "").split())
    if not digits:
        raise gr.Error(f"The prompt is empty: type TokFSM states as {fsm.digits}-digit numbers, {example}.")
    invalid = sorted({character for character in digits if not (character.isascii() and character.isdigit())})
    if invalid:
        raise gr.Error(
            f"invalid TokFSM prompt {prompt!r}: {', '.join(map(repr, invalid))} is not a digit. "
            f"Type states as {fsm.digits}-digit numbers, {example}."
        )
    if len(digits) % fsm.digits:
        raise gr.Error(
            f"invalid TokFSM prompt {prompt!r}: its {len(digits)} digits do not split into {fsm.digits}-digit "
            f"states. Write every state with {fsm.digits} digits, {example}."
        )
    states = [int(digits[start : start + fsm.digits]) for start in range(0, len(digits), fsm.digits)]
    missing = [state for state in states if state >= fsm.num_states]
    if missing:
        raise gr.Error(
            f"invalid TokFSM prompt {prompt!r}: state {missing[0]} does not exist. "
            f"States are 0 to {fsm.num_states - 1}."
        )
    return fsm.encode(states).tolist()


def generate(loaded: LoadedModel, input_ids: Tensor, max_new_tokens: int, seed: int, overrides: dict) -> list[int]:
    """Sample a continuation of long (1, T) `input_ids` with `overrides` forced on and return its token ids.

    The caller must hold `loaded.lock`. Generation never stops early at an end-of-sequence token,
    so both continuations of `steer` have `max_new_tokens` tokens. The global CPU random state
    is restored afterwards.
    """
    model = loaded.model
    with model.steering(overrides):
        output = model.sample(input_ids, max_new_tokens, seed=seed)
    return output[0].tolist()


def render_fsm_tokens(fsm: FSM, tokens: Sequence[int]) -> str:
    """Write generated TokFSM tokens as states: "BOS" for BOS, and a trailing incomplete state as digits and "…"."""
    labels = []
    for start in range(0, len(tokens), fsm.digits):
        chunk = list(tokens[start : start + fsm.digits])
        if fsm.bos_id in chunk:
            labels.append("BOS")
        elif len(chunk) < fsm.digits:
            labels.append("".join(map(str, chunk)) + "…")
        else:
            labels.append(state_label(fsm, fsm.decode(chunk)[0]))
    return " ".join(labels)


def count_valid_transitions(fsm: FSM, last_prompt_state: int, tokens: Sequence[int]) -> tuple[int, int]:
    """Count the valid transitions from `last_prompt_state` through the generated whole states: (valid, total).

    A transition from or to BOS counts as invalid.
    """
    whole = len(tokens) // fsm.digits * fsm.digits
    # `decode` drops one leading BOS, so a BOS that starts the continuation needs one before it.
    states = [last_prompt_state, *fsm.decode([fsm.bos_id, *tokens[:whole]])]
    valid = sum(
        source is not None and target is not None and fsm.is_transition(source, target)
        for source, target in itertools.pairwise(states)
    )
    return valid, len(states) - 1

