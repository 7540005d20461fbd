"""TokFSM: token sequences written by a random finite state machine, the toy task of
"Codebook Features: Sparse and Discrete Interpretability for Neural Networks".

The machine has `num_states` states. Each state has `num_edges` distinct out-neighbours,
drawn at random, and moves to each of them with equal probability. A state is written as its
number in base `base` with a fixed count of digits (two for 100 states in base 10), so a
language model must combine two tokens to know the current state. A sequence is BOS followed
by a random walk of `num_states_per_sequence` states from a uniformly drawn start state.

Token ids: digits 0..base-1 are their own ids, and BOS is `base`, so the vocabulary has
`base + 1` entries (11 by default).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from vqkit.data.common import DEFAULT_LENGTH, check_index, item_rng


class FSM:
    """A random finite state machine whose states are written as `digits` base-`base` tokens.

    Args:
        num_states: number of states S.
        num_edges: out-neighbours per state E, 1 <= E <= S; each has probability 1 / E.
        base: number of digit tokens.
        seed: seed of the random edges.
    """

    def __init__(self, num_states: int = 100, num_edges: int = 10, base: int = 10, seed: int = 42):
        if num_states < 2:
            raise ValueError(f"num_states={num_states} is too small; an FSM needs at least 2 states")
        if not 1 <= num_edges <= num_states:
            raise ValueError(f"num_edges={num_edges} must be between 1 and num_states={num_states}")
        if base < 2:
            raise ValueError(f"base={base} must be at least 2")
        self.num_states = num_states
        self.num_edges = num_edges
        self.base = base
        self.seed = seed
        self.digits = max(1, math.ceil(math.log(num_states, base) - 1e-9))
        self.bos_id = base
        self.vocab_size = base + 1

        rng = np.random.default_rng(seed)
        successors = [np.sort(rng.choice(num_states, size=num_edges, replace=False)) for _ in range(num_states)]
        self.successors = torch.from_numpy(np.stack(successors)).long()  # (S, E), sorted
        self.transition_matrix = torch.zeros(num_states, num_states)  # (S, S), rows sum to 1
        self.transition_matrix.scatter_(1, self.successors, 1.0 / num_edges)
        self.predecessors = [torch.nonzero(self.transition_matrix[:, s] > 0).flatten().tolist() for s in range(num_states)]

    def state_tokens(self, state: int) -> list[int]:
        """Return the `digits` token ids of `state`, most significant first."""
        self.check_state(state)
        tokens = []
        for _ in range(self.digits):
            tokens.append(state % self.base)
            state //= self.base
        return tokens[::-1]

    def check_state(self, state: int) -> int:
        if not 0 <= int(state) < self.num_states:
            raise ValueError(f"state {state} is out of range; valid states are 0..{self.num_states - 1}")
        return int(state)

    def is_transition(self, source: int, target: int) -> bool:
        """Return True when `target` is an out-neighbour of `source`."""
        return bool(self.transition_matrix[source, target] > 0)

    def walk(self, num_states: int, rng: np.random.Generator, start: int | None = None) -> list[int]:
        """Return a random walk of `num_states` states from `start`, or from a uniform random state."""
        state = int(rng.integers(self.num_states)) if start is None else self.check_state(start)
        states = [state]
        for _ in range(num_states - 1):
            state = int(self.successors[state, rng.integers(self.num_edges)])
            states.append(state)
        return states

    def walk_ending_at(self, state: int, num_states: int, rng: np.random.Generator) -> list[int]:
        """Return a walk of up to `num_states` states that ends at `state`, drawn backwards through
        random predecessors. The walk is shorter when it reaches a state without predecessors."""
        walk = [self.check_state(state)]
        while len(walk) < num_states and self.predecessors[walk[0]]:
            options = self.predecessors[walk[0]]
            walk.insert(0, options[int(rng.integers(len(options)))])
        return walk

    def encode(self, states: list[int], bos: bool = True) -> Tensor:
        """Return the token ids (BOS, digits of each state) of `states` as a long tensor."""
        tokens = [self.bos_id] if bos else []
        for state in states:
            tokens.extend(self.state_tokens(state))
        return torch.tensor(tokens, dtype=torch.long)

    def decode(self, tokens: Tensor | list[int]) -> list[int | None]:
        """Parse token ids into states, skipping BOS; a group of digits holding BOS or ending
        the sequence incomplete becomes None."""
        values = [int(token) for token in tokens]
        if values and values[0] == self.bos_id:
            values = values[1:]
        states: list[int | None] = []
        for start in range(0, len(values), self.digits):
            group = values[start : start + self.digits]
            if len(group) < self.digits or any(not 0 <= token < self.base for token in group):
                states.append(None)
                continue
            state = 0
            for token in group:
                state = state * self.base + token
            states.append(state if state < self.num_states else None)
        return states

    def transition_accuracy(self, tokens: Tensor | list[int]) -> tuple[int, int]:
        """Count the valid transitions in a generated sequence: return (valid, total).

        A transition involving an unparsable state counts as invalid.
        """
        states = self.decode(tokens)
        valid = 0
        for source, target in zip(states, states[1:]):
            valid += int(source is not None and target is not None and self.is_transition(source, target))
        return valid, max(0, len(states) - 1)


class FSMSequences(Dataset):
    """Random walks of an `FSM`, generated on the fly.

    Item `i` is a function of (seed, i) only (`vqkit.data.common.item_rng`).

    Args:
        fsm: the machine.
        num_states_per_sequence: states per walk; a sequence has 1 + digits * this many tokens.
        seed: seed of the walks (independent of the machine's seed).
        length: number of items the dataset reports.

    Shapes:
        item: long (1 + fsm.digits * num_states_per_sequence,), starting with BOS.
    """

    def __init__(self, fsm: FSM, num_states_per_sequence: int = 64, seed: int = 0, length: int = DEFAULT_LENGTH):
        if num_states_per_sequence < 2:
            raise ValueError(f"num_states_per_sequence={num_states_per_sequence} must be at least 2")
        self.fsm = fsm
        self.num_states_per_sequence = num_states_per_sequence
        self.seed = seed
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Tensor:
        index = check_index(index, self.length)
        states = self.fsm.walk(self.num_states_per_sequence, item_rng(self.seed, index))
        return self.fsm.encode(states)
