"""HashedLinear's own promises: n_weights, its initial scale, its index map, and
from_linear's signed bucket means. What every link promises is in test_family_contract."""

import copy
import pickle

import chainer
import chainer.links as L
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chainer_sharedlinear import HashedLinear
from tests.helpers import (
    FLOATS,
    hashed_weight,
    set_non_default,
    spec_index,
    standard_normal,
)


@pytest.mark.parametrize('n_weights, message', [
    (0, 'n_weights must be at least 1, got 0'),
    (-3, 'n_weights must be at least 1, got -3'),
    (2.0, 'n_weights must be a positive integer, got 2.0'),
    ('4', "n_weights must be a positive integer, got '4'"),
    (True, 'n_weights must be a positive integer, got True'),
    (13, r'n_weights=13 is more than the 3 x 4 = 12 virtual weights of the layer'),
])
def test_a_bad_n_weights_is_a_clear_error(n_weights, message):
    with pytest.raises(ValueError, match=message):
        HashedLinear(4, 3, n_weights=n_weights)


def test_n_weights_is_required():
    with pytest.raises(TypeError, match='n_weights'):
        HashedLinear(4, 3)


def test_all_virtual_weights_may_have_their_own_bucket():
    layer = HashedLinear(4, 3, n_weights=12)
    assert layer.W.shape == (12,)


@pytest.mark.parametrize('n_weights', [1000 * 400 // 64, 1000 * 400 // 8])
def test_initial_output_scale_matches_linear(n_weights):
    in_size, out_size = 1000, 400
    x = np.random.default_rng(0).standard_normal((1000, in_size)).astype(np.float32)
    np.random.seed(0)
    dense = L.Linear(in_size, out_size)(x).array.var()
    hashed = HashedLinear(in_size, out_size, n_weights=n_weights)(x).array.var()
    # Both are about 1; a fan-in of n_weights, say, would give in_size / n_weights.
    assert dense == pytest.approx(1.0, rel=0.1)
    assert hashed == pytest.approx(dense, rel=0.1)


def test_initial_output_scale_for_inputs_with_a_mean_matches_linear():
    # ReLU outputs, of mean m and variance s2: L.Linear's outputs have a mean square of
    # s2 + m^2; so do a hashed layer's, whose random signs cancel the means.
    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal((500, 1000)), 0).astype(np.float32)
    m, s2 = x.mean(), x.var()
    np.random.seed(0)
    dense = L.Linear(1000, 2000)(x).array
    hashed = HashedLinear(1000, 2000, n_weights=1000 * 2000 // 8)(x).array
    assert np.mean(dense ** 2) == pytest.approx(s2 + m ** 2, rel=0.05)
    assert np.mean(hashed ** 2) == pytest.approx(s2 + m ** 2, rel=0.05)


def test_default_W_has_variance_one_over_in_size():
    np.random.seed(0)
    W = HashedLinear(100, 300, n_weights=20000).W.array
    assert W.mean() == pytest.approx(0, abs=5 / np.sqrt(100 * 20000))
    assert W.var() == pytest.approx(1 / 100, rel=0.05)


# --- The index map ----------------------------------------------------------------------


def test_the_index_map_is_kept_in_4_bytes_and_follows_the_dtype_of_W():
    layer = HashedLinear(6, 4, n_weights=5, seed=1)
    index = layer.signed_index()
    assert layer.signed_index() is index  # kept, not made again
    assert index.dtype == np.int32 and index.shape == (4, 6)
    bucket, sign = layer.index_map()
    np.testing.assert_array_equal(index, bucket + 5 * (sign < 0))
    assert sign.dtype == np.float32
    layer.W.array = layer.W.array.astype(np.float64)
    bucket64, sign64 = layer.index_map()
    assert layer.signed_index() is index  # the map does not depend on the dtype
    assert sign64.dtype == np.float64
    np.testing.assert_array_equal(bucket64, bucket)
    np.testing.assert_array_equal(sign64, sign)


def test_without_keeping_the_index_map_the_layer_computes_the_same():
    kept = set_non_default(HashedLinear(30, 20, n_weights=50, seed=4))
    recomputed = HashedLinear(30, 20, n_weights=50, seed=4, keep_index_map=False)
    recomputed.copyparams(kept)
    x = np.random.default_rng(0).standard_normal((3, 30)).astype(np.float32)
    y_kept, y_recomputed = kept(x), recomputed(x)
    y_kept.grad = y_recomputed.grad = np.ones((3, 20), np.float32)
    y_kept.backward()
    y_recomputed.backward()
    np.testing.assert_array_equal(y_recomputed.array, y_kept.array)
    np.testing.assert_array_equal(recomputed.W.grad, kept.W.grad)
    assert kept._index_map is not None and recomputed._index_map is None
    assert recomputed.signed_index() is not recomputed.signed_index()


@pytest.mark.parametrize('config_dtype, param_dtype', [
    (np.float16, np.float16), (np.float64, np.float64), (chainer.mixed16, np.float16)])
def test_the_signs_of_the_index_map_take_the_dtype_of_the_parameters(config_dtype, param_dtype):
    with chainer.using_config('dtype', config_dtype):
        layer = HashedLinear(6, 4, n_weights=5)
    bucket, sign = layer.index_map()
    assert sign.dtype == param_dtype


def test_a_lazy_layer_has_its_index_map_from_the_first_input():
    layer = HashedLinear(6, n_weights=10, seed=2)
    with pytest.raises(ValueError, match='has no index map yet'):
        layer.index_map()
    layer(np.ones((2, 3, 4), np.float32))  # 12 features once flattened
    for got, expected in zip(layer.index_map(), spec_index(6, 12, 10, 2)):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize('dtype', FLOATS)
def test_the_dense_weight_is_the_documented_hash_of_W(dtype):
    with chainer.using_config('dtype', dtype):
        layer = set_non_default(HashedLinear(16, 5, n_weights=9, seed=1))
    np.testing.assert_array_equal(layer.dense_weight(), hashed_weight(layer.W.array, 5, 16, 1))


def test_pickle_and_deepcopy_leave_the_index_map_behind():
    in_size, out_size = 300, 200
    layer = set_non_default(HashedLinear(in_size, out_size, n_weights=100, seed=8))
    x = standard_normal((2, in_size))
    expected = layer(x).array  # the forward pass makes the map
    pickled = pickle.dumps(layer)
    # The map alone is out_size * in_size * 12 bytes (intp buckets, float32 signs); W is
    # 400 bytes.
    assert len(pickled) < out_size * in_size * 8 / 50
    for clone in (pickle.loads(pickled), copy.deepcopy(layer)):
        np.testing.assert_array_equal(clone(x).array, expected)
        for got, made in zip(clone.index_map(), layer.index_map()):
            np.testing.assert_array_equal(got, made)


@pytest.mark.gpu
def test_the_index_map_is_made_again_on_the_gpu():
    import cupy
    layer = HashedLinear(12, 3, n_weights=5, seed=3)
    expected = layer.index_map()
    layer.to_device('@cupy:0')
    for got, made in zip(layer.index_map(), expected):
        assert isinstance(got, cupy.ndarray)
        np.testing.assert_array_equal(cupy.asnumpy(got), made)


# --- from_linear: the signed means of the buckets -------------------------------------


def _signed_bucket_means(W_dense, n_weights, seed):
    out_size, in_size = W_dense.shape
    bucket, sign = spec_index(out_size, in_size, n_weights, seed)
    sums, counts = np.zeros(n_weights), np.zeros(n_weights)
    for (i, j), k in np.ndenumerate(bucket):
        sums[k] += sign[i, j] * W_dense[i, j]
        counts[k] += 1
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0), counts


@pytest.mark.parametrize('n_weights', [1, 5, 20, 40])
def test_from_linear_gives_the_signed_bucket_means(n_weights):
    W_dense = np.random.default_rng(0).standard_normal((5, 8))
    with chainer.using_config('dtype', np.float64):
        dense = L.Linear(8, 5, initialW=W_dense, initial_bias=np.arange(5.0))
    hashed = HashedLinear.from_linear(dense, n_weights=n_weights, seed=3)
    assert (hashed.in_size, hashed.out_size, hashed.n_weights, hashed.seed) == (
        8, 5, n_weights, 3)
    assert hashed.W.dtype == np.float64
    means, counts = _signed_bucket_means(W_dense, n_weights, 3)
    np.testing.assert_allclose(hashed.W.array, means, rtol=1e-13, atol=1e-15)
    if n_weights == 40:
        assert (counts == 0).any()  # some bucket is empty, and gets 0
    np.testing.assert_array_equal(hashed.b.array, np.arange(5.0))


@given(out_size=st.integers(1, 5), in_size=st.integers(1, 5), data=st.data(),
       seed=st.integers(0, 2 ** 32 - 1))
def test_from_linear_minimises_the_frobenius_distance(out_size, in_size, data, seed):
    n_weights = data.draw(st.integers(1, out_size * in_size))
    rng = np.random.default_rng(seed)
    W_dense = rng.standard_normal((out_size, in_size))
    dense = L.Linear(in_size, out_size, initialW=W_dense)
    dense.W.array = W_dense  # float64, so the identity below holds to rounding

    W = HashedLinear.from_linear(dense, n_weights=n_weights, seed=seed).W.array
    assert W.dtype == np.float64
    bucket, sign = spec_index(out_size, in_size, n_weights, seed)
    counts = np.bincount(bucket.ravel(), minlength=n_weights)
    D = rng.standard_normal(W.shape)

    def distance2(w):
        return np.sum((sign * w[bucket] - W_dense) ** 2)

    # The signed residual sums to zero in every bucket, so moving W by D adds
    # exactly Σ_k count_k D_k^2: W is a minimiser, unique on the buckets used.
    best = distance2(W)
    perturbed = distance2(W + D)
    np.testing.assert_allclose(perturbed, best + np.sum(counts * D ** 2), rtol=1e-9,
                               atol=1e-12)
    if counts.all():
        assert perturbed > best


def test_from_linear_with_another_seed_does_not_give_W_back():
    hashed = set_non_default(HashedLinear(30, 20, n_weights=75, seed=9))
    other = HashedLinear.from_linear(hashed.to_linear(), n_weights=75, seed=10)
    assert np.abs(other.W.array).max() < 0.5 * np.abs(hashed.W.array).max()


def test_from_linear_bad_input():
    with pytest.raises(ValueError, match=r'n_weights=41 is more than the 5 x 8 = 40'):
        HashedLinear.from_linear(L.Linear(8, 5), n_weights=41)
    with pytest.raises(ValueError, match=r'seed must be an integer'):
        HashedLinear.from_linear(L.Linear(8, 5), n_weights=4, seed=-1)
