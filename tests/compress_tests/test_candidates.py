"""The candidates of the whole-model allocation: which settings are tried, and their scores."""

import chainer
import chainer.links as L
import numpy as np
import pytest

from chainer_sharedlinear import compress_linears
from chainer_sharedlinear.compress import fitting
from chainer_sharedlinear.compress.calibration import LayerStatistics
from chainer_sharedlinear.compress.candidates import _LayerFit
from chainer_sharedlinear.compress.patterns import (
    _PATTERNS,
    CLUSTERED_LOW_RANK_GRID_BITS,
    RANK_STEP,
    _allocation_settings,
    rank_grid,
)


def correlated_inputs(n, size, seed=0):
    """Inputs whose features share a few strong directions, away from 0, as activations are."""
    rng = np.random.RandomState(seed)
    return rng.randn(n, 3) @ rng.randn(3, size) * 3 + rng.randn(n, size) * 0.3 + 1.0


def layer(in_size, out_size, seed=1, nobias=False):
    rng = np.random.RandomState(seed)
    return L.Linear(in_size, out_size, nobias=nobias,
                    initialW=rng.randn(out_size, in_size).astype(np.float32),
                    initial_bias=None if nobias else rng.randn(out_size).astype(np.float32))


@pytest.mark.parametrize('most', [1, 2, 9, 30, 784, 1000])
def test_the_rank_grid_climbs_by_the_rank_step_from_1_to_the_most(most):
    ranks = rank_grid(most)
    assert ranks[0] == 1 and ranks[-1] == most
    assert ranks == sorted(set(ranks))
    for low, high in zip(ranks[:-2], ranks[1:-1]):  # the last step is cut at ``most``
        assert high == low + 1 or high <= round(low * RANK_STEP) + 1


def test_the_allocation_tries_every_rank_of_the_grid_at_each_bit_width_within_the_budget():
    in_size, out_size, itemsize = 40, 30, 4
    entry = _PATTERNS['clustered_lowrank']
    everything = _allocation_settings('clustered_lowrank', in_size, out_size, 'float32', False,
                                      10 ** 9)
    cheap = [r for r in rank_grid(30) if r * (in_size + out_size) <= in_size * out_size]
    assert sorted((k['rank'], k['n_clusters']) for k in everything) == sorted(
        (r, 2 ** bits) for bits in CLUSTERED_LOW_RANK_GRID_BITS for r in cheap)
    most = 600
    within = _allocation_settings('clustered_lowrank', in_size, out_size, 'float32', False, most)
    assert within == [k for k in everything
                      if out_size * itemsize + entry.weight_bytes(in_size, out_size, itemsize, k)
                      <= most]
    assert 0 < len(within) < len(everything)


@pytest.mark.parametrize('correct_bias', [False, True])
@pytest.mark.parametrize('nobias', [False, True])
def test_a_clustered_low_rank_candidate_is_scored_as_it_is_built(correct_bias, nobias):
    x = correlated_inputs(300, 24)
    linear = layer(24, 16, nobias=nobias)
    stats = LayerStatistics(x.T @ x, len(x), x.sum(axis=0))
    fit = _LayerFit(linear, stats, correct_bias=correct_bias)
    settings = [{'rank': 3, 'n_clusters': 4}, {'rank': 6, 'n_clusters': 8},
                {'rank': 12, 'n_clusters': 16}]
    w = linear.W.array.astype(np.float64)
    b = np.zeros(16) if nobias else linear.b.array.astype(np.float64)
    for knobs, score in zip(settings, fit.scores('clustered_lowrank', settings)):
        built = fit.build('clustered_lowrank', knobs)
        v = built.dense_weight().astype(np.float64)
        c = np.zeros(16) if nobias else built.b.array.astype(np.float64)
        outputs = x @ w.T + b
        expected = np.linalg.norm(outputs - (x @ v.T + c)) / np.linalg.norm(x @ w.T)
        assert score == pytest.approx(expected, rel=1e-4)
        assert score == pytest.approx(fit.output_error(built), rel=1e-4)


def test_the_bias_is_corrected_by_default_with_calibration():
    x = correlated_inputs(300, 24).astype(np.float32)
    model = layer(24, 16)
    w = model.W.array.astype(np.float64)
    b = model.b.array.astype(np.float64)
    stats = LayerStatistics(x.T.astype(np.float64) @ x, len(x), x.sum(axis=0, dtype=np.float64))
    holder = chainer.Sequential(model)
    compress_linears(holder, 1 / 4, calibration=x, pattern='clustered_lowrank',
                     allocation='layer')
    built = holder[0]
    assert type(built).__name__ == 'ClusteredLowRankLinear'
    expected = fitting.corrected_bias(stats, w, built.dense_weight(), b)
    np.testing.assert_allclose(built.b.array, expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(built.b.array, b, rtol=1e-3, atol=1e-3)


class TwoBranches(chainer.Chain):
    """Two layers of the same shape whose outputs are summed, the second's scaled down 100
    times: its errors hardly change the model's outputs."""

    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.loud = layer(24, 24, seed=2)
            self.quiet = layer(24, 24, seed=3)

    def forward(self, x):
        return self.loud(x) + 0.01 * self.quiet(x)


def model_error(model, dense, x):
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        y, y0 = model(x).array.astype(np.float64), dense(x).array.astype(np.float64)
    return np.linalg.norm(y - y0) / np.linalg.norm(y0)


def test_the_allocation_weighs_each_layer_by_how_much_the_models_outputs_feel_it():
    x = correlated_inputs(300, 24).astype(np.float32)
    dense = TwoBranches()
    measured, unweighted = TwoBranches(), TwoBranches()
    compress_linears(measured, 1 / 4, calibration=[x[:150], x[150:]], pattern='lowrank')
    # a generator runs once: no sensitivity is measured, every layer weighs 1
    compress_linears(unweighted, 1 / 4, calibration=(b for b in [x[:150], x[150:]]),
                     pattern='lowrank')
    assert measured.loud.rank > unweighted.loud.rank
    assert measured.quiet.rank < unweighted.quiet.rank
    assert model_error(measured, dense, x) < model_error(unweighted, dense, x) / 2


@pytest.mark.parametrize('nobias', [False, True])
def test_the_models_error_with_one_layer_replaced_is_that_of_the_model_rebuilt(nobias):
    from chainer_sharedlinear import LowRankLinear
    from chainer_sharedlinear.compress.compressing import _Sensitivity

    x = correlated_inputs(50, 24).astype(np.float32)
    model = chainer.Sequential(layer(24, 16, nobias=nobias), chainer.functions.relu,
                               layer(16, 5, seed=4))
    replacement = LowRankLinear.from_linear(model[0], rank=3)
    rebuilt = chainer.Sequential(replacement, chainer.functions.relu, model[2].copy('copy'))
    expected = model_error(rebuilt, model, x)
    found = _Sensitivity(model, x).model_error(model[0], replacement)
    assert found == pytest.approx(expected, rel=1e-5)
    assert 0 < found < 1
    assert model_error(model, model, x) == 0  # the model is as it was


@pytest.mark.parametrize('in_size, out_size', [(40, 24), (24, 40)])
@pytest.mark.parametrize('n_clusters', [4, 16])
def test_a_low_rank_candidate_without_data_is_scored_as_from_linear_builds_it(
        in_size, out_size, n_clusters):
    # Scored from the one decomposition of the most terms asked, rank by rank, and the
    # error summed a slice of rows at a time: the error of the layer from_linear builds.
    from chainer_sharedlinear.compress.patterns import _from_linear
    from chainer_sharedlinear.compress.weight_fit import _relative_error
    linear = layer(in_size, out_size)
    fit = _LayerFit(linear)
    settings = [{'rank': rank, 'n_clusters': n_clusters, 'in_size': in_size,
                 'out_size': out_size} for rank in (1, 5, 12)]
    for knobs, score in zip(settings, fit.scores('clustered_lowrank', settings)):
        built = _from_linear('clustered_lowrank', linear, knobs)
        assert score == pytest.approx(_relative_error(built, linear.W.array), rel=1e-5)
    settings = [{'rank': knobs['rank'], 'in_size': in_size, 'out_size': out_size}
                for knobs in settings]
    for knobs, score in zip(settings, fit.scores('lowrank', settings)):
        built = _from_linear('lowrank', linear, knobs)
        assert score == pytest.approx(_relative_error(built, linear.W.array), rel=1e-5)


def test_clustered_low_rank_candidates_without_data_take_one_eigendecomposition():
    # The Gram matrix and its eigenvectors, twice the float32 weight's bytes each, and a
    # half for the rest (test_compress's _FIT_BYTES); before, 12 times for a float64 SVD,
    # its factors and the products as large as the weight.
    import tracemalloc
    size = 192
    linear = layer(size, size)
    settings = _allocation_settings('clustered_lowrank', size, size, np.float32, False,
                                    size * size * 4 // 8)
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        _LayerFit(linear).scores('clustered_lowrank', settings)
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    assert peak <= 4.5 * size * size * 4, peak / (size * size * 4)
