"""Code browser and code search of the demo's "Codebook features" tab, and the input checks that steering shares.

The event functions `browse_code`, `find_codes` and `pick_code` take raw component values, raise
gr.Error for an invalid input and return the values of their output components.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import gradio as gr
import pandas as pd
import torch
from torch import Tensor

from vqkit.data.fsm import FSM
from vqkit.demos.codebook_features_models import (
    LoadedModel,
    ModelStore,
    describe_sample,
)
from vqkit.evals.codebook_text_metrics import (
    TOKEN_SETS,
    Activations,
    code_contexts,
    search_codes,
    token_set_ids,
)
from vqkit.models.codebook_bottleneck import CodebookBottleneck

CONTEXT_TOKENS = 8
CONTEXT_STATES = 4
MAX_CONTEXTS = 25
TOP_FIRING_TOKENS = 5
MAX_SEARCH_RESULTS = 10
DEFAULT_MIN_COUNT = 20
# Shown in place of a line break in the contexts table, and of a space in its Token column,
# where a token such as " " would otherwise look empty.
LINE_BREAK_MARK = "↵"
SPACE_MARK = "␣"

CONTEXT_HEADERS = ["Left context", "Token", "Right context"]
SEARCH_HEADERS = ["Site", "Group", "Code", "Precision", "Recall", "Activations"]
_SEARCH_RESULT_PATTERN = re.compile(r"(?P<site>\S+) \| group (?P<group>\d+) \| code (?P<code>\d+)")


# ---- input checks ----------------------------------------------------------------------------


def check_int(name: str, value: Any, low: int, high: int, where: str = "") -> int:
    """Return `value` as an int. Raises gr.Error naming `name` unless it is a whole number from low to high.

    `where`, such as " at layers.0.mlp", follows the value in the messages.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or number != int(number):
        raise gr.Error(f"{name}{where} must be a whole number from {low} to {high}, got {value!r}")
    if not low <= int(number) <= high:
        raise gr.Error(f"{name} {int(number)} is out of range{where}: it must be from {low} to {high}")
    return int(number)


def check_site(loaded: LoadedModel, site: str | None) -> str:
    """Return `site`. Raises gr.Error unless it is a site of the model."""
    sites = loaded.model.sites
    if not site:
        raise gr.Error(f"Choose a site: {', '.join(sites)}.")
    if site not in sites:
        raise gr.Error(f"unknown site {site!r} for model {loaded.choice.name!r}. Valid sites: {', '.join(sites)}")
    return site


def check_group(site: str, bottleneck: CodebookBottleneck, group: Any) -> int:
    """Return `group` as an int. Raises gr.Error unless the site has that group."""
    if site.endswith(".attn"):
        hint = "one group per attention head"
    else:
        hint = "an MLP site has one group"
    try:
        return check_int("group", group, 0, bottleneck.groups - 1, where=f" at {site}")
    except gr.Error as error:
        raise gr.Error(f"{error.message} ({hint})") from None


def parse_forced_codes(text: str | None, site: str, bottleneck: CodebookBottleneck) -> list[int]:
    """Parse comma-separated code ids to force on. Raises gr.Error for an invalid id, a repeat or more than k ids."""
    k, size = bottleneck.k, bottleneck.codebook_size
    pieces = [piece.strip() for piece in (text or "").split(",") if piece.strip()]
    if not pieces:
        raise gr.Error(f"No codes to force on: list 1 to {k} code ids from 0 to {size - 1}, separated by commas.")
    codes: list[int] = []
    for piece in pieces:
        try:
            code = int(piece)
        except ValueError:
            raise gr.Error(
                f"invalid code id {piece!r} in {text!r}: list whole numbers separated by commas, such as '3, 17'"
            ) from None
        if not 0 <= code < size:
            raise gr.Error(f"code id {code} is out of range at {site}: it must be from 0 to {size - 1}")
        if code in codes:
            raise gr.Error(f"code id {code} is listed twice in {text!r}: list each code once")
        codes.append(code)
    if len(codes) > k:
        raise gr.Error(
            f"{len(codes)} codes listed ({text!r}), but {site} has k={k} active codes per group: force at most {k}"
        )
    return codes


# ---- code browser -----------------------------------------------------------------------------


def browse_code(
    store: ModelStore, model_name: str | None, site: str | None, group: Any, code: Any
) -> tuple[str, pd.DataFrame]:
    """Return a summary of where `code` of `group` at `site` fires on the held-out sample, and
    a table of its first `MAX_CONTEXTS` contexts."""
    loaded = store.get(model_name)
    site = check_site(loaded, site)
    bottleneck = loaded.model.bottleneck(site)
    group = check_group(site, bottleneck, group)
    code = check_int("code id", code, 0, bottleneck.codebook_size - 1, where=f" at {site}")

    activations = store.activations(loaded)
    active = (activations.codes[site][:, :, group] == code).any(dim=-1)  # (W, T)
    hits = torch.nonzero(active)  # (M, 2) window, position, in reading order
    if loaded.fsm is not None:
        rows = fsm_contexts(loaded.fsm, activations.tokens, hits[:MAX_CONTEXTS])
        firing = [fsm_token_label(loaded.fsm, activations.tokens[w], p) for w, p in hits.tolist()]
    else:
        tokenizer = loaded.model.tokenizer
        contexts = code_contexts(tokenizer, activations, site, code, group, CONTEXT_TOKENS, MAX_CONTEXTS)
        rows = [
            (_show_line_breaks(left), _show_line_breaks(token).replace(" ", SPACE_MARK), _show_line_breaks(right))
            for left, token, right in contexts
        ]
        firing = [repr(tokenizer.decode([token])) for token in activations.tokens[active].tolist()]

    total = activations.tokens.numel()
    lines = [
        (
            f"Code {code} of group {group} at `{site}` is active on {len(hits)} of {total} held-out tokens "
            f"({100 * len(hits) / total:.2f}%), read from {describe_sample(loaded)}."
        )
    ]
    if firing:
        top = ", ".join(f"{label} ({count})" for label, count in Counter(firing).most_common(TOP_FIRING_TOKENS))
        lines.append(f"Most frequent {'states' if loaded.fsm else 'tokens'} where it fires: {top}.")
        lines.append(f"The table shows the first {len(rows)} contexts.")
    else:
        lines.append("It never fires on this sample: try another code, or find codes by token set below.")
    if loaded.fsm is not None:
        lines.append(
            f"States are written with {loaded.fsm.digits} digits, and brackets mark the digit where the code fires."
        )
    else:
        lines.append(f"{LINE_BREAK_MARK} marks a line break, and {SPACE_MARK} a space in the token.")
    return "\n\n".join(lines), pd.DataFrame(rows, columns=CONTEXT_HEADERS)


def fsm_contexts(fsm: FSM, tokens: Tensor, hits: Tensor) -> list[tuple[str, str, str]]:
    """Render TokFSM contexts as state numbers: (states before, the firing state, states after).

    `tokens` is long (W, T), each row BOS followed by whole states, and `hits` is long (M, 2)
    of window and position.
    """
    rows = []
    for window, position in hits.tolist():
        sequence = tokens[window].tolist()
        labels = [state_label(fsm, state) for state in fsm.decode(sequence)]
        if position == 0:
            rows.append(("", "BOS", " ".join(labels[:CONTEXT_STATES])))
            continue
        index = (position - 1) // fsm.digits
        start = max(0, index - CONTEXT_STATES)
        left = labels[start:index]
        if start == 0:
            left = ["BOS", *left]
        right = labels[index + 1 : index + 1 + CONTEXT_STATES]
        rows.append((" ".join(left), fsm_token_label(fsm, tokens[window], position), " ".join(right)))
    return rows


def fsm_token_label(fsm: FSM, sequence: Tensor, position: int) -> str:
    """Return the state that contains `position` with that digit in brackets, such as "4[2]", or "BOS"."""
    if position == 0:
        return "BOS"
    first = 1 + (position - 1) // fsm.digits * fsm.digits
    digits = [str(token) for token in sequence[first : first + fsm.digits].tolist()]
    digits[position - first] = f"[{digits[position - first]}]"
    return "".join(digits)


def state_label(fsm: FSM, state: int | None) -> str:
    """Return `state` zero-padded to `fsm.digits` digits, or "?" for None."""
    return "?" if state is None else f"{state:0{fsm.digits}d}"


def _show_line_breaks(text: str) -> str:
    return text.replace("\r\n", LINE_BREAK_MARK).replace("\n", LINE_BREAK_MARK)


# ---- code search ------------------------------------------------------------------------------


def find_codes(
    store: ModelStore, model_name: str | None, target: str | None, min_count: Any
) -> tuple[str, pd.DataFrame, gr.Dropdown]:
    """Search all sites and groups for the codes that fire most precisely on `target`.

    `target` is a name in `TOKEN_SETS` for a text model and a state number for TokFSM, where
    a code counts as firing on the state at the state's last digit. Returns a summary, the
    table of up to `MAX_SEARCH_RESULTS` codes and the dropdown that opens one in the browser.
    """
    loaded = store.get(model_name)
    min_count = check_int("minimum activations", min_count, 1, 10**9)
    activations = store.activations(loaded)
    if loaded.fsm is not None:
        state = parse_state(loaded.fsm, target)
        labelled = Activations(fsm_state_labels(loaded.fsm, activations.tokens), activations.codes)
        in_set = torch.zeros(loaded.fsm.num_states + 1, dtype=torch.bool)
        in_set[state] = True
        description = f"occurrences of state {state_label(loaded.fsm, state)} (counted at its last digit)"
    else:
        if target not in TOKEN_SETS:
            raise gr.Error(f"unknown token set {target!r}: choose one of {', '.join(TOKEN_SETS)}")
        labelled = activations
        in_set = token_set_ids(loaded.model.tokenizer, target)
        description = f"tokens of the set {target!r}"

    set_count = int(in_set[labelled.tokens].sum())
    results = search_codes(labelled, in_set, min_count=min_count, top=MAX_SEARCH_RESULTS)
    table = pd.DataFrame(
        [
            [row["site"], row["group"], row["code"], f"{row['precision']:.3f}", f"{row['recall']:.3f}", row["count"]]
            for row in results
        ],
        columns=SEARCH_HEADERS,
    )
    choices = [f"{row['site']} | group {row['group']} | code {row['code']}" for row in results]

    summary = (
        f"The held-out sample, {describe_sample(loaded)}, has {set_count} {description}. "
        f"Codes with at least {min_count} activations, best precision first: precision is the share of "
        "a code's activations on the target, recall the share of the target's tokens where the code is active."
    )
    if set_count == 0:
        summary += " No code can be found for a target that the sample does not contain."
    elif not results:
        summary += f" No code has {min_count} activations: lower the minimum."
    return summary, table, gr.Dropdown(choices=choices, value=None)


def parse_state(fsm: FSM, target: str | None) -> int:
    """Return the FSM state number written in `target`. Raises gr.Error when it is not one."""
    text = (target or "").strip()
    if not (text.isascii() and text.isdigit()) or int(text) >= fsm.num_states:
        raise gr.Error(
            f"invalid TokFSM search target {target!r}: TokFSM has only digit tokens, so token sets do not apply. "
            f"Enter a state number from 0 to {fsm.num_states - 1}."
        )
    return int(text)


def fsm_state_labels(fsm: FSM, tokens: Tensor) -> Tensor:
    """Return long (W, T) labels: the state number at the last digit of each state, else `fsm.num_states`.

    Each row of `tokens` is BOS followed by whole states.
    """
    labels = torch.full_like(tokens, fsm.num_states)
    count = (tokens.shape[1] - 1) // fsm.digits
    digits = tokens[:, 1 : 1 + count * fsm.digits].reshape(tokens.shape[0], count, fsm.digits)
    weights = fsm.base ** torch.arange(fsm.digits - 1, -1, -1)
    states = (digits * weights).sum(dim=-1)  # (W, count)
    valid = (digits < fsm.base).all(dim=-1) & (states < fsm.num_states)
    labels[:, fsm.digits : 1 + count * fsm.digits : fsm.digits] = torch.where(valid, states, fsm.num_states)
    return labels


def pick_code(result: str | None) -> tuple[str, int, int]:
    """Return the site, group and code of a search result label such as "layers.1.mlp | group 0 | code 17"."""
    match = _SEARCH_RESULT_PATTERN.fullmatch(result or "")
    if match is None:
        raise gr.Error(
            f"invalid search result {result!r}: choose one of the codes that 'Find codes' lists, "
            "written as 'layers.1.mlp | group 0 | code 17'"
        )
    return match["site"], int(match["group"]), int(match["code"])

