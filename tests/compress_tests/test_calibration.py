import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
import pytest

from chainer_sharedlinear.compress.calibration import (
    CalibrationError,
    LayerStatistics,
    gather_statistics,
)


def mlp(seed=0):
    np.random.seed(seed)
    return chainer.Sequential(L.Linear(5, 4), F.relu, L.Linear(4, 3))


def inputs(n=12, size=5, seed=1):
    return np.random.RandomState(seed).randn(n, size).astype(np.float32)


def oracle(rows):
    rows = np.asarray(rows, np.float64).reshape(-1, rows.shape[-1])
    return rows.T @ rows, len(rows), rows.sum(axis=0)


def assert_statistics(stats, rows):
    gram, n, sums = oracle(rows)
    assert stats.n_samples == n
    assert stats.gram.dtype == np.float64 and stats.column_sums.dtype == np.float64
    np.testing.assert_allclose(stats.gram, gram, rtol=1e-12)
    np.testing.assert_allclose(stats.column_sums, sums, rtol=1e-12)


def test_statistics_are_those_of_the_activations():
    model, x = mlp(), inputs()
    stats = gather_statistics(model, x)
    assert list(stats) == ['/0', '/1']
    hidden = np.maximum(x @ model[0].W.array.T + model[0].b.array, 0)
    assert_statistics(stats['/0'], x)
    assert_statistics(stats['/1'], hidden)
    np.testing.assert_allclose(stats['/1'].mean(), hidden.mean(axis=0, dtype=np.float64),
                               rtol=1e-5)


def test_batches_add_up_to_the_whole():
    model, x = mlp(), inputs(13)
    whole = gather_statistics(model, x)
    for batches in ([x[:5], x[5:9], x[9:]], (batch for batch in [x[:7], x[7:]]),
                    [chainer.Variable(x[:3]), x[3:]]):
        parts = gather_statistics(model, batches)
        for path in whole:
            assert parts[path].n_samples == whole[path].n_samples
            np.testing.assert_allclose(parts[path].gram, whole[path].gram, rtol=1e-12)
            np.testing.assert_allclose(parts[path].column_sums, whole[path].column_sums,
                                       rtol=1e-12, atol=1e-12)


class Sequence(chainer.Chain):
    """A layer applied at every position of (batch, length, features), and one after it."""

    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.mix = L.Linear(6, 4)
            self.out = L.Linear(3 * 4, 2)

    def forward(self, x):
        h = F.relu(self.mix(x, n_batch_axes=2))  # (batch, 3, 4)
        return self.out(h)  # the feature axes (3, 4) flattened as F.linear does


def test_every_batch_axis_is_a_sample_and_feature_axes_are_flattened():
    model = Sequence()
    x = np.random.RandomState(0).randn(5, 3, 6).astype(np.float32)
    stats = gather_statistics(model, x)
    assert_statistics(stats['/mix'], x.reshape(15, 6))
    hidden = np.maximum(x @ model.mix.W.array.T + model.mix.b.array, 0)
    assert_statistics(stats['/out'], hidden.reshape(5, 12))


def test_a_lazy_layer_is_measured_on_its_first_call():
    model = chainer.Sequential(L.Linear(None, 3))
    x = inputs()
    assert_statistics(gather_statistics(model, x)['/0'], x)


def test_include_selects_by_path_as_convert_linears_does():
    model = mlp()
    assert list(gather_statistics(model, inputs(), include='1')) == ['/1']
    assert list(gather_statistics(model, inputs(), include=lambda path, link:
                                  link.out_size == 4)) == ['/0']
    with pytest.raises(ValueError, match="include names '/5', but the model has no link"):
        gather_statistics(model, inputs(), include='/5')


def test_a_tied_layer_adds_all_its_inputs_under_its_first_path():
    shared = L.Linear(4, 4)
    model = chainer.Sequential(shared, F.relu, shared)
    x = inputs(size=4)
    stats = gather_statistics(model, x)
    assert list(stats) == ['/0']
    hidden = np.maximum(x @ shared.W.array.T + shared.b.array, 0)
    assert_statistics(stats['/0'], np.concatenate([x, hidden]))


class Recorder(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.l1 = L.Linear(5, 3)
        self.configs = []

    def forward(self, x):
        self.configs.append((chainer.config.train, chainer.config.enable_backprop))
        return F.dropout(self.l1(F.dropout(x, 0.5)), 0.5)


def test_the_model_runs_in_test_mode_with_no_graph():
    model, x = Recorder(), inputs()
    stats = gather_statistics(model, x)
    assert model.configs == [(False, False)]
    assert_statistics(stats['/l1'], x)  # no dropout of the input


def test_statistics_are_not_a_link_hook_left_behind():
    model = mlp()
    gather_statistics(model, inputs())
    assert not chainer._get_link_hooks()
    assert all(not link.local_link_hooks for link in model.links())


@pytest.mark.parametrize('calibration, message', [
    ([], 'the calibration data holds no batch'),
    (iter([]), 'the calibration data holds no batch'),
    (np.zeros((0, 5), np.float32), r'calibration batch 0 is empty \(an array of shape \(0, 5\)'),
    ([inputs(), np.zeros((0, 5), np.float32)], 'calibration batch 1 is empty'),
    ([inputs(), np.full((2, 5), np.nan, np.float32)],
     'calibration batch 1 holds a NaN or an infinity'),
    (np.full((2, 5), np.inf, np.float32), 'calibration batch 0 holds a NaN or an infinity'),
    (inputs(size=7), r'the model refused calibration batch 0 \(an array of shape \(12, 7\) '
                     r'and dtype float32\): InvalidType'),
    ([inputs(), 'text'], r'the model refused calibration batch 1 \(a str\)'),
])
def test_bad_calibration_data_is_one_clear_error(calibration, message):
    with pytest.raises(CalibrationError, match=message):
        gather_statistics(mlp(), calibration)


def test_an_activation_that_is_not_finite_is_named_by_its_layer():
    model = mlp()
    model[0].W.array[...] = 1e38  # the hidden units overflow float32
    with pytest.raises(CalibrationError, match='the input of /1 holds a NaN or an infinity on '
                                               'calibration batch 0'):
        gather_statistics(model, np.abs(inputs()) + 1)


class Branches(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.used = L.Linear(5, 2)
            self.unused = L.Linear(5, 2)

    def forward(self, x):
        return self.used(x)


def test_a_layer_the_data_never_reach_is_an_error():
    with pytest.raises(CalibrationError, match='the calibration data never reached /unused'):
        gather_statistics(Branches(), inputs())
    assert list(gather_statistics(Branches(), inputs(), include='used')) == ['/used']


def test_calibration_that_is_no_input_is_a_type_error():
    with pytest.raises(TypeError, match='calibration must be the model\'s input'):
        gather_statistics(mlp(), 3)
    with pytest.raises(TypeError, match='expects a chainer.Link'):
        gather_statistics(lambda x: x, inputs())


def test_layer_statistics_know_their_size():
    stats = LayerStatistics(np.eye(3), 4, np.array([4., 0., 2.]))
    assert stats.in_size == 3
    np.testing.assert_array_equal(stats.mean(), [1., 0., 0.5])


@pytest.mark.gpu
def test_statistics_stay_on_the_layers_device():
    import cupy
    model, x = mlp(), inputs()
    cpu = gather_statistics(model, x)
    model.to_device('@cupy:0')
    gpu = gather_statistics(model, cupy.asarray(x))
    for path in cpu:
        assert isinstance(gpu[path].gram, cupy.ndarray)
        np.testing.assert_allclose(gpu[path].gram.get(), cpu[path].gram, rtol=1e-6)
        np.testing.assert_allclose(gpu[path].column_sums.get(), cpu[path].column_sums,
                                   rtol=1e-6, atol=1e-9)
        assert gpu[path].n_samples == cpu[path].n_samples
