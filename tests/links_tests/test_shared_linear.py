"""SharedLinear's own promises: n_shared, its initial scale, from_params, from_linear's
mean, and the weight hooks it takes. What every link promises is in test_family_contract."""


import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
import pytest
from chainer import link_hooks
from hypothesis import given
from hypothesis import strategies as st

from chainer_sharedlinear import SharedLinear
from tests.helpers import (
    standard_normal,
)


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


def test_from_params():
    W = np.ones((3, 2), np.float32)
    layer = SharedLinear.from_params(W, np.zeros(3, np.float32), n_shared=5)
    assert (layer.in_size, layer.out_size, layer.n_shared) == (10, 3, 5)
    with pytest.raises(ValueError, match='b has 4 elements but W has 3 rows'):
        SharedLinear.from_params(W, np.zeros(4, np.float32), n_shared=5)


@pytest.mark.parametrize('W, message', [
    (np.ones(4, np.float32), r'W must be a matrix, \(out_size, in_size / n_shared\), got '
                             r'shape \(4,\)'),
    (np.ones((2, 2, 2), np.float32), r'W must be a matrix, \(out_size, in_size / n_shared\), '
                                     r'got shape \(2, 2, 2\)'),
    (np.ones((2, 2), np.int32), r'W must be an array of floats, got dtype int32'),
    ('weights', r"W must be an array of floats, got 'weights'"),
])
def test_from_params_with_a_bad_W_names_it(W, message):
    with pytest.raises(ValueError, match=message):
        SharedLinear.from_params(W, n_shared=2)


def test_from_params_takes_a_variable_or_a_nested_list():
    from_list = SharedLinear.from_params([[1.0, 2.0]], n_shared=2)
    np.testing.assert_array_equal(from_list.W.array, [[1, 2]])
    assert from_list.in_size == 4 and from_list.W.dtype == np.float32
    W = chainer.Variable(np.array([[1.0, 2.0]], np.float64))
    assert SharedLinear.from_params(W, n_shared=3).W.dtype == np.float64


# --- from_linear: the mean of the blocks ------------------------------------------------


@pytest.mark.parametrize('dtype', [np.float16, np.float32, np.float64])
@pytest.mark.parametrize('n_shared', [1, 3, 4, 7])
def test_from_linear_recovers_a_tiled_weight_exactly(dtype, n_shared):
    W = standard_normal((5, 6), 0, dtype)
    b = standard_normal(5, 1, dtype)
    with chainer.using_config('dtype', dtype):
        dense = L.Linear(6 * n_shared, 5, initialW=np.tile(W, (1, n_shared)), initial_bias=b)

    shared = SharedLinear.from_linear(dense, n_shared)
    assert (shared.in_size, shared.out_size, shared.n_shared) == (6 * n_shared, 5, n_shared)
    assert shared.W.dtype == shared.b.dtype == dtype
    np.testing.assert_array_equal(shared.W.array, W)
    np.testing.assert_array_equal(shared.b.array, b)
    assert shared.b.array is not dense.b.array


@given(out_size=st.integers(1, 4), k=st.integers(1, 4), n_shared=st.integers(1, 5),
       seed=st.integers(0, 2**32 - 1))
def test_from_linear_minimises_the_frobenius_distance(out_size, k, n_shared, seed):
    rng = np.random.default_rng(seed)
    W_dense = rng.standard_normal((out_size, n_shared * k))
    dense = L.Linear(n_shared * k, out_size, initialW=W_dense)
    dense.W.array = W_dense  # float64, so the identity below holds to rounding

    W = SharedLinear.from_linear(dense, n_shared).W.array
    assert W.dtype == np.float64
    D = rng.standard_normal(W.shape)

    def distance2(W_shared):
        return np.sum((np.tile(W_shared, (1, n_shared)) - W_dense) ** 2)

    # The residual of the mean sums to zero over the blocks, so moving W by D
    # adds exactly n_shared * |D|^2: W is the unique minimiser.
    best = distance2(W)
    perturbed = distance2(W + D)
    assert perturbed > best
    np.testing.assert_allclose(perturbed, best + n_shared * np.sum(D ** 2), rtol=1e-9)
    np.testing.assert_allclose(
        W, W_dense.reshape(out_size, n_shared, k).mean(axis=1), rtol=1e-12, atol=1e-15)


def test_from_linear_bad_input():
    with pytest.raises(ValueError, match=r'in_size=10 is not divisible by n_shared=4'):
        SharedLinear.from_linear(L.Linear(10, 3), 4)
    with pytest.raises(ValueError, match=r'n_shared must be'):
        SharedLinear.from_linear(L.Linear(10, 3), 0)


# --- Weight hooks: they act on the tiled weight ----------------------------------------


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
