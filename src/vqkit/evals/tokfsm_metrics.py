"""Metrics of language models trained on TokFSM (`vqkit.data.fsm`): how well they know the
machine's transitions, how pure their codes are, and how codes steer them.

A model predicts a state one digit at a time, so its next-state distribution is the product
of the digit probabilities: P(s) = P(d1) * P(d2 | d1) for two-digit states. Every function
here takes a `vqkit.models.CausalLM` (a `CodebookLM` too) in eval mode.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import Tensor

from vqkit.data.fsm import FSM
from vqkit.models.codebook_bottleneck import CodeOverride


@torch.no_grad()
def next_state_distribution(model, fsm: FSM, prefixes: Tensor, override_sites: dict | None = None) -> Tensor:
    """Return the model's distribution over the next state after each prefix, float (B, S).

    `prefixes` is long (B, T), each ending at a state boundary. `override_sites` maps sites to
    (B, digits, G, n) codes forced on at the last `digits` positions of each prefix; it needs a
    `CodebookLM`. Mass on digit strings that name no state (ids >= S) is dropped, so rows may
    sum to less than 1.
    """
    device = next(model.parameters()).device
    prefixes = prefixes.to(device)
    batch, length = prefixes.shape
    digit_strings = list(itertools.product(range(fsm.base), repeat=fsm.digits))  # base**digits tuples

    # log P(d_1 .. d_j) for every digit string; prefixes of length j are expanded in turn.
    log_prob = torch.zeros(batch, 1, device=device)  # (B, base**j)
    for position in range(fsm.digits):
        heads = list(itertools.product(range(fsm.base), repeat=position))
        inputs = torch.cat(
            [prefixes.repeat_interleave(len(heads), dim=0), torch.tensor(heads, dtype=torch.long, device=device).reshape(len(heads), position).repeat(batch, 1)],
            dim=1,
        )  # (B * base**j, T + j)
        logits = _logits_with_overrides(model, inputs, override_sites, length, repeats=len(heads))
        digit_log_prob = torch.log_softmax(logits[:, -1].float(), dim=-1)[:, : fsm.base]  # (B * base**j, base)
        log_prob = (log_prob.reshape(-1, 1) + digit_log_prob).reshape(batch, -1)

    states = torch.tensor([_state_id(digits, fsm.base) for digits in digit_strings], device=device)
    valid = states < fsm.num_states
    distribution = torch.zeros(batch, fsm.num_states, device=device)
    distribution[:, states[valid]] = log_prob[:, valid].exp()
    return distribution.cpu()


def _state_id(digits: tuple[int, ...], base: int) -> int:
    value = 0
    for digit in digits:
        value = value * base + digit
    return value


def _logits_with_overrides(model, inputs: Tensor, override_sites: dict | None, prefix_length: int, repeats: int) -> Tensor:
    if not override_sites:
        return model(inputs).logits
    # Each prefix is repeated `repeats` times, so its forced codes are too. The override positions
    # are the last digits of the prefix, at the same absolute positions in every extension.
    first = next(iter(override_sites.values()))
    digits = first.shape[1]
    positions = list(range(prefix_length - digits, prefix_length))
    rows = []
    for row in range(inputs.shape[0]):
        overrides = {site: CodeOverride(codes[row // repeats], positions) for site, codes in override_sites.items()}
        with model.steering(overrides):
            rows.append(model(inputs[row : row + 1]).logits)
    return torch.cat(rows)


def state_prefixes(fsm: FSM, states: list[int]) -> Tensor:
    """Return BOS followed by the digits of each state, long (len(states), 1 + digits)."""
    return torch.stack([fsm.encode([state]) for state in states])


def first_transition_accuracy(model, fsm: FSM) -> float:
    """Return the mean, over all states s, of the share of the model's E most likely next
    states after "BOS s" that are true out-neighbours of s (E = fsm.num_edges)."""
    distribution = next_state_distribution(model, fsm, state_prefixes(fsm, list(range(fsm.num_states))))
    top = distribution.topk(fsm.num_edges, dim=1).indices  # (S, E)
    hits = torch.gather(fsm.transition_matrix, 1, top) > 0
    return float(hits.float().mean())


@torch.no_grad()
def transition_accuracy(model, fsm: FSM, num_sequences: int = 100, length: int = 128, seed: int = 0) -> float:
    """Return the share of valid transitions in `num_sequences` sampled generations of `length`
    tokens after BOS (temperature 1, no top-k or top-p)."""
    device = next(model.parameters()).device
    prompt = torch.full((num_sequences, 1), fsm.bos_id, dtype=torch.long, device=device)
    generated = torch.cat([prompt, model.sample(prompt, length, seed=seed)], dim=1)
    valid = total = 0
    for sequence in generated.cpu():
        v, t = fsm.transition_accuracy(sequence)
        valid += v
        total += t
    return valid / max(total, 1)


def js_divergence(p: Tensor, q: Tensor) -> Tensor:
    """Jensen-Shannon divergence in bits (0 to 1) between distributions along the last dimension."""
    p = p / p.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    q = q / q.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    mean = 0.5 * (p + q)

    def kl(a: Tensor, b: Tensor) -> Tensor:
        return torch.where(a > 0, a * (a.clamp_min(1e-12).log2() - b.clamp_min(1e-12).log2()), 0.0).sum(dim=-1)

    return 0.5 * kl(p, mean) + 0.5 * kl(q, mean)


@torch.no_grad()
def state_purity(model, fsm: FSM, num_sequences: int = 64, seed: int = 1, min_count: int = 10) -> dict[str, dict[str, float]]:
    """Measure how specific each code is to one FSM state.

    The model reads `num_sequences` fresh walks. At the last digit of every state, where the
    whole state has been read, each active code counts one activation for that state. A
    code's purity is the share of its activations on its most frequent state. Returns, per
    site: the mean purity over codes with at least `min_count` activations, the same mean
    weighted by activations, and the number of such codes.
    """
    from vqkit.data.fsm import FSMSequences

    walks = FSMSequences(fsm, 64, seed=seed)
    tokens = torch.stack([walks[i] for i in range(num_sequences)])
    states = torch.tensor([fsm.decode(sequence) for sequence in tokens.tolist()])  # (B, num_states)
    positions = torch.arange(1, states.shape[1] + 1) * fsm.digits  # last digit of each state
    codes = model.encode_codes(tokens.to(next(model.parameters()).device))

    result = {}
    for site, site_codes in codes.items():
        at_states = site_codes.cpu()[:, positions]  # (B, num_states, G, k)
        groups, k = at_states.shape[2:]
        # One row per (group, code), one column per state: activation counts.
        code_ids = at_states + torch.arange(groups).reshape(1, 1, groups, 1) * model.bottleneck(site).codebook_size
        state_ids = states[:, :, None, None].expand_as(code_ids)
        counts = torch.zeros(groups * model.bottleneck(site).codebook_size, fsm.num_states)
        counts.index_put_((code_ids.flatten(), state_ids.flatten()), torch.ones(code_ids.numel()), accumulate=True)
        totals = counts.sum(dim=1)
        frequent = totals >= min_count
        purity = counts.max(dim=1).values[frequent] / totals[frequent]
        result[site] = {
            "mean_purity": float(purity.mean()) if frequent.any() else float("nan"),
            "weighted_purity": float((purity * totals[frequent]).sum() / totals[frequent].sum()) if frequent.any() else float("nan"),
            "codes": int(frequent.sum()),
        }
    return result


@torch.no_grad()
def steering_by_layer(
    model, fsm: FSM, num_pairs: int = 100, context_states: int = 8, seed: int = 0, site_sets: dict[str, list[str]] | None = None
) -> list[dict[str, float]]:
    """Measure how well forcing state b's codes into a context that ends in state a moves the
    model's next-state prediction from a's successors to b's.

    For each random pair (a, b), the model reads a walk ending in b, and its codes at the last
    `digits` positions are recorded. Then it reads a walk ending in a with those codes forced
    at the same relative positions, at the sites of one entry of `site_sets`. The default
    entries are each layer's attention and MLP sites together, keyed "layers.{i}".

    Returns one row per entry, with these fields:
    - `success`: the patched probability mass on b's successors, which equals the expected
      share of sampled next states that are valid successors of b.
    - `js_to_b`: the Jensen-Shannon divergence in bits from b's true next-state distribution.
    - `unpatched_success`: the same mass without the patch.
    """
    rng = np.random.default_rng(seed)
    if site_sets is None:
        layers = sorted({int(site.split(".")[1]) for site in model.sites})
        site_sets = {f"layers.{layer}": [s for s in model.sites if s.startswith(f"layers.{layer}.")] for layer in layers}
    pairs = []
    while len(pairs) < num_pairs:
        a, b = (int(s) for s in rng.integers(fsm.num_states, size=2))
        if a != b:
            pairs.append((fsm.encode(fsm.walk_ending_at(a, context_states, rng)), b, fsm.encode(fsm.walk_ending_at(b, context_states, rng))))

    rows = []
    for name, sites in site_sets.items():
        success, divergence, unpatched = [], [], []
        for prefix_a, b, prefix_b in pairs:
            recorded = model.encode_codes(prefix_b[None].to(next(model.parameters()).device), sites)
            forced = {site: codes[:, -fsm.digits :].cpu() for site, codes in recorded.items()}  # (1, digits, G, k)
            patched = next_state_distribution(model, fsm, prefix_a[None], override_sites=forced)[0]
            plain = next_state_distribution(model, fsm, prefix_a[None])[0]
            successors = fsm.successors[b]
            success.append(float(patched[successors].sum() / patched.sum().clamp_min(1e-12)))
            unpatched.append(float(plain[successors].sum() / plain.sum().clamp_min(1e-12)))
            divergence.append(float(js_divergence(patched, fsm.transition_matrix[b])))
        rows.append(
            {
                "sites": name,
                "success": float(np.mean(success)),
                "js_to_b": float(np.mean(divergence)),
                "unpatched_success": float(np.mean(unpatched)),
            }
        )
    return rows
