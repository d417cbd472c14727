import itertools

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from chainer_sharedlinear.compress.allocation import Allocation, allocate, allocate_per_layer

candidate = st.tuples(st.integers(0, 30), st.floats(0, 2, allow_nan=False))
instances = st.lists(st.lists(candidate, min_size=1, max_size=4), min_size=1, max_size=4)
sensitivity = st.floats(0.1, 10)


def brute_force(layers, budget, sensitivities):
    """The least objective over every choice within the budget, or None if none fits."""
    best = None
    for choice in itertools.product(*(range(len(layer)) for layer in layers)):
        if sum(layer[j][0] for layer, j in zip(layers, choice)) <= budget:
            objective = sum(s * layer[j][1] ** 2
                            for layer, j, s in zip(layers, choice, sensitivities))
            best = objective if best is None else min(best, objective)
    return best


def check(allocation, layers, budget, sensitivities):
    """The allocation is a choice per layer, within the budget, and its sums are right."""
    assert len(allocation.choices) == len(layers)
    chosen = [layer[j] for layer, j in zip(layers, allocation.choices)]
    assert allocation.bytes == sum(size for size, _ in chosen) <= budget
    assert allocation.objective == pytest.approx(
        sum(s * e ** 2 for (_, e), s in zip(chosen, sensitivities)), rel=1e-12, abs=1e-15)


@given(instances, st.integers(0, 100), st.data())
def test_allocation_is_optimal_and_within_budget(layers, budget, data):
    sensitivities = data.draw(st.lists(sensitivity, min_size=len(layers),
                                       max_size=len(layers)))
    best = brute_force(layers, budget, sensitivities)
    if best is None:
        with pytest.raises(ValueError, match='no choice of candidates fits the budget of'):
            allocate(layers, budget, sensitivities=sensitivities)
        return
    allocation = allocate(layers, budget, sensitivities=sensitivities)
    check(allocation, layers, budget, sensitivities)
    assert allocation.objective == pytest.approx(best, rel=1e-12, abs=1e-15)


@given(instances, st.data())
def test_allocation_is_never_worse_than_a_split_of_the_same_budget(layers, data):
    budgets = [data.draw(st.integers(min(size for size, _ in layer), 40)) for layer in layers]
    split = allocate_per_layer(layers, budgets)
    check(split, layers, sum(budgets), [1] * len(layers))
    assert allocate(layers, sum(budgets)).objective <= split.objective + 1e-12


def low_rank_curve(dense_bytes, steepness, n=20):
    """A layer's candidates: dense, and n sizes whose error falls as steepness says."""
    sizes = np.linspace(0, dense_bytes // 2, n).astype(int)
    return [(dense_bytes, 0.0)] + [(int(size), float(np.exp(-steepness * size / dense_bytes)))
                                   for size in sizes]


def test_allocation_beats_the_uniform_split_where_a_small_layer_needs_its_bytes():
    # The MLP's shape: two large layers that compress well, a small one that does not.
    layers = [low_rank_curve(3_140_000, 40), low_rank_curve(4_004_000, 40),
              low_rank_curve(40_040, 4)]
    dense = [layer[0][0] for layer in layers]
    budget = sum(dense) // 32
    uniform = allocate_per_layer(layers, [size // 32 for size in dense])
    allocation = allocate(layers, budget)
    check(allocation, layers, budget, [1, 1, 1])
    small = layers[2][allocation.choices[2]][0]
    assert small > 8 * dense[2] // 32  # the small layer gets many times its share
    assert allocation.objective < 0.5 * uniform.objective


def test_sensitivities_move_the_bytes():
    layers = [[(10, 0.0), (0, 1.0)], [(10, 0.0), (0, 1.0)]]
    assert allocate(layers, 10, sensitivities=[1, 2]).choices == (1, 0)
    assert allocate(layers, 10, sensitivities=[2, 1]).choices == (0, 1)


def test_of_equal_objectives_the_fewest_bytes():
    assert allocate([[(5, 0.5), (3, 0.5), (4, 0.5)]], 10) == Allocation((1,), 3, 0.25)
    assert allocate_per_layer([[(5, 0.5), (3, 0.5), (4, 0.5)]], [10]) == Allocation(
        (1,), 3, 0.25)


def test_many_layers_and_candidates():
    rng = np.random.RandomState(0)
    layers = [[(int(size), float(error)) for size, error in
               zip(rng.randint(0, 30_000, 40), rng.uniform(0, 1, 40))] for _ in range(14)]
    allocation = allocate(layers, 100_000)
    check(allocation, layers, 100_000, [1] * 14)
    # Each layer's choice is the best for the bytes the others leave it.
    for i, layer in enumerate(layers):
        rest = allocation.bytes - layer[allocation.choices[i]][0]
        best = min(error for size, error in layer if size + rest <= 100_000)
        assert layer[allocation.choices[i]][1] == best


@pytest.mark.parametrize('candidates, budget, options, message', [
    ([], 10, {}, 'candidates must have a list of candidates per layer, got none'),
    ([[]], 10, {}, 'layer 0 has no candidate: keeping it dense is one'),
    ([[(1, 0.5)], [3]], 10, {}, r'candidates\[1\]\[0\] must be a pair \(bytes, error\), got 3'),
    ([[(-1, 0.5)]], 10, {}, r'the bytes of candidates\[0\]\[0\] must be a number of bytes, an '
                            r'integer of at least 0, got -1'),
    ([[(1.5, 0.5)]], 10, {}, r'the bytes of candidates\[0\]\[0\] must be a number of bytes'),
    ([[(1, float('nan'))]], 10, {}, r'the error of candidates\[0\]\[0\] must be a finite '
                                    r'number of at least 0, got nan'),
    ([[(1, -0.5)]], 10, {}, r'the error of candidates\[0\]\[0\] must be'),
    ([[(1, 0.5)]], -1, {}, 'budget must be a number of bytes, an integer of at least 0, got -1'),
    ([[(1, 0.5)]], 2.5, {}, 'budget must be a number of bytes'),
    ([[(1, 0.5)]], 10, {'sensitivities': [1, 2]},
     r'sensitivities must have one number per layer \(1\), got 2'),
    ([[(1, 0.5)]], 10, {'sensitivities': [0]},
     r'sensitivities\[0\] must be a finite number above 0, got 0'),
    ([[(20, 0.5), (12, 1.)], [(5, 0.)]], 16, {},
     'no choice of candidates fits the budget of 16 bytes: the smallest of each layer take 17 '
     'together'),
])
def test_bad_candidates_are_refused(candidates, budget, options, message):
    with pytest.raises(ValueError, match=message):
        allocate(candidates, budget, **options)


def test_a_layer_over_its_own_budget_is_refused():
    with pytest.raises(ValueError, match='layer 1 has no candidate within its budget of 4 '
                                         'bytes: its smallest takes 5'):
        allocate_per_layer([[(1, 0.5)], [(5, 0.), (6, 0.)]], [1, 4])
    with pytest.raises(ValueError, match=r'budgets must have one number of bytes per layer '
                                         r'\(2\), got 1'):
        allocate_per_layer([[(1, 0.5)], [(5, 0.)]], [10])
    with pytest.raises(ValueError, match=r'budgets\[0\] must be a number of bytes'):
        allocate_per_layer([[(1, 0.5)]], [-3])


@given(st.lists(st.lists(candidate, min_size=1, max_size=3), min_size=1, max_size=3))
def test_a_budget_of_everything_takes_each_layers_least_error(layers):
    budget = sum(max(size for size, _ in layer) for layer in layers)
    allocation = allocate(layers, budget)
    least = sum(min(e for _, e in layer) ** 2 for layer in layers)
    assume(least > 0 or allocation.objective == 0)
    assert allocation.objective == pytest.approx(least, rel=1e-12, abs=1e-15)
