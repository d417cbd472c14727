"""compress_linears with calibration data and the whole-model budget (issue 31)."""

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
import pytest

from chainer_sharedlinear import compress_linears, stored_bytes
from chainer_sharedlinear.compress.calibration import CalibrationError


class Net(chainer.Chain):
    def __init__(self, sizes=(20, 16, 5), seed=0):
        super().__init__()
        rng = np.random.RandomState(seed)
        with self.init_scope():
            self.layers = chainer.ChainList(*[
                L.Linear(i, o, initialW=rng.randn(o, i) / np.sqrt(i),
                         initial_bias=rng.randn(o) * 0.1)
                for i, o in zip(sizes[:-1], sizes[1:])])

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == 0 else layer(F.relu(x))
        return x


def inputs(n=200, size=20, seed=1):
    rng = np.random.RandomState(seed)
    return (rng.randn(n, size) @ rng.randn(size, size)).astype(np.float32)


def activations(model, x):
    """The inputs of each layer, in float64: the oracle's X."""
    seen = []
    h = x.astype(np.float64)
    for i, layer in enumerate(model.layers):
        h = h if i == 0 else np.maximum(h, 0)
        seen.append(h)
        h = h @ layer.W.array.T.astype(np.float64) + layer.b.array
    return seen


@pytest.mark.parametrize('pattern', ['lowrank', 'clustered', 'clustered_lowrank', 'monarch'])
@pytest.mark.parametrize('correct_bias', [False, True])
def test_the_output_error_is_that_of_the_activations(pattern, correct_bias):
    model, x = Net(), inputs()
    xs = activations(model, x)
    before = [(layer.W.array.astype(np.float64), layer.b.array.astype(np.float64))
              for layer in model.layers]
    report = compress_linears(model, 1 / 2, pattern=pattern, calibration=x,
                              allocation='layer', correct_bias=correct_bias,
                              allow_more_multiply_adds=True)
    rows = {row.path: row for row in report.layers}
    assert rows
    for i, (X, (w, b)) in enumerate(zip(xs, before)):
        row = rows.get('/layers/{}'.format(i))
        if row is None:
            continue
        layer = model.layers[i]
        v, c = layer.dense_weight().astype(np.float64), layer.b.array.astype(np.float64)
        expected = np.linalg.norm(X @ (w - v).T + (b - c)) / np.linalg.norm(X @ w.T)
        assert row.output_error == pytest.approx(expected, rel=1e-6, abs=1e-9)
        assert 'output error {:.4f}'.format(row.output_error) in str(report)


def test_the_whitened_low_rank_layer_is_the_best_of_its_rank_on_the_data():
    model, x = Net((20, 12)), inputs()
    X = x.astype(np.float64)
    w = model.layers[0].W.array.astype(np.float64)
    report = compress_linears(model, 1 / 3, pattern='lowrank', calibration=x,
                              allocation='layer', correct_bias=False)  # the weight alone
    row, = report.layers
    rank = row.knobs['rank']
    found = row.output_error

    def error(v):
        return np.linalg.norm(X @ (w - v).T) / np.linalg.norm(X @ w.T)

    # Eckart-Young on X Wᵀ: the best rank-r outputs are the truncated SVD of X Wᵀ.
    p, s, q = np.linalg.svd(X @ w.T, full_matrices=False)
    best = np.sqrt((s[rank:] ** 2).sum() / (s ** 2).sum())
    assert found == pytest.approx(best, rel=1e-6)
    u, sv, vt = np.linalg.svd(w)
    assert found < error((u[:, :rank] * sv[:rank]) @ vt[:rank])  # the plain SVD is worse
    rng = np.random.RandomState(0)
    v = model.layers[0].dense_weight().astype(np.float64)
    for _ in range(20):  # and so is any nearby weight of the same rank
        a = np.linalg.svd(v)[0][:, :rank] + 0.01 * rng.randn(12, rank)
        assert found <= error(a @ np.linalg.lstsq(a, v, rcond=None)[0] + 0.01 * a @ rng.randn(
            rank, 20)) + 1e-12


@pytest.mark.parametrize('bad, message', [
    (np.full((4, 20), np.nan, np.float32), 'NaN or an infinity'),
    (np.zeros((0, 20), np.float32), 'empty'),
    ([], 'holds no batch'),
    (np.zeros((4, 7), np.float32), 'refused calibration batch 0'),
])
@pytest.mark.parametrize('allocation', ['model', 'layer'])
def test_bad_calibration_data_is_refused_with_nothing_changed(bad, message, allocation):
    model = Net()
    weights = [layer.W.array.copy() for layer in model.layers]
    with pytest.raises(CalibrationError, match=message):
        compress_linears(model, 1 / 4, calibration=bad, allocation=allocation)
    assert all(type(layer) is L.Linear for layer in model.layers)
    for layer, weight in zip(model.layers, weights):
        np.testing.assert_array_equal(layer.W.array, weight)


def test_fewer_samples_than_inputs_are_fitted_with_the_ridge():
    model, x = Net(), inputs(n=6)  # 6 samples, 20 inputs: XᵀX is singular
    report = compress_linears(model, 1 / 4, calibration=x, pattern='lowrank',
                              allocation='layer')
    assert report.layers
    for row in report.layers:
        assert np.isfinite(row.output_error) and np.isfinite(row.error)
    for layer in model.layers:
        if type(layer) is not L.Linear:
            assert np.isfinite(layer.dense_weight()).all()


@pytest.mark.parametrize('budget', [1 / 2, 1 / 4, 1 / 8, 1 / 16])
@pytest.mark.parametrize('calibrated', [False, True])
def test_the_whole_model_budget_is_never_exceeded(budget, calibrated):
    model, x = Net((64, 48, 32, 4)), inputs(size=64)
    dense = sum(stored_bytes(layer) for layer in model.layers)
    report = compress_linears(model, budget, calibration=x if calibrated else None)
    assert sum(stored_bytes(layer) for layer in model.layers) <= int(budget * dense)
    assert report.stored_bytes <= budget * report.dense_bytes
    for row in report.layers:
        assert row.multiply_adds <= row.dense_multiply_adds
    kept = [path for path, why in report.skipped.items() if 'kept dense' in why]
    assert len(kept) + len(report.layers) == 3


@pytest.mark.parametrize('calibrated', [False, True])
def test_the_model_allocation_is_never_worse_than_the_split_per_layer(calibrated):
    # A wide layer and a narrow output layer, as in the MNIST MLP: at a quarter of each
    # the output layer loses much, while the model's budget can keep it nearly whole.
    x = inputs(size=64)
    calibration = x if calibrated else None

    def objective(report):
        return sum((row.output_error if calibrated else row.error) ** 2
                   for row in report.layers)

    per_layer = compress_linears(Net((64, 64, 8)), 1 / 4, pattern='lowrank',
                                 calibration=calibration, allocation='layer')
    assert len(per_layer.layers) == 2
    whole = compress_linears(Net((64, 64, 8)), 1 / 4, pattern='lowrank',
                             calibration=calibration)
    assert whole.stored_bytes <= per_layer.dense_bytes / 4
    assert objective(whole) < objective(per_layer)


def test_the_report_shows_the_choices_and_the_whole_ratio():
    model, x = Net((64, 64, 8)), inputs(size=64)
    report = compress_linears(model, 1 / 8, calibration=x)
    text = str(report)
    assert "of the selected layers' bytes together" in text
    assert 'multiply-adds' in text and 'output error' in text
    assert 'whole model:' in text
    for row in report.layers:
        assert row.pattern in ('lowrank', 'clustered', 'clustered_lowrank')
        assert row.errors[row.pattern] >= 0


def test_a_function_of_your_own_needs_the_per_layer_budget():
    with pytest.raises(ValueError, match="allocation='layer'"):
        compress_linears(Net(), 1 / 4, pattern=lambda linear, budget, path: linear)
    with pytest.raises(ValueError, match='allocation must be one of'):
        compress_linears(Net(), 1 / 4, allocation='uniform')
