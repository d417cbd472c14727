"""MonarchLinear: what is particular to it (the family's contract suite covers the rest)."""

import functools
import warnings

import chainer
import chainer.links as L
import numpy as np
import pytest
from chainer import link_hooks, testing

from chainer_sharedlinear import MonarchLinear, convert_linears, unshare_linears
from tests.helpers import BACKENDS, assert_bias_copied, link_tolerances
from tests.monarch_oracle import block_lengths, factors, monarch_oracle, monarch_weight


@testing.parameterize(*testing.product({
    'dtype': [np.float16, np.float32, np.float64],
    'sizes': [(9, 9, 3), (7, 5, 2)],
    'nobias': [True, False],
}))
@testing.inject_backend_tests(None, BACKENDS)
class TestMonarchLinearLink(testing.LinkTestCase):

    def setUp(self):
        self.param_names = ('R', 'L') if self.nobias else ('R', 'L', 'b')
        vars(self).update(link_tolerances(self.dtype))

    def generate_params(self):
        in_size, out_size, n_blocks = self.sizes
        _, _, _, (p, q, s) = factors(in_size, out_size, n_blocks)
        rng = np.random.default_rng(0)
        R = rng.uniform(-1, 1, (n_blocks, q, p)).astype(self.dtype)
        L = rng.uniform(-1, 1, (n_blocks, s, q)).astype(self.dtype)
        b = rng.uniform(-1, 1, out_size).astype(self.dtype)
        return (R, L) if self.nobias else (R, L, b)

    def create_link(self, initializers):
        in_size, out_size, n_blocks = self.sizes
        with chainer.using_config('dtype', self.dtype):
            return MonarchLinear(in_size, out_size, n_blocks=n_blocks, nobias=self.nobias,
                                 initialR=initializers[0], initialL=initializers[1],
                                 initial_bias=None if self.nobias else initializers[2])

    def generate_inputs(self):
        x = np.random.default_rng(1).uniform(-1, 1, (5, self.sizes[0]))
        return x.astype(self.dtype),

    def forward_expected(self, link, inputs):
        x, = inputs
        b = None if link.b is None else link.b.array
        return monarch_oracle(x, link.R.array, link.L.array, b,
                              out_size=link.out_size).astype(self.dtype),


def _trained_like(layer, seed=3):
    rng = np.random.default_rng(seed)
    for param in layer.params():
        param.array[...] = rng.standard_normal(param.shape)
    return layer


def _float64_linear(W, b=None):
    with chainer.using_config('dtype', np.float64):
        return L.Linear(W.shape[1], W.shape[0], initialW=W, nobias=b is None, initial_bias=b)


# --- Sizes ------------------------------------------------------------------------------


@pytest.mark.parametrize('in_size, out_size, n_blocks, R_shape, L_shape', [
    (4096, 4096, 64, (64, 64, 64), (64, 64, 64)),
    (1000, 900, 16, (16, 57, 63), (16, 57, 57)),
    (784, 10, 2, (2, 5, 392), (2, 5, 5)),
    (10, 30, 4, (4, 3, 3), (4, 8, 3)),
    (1, 1, 1, (1, 1, 1), (1, 1, 1)),
])
def test_block_shapes(in_size, out_size, n_blocks, R_shape, L_shape):
    layer = MonarchLinear(in_size, out_size, n_blocks=n_blocks)
    assert layer.R.shape == R_shape and layer.L.shape == L_shape
    assert layer.b.shape == (out_size,)
    assert layer(np.zeros((2, in_size), np.float32)).shape == (2, out_size)


def test_the_large_layer_has_a_32nd_of_the_weights():
    layer = MonarchLinear(4096, 4096, n_blocks=64, nobias=True)
    assert layer.count_params() * 32 == 4096 * 4096
    assert repr(layer) == 'MonarchLinear(in_size=4096, out_size=4096, n_blocks=64, nobias=True)'


@pytest.mark.parametrize('in_size, out_size, n_blocks', [(1000, 900, 16), (9, 4, 4),
                                                         (4033, 64, 64), (5, 11, 3)])
def test_sizes_that_do_not_divide_leave_no_block_empty(in_size, out_size, n_blocks):
    layer = _trained_like(MonarchLinear(in_size, out_size, n_blocks=n_blocks))
    assert min(block_lengths(in_size, n_blocks)) >= 1
    assert min(block_lengths(out_size, n_blocks)) >= 1
    # Each input block and each output block is used: its column or row block of the
    # weight is not zero.
    W = layer.dense_weight()
    start = 0
    for length in block_lengths(in_size, n_blocks):
        assert np.abs(W[:, start:start + length]).sum() > 0
        start += length
    for l in range(n_blocks):  # noqa: E741
        assert np.abs(W[l::n_blocks]).sum() > 0


def test_entries_that_meet_padding_start_at_zero_and_change_nothing():
    # 7 inputs in 3 blocks (3, 2, 2) and 5 outputs (2, 2, 1 rows).
    layer = MonarchLinear(7, 5, n_blocks=3)
    R, L_ = layer.R.array, layer.L.array
    assert R.shape == (3, 2, 3) and L_.shape == (3, 2, 2)
    assert np.all(R[1:, :, 2] == 0) and np.all(R[0] != 0) and np.all(R[1:, :, :2] != 0)
    assert np.all(L_[2, 1] == 0) and np.all(L_[:2] != 0) and np.all(L_[2, 0] != 0)
    x = np.random.default_rng(0).standard_normal((4, 7)).astype(np.float32)
    before = layer(x).array.copy()
    R[1:, :, 2] = 5
    L_[2, 1] = 5
    np.testing.assert_array_equal(layer(x).array, before)


@pytest.mark.parametrize('kwargs, message', [
    ({'n_blocks': 0}, r'n_blocks must be at least 1, got 0'),
    ({'n_blocks': 2.0}, r'n_blocks must be a positive integer, got 2.0'),
    ({'n_blocks': None}, r'n_blocks must be a positive integer, got None'),
    ({'n_blocks': 11}, r'n_blocks=11 is more than out_size=10: each block needs at least one '
                       r'output \(n_blocks <= min\(in_size, out_size\)\)'),
])
def test_bad_n_blocks_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MonarchLinear(12, 10, **kwargs)


def test_n_blocks_is_required():
    with pytest.raises(TypeError, match=r'n_blocks'):
        MonarchLinear(12, 10)


def test_more_blocks_than_inputs_is_refused_at_once_or_at_the_first_input():
    with pytest.raises(ValueError, match=r'n_blocks=8 is more than in_size=5: each block needs '
                                         r'at least one input'):
        MonarchLinear(5, 10, n_blocks=8)
    lazy = MonarchLinear(10, n_blocks=8)
    with pytest.raises(ValueError, match=r'n_blocks=8 is more than in_size=5'):
        lazy(np.ones((1, 5), np.float32))
    assert lazy.in_size is None and lazy.R.array is None


# --- Initialisation ---------------------------------------------------------------------


def _output_second_moment(make, x, n_layers=8):
    return np.mean([np.mean(make(seed)(x).array.astype(np.float64) ** 2)
                    for seed in range(n_layers)])


@pytest.mark.parametrize('in_size, out_size, n_blocks', [(1000, 900, 16), (256, 256, 16),
                                                         (300, 77, 7)])
@pytest.mark.parametrize('inputs', ['standard normal', 'positive'])
def test_initial_outputs_have_the_variance_of_linear(in_size, out_size, n_blocks, inputs):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, in_size))
    if inputs == 'positive':
        x = np.abs(x) + 1  # E[x²] = 4.1: not zero-mean, and not one
    x = x.astype(np.float32)

    def seeded(cls, **kwargs):
        def make(seed):
            np.random.seed(seed)
            return cls(in_size, out_size, nobias=True, **kwargs)
        return make
    monarch = _output_second_moment(seeded(MonarchLinear, n_blocks=n_blocks), x)
    dense = _output_second_moment(seeded(L.Linear), x)
    # Both are E|x|²/in_size in expectation; 8 layers of hundreds of outputs average
    # them to a few per cent. A fan-in of p·q or of in_size for each block is off by far more.
    expected = np.mean(np.sum(x.astype(np.float64) ** 2, axis=1)) / in_size
    assert abs(dense / expected - 1) < 0.08
    assert abs(monarch / expected - 1) < 0.08


def test_each_block_is_drawn_with_its_own_fan_in():
    # 96 inputs in 64 blocks: 32 blocks of 2 and 32 of 1, so R is (64, 2, 2). The short
    # blocks have twice the variance; one fan-in for all would be off by a factor of 2.
    np.random.seed(0)
    R = np.stack([MonarchLinear(96, 640, n_blocks=64).R.array for _ in range(50)])
    assert R.shape == (50, 64, 2, 2)
    np.testing.assert_allclose(np.mean(R[:, :32] ** 2) * 2, 1, rtol=0.1)
    np.testing.assert_allclose(np.mean(R[:, 32:, :, 0] ** 2), 1, rtol=0.1)
    assert np.all(R[:, 32:, :, 1] == 0)


def test_initializers_given_are_used():
    R = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    layer = MonarchLinear(8, 6, n_blocks=2, initialR=R, initialL=chainer.initializers.One(),
                          initial_bias=1.5)
    np.testing.assert_array_equal(layer.R.array, R)
    np.testing.assert_array_equal(layer.L.array, np.ones((2, 3, 3), np.float32))
    np.testing.assert_array_equal(layer.b.array, np.full(6, 1.5, np.float32))
    with pytest.raises(ValueError, match=r'initialR has shape \(2, 3, 4\), but the R of '
                                         r'MonarchLinear\(.*\) has shape \(2, 3, 5\)'):
        MonarchLinear(10, 6, n_blocks=2, initialR=R)


@pytest.mark.parametrize('config_dtype, param_dtype', [
    (np.float16, np.float16), (np.float64, np.float64), (chainer.mixed16, np.float16)])
def test_parameter_dtype_follows_config_like_linear(config_dtype, param_dtype):
    with chainer.using_config('dtype', config_dtype):
        layer = MonarchLinear(6, 4, n_blocks=2)
        y = layer(np.ones((1, 6), chainer.get_dtype()))
    assert layer.R.dtype == layer.L.dtype == layer.b.dtype == param_dtype
    assert y.dtype == param_dtype


# --- Lazy initialisation, saving and loading --------------------------------------------


def test_lazy_initialisation_from_the_first_input():
    layer = MonarchLinear(9, n_blocks=3)  # one size given: it is out_size
    assert layer.in_size is None and layer.R.array is None
    assert layer.L.array is None
    y = layer(np.ones((2, 2, 5), np.float32))  # 10 features once flattened
    assert y.shape == (2, 9)
    assert layer.in_size == 10
    assert layer.R.shape == (3, 3, 4) and layer.L.shape == (3, 3, 3)
    several = MonarchLinear(None, 5, n_blocks=2)
    assert several(np.ones((2, 3, 10), np.float32), n_batch_axes=2).shape == (2, 3, 5)


def _non_default():
    """A layer whose every parameter and option differs from the defaults."""
    with chainer.using_config('dtype', np.float64):
        return _trained_like(MonarchLinear(23, 17, n_blocks=4,
                                           initial_bias=chainer.initializers.One()))


@pytest.mark.parametrize('target', [
    lambda: MonarchLinear(23, 17, n_blocks=4),
    lambda: MonarchLinear(17, n_blocks=4),  # lazy: in_size comes from the file
])
def test_save_and_load_round_trip(tmp_path, target):
    source = _non_default()
    path = tmp_path / 'layer.npz'
    chainer.serializers.save_npz(path, source)
    # A lazy parameter takes the configured dtype when it loads, as in L.Linear.
    with chainer.using_config('dtype', np.float64):
        loaded = target()
        chainer.serializers.load_npz(path, loaded)
    assert (loaded.in_size, loaded.out_size, loaded.n_blocks) == (23, 17, 4)
    for name in ('R', 'L', 'b'):
        np.testing.assert_array_equal(getattr(loaded, name).array, getattr(source, name).array)
    x = np.random.default_rng(0).standard_normal((3, 23))
    np.testing.assert_array_equal(loaded(x).array, source(x).array)


@pytest.mark.parametrize('other, message', [
    (lambda: MonarchLinear(23, 17, n_blocks=3), r'cannot load a MonarchLinear saved with '
                                                r'n_blocks=4 into MonarchLinear'),
    (lambda: MonarchLinear(24, 17, n_blocks=4), r'saved with in_size=23'),
    (lambda: MonarchLinear(23, 18, n_blocks=4), r'saved with out_size=17'),
    (lambda: MonarchLinear(23, 17, n_blocks=4, nobias=True), r'cannot load a bias b into'),
])
def test_loading_another_layer_is_refused_and_changes_nothing(tmp_path, other, message):
    path = tmp_path / 'layer.npz'
    chainer.serializers.save_npz(path, _non_default())
    target = other()
    before = {name: p.array.copy() for name, p in target.namedparams()}
    with pytest.raises(ValueError, match=message):
        chainer.serializers.load_npz(path, target)
    for name, param in target.namedparams():
        np.testing.assert_array_equal(param.array, before[name])


# --- to_linear and from_linear ----------------------------------------------------------


@pytest.mark.parametrize('dtype', [np.float16, np.float32, np.float64])
@pytest.mark.parametrize('sizes', [(16, 16, 4), (23, 17, 4), (5, 11, 3)])
@pytest.mark.parametrize('nobias', [False, True])
def test_to_linear_has_the_monarch_weight(dtype, sizes, nobias):
    in_size, out_size, n_blocks = sizes
    with chainer.using_config('dtype', dtype):
        layer = _trained_like(MonarchLinear(in_size, out_size, n_blocks=n_blocks,
                                            nobias=nobias))
    dense = layer.to_linear()
    assert type(dense) is L.Linear and dense.W.dtype == dtype
    assert (dense.in_size, dense.out_size) == (in_size, out_size)
    expected = monarch_weight(layer.R.array, layer.L.array, in_size, out_size)
    # Sums of q products in float32 at least, rounded once to the dtype.
    magnitude = monarch_weight(np.abs(layer.R.array), np.abs(layer.L.array), in_size, out_size)
    wide = np.finfo(np.promote_types(dtype, np.float32)).eps
    assert np.all(np.abs(dense.W.array - expected) <= (layer.R.shape[1] + 1) * wide * magnitude
                  + np.finfo(dtype).eps / 2 * np.abs(expected))
    np.testing.assert_array_equal(layer.dense_weight(), dense.W.array)
    assert_bias_copied(layer, dense)


def test_to_linear_refuses_a_lazy_layer():
    with pytest.raises(ValueError, match=r'cannot convert MonarchLinear\(in_size=None.*not '
                                         r'initialised yet'):
        MonarchLinear(3, n_blocks=1).to_linear()


SIZES = [(16, 16, 4), (9, 9, 3), (23, 17, 4), (17, 23, 4), (10, 30, 4), (30, 10, 4),
         (12, 12, 2), (12, 12, 6), (7, 5, 3)]


@pytest.mark.parametrize('sizes', SIZES)
def test_from_linear_is_exact_on_a_monarch_matrix(sizes):
    in_size, out_size, n_blocks = sizes
    with chainer.using_config('dtype', np.float64):
        source = _trained_like(MonarchLinear(in_size, out_size, n_blocks=n_blocks))
    W = monarch_weight(source.R.array, source.L.array, in_size, out_size)
    dense = _float64_linear(W, np.arange(out_size, dtype=np.float64))
    layer = MonarchLinear.from_linear(dense, n_blocks=n_blocks)
    assert layer.R.shape == source.R.shape and layer.R.dtype == np.float64
    np.testing.assert_allclose(monarch_weight(layer.R.array, layer.L.array, in_size, out_size),
                               W, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(layer.b.array, dense.b.array)


def _weight_blocks(W, in_size, out_size, n_blocks):
    """The real part of block (l, k) of W: outputs t·b + l by the inputs of block k."""
    starts = np.cumsum([0] + block_lengths(in_size, n_blocks))
    return {(out_block, k): W[out_block::n_blocks, starts[k]:starts[k + 1]]
            for out_block in range(n_blocks) for k in range(n_blocks)}


@pytest.mark.parametrize('sizes', SIZES)
def test_from_linear_is_the_nearest_monarch_matrix(sizes):
    in_size, out_size, n_blocks = sizes
    rng = np.random.default_rng(0)
    W = rng.standard_normal((out_size, in_size))
    layer = MonarchLinear.from_linear(_float64_linear(W), n_blocks=n_blocks)
    R, L_ = layer.R.array, layer.L.array
    best = monarch_weight(R, L_, in_size, out_size)
    residual = W - best

    # Each block of a Monarch matrix has the rank that a generic one shows; Eckart-Young on
    # each block says the nearest leaves exactly the trailing singular values.
    generic = monarch_weight(rng.standard_normal(R.shape), rng.standard_normal(L_.shape),
                             in_size, out_size)
    expected = 0.0
    for key, block in _weight_blocks(W, in_size, out_size, n_blocks).items():
        rank = np.linalg.matrix_rank(_weight_blocks(generic, in_size, out_size, n_blocks)[key])
        expected += np.sum(np.linalg.svd(block, compute_uv=False)[rank:] ** 2)
    np.testing.assert_allclose(np.sum(residual ** 2), expected, rtol=1e-9, atol=1e-12)

    # Stationary: M is bilinear in (R, L), so the residual is orthogonal to M(X, L) and
    # M(R, Y) for any X and Y.
    scale = np.sqrt(np.sum(W ** 2))
    for _ in range(3):
        X, Y = rng.standard_normal(R.shape), rng.standard_normal(L_.shape)
        assert abs(np.sum(residual * monarch_weight(X, L_, in_size, out_size))) < 1e-9 * scale
        assert abs(np.sum(residual * monarch_weight(R, Y, in_size, out_size))) < 1e-9 * scale

    # And any other Monarch matrix is farther away.
    for size in (1e-3, 1e-1, 1.0):
        for _ in range(5):
            other = monarch_weight(R + size * rng.standard_normal(R.shape),
                                   L_ + size * rng.standard_normal(L_.shape), in_size, out_size)
            assert np.sum((W - other) ** 2) > np.sum(residual ** 2)


def test_from_linear_keeps_dtypes_and_zeroes_what_meets_padding():
    with chainer.using_config('dtype', np.float16):
        half = L.Linear(7, 5, nobias=True)
    layer = MonarchLinear.from_linear(half, n_blocks=3)
    assert layer.R.dtype == layer.L.dtype == np.float16 and layer.b is None
    assert np.all(layer.R.array[1:, :, 2] == 0) and np.all(layer.L.array[2, 1] == 0)


@pytest.mark.parametrize('kwargs, error, message', [
    ({'n_blocks': 7}, ValueError, r'n_blocks=7 is more than out_size=6'),
    ({'n_blocks': 0}, ValueError, r'n_blocks must be at least 1, got 0'),
    ({}, TypeError, r'n_blocks'),
])
def test_from_linear_bad_input(kwargs, error, message):
    with pytest.raises(error, match=message):
        MonarchLinear.from_linear(L.Linear(12, 6), **kwargs)


def test_from_linear_refuses_what_is_not_an_initialised_linear():
    with pytest.raises(ValueError, match=r'not initialised yet'):
        MonarchLinear.from_linear(L.Linear(6), n_blocks=2)
    with pytest.raises(TypeError, match=r'from_linear expects a chainer.links.Linear, '
                                        r'got MonarchLinear'):
        MonarchLinear.from_linear(MonarchLinear(12, 6, n_blocks=2), n_blocks=2)


def test_convert_linears_and_back():
    model = chainer.Sequential(L.Linear(23, 17), L.Linear(17, 3))
    x = np.random.default_rng(0).standard_normal((2, 23)).astype(np.float32)
    report = convert_linears(model, functools.partial(MonarchLinear.from_linear, n_blocks=4),
                             include=lambda path, link: link.out_size >= 4)
    assert report.changed == ('/0',) and isinstance(model[0], MonarchLinear)
    y = model(x).array
    back = unshare_linears(model)
    assert back.changed == ('/0',) and type(model[0]) is L.Linear
    np.testing.assert_allclose(model(x).array, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('hook', [link_hooks.SpectralNormalization,
                                  link_hooks.WeightStandardization])
def test_weight_reparametrising_hooks_are_refused(hook):
    layer = MonarchLinear(12, 6, n_blocks=2)
    with pytest.raises(ValueError, match=r'{} is not supported on MonarchLinear'.format(
            hook.__name__)):
        layer.add_hook(hook(weight_name='R'))
    assert not layer.local_link_hooks


@pytest.mark.gpu
def test_on_the_gpu_gives_the_cpu_result():
    import cupy
    layer = _trained_like(MonarchLinear(23, 17, n_blocks=4))
    x = np.random.default_rng(0).standard_normal((2, 23)).astype(np.float32)
    expected, dense_expected = layer(x).array, layer.to_linear().W.array
    layer.to_device('@cupy:0')
    np.testing.assert_allclose(cupy.asnumpy(layer(layer.device.send(x)).array), expected,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cupy.asnumpy(layer.to_linear().W.array), dense_expected,
                               rtol=1e-6, atol=1e-6)
    back = MonarchLinear.from_linear(layer.to_linear(), n_blocks=4)
    assert back.device == layer.device
    np.testing.assert_allclose(cupy.asnumpy(back.dense_weight()), dense_expected,
                               rtol=1e-4, atol=1e-5)


# --- ONNX -------------------------------------------------------------------------------

_NEEDS_ONNX = ('needs the "onnx" extra (onnx==1.14.1, onnxruntime): '
               'pip install ".[onnx]", as scripts/test.sh does')


class _Two(chainer.Chain):

    def __init__(self, first, second):
        super().__init__()
        with self.init_scope():
            self.first, self.second = first, second

    def forward(self, x):
        return self.second(self.first(x))


def _run_onnx(model, x, opset_version):
    ort = pytest.importorskip('onnxruntime', reason=_NEEDS_ONNX)
    pytest.importorskip('onnx', reason=_NEEDS_ONNX)
    from chainer_sharedlinear.onnx_export import export
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # onnx_chainer on opsets it did not test (13)
        onnx_model = export(model, x, opset_version=opset_version)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(onnx_model.SerializeToString(), options,
                                   providers=['CPUExecutionProvider'])
    return onnx_model, session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize('opset_version', [9, 11, 13])
@pytest.mark.parametrize('nobias', [False, True])
def test_onnx_export_matches_chainer(opset_version, nobias):
    # Sizes that divide, and sizes that do not on either side.
    model = _Two(_trained_like(MonarchLinear(16, 23, n_blocks=4, nobias=nobias)),
                 _trained_like(MonarchLinear(23, 17, n_blocks=4), 1))
    x = np.random.default_rng(2).standard_normal((4, 16)).astype(np.float32)
    onnx_model, y = _run_onnx(model, x, opset_version)
    np.testing.assert_allclose(y, model(x).array, rtol=1e-5, atol=1e-4)
    # R and L as they are; no (out_size, in_size) weight in the file.
    shapes = {tuple(t.dims) for t in onnx_model.graph.initializer}
    assert {(4, 4, 4), (4, 6, 4), (4, 5, 6), (4, 5, 5)} <= shapes
    assert not {(23, 16), (17, 23)} & shapes
    assert {'MatMul', 'Pad'} <= {node.op_type for node in onnx_model.graph.node}


def test_onnx_export_of_float16_inputs_and_another_batch_size():
    with chainer.using_config('dtype', np.float16):
        model = _Two(MonarchLinear(12, 9, n_blocks=3), MonarchLinear(9, 4, n_blocks=2))
    x = np.random.default_rng(0).standard_normal((3, 12)).astype(np.float16)
    _, y = _run_onnx(model, x, 13)
    assert y.dtype == np.float16
    np.testing.assert_allclose(y, model(x).array, rtol=2e-3, atol=2e-3)
