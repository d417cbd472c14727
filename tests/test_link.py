import copy
import pickle

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
import pytest
from chainer import link_hooks, testing
from chainer.utils.type_check import InvalidType

from chainer_sharedlinear import SharedLinear
from tests.helpers import BACKENDS, dense_oracle, link_tolerances


@testing.parameterize(*testing.product({
    'dtype': [np.float16, np.float32, np.float64],
    'n_shared': [1, 4],
    'nobias': [True, False],
}))
@testing.inject_backend_tests(None, BACKENDS)
class TestSharedLinearLink(testing.LinkTestCase):

    in_size, out_size = 8, 3

    def setUp(self):
        self.param_names = ('W',) if self.nobias else ('W', 'b')
        vars(self).update(link_tolerances(self.dtype))

    def generate_params(self):
        rng = np.random.default_rng(0)
        W = rng.uniform(-1, 1, (self.out_size, self.in_size // self.n_shared))
        b = rng.uniform(-1, 1, self.out_size)
        params = (W.astype(self.dtype),)
        return params if self.nobias else params + (b.astype(self.dtype),)

    def create_link(self, initializers):
        initialW = initializers[0]
        initial_bias = None if self.nobias else initializers[1]
        # Like L.Linear, parameters take chainer.config.dtype.
        with chainer.using_config('dtype', self.dtype):
            return SharedLinear(self.in_size, self.out_size, n_shared=self.n_shared,
                                nobias=self.nobias, initialW=initialW,
                                initial_bias=initial_bias)

    def generate_inputs(self):
        x = np.random.default_rng(1).uniform(-1, 1, (5, self.in_size))
        return x.astype(self.dtype),

    def forward_expected(self, link, inputs):
        x, = inputs
        b = None if link.b is None else link.b.array
        return dense_oracle(x, link.W.array, b).astype(self.dtype),


def test_lazy_initialization_from_first_input():
    layer = SharedLinear(6, n_shared=3)  # one size given: it is out_size
    assert layer.in_size is None and layer.W.array is None
    y = layer(np.ones((2, 4, 3), np.float32))  # 12 features once flattened
    assert layer.in_size == 12
    assert layer.W.shape == (6, 4)
    assert y.shape == (2, 6)
    assert repr(layer) == 'SharedLinear(in_size=12, out_size=6, n_shared=3, nobias=False)'

    explicit_none = SharedLinear(None, 6, n_shared=3)
    explicit_none(np.ones((2, 12), np.float32))
    assert explicit_none.W.shape == (6, 4)


def test_lazy_initialization_with_several_batch_axes():
    layer = SharedLinear(5, n_shared=2)
    y = layer(np.ones((2, 3, 8), np.float32), n_batch_axes=2)
    assert layer.W.shape == (5, 4)
    assert y.shape == (2, 3, 5)


def test_lazy_initialization_rejects_indivisible_input_and_stays_lazy():
    layer = SharedLinear(5, n_shared=4)
    with pytest.raises(ValueError, match=r'in_size=10 is not divisible by n_shared=4'):
        layer(np.ones((2, 10), np.float32))
    assert layer.W.array is None and layer.in_size is None
    assert layer(np.ones((2, 12), np.float32)).shape == (2, 5)


@pytest.mark.parametrize('n_shared', [2, 10, 50])
def test_initial_output_scale_matches_linear(n_shared):
    in_size, out_size = 1000, 400
    x = np.random.default_rng(0).standard_normal((2000, in_size)).astype(np.float32)
    np.random.seed(0)
    dense = L.Linear(in_size, out_size)(x).array.var()
    shared = SharedLinear(in_size, out_size, n_shared=n_shared)(x).array.var()
    # Both are about 1; a fan-in of in_size / n_shared would give n_shared.
    assert dense == pytest.approx(1.0, rel=0.1)
    assert shared == pytest.approx(dense, rel=0.1)


@pytest.mark.parametrize('config_dtype, param_dtype', [
    (np.float16, np.float16), (np.float32, np.float32), (np.float64, np.float64),
    (chainer.mixed16, np.float16)])
def test_parameter_dtype_follows_config_like_linear(config_dtype, param_dtype):
    with chainer.using_config('dtype', config_dtype):
        layer = SharedLinear(6, 4, n_shared=3)
        lazy = SharedLinear(4, n_shared=3)
        lazy(np.ones((1, 6), chainer.get_dtype()))
        reference = L.Linear(6, 4)
    assert layer.W.dtype == layer.b.dtype == reference.W.dtype == param_dtype
    assert lazy.W.dtype == param_dtype


def test_initializers():
    W = np.arange(6, dtype=np.float32).reshape(3, 2)
    layer = SharedLinear(4, 3, n_shared=2, initialW=W, initial_bias=1.5)
    np.testing.assert_array_equal(layer.W.array, W)
    np.testing.assert_array_equal(layer.b.array, np.full(3, 1.5, np.float32))
    constant = SharedLinear(4, 3, n_shared=2, initialW=chainer.initializers.One())
    np.testing.assert_array_equal(constant.W.array, np.ones((3, 2), np.float32))
    assert SharedLinear(4, 3, n_shared=2, nobias=True).b is None


def test_initialW_array_of_the_dense_shape_is_refused():
    with pytest.raises(ValueError, match=r'initialW has shape \(3, 4\).*has shape \(3, 2\)'):
        SharedLinear(4, 3, n_shared=2, initialW=np.zeros((3, 4), np.float32))
    lazy = SharedLinear(3, n_shared=2, initialW=np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match=r'initialW has shape \(3, 4\)'):
        lazy(np.ones((1, 4), np.float32))
    assert lazy.in_size is None and lazy.W.array is None  # left as it was


def test_from_params():
    W = np.ones((3, 2), np.float32)
    layer = SharedLinear.from_params(W, np.zeros(3, np.float32), n_shared=5)
    assert (layer.in_size, layer.out_size, layer.n_shared) == (10, 3, 5)
    with pytest.raises(ValueError, match='b has 4 elements but W has 3 rows'):
        SharedLinear.from_params(W, np.zeros(4, np.float32), n_shared=5)


@pytest.mark.parametrize('n_shared', [0, -2, 2.5, '3', True, None])
def test_bad_n_shared(n_shared):
    with pytest.raises(ValueError, match='n_shared must be'):
        SharedLinear(12, 3, n_shared=n_shared)


def test_n_shared_is_required():
    with pytest.raises(TypeError, match='n_shared'):
        SharedLinear(12, 3)


def test_indivisible_in_size():
    with pytest.raises(ValueError, match=r'in_size=1000 is not divisible by n_shared=3'):
        SharedLinear(1000, 900, n_shared=3)


def test_input_of_another_size_is_a_type_error():
    layer = SharedLinear(12, 3, n_shared=3)
    # 8 features is a multiple of k = 4, but not the 12 the layer was built for.
    with pytest.raises(InvalidType, match=r'x.shape\[1\] == 3 \* W.shape\[1\]'):
        layer(np.ones((2, 8), np.float32))
    with pytest.raises(InvalidType, match=r'x.dtype.kind == f'):
        layer(np.ones((2, 12), np.int64))


def _trained_like(layer):
    layer.W.array[...] = np.random.default_rng(3).standard_normal(layer.W.shape)
    return layer


def test_save_and_load_npz_round_trip(tmp_path):
    saved = _trained_like(SharedLinear(12, 3, n_shared=3))
    path = tmp_path / 'layer.npz'
    chainer.serializers.save_npz(path, saved)

    loaded = SharedLinear(12, 3, n_shared=3)
    chainer.serializers.load_npz(path, loaded)
    np.testing.assert_array_equal(loaded.W.array, saved.W.array)

    lazy = SharedLinear(3, n_shared=3)
    chainer.serializers.load_npz(path, lazy)
    assert lazy.in_size == 12
    np.testing.assert_array_equal(lazy.W.array, saved.W.array)


@pytest.mark.parametrize('other', [
    lambda: SharedLinear(12, 3, n_shared=6),   # W (3, 2) instead of (3, 4)
    lambda: SharedLinear(24, 3, n_shared=3),   # W (3, 8)
    lambda: SharedLinear(3, n_shared=6),       # lazy: the shape fits, n_shared does not
])
def test_loading_into_another_n_shared_or_size_is_refused(tmp_path, other):
    path = tmp_path / 'layer.npz'
    chainer.serializers.save_npz(path, _trained_like(SharedLinear(12, 3, n_shared=3)))
    target = other()
    before = None if target.W.array is None else target.W.array.copy()
    with pytest.raises(ValueError, match=r'cannot load .*SharedLinear\(in_size='):
        chainer.serializers.load_npz(path, target)
    if before is not None:
        np.testing.assert_array_equal(target.W.array, before)


def test_loading_a_weight_that_would_broadcast_is_refused(tmp_path):
    # Chainer copies loaded arrays with broadcasting: (3, 1) would fill (3, 4).
    path = tmp_path / 'narrow.npz'
    chainer.serializers.save_npz(path, SharedLinear(1, 3, n_shared=1))
    with pytest.raises(ValueError, match=r'W of shape \(3, 1\).*whose W has shape \(3, 4\)'):
        chainer.serializers.load_npz(path, SharedLinear(4, 3, n_shared=1))


def test_pickle_and_deepcopy_keep_everything():
    layer = _trained_like(SharedLinear(12, 3, n_shared=3))
    x = np.random.default_rng(0).standard_normal((2, 12)).astype(np.float32)
    for clone in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
        assert clone.n_shared == 3 and clone.in_size == 12
        assert clone.W.array is not layer.W.array
        np.testing.assert_array_equal(clone(x).array, layer(x).array)


def test_to_device_cpu():
    layer = SharedLinear(12, 3, n_shared=3).to_device('@numpy')
    assert isinstance(layer.W.array, np.ndarray)
    assert layer.device == chainer.get_device('@numpy')


@pytest.mark.gpu
def test_to_device_gpu_gives_the_cpu_result():
    layer = _trained_like(SharedLinear(12, 3, n_shared=3))
    x = np.random.default_rng(0).standard_normal((2, 12)).astype(np.float32)
    expected = layer(x).array
    layer.to_device('@cupy:0')
    y = layer(layer.device.send(x))
    np.testing.assert_allclose(chainer.backend.CpuDevice().send(y.array), expected, rtol=1e-5)


def test_training_reduces_the_loss():
    # A target that a shared weight can represent exactly.
    rng = np.random.default_rng(0)
    W_true = rng.standard_normal((4, 8)).astype(np.float32)
    x = rng.standard_normal((256, 32)).astype(np.float32)
    t = dense_oracle(x, W_true).astype(np.float32)

    np.random.seed(0)
    model = chainer.Sequential(SharedLinear(32, 4, n_shared=4))
    optimizer = chainer.optimizers.Adam(alpha=0.05)
    optimizer.setup(model)
    losses = []
    for _ in range(150):
        loss = F.mean_squared_error(model(x), t)
        model.cleargrads()
        loss.backward()
        optimizer.update()
        losses.append(float(loss.array))
    assert losses[-1] < 1e-3 * losses[0]


# --- Issue 15: in_size from W, the initial scale's limit, weight hooks ---------------------


def test_in_size_follows_W_however_it_is_filled():
    source = _trained_like(SharedLinear(12, 3, n_shared=3))
    copied = SharedLinear(3, n_shared=3)
    copied.copyparams(source)  # the usual target-network pattern
    assert copied.in_size == 12
    assert repr(copied) == 'SharedLinear(in_size=12, out_size=3, n_shared=3, nobias=False)'
    np.testing.assert_array_equal(copied.to_linear().W.array, source.to_linear().W.array)

    initialised = SharedLinear(3, n_shared=2)
    initialised.W.initialize((3, 5))
    assert initialised.in_size == 10
    assert initialised.to_linear().W.shape == (3, 10)


@pytest.mark.parametrize('n_shared', [2, 10])
def test_initial_output_scale_for_inputs_with_a_mean_is_as_documented(n_shared):
    # ReLU outputs: each feature has a mean m and a variance s2. L.Linear's outputs
    # have a mean square of s2 + m^2; a shared weight adds the blocks' means
    # coherently, which gives s2 + n_shared * m^2 (the docstring's statement).
    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal((1000, 1000)), 0).astype(np.float32)
    m, s2 = x.mean(), x.var()
    np.random.seed(0)
    dense = L.Linear(1000, 2000)(x).array
    shared = SharedLinear(1000, 2000, n_shared=n_shared)(x).array
    assert np.mean(dense ** 2) == pytest.approx(s2 + m ** 2, rel=0.05)
    assert np.mean(shared ** 2) == pytest.approx(s2 + n_shared * m ** 2, rel=0.05)


def _largest_singular_value_of_the_layer(layer, in_size):
    # With no bias, the layer's output on the identity is its dense weight, transposed.
    with chainer.using_config('train', False):
        weight = layer(np.eye(in_size, dtype=np.float32)).array.T
    return np.linalg.svd(weight, compute_uv=False)[0]


@pytest.mark.parametrize('n_shared', [1, 3, 8])
def test_spectral_normalization_normalises_the_tiled_weight(n_shared):
    np.random.seed(0)
    layer = SharedLinear(8 * n_shared, 5, n_shared=n_shared, nobias=True)
    layer.add_hook(link_hooks.SpectralNormalization(n_power_iteration=50))
    assert _largest_singular_value_of_the_layer(layer, 8 * n_shared) == pytest.approx(
        1.0, rel=1e-4)
    assert isinstance(layer.W, chainer.Parameter)  # the hook put the parameter back
    # Gradients reach the parameter through the normalisation.
    layer.cleargrads()
    F.sum(layer(np.ones((2, 8 * n_shared), np.float32))).backward()
    assert layer.W.grad is not None and np.isfinite(layer.W.grad).all()


def test_spectral_normalization_with_gamma_is_refused():
    layer = SharedLinear(12, 5, n_shared=3)
    with pytest.raises(ValueError, match='use_gamma=False'):
        layer.add_hook(link_hooks.SpectralNormalization(use_gamma=True))
    assert not layer.local_link_hooks


def test_weight_standardization_standardises_the_tiled_weight():
    np.random.seed(0)
    layer = SharedLinear(12, 5, n_shared=3, nobias=True)
    dense = layer.to_linear()
    layer.add_hook(link_hooks.WeightStandardization())
    dense.add_hook(link_hooks.WeightStandardization())
    x = np.random.default_rng(0).standard_normal((4, 12)).astype(np.float32)
    np.testing.assert_allclose(layer(x).array, dense(x).array, rtol=1e-5, atol=1e-6)
