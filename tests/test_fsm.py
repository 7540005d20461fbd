"""TokFSM: the random finite state machine, its token encoding, walks and the walk dataset."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from vqkit.data.fsm import FSM, FSMSequences


@pytest.fixture(scope="module")
def fsm() -> FSM:
    return FSM()


def _is_valid_walk(fsm: FSM, states: list[int]) -> bool:
    return all(fsm.is_transition(source, target) for source, target in itertools.pairwise(states))


# ---- the machine ----------------------------------------------------------------------------------


def test_default_machine_sizes(fsm):
    assert fsm.num_states == 100
    assert fsm.num_edges == 10
    assert fsm.digits == 2
    assert fsm.bos_id == 10
    assert fsm.vocab_size == 11
    assert fsm.successors.shape == (100, 10)
    assert fsm.transition_matrix.shape == (100, 100)


def test_successors_are_distinct(fsm):
    for state in range(fsm.num_states):
        successors = fsm.successors[state].tolist()
        assert len(set(successors)) == fsm.num_edges, f"state {state} has successors {successors}"
        assert successors == sorted(successors)
        assert all(0 <= target < fsm.num_states for target in successors)


def test_transition_rows_sum_to_one(fsm):
    torch.testing.assert_close(fsm.transition_matrix.sum(dim=1), torch.ones(fsm.num_states))


def test_transition_matrix_is_uniform_over_successors(fsm):
    nonzero_per_row = (fsm.transition_matrix > 0).sum(dim=1)
    assert torch.equal(nonzero_per_row, torch.full((fsm.num_states,), fsm.num_edges))
    expected = torch.zeros(fsm.num_states, fsm.num_states)
    for state in range(fsm.num_states):
        expected[state, fsm.successors[state]] = 1.0 / fsm.num_edges
    assert torch.equal(fsm.transition_matrix, expected)


def test_is_transition_matches_successors(fsm):
    for source in (0, 17, 99):
        successors = set(fsm.successors[source].tolist())
        for target in range(fsm.num_states):
            assert fsm.is_transition(source, target) == (target in successors)


def test_predecessors_invert_successors(fsm):
    for target in range(fsm.num_states):
        expected = [source for source in range(fsm.num_states) if target in fsm.successors[source].tolist()]
        assert fsm.predecessors[target] == expected


@pytest.mark.parametrize(
    ("num_states", "base", "digits"),
    [(100, 10, 2), (10, 10, 1), (11, 10, 2), (101, 10, 3), (1000, 10, 3), (16, 2, 4), (17, 2, 5), (2, 2, 1)],
)
def test_digits_cover_every_state(num_states, base, digits):
    machine = FSM(num_states=num_states, num_edges=2, base=base)

    assert machine.digits == digits
    assert machine.vocab_size == base + 1
    assert machine.decode(machine.encode([num_states - 1])) == [num_states - 1]


def test_machine_is_deterministic_by_seed():
    first = FSM(num_states=30, num_edges=4, seed=3)
    again = FSM(num_states=30, num_edges=4, seed=3)
    other = FSM(num_states=30, num_edges=4, seed=4)

    assert torch.equal(first.successors, again.successors)
    assert not torch.equal(first.successors, other.successors)


def test_all_edges_machine_is_complete():
    machine = FSM(num_states=5, num_edges=5)
    assert torch.equal(machine.successors, torch.arange(5).expand(5, 5))


@pytest.mark.parametrize(
    ("kwargs", "value"),
    [
        ({"num_states": 1}, "num_states=1"),
        ({"num_states": 10, "num_edges": 0}, "num_edges=0"),
        ({"num_states": 10, "num_edges": 11}, "num_edges=11"),
        ({"base": 1}, "base=1"),
    ],
)
def test_invalid_machine_arguments_raise(kwargs, value):
    with pytest.raises(ValueError, match=value):
        FSM(**kwargs)


# ---- tokens --------------------------------------------------------------------------------------


def test_state_tokens_are_most_significant_first(fsm):
    assert fsm.state_tokens(42) == [4, 2]
    assert fsm.state_tokens(7) == [0, 7]
    assert fsm.state_tokens(0) == [0, 0]


@pytest.mark.parametrize("state", [-1, 100, 250])
def test_state_tokens_reject_invalid_state(fsm, state):
    with pytest.raises(ValueError, match=f"state {state} is out of range"):
        fsm.state_tokens(state)


def test_encode_starts_with_bos(fsm):
    tokens = fsm.encode([42, 7])
    assert tokens.dtype == torch.long
    assert tokens.tolist() == [10, 4, 2, 0, 7]
    assert fsm.encode([42, 7], bos=False).tolist() == [4, 2, 0, 7]


def test_encode_decode_round_trip(fsm):
    states = fsm.walk(30, np.random.default_rng(0))
    assert fsm.decode(fsm.encode(states)) == states
    assert fsm.decode(fsm.encode(states, bos=False)) == states
    assert fsm.decode(fsm.encode(states).tolist()) == states


def test_decode_marks_unparsable_groups(fsm):
    # An incomplete last group, and a group that contains BOS.
    assert fsm.decode([10, 4, 2, 3]) == [42, None]
    assert fsm.decode([10, 4, 10, 0, 7]) == [None, 7]
    assert fsm.decode([10]) == []


def test_decode_rejects_digits_past_last_state():
    machine = FSM(num_states=50, num_edges=3)
    assert machine.decode([machine.bos_id, 4, 9, 9, 9]) == [49, None]


# ---- walks ---------------------------------------------------------------------------------------


def test_walk_uses_only_valid_edges(fsm):
    rng = np.random.default_rng(1)
    for _ in range(20):
        states = fsm.walk(25, rng)
        assert len(states) == 25
        assert _is_valid_walk(fsm, states), states


def test_walk_starts_at_given_state(fsm):
    states = fsm.walk(5, np.random.default_rng(2), start=13)
    assert states[0] == 13
    assert _is_valid_walk(fsm, states)


def test_walk_rejects_invalid_start(fsm):
    with pytest.raises(ValueError, match="state 100 is out of range"):
        fsm.walk(5, np.random.default_rng(0), start=100)


def test_walk_is_deterministic_by_rng_seed(fsm):
    first = fsm.walk(40, np.random.default_rng(5))
    again = fsm.walk(40, np.random.default_rng(5))
    other = fsm.walk(40, np.random.default_rng(6))

    assert first == again
    assert first != other


def test_walk_ending_at_ends_at_state(fsm):
    rng = np.random.default_rng(3)
    for state in (0, 42, 99):
        states = fsm.walk_ending_at(state, 10, rng)
        assert states[-1] == state
        # Every state of the default machine has a predecessor, so the walk has full length.
        assert len(states) == 10
        assert _is_valid_walk(fsm, states), states


def test_walk_ending_at_stops_at_source():
    machine = FSM(num_states=20, num_edges=1, seed=0)
    sources = [state for state in range(20) if not machine.predecessors[state]]
    assert sources, "this machine was expected to have a state without predecessors"

    assert machine.walk_ending_at(sources[0], 5, np.random.default_rng(0)) == [sources[0]]

    # A walk ending at the successor of such a state may stop early, but it stays valid.
    target = int(machine.successors[sources[0], 0])
    states = machine.walk_ending_at(target, 50, np.random.default_rng(0))
    assert states[-1] == target
    assert 1 <= len(states) <= 50
    assert _is_valid_walk(machine, states)


def test_walk_ending_at_rejects_invalid_state(fsm):
    with pytest.raises(ValueError, match="state -3 is out of range"):
        fsm.walk_ending_at(-3, 4, np.random.default_rng(0))


# ---- transition accuracy of a token sequence ---------------------------------------------------------


def test_transition_accuracy_of_valid_walk(fsm):
    states = fsm.walk(12, np.random.default_rng(4))
    assert fsm.transition_accuracy(fsm.encode(states)) == (11, 11)


def test_transition_accuracy_drops_for_corrupted_state(fsm):
    states = fsm.walk(12, np.random.default_rng(4))
    position = 6
    # A replacement that is neither a successor of the state before nor a predecessor of the
    # state after breaks exactly two transitions.
    replacement = next(
        state
        for state in range(fsm.num_states)
        if not fsm.is_transition(states[position - 1], state) and not fsm.is_transition(state, states[position + 1])
    )
    corrupted = [*states[:position], replacement, *states[position + 1 :]]

    assert fsm.transition_accuracy(fsm.encode(corrupted)) == (9, 11)


def test_transition_accuracy_unparsable_state(fsm):
    states = fsm.walk(5, np.random.default_rng(7))
    tokens = fsm.encode(states)
    tokens[2] = fsm.bos_id  # the second digit of the first state

    assert fsm.transition_accuracy(tokens) == (3, 4)


def test_transition_accuracy_of_short_sequences(fsm):
    assert fsm.transition_accuracy(fsm.encode([5])) == (0, 0)
    assert fsm.transition_accuracy([fsm.bos_id]) == (0, 0)


# ---- the dataset ---------------------------------------------------------------------------------


def test_sequences_are_valid_walks(fsm):
    dataset = FSMSequences(fsm, num_states_per_sequence=16, seed=0, length=50)
    for index in range(10):
        item = dataset[index]
        assert item.shape == (1 + 2 * 16,)
        assert item.dtype == torch.long
        assert int(item[0]) == fsm.bos_id
        assert fsm.transition_accuracy(item) == (15, 15)


def test_sequences_are_functions_of_seed_and_index(fsm):
    dataset = FSMSequences(fsm, num_states_per_sequence=16, seed=0, length=50)
    same_seed = FSMSequences(fsm, num_states_per_sequence=16, seed=0, length=50)
    other_seed = FSMSequences(fsm, num_states_per_sequence=16, seed=1, length=50)

    assert torch.equal(dataset[7], same_seed[7])
    assert torch.equal(dataset[7], dataset[7])
    assert not torch.equal(dataset[7], dataset[8])
    assert not torch.equal(dataset[7], other_seed[7])


def test_sequences_length_and_index_check(fsm):
    dataset = FSMSequences(fsm, num_states_per_sequence=4, length=3)
    assert len(dataset) == 3
    with pytest.raises(IndexError, match="index 3 is out of range"):
        dataset[3]


def test_sequences_reject_single_state(fsm):
    with pytest.raises(ValueError, match="num_states_per_sequence=1"):
        FSMSequences(fsm, num_states_per_sequence=1)
