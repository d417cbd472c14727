"""compress_linears(sequential=True): each layer fitted on the compressed model's inputs."""

import copy
import io

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
import pytest

from chainer_sharedlinear import compress_linears, load_compressed, save_compressed
from chainer_sharedlinear.compress.calibration import gather_statistics


class DeepNet(chainer.Chain):
    """Deep and narrow: what one layer's error does reaches every layer after it."""

    def __init__(self, width=16, depth=6, seed=0):
        super().__init__()
        rng = np.random.RandomState(seed)
        with self.init_scope():
            self.layers = chainer.ChainList(*[
                L.Linear(width, width, initialW=rng.randn(width, width) * 1.3 / np.sqrt(width),
                         initial_bias=rng.randn(width) * 0.1)
                for _ in range(depth)])
            self.head = L.Linear(width, 4, initialW=rng.randn(4, width) / np.sqrt(width))

    def forward(self, x):
        for layer in self.layers:
            x = F.tanh(layer(x))
        return self.head(x)


class Reversed(chainer.Chain):
    """Three layers whose paths sort in the reverse of the order they are called in."""

    def __init__(self, seed=0):
        super().__init__()
        rng = np.random.RandomState(seed)
        with self.init_scope():
            self.c = L.Linear(12, 12, initialW=rng.randn(12, 12) / np.sqrt(12))
            self.b = L.Linear(12, 12, initialW=rng.randn(12, 12) / np.sqrt(12))
            self.a = L.Linear(12, 3, initialW=rng.randn(3, 12) / np.sqrt(12))

    def forward(self, x):
        return self.a(F.tanh(self.b(F.tanh(self.c(x)))))


def inputs(n=512, size=16, seed=1):
    return np.random.RandomState(seed).randn(n, size).astype(np.float32)


def outputs(model, x):
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        return model(x).array.astype(np.float64)


def parameters(model):
    return {path: param.array.copy() for path, param in model.namedparams()}


def relative_error(model, dense, x):
    y = outputs(dense, x)
    return np.linalg.norm(outputs(model, x) - y) / np.linalg.norm(y)


@pytest.mark.parametrize('calibration, message', [
    (None, 'got none'),
    ((x for x in [inputs()]), 'got a one-pass iterator'),
])
def test_sequential_needs_calibration_data_that_runs_again_and_nothing_changes(
        calibration, message):
    model = DeepNet()
    before = parameters(model)
    with pytest.raises(ValueError, match='sequential=True .* it needs calibration data .*'
                       + message):
        compress_linears(model, 1 / 8, calibration=calibration, sequential=True)
    assert all(type(layer) is L.Linear for layer in model.layers)
    after = parameters(model)
    assert before.keys() == after.keys()
    for path, array in before.items():
        np.testing.assert_array_equal(after[path], array)


def test_sequential_refuses_a_function_of_your_own():
    def convert(linear, budget, path):
        raise AssertionError('not called')

    with pytest.raises(ValueError, match='sequential=True .* a function of your own'):
        compress_linears(DeepNet(), 1 / 8, pattern=convert, allocation='layer',
                         calibration=inputs(), sequential=True)


@pytest.mark.parametrize('budget', [1 / 4, 1 / 8])
def test_the_sequential_fit_loses_less_of_a_deep_model_on_its_calibration_data(budget):
    dense, x = DeepNet(), inputs()
    one_pass, sequential = copy.deepcopy(dense), copy.deepcopy(dense)
    compress_linears(one_pass, budget, calibration=x)
    compress_linears(sequential, budget, calibration=x, sequential=True)
    assert relative_error(sequential, dense, x) < 0.8 * relative_error(one_pass, dense, x)


def test_sequential_keeps_the_allocation_s_choice_and_its_budget():
    dense, x = DeepNet(), inputs()
    one_pass, sequential = copy.deepcopy(dense), copy.deepcopy(dense)
    first = compress_linears(one_pass, 1 / 4, pattern='lowrank', calibration=x)
    second = compress_linears(sequential, 1 / 4, pattern='lowrank', calibration=x,
                              sequential=True)
    assert [(row.path, row.pattern, row.knobs) for row in second.layers] == [
        (row.path, row.pattern, row.knobs) for row in first.layers]
    assert second.skipped == first.skipped
    assert second.stored_bytes == first.stored_bytes <= first.dense_bytes / 4
    # the first layer called has the dense model's inputs: it is fitted as in one pass
    np.testing.assert_allclose(sequential.layers[0].dense_weight(),
                               one_pass.layers[0].dense_weight(), rtol=1e-4, atol=1e-5)


def test_the_layers_are_fitted_in_the_order_they_are_called():
    """Built in the model's order, ``a`` would be fitted on the dense model's inputs."""
    dense, x = Reversed(), inputs(size=12)
    assert list(gather_statistics(dense, x)) == ['/a', '/b', '/c']  # the model's order
    model = copy.deepcopy(dense)
    compress_linears(model, 1 / 3, pattern='lowrank', calibration=x, sequential=True)
    # the layer called last, fitted on its inputs in the compressed model, with the bias
    # correction: of all layers of its rank and bias, the nearest the dense outputs there
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        new_inputs = F.tanh(model.b(F.tanh(model.c(x)))).array.astype(np.float64)
    target = outputs(dense, x)
    rank = model.a.rank
    augmented = np.concatenate([new_inputs, np.ones((len(x), 1))], axis=1)
    solved, *_ = np.linalg.lstsq(augmented, target, rcond=None)
    regressed = augmented @ solved  # the projection of the dense outputs on what X~ gives
    centred = regressed - regressed.mean(axis=0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    best = regressed.mean(axis=0) + (u[:, :rank] * s[:rank]) @ vt[:rank]
    np.testing.assert_allclose(np.linalg.norm(outputs(model, x) - target),
                               np.linalg.norm(best - target), rtol=1e-3)


def test_the_plan_and_the_saved_file_round_trip():
    dense, x = DeepNet(), inputs()
    model = copy.deepcopy(dense)
    report = compress_linears(model, 1 / 8, calibration=x, sequential=True)
    stream = io.BytesIO()
    save_compressed(stream, model, report.plan)
    stream.seek(0)
    fresh = DeepNet(seed=5)
    load_compressed(stream, fresh)
    np.testing.assert_array_equal(outputs(fresh, x), outputs(model, x))
    assert [type(layer) for layer in fresh.layers] == [type(layer) for layer in model.layers]
