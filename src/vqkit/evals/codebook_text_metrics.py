"""Functions that read and steer the codes of a text `CodebookLM`.

They find the codes that fire on a set of tokens (digits, Python keywords, built-in type
names), list the contexts where a code fires, and measure how often generation lands in the
set when such codes are forced on.

NOTE: month names are not a token set. In the 4096-token BPE of Python's documentation each
month name splits into pieces such as " J" + "an" + "u" + "ary", so no token stands for one.
"""

from __future__ import annotations

import keyword
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from vqkit.models.codebook_bottleneck import CodeOverride


def _is_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


_BUILTIN_TYPES = {"bool", "bytes", "bytearray", "complex", "dict", "float", "frozenset", "int", "list", "set", "str", "tuple"}

# Token sets of the code search: a predicate on a token's text with surrounding spaces removed.
TOKEN_SETS = {
    "digits": _is_digits,
    "python_keywords": lambda text: text in keyword.kwlist,
    "builtin_types": lambda text: text in _BUILTIN_TYPES,
}


def token_set_ids(tokenizer, name: str) -> Tensor:
    """Return the ids of the vocabulary entries in token set `name`, as a bool (V,) mask."""
    if name not in TOKEN_SETS:
        raise ValueError(f"unknown token set {name!r}; valid sets: {', '.join(TOKEN_SETS)}")
    predicate = TOKEN_SETS[name]
    mask = torch.zeros(len(tokenizer), dtype=torch.bool)
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id]).strip()
        mask[token_id] = bool(text) and predicate(text)
    return mask


@dataclass
class Activations:
    """Tokens read by a `CodebookLM` and its active codes.

    Attributes:
        tokens: long (W, T) token windows.
        codes: site -> long (W, T, G, k) active codes at each token.
    """

    tokens: Tensor
    codes: dict[str, Tensor]


@torch.no_grad()
def collect_activations(model, windows: Sequence[Tensor], batch_size: int = 8, progress: bool = False) -> Activations:
    """Run `model` over token windows, each long (T,), and record the codes of every site."""
    device = next(model.parameters()).device
    parts: dict[str, list[Tensor]] = {site: [] for site in model.sites}
    for start in tqdm(range(0, len(windows), batch_size), desc="record codes", disable=not progress):
        batch = torch.stack(list(windows[start : start + batch_size])).to(device)
        for site, codes in model.encode_codes(batch).items():
            parts[site].append(codes.cpu())
    return Activations(torch.stack(list(windows)), {site: torch.cat(chunks) for site, chunks in parts.items()})


def search_codes(
    activations: Activations, in_set: Tensor, min_count: int = 20, top: int = 5, offset: int = 0
) -> list[dict]:
    """Find the codes whose activations fall most often on tokens with `in_set[token]` true.

    With `offset` 0 a code's activation counts for the token it fires on. With `offset` 1 it
    counts for the next token, which finds codes that predict the set.

    Returns up to `top` rows over all sites and groups, best precision first. Each row has the
    site, group and code, the precision (share of the code's activations on the set), the
    recall (share of the set's tokens on which the code is active) and the count of
    activations. Codes with fewer than `min_count` activations, or none on the set, are skipped.
    """
    if offset not in (0, 1):
        raise ValueError(f"offset must be 0 (the token itself) or 1 (the next token), got {offset}")
    length = activations.tokens.shape[1] - offset
    member = in_set[activations.tokens[:, offset:].flatten()]  # (W * (T - offset),)
    set_total = int(member.sum())
    rows = []
    for site, codes in activations.codes.items():
        flat = codes[:, :length].flatten(0, 1)  # (W * (T - offset), G, k)
        codebook_size = int(flat.max()) + 1
        for group in range(flat.shape[1]):
            ids = flat[:, group]  # (N, k)
            counts = torch.bincount(ids.flatten(), minlength=codebook_size).float()
            hits = torch.bincount(ids.flatten(), weights=member[:, None].expand_as(ids).flatten().float(), minlength=codebook_size)
            for code in torch.nonzero((counts >= min_count) & (hits > 0)).flatten().tolist():
                rows.append(
                    {
                        "site": site,
                        "group": group,
                        "code": code,
                        "precision": float(hits[code] / counts[code]),
                        "recall": float(hits[code] / max(set_total, 1)),
                        "count": int(counts[code]),
                    }
                )
    rows.sort(key=lambda row: (row["precision"], row["count"]), reverse=True)
    return rows[:top]


def code_contexts(tokenizer, activations: Activations, site: str, code: int, group: int = 0, width: int = 8, limit: int = 20) -> list[tuple[str, str, str]]:
    """Return up to `limit` (left context, token, right context) strings where `code` of `group` at `site` is active."""
    if site not in activations.codes:
        raise ValueError(f"unknown codebook site {site!r}; valid sites: {', '.join(activations.codes)}")
    codes = activations.codes[site]
    if not 0 <= group < codes.shape[2]:
        raise ValueError(f"group {group} does not exist at {site}; valid groups are 0..{codes.shape[2] - 1}")
    hits = torch.nonzero((codes[:, :, group] == code).any(dim=-1))  # (M, 2) window, position
    contexts = []
    for window, position in hits[:limit].tolist():
        tokens = activations.tokens[window]
        left = tokenizer.decode(tokens[max(0, position - width) : position].tolist())
        right = tokenizer.decode(tokens[position + 1 : position + 1 + width].tolist())
        contexts.append((left, tokenizer.decode([int(tokens[position])]), right))
    return contexts


@torch.no_grad()
def steering_rate(
    model,
    prompts: Sequence[Tensor],
    in_set: Tensor,
    codes: Sequence[tuple[str, int, int]],
    max_new_tokens: int = 32,
    seed: int = 0,
) -> dict[str, float]:
    """Generate from each prompt with and without the given codes forced on, and return the
    share of generated tokens that lie in the set, for both.

    `codes` lists (site, group, code) triples, at most one per site and group. Each forced
    code replaces its group's output at every position (an exclusive override). Both runs
    sample at temperature 1 with the same seeds.
    """
    device = next(model.parameters()).device
    forced: dict[str, Tensor] = {}
    for site, group, code in codes:
        site_codes = forced.setdefault(site, torch.full((model.bottleneck(site).groups, 1), -1, dtype=torch.long))
        if site_codes[group, 0] >= 0:
            raise ValueError(f"two codes forced in group {group} of {site}; give at most one code per group")
        site_codes[group, 0] = code
    overrides = {site: CodeOverride(site_codes, exclusive=True) for site, site_codes in forced.items()}

    rates = {}
    for name, active in (("unsteered", {}), ("steered", overrides)):
        in_set_count = total = 0
        with model.steering(active):
            for index, prompt in enumerate(prompts):
                generated = model.sample(prompt[None].to(device), max_new_tokens, seed=seed + index)[0].cpu()
                in_set_count += int(in_set[generated].sum())
                total += generated.numel()
        rates[f"{name}_rate"] = in_set_count / max(total, 1)
    return rates
