"""HashedLinear and hashed_linear: HashedNets, ``V[i, j] = ξ(i, j) · W[h(i, j)]``."""

import copy
import pickle

import chainer
import chainer.links as L
import numpy as np
import pytest
from chainer import link_hooks, testing
from chainer.utils.type_check import InvalidType
from hypothesis import given
from hypothesis import strategies as st

from chainer_sharedlinear import HashedLinear, hashed_linear
from chainer_sharedlinear.functions import hashed_index, signed_hashed_index
from chainer_sharedlinear.functions.hashed_linear import mix32
from tests.helpers import (
    BACKENDS,
    assert_bias_copied,
    function_tolerances,
    link_tolerances,
)

FLOATS = [np.float16, np.float32, np.float64]

# --- The hash, written out from the module's docstring -----------------------------------

_M32 = 0xffffffff


def _mix(z):
    z ^= z >> 16
    z = (z * 0x7feb352d) & _M32
    z ^= z >> 15
    z = (z * 0x846ca68b) & _M32
    return z ^ (z >> 16)


def spec_index(out_size, in_size, n_weights, seed):
    """``(bucket, sign)`` from the documented hash, in Python integers, one by one."""
    bucket = np.empty((out_size, in_size), np.int64)
    sign = np.empty((out_size, in_size), np.int64)
    seed_key = _mix(seed ^ 0x68e31da4)
    for i in range(out_size):
        row = _mix(seed_key ^ i)
        for j in range(in_size):
            h = _mix(row ^ j)
            bucket[i, j] = h % n_weights
            sign[i, j] = 1 if _mix(h ^ 0x5bd1e995) < 2 ** 31 else -1
    return bucket, sign


def hashed_oracle(x, W, b, out_size, seed, n_batch_axes=1):
    """``x · Vᵀ + b`` in float64 with ``V`` built from the documented hash."""
    batch_shape = x.shape[:n_batch_axes]
    in_size = int(np.prod(x.shape[n_batch_axes:]))
    bucket, sign = spec_index(out_size, in_size, W.shape[0], seed)
    V = sign * W.astype(np.float64)[bucket]
    y = x.reshape(int(np.prod(batch_shape)), in_size).astype(np.float64) @ V.T
    if b is not None:
        y += b.astype(np.float64)
    return y.reshape(batch_shape + (out_size,))


# --- hashed_index: pinned, uniform, uncorrelated ----------------------------------------


# Saved models depend on these values: a HashedLinear file holds W, not the map, and the
# map is recomputed from (out_size, in_size, n_weights, seed) on loading. They were taken
# from the implementation of the documented hash and must NEVER change; a change that
# breaks this test silently scrambles the weights of every saved HashedLinear.
PINNED = [
    ((2, 3, 4, 0), [[3, 1, 1], [2, 1, 2]], [[1, 1, 1], [-1, -1, -1]]),
    ((3, 5, 7, 1), [[6, 5, 0, 0, 0], [3, 0, 4, 5, 3], [6, 4, 3, 0, 1]],
     [[1, -1, -1, 1, -1], [1, 1, -1, -1, 1], [1, -1, -1, -1, 1]]),
    ((4, 4, 5, 12345), [[0, 4, 0, 1], [4, 2, 4, 3], [2, 3, 4, 4], [3, 0, 4, 4]],
     [[-1, -1, 1, 1], [-1, 1, 1, 1], [-1, 1, -1, 1], [-1, 1, 1, 1]]),
    ((2, 3, 6, 2 ** 32 - 1), [[5, 5, 1], [0, 0, 3]], [[1, 1, -1], [-1, -1, -1]]),
]


@pytest.mark.parametrize('args, bucket, sign', PINNED)
def test_hashed_index_is_pinned(args, bucket, sign):
    got_bucket, got_sign = hashed_index(*args)
    assert got_bucket.dtype == np.intp and got_sign.dtype == np.int8
    np.testing.assert_array_equal(got_bucket, bucket)
    np.testing.assert_array_equal(got_sign, sign)


def test_hashed_index_is_pinned_past_16_bits_of_row_and_column():
    # The mixer's shifts by 15 and 16 reach these bits; never to change either.
    bucket, sign = hashed_index(1, 70000, 1000, 7)
    np.testing.assert_array_equal(bucket[0, -4:], [919, 789, 456, 250])
    np.testing.assert_array_equal(sign[0, -4:], [-1, -1, 1, 1])
    bucket, sign = hashed_index(70000, 1, 65521, 7)
    np.testing.assert_array_equal(bucket[-4:, 0], [30828, 1399, 49516, 34550])
    np.testing.assert_array_equal(sign[-4:, 0], [1, -1, 1, 1])


@given(out_size=st.integers(1, 6), in_size=st.integers(1, 6), data=st.data(),
       seed=st.integers(0, 2 ** 32 - 1))
def test_hashed_index_is_the_documented_hash(out_size, in_size, data, seed):
    n_weights = data.draw(st.integers(1, out_size * in_size))
    bucket, sign = hashed_index(out_size, in_size, n_weights, seed)
    expected_bucket, expected_sign = spec_index(out_size, in_size, n_weights, seed)
    np.testing.assert_array_equal(bucket, expected_bucket)
    np.testing.assert_array_equal(sign, expected_sign)


def _normal_bound(df, sds=6):
    # A chi-squared statistic of df degrees of freedom is df ± sqrt(2 df) roughly.
    return sds * np.sqrt(2 * df)


@pytest.mark.parametrize('seed', [0, 1, 2 ** 31 + 5])
def test_buckets_are_used_uniformly(seed):
    out_size, in_size, n_weights = 200, 300, 97
    bucket, _ = hashed_index(out_size, in_size, n_weights, seed)
    counts = np.bincount(bucket.ravel(), minlength=n_weights)
    assert counts.size == n_weights and counts.min() > 0
    expected = out_size * in_size / n_weights
    # Pearson's statistic against uniform buckets, chi-squared with n_weights - 1 degrees
    # of freedom; a bucket that is 2x too popular adds about `expected` on its own.
    chi2 = np.sum((counts - expected) ** 2 / expected)
    assert abs(chi2 - (n_weights - 1)) < _normal_bound(n_weights - 1)
    # Within every row too: a row does not pile into a few buckets.
    per_row = np.array([np.bincount(row, minlength=n_weights).max() for row in bucket])
    assert per_row.max() <= 15  # about 3 expected per bucket per row


@pytest.mark.parametrize('seed', [0, 1, 2 ** 31 + 5])
def test_signs_are_balanced_and_uncorrelated(seed):
    out_size, in_size, n_weights = 200, 300, 97
    n = out_size * in_size
    bucket, sign = hashed_index(out_size, in_size, n_weights, seed)
    s = sign.astype(np.float64)
    assert set(np.unique(sign)) == {-1, 1}
    # Balanced: the mean of n fair signs is 0 ± 1/sqrt(n).
    assert abs(s.mean()) < 5 / np.sqrt(n)
    # Not a function of the row, the column or the bucket: the sums over each row
    # (or column, or bucket) of fair independent signs, squared and divided by
    # their counts, make chi-squared statistics with one degree per group.
    for sums, counts in [(s.sum(axis=1), in_size), (s.sum(axis=0), out_size),
                         (np.bincount(bucket.ravel(), s.ravel(), n_weights),
                          np.bincount(bucket.ravel(), minlength=n_weights))]:
        chi2 = np.sum(sums ** 2 / counts)
        assert abs(chi2 - sums.size) < _normal_bound(sums.size)
    # Neighbours are independent: products of adjacent signs average 0.
    for products in [s[:, 1:] * s[:, :-1], s[1:] * s[:-1]]:
        assert abs(products.mean()) < 5 / np.sqrt(products.size)
    # And the sign is not a bit of the bucket.
    assert abs(np.mean(s * (2 * (bucket % 2) - 1))) < 5 / np.sqrt(n)


def test_neighbouring_buckets_are_independent():
    out_size, in_size, n_weights = 200, 300, 97
    bucket, _ = hashed_index(out_size, in_size, n_weights, 0)
    for same in [bucket[:, 1:] == bucket[:, :-1], bucket[1:] == bucket[:-1]]:
        # Two independent uniform buckets agree with probability 1 / n_weights.
        p, n = 1 / n_weights, same.size
        assert abs(same.mean() - p) < 6 * np.sqrt(p * (1 - p) / n)


def test_different_seeds_give_different_maps():
    out_size, in_size, n_weights = 50, 60, 40
    maps = [hashed_index(out_size, in_size, n_weights, seed)
            for seed in (0, 1, 2, 12345, 2 ** 32 - 1)]
    for a in range(len(maps)):
        for b in range(a + 1, len(maps)):
            # Unrelated maps agree on a bucket 1 time in n_weights and on a sign 1 in 2.
            same_bucket = np.mean(maps[a][0] == maps[b][0])
            same_sign = np.mean(maps[a][1] == maps[b][1])
            assert same_bucket < 0.06
            assert 0.45 < same_sign < 0.55


def test_the_mixer_is_a_bijection_and_agrees_with_the_documented_one():
    # For a given row the hash is then a bijection of j: no two weights of a row share a
    # hash (their buckets may still meet after the modulo).
    z = np.arange(2 ** 20, dtype=np.uint32) * np.uint32(4099)  # 2**20 distinct values
    mixed = mix32(z)
    assert mixed.dtype == np.uint32
    assert np.unique(mixed).size == z.size
    for value in [0, 1, 2, 12345, 2 ** 31, 2 ** 32 - 1]:
        assert int(mix32(np.uint32(value))) == _mix(value)


@pytest.mark.parametrize('args, message', [
    ((2 ** 32, 1, 1, 0), r'hashed layers take sizes below 2\*\*32, got 4294967296 x 1'),
    ((1, 2 ** 32, 1, 0), r'hashed layers take sizes below 2\*\*32, got 1 x 4294967296'),
    ((0, 3, 1, 0), r'out_size must be at least 1, got 0'),
    ((2, 3.0, 1, 0), r'in_size must be a positive integer, got 3.0'),
    ((2, 3, 7, 0), r'n_weights=7 is more than the 2 x 3 = 6 virtual weights'),
    ((2, 3, 4, -1), r'seed must be an integer from 0 to 2\*\*32 - 1, got -1'),
])
def test_hashed_index_refuses_what_it_cannot_hash(args, message):
    with pytest.raises(ValueError, match=message):
        hashed_index(*args)


@pytest.mark.gpu
def test_cupy_gives_the_same_map():
    import cupy
    for (args, bucket, sign) in PINNED:
        got_bucket, got_sign = hashed_index(*args, xp=cupy)
        assert isinstance(got_bucket, cupy.ndarray)
        np.testing.assert_array_equal(cupy.asnumpy(got_bucket), bucket)
        np.testing.assert_array_equal(cupy.asnumpy(got_sign), sign)
    expected = hashed_index(300, 700, 1234, 99)
    got = hashed_index(300, 700, 1234, 99, xp=cupy)
    for e, g in zip(expected, got):
        assert e.dtype == g.dtype
        np.testing.assert_array_equal(cupy.asnumpy(g), e)


# --- hashed_linear: the function ---------------------------------------------------------


@st.composite
def hashed_linear_problems(draw):
    x_dtype = draw(st.sampled_from(FLOATS))
    w_dtype = draw(st.sampled_from(FLOATS))
    out_size = draw(st.integers(1, 6))
    feature_shape = draw(st.sampled_from([(1,), (5,), (8,), (2, 3)]))
    in_size = int(np.prod(feature_shape))
    n_weights = draw(st.integers(1, out_size * in_size))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    batch_shape = tuple(draw(st.lists(st.integers(0, 4), min_size=1, max_size=2)))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    x = rng.uniform(-1, 1, batch_shape + feature_shape).astype(x_dtype)
    W = rng.uniform(-1, 1, n_weights).astype(w_dtype)
    b = rng.uniform(-1, 1, out_size).astype(x_dtype) if draw(st.booleans()) else None
    return x, W, b, out_size, seed, len(batch_shape)


@given(hashed_linear_problems())
def test_forward_matches_dense_oracle(problem):
    x, W, b, out_size, seed, n_batch_axes = problem
    y = hashed_linear(x, W, b, n_batch_axes, out_size=out_size, seed=seed).array

    expected = hashed_oracle(x, W, b, out_size, seed, n_batch_axes)
    assert y.shape == expected.shape
    assert y.dtype == x.dtype
    # The gathered weight is exact: the bound is a dense product's (see test_functions).
    in_size = int(np.prod(x.shape[n_batch_axes:]))
    eps = max(np.finfo(x.dtype).eps, np.finfo(W.dtype).eps)
    bucket, _ = spec_index(out_size, in_size, W.shape[0], seed)
    x2 = np.abs(x.reshape(-1, in_size).astype(np.float64))
    magnitude = (x2 @ np.abs(W.astype(np.float64))[bucket].T).reshape(expected.shape)
    if b is not None:
        magnitude += np.abs(b.astype(np.float64))
    bound = (in_size + 3) * eps * magnitude
    assert np.all(np.abs(y.astype(np.float64) - expected) <= bound)


@testing.parameterize(*testing.product({
    'dtypes': [(np.float16, np.float16), (np.float32, np.float32), (np.float64, np.float64),
               (np.float32, np.float64), (np.float16, np.float32)],
    'nobias': [True, False],
    'n_batch_axes': [1, 2],
}))
@testing.inject_backend_tests(None, BACKENDS)
class TestHashedLinearFunction(testing.FunctionTestCase):

    out_size, in_size, n_weights, seed = 3, 4, 5, 7

    def setUp(self):
        vars(self).update(function_tolerances(self.dtypes))

    def generate_inputs(self):
        x_dtype, w_dtype = self.dtypes
        rng = np.random.default_rng(0)
        batch_shape = (4,) if self.n_batch_axes == 1 else (2, 3)
        x = rng.uniform(-1, 1, batch_shape + (self.in_size,)).astype(x_dtype)
        W = rng.uniform(-1, 1, self.n_weights).astype(w_dtype)
        b = rng.uniform(-1, 1, self.out_size).astype(x_dtype)
        return (x, W) if self.nobias else (x, W, b)

    def forward(self, inputs, device):
        return hashed_linear(*inputs, n_batch_axes=self.n_batch_axes, out_size=self.out_size,
                             seed=self.seed),

    def forward_expected(self, inputs):
        x, W = inputs[:2]
        b = inputs[2] if len(inputs) == 3 else None
        y = hashed_oracle(x, W, b, self.out_size, self.seed, self.n_batch_axes)
        return y.astype(x.dtype),


def test_the_gradient_of_W_is_the_signed_bucket_sum():
    rng = np.random.default_rng(0)
    out_size, in_size, n_weights, seed = 7, 9, 10, 3
    x = rng.standard_normal((5, in_size))
    W = chainer.Variable(rng.standard_normal(n_weights))
    y = hashed_linear(x, W, out_size=out_size, seed=seed)
    gy = rng.standard_normal(y.shape)
    y.grad = gy
    y.backward()
    bucket, sign = spec_index(out_size, in_size, n_weights, seed)
    gV = gy.T @ x
    expected = np.zeros(n_weights)
    for (i, j), k in np.ndenumerate(bucket):
        expected[k] += sign[i, j] * gV[i, j]
    np.testing.assert_allclose(W.grad, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('W_shape', [(2, 3), (), (1, 6)])
def test_hashed_linear_takes_W_as_a_vector_only(W_shape):
    with pytest.raises(ValueError, match=r'W must be a vector, \(n_weights,\), got shape'):
        hashed_linear(np.ones((2, 3), np.float32), np.ones(W_shape, np.float32),
                      out_size=2, seed=0)


@pytest.mark.parametrize('seed, message', [
    (-1, r'seed must be an integer from 0 to 2\*\*32 - 1, got -1'),
    (2 ** 32, r'seed must be an integer from 0 to 2\*\*32 - 1, got 4294967296'),
    (1.0, r'seed must be an integer from 0 to 2\*\*32 - 1, got 1.0'),
    ('0', r"seed must be an integer from 0 to 2\*\*32 - 1, got '0'"),
    (None, r'seed must be an integer from 0 to 2\*\*32 - 1, got None'),
    (True, r'seed must be an integer from 0 to 2\*\*32 - 1, got True'),
])
def test_a_bad_seed_is_a_clear_error(seed, message):
    with pytest.raises(ValueError, match=message):
        hashed_linear(np.ones((2, 3), np.float32), np.ones(4, np.float32), out_size=2,
                      seed=seed)
    with pytest.raises(ValueError, match=message):
        HashedLinear(3, 2, n_weights=4, seed=seed)


def test_hashed_linear_refuses_more_weights_than_virtual_ones():
    with pytest.raises(ValueError, match=r'n_weights=7 is more than the 2 x 3 = 6 virtual '
                                         r'weights of the layer'):
        hashed_linear(np.ones((2, 3), np.float32), np.ones(7, np.float32), out_size=2, seed=0)


def test_numpy_integer_seeds_are_taken():
    x = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)
    W = np.random.default_rng(1).standard_normal(6).astype(np.float32)
    np.testing.assert_array_equal(
        hashed_linear(x, W, out_size=3, seed=np.uint32(9)).array,
        hashed_linear(x, W, out_size=3, seed=9).array)


@pytest.mark.parametrize('batch_shape, n_batch_axes', [((0,), 1), ((0, 3), 2)])
def test_an_empty_batch_gives_an_empty_output(batch_shape, n_batch_axes):
    layer = HashedLinear(6, 3, n_weights=5)
    x = np.ones(batch_shape + (2, 3), np.float32)
    assert layer(x, n_batch_axes=n_batch_axes).shape == batch_shape + (3,)
    assert hashed_linear(x, layer.W, n_batch_axes=n_batch_axes, out_size=3,
                         seed=0).shape == batch_shape + (3,)


# --- HashedLinear: the link ----------------------------------------------------------------


@testing.parameterize(*testing.product({
    'dtype': [np.float16, np.float32, np.float64],
    'nobias': [True, False],
}))
@testing.inject_backend_tests(None, BACKENDS)
class TestHashedLinearLink(testing.LinkTestCase):

    in_size, out_size, n_weights, seed = 8, 3, 5, 11

    def setUp(self):
        self.param_names = ('W',) if self.nobias else ('W', 'b')
        vars(self).update(link_tolerances(self.dtype))

    def generate_params(self):
        rng = np.random.default_rng(0)
        W = rng.uniform(-1, 1, self.n_weights).astype(self.dtype)
        b = rng.uniform(-1, 1, self.out_size).astype(self.dtype)
        return (W,) if self.nobias else (W, b)

    def create_link(self, initializers):
        initialW = initializers[0]
        initial_bias = None if self.nobias else initializers[1]
        with chainer.using_config('dtype', self.dtype):
            return HashedLinear(self.in_size, self.out_size, n_weights=self.n_weights,
                                seed=self.seed, nobias=self.nobias, initialW=initialW,
                                initial_bias=initial_bias)

    def generate_inputs(self):
        x = np.random.default_rng(1).uniform(-1, 1, (5, self.in_size))
        return x.astype(self.dtype),

    def forward_expected(self, link, inputs):
        x, = inputs
        b = None if link.b is None else link.b.array
        return hashed_oracle(x, link.W.array, b, self.out_size, self.seed).astype(
            self.dtype),


def _trained_like(layer, seed=3):
    layer.W.array[...] = np.random.default_rng(seed).standard_normal(layer.W.shape)
    if layer.b is not None:
        layer.b.array[...] = np.random.default_rng(seed + 1).standard_normal(layer.b.shape)
    return layer


def test_the_link_computes_the_function():
    layer = _trained_like(HashedLinear(12, 5, n_weights=7, seed=4))
    x = np.random.default_rng(0).standard_normal((3, 12)).astype(np.float32)
    np.testing.assert_array_equal(
        layer(x).array, hashed_linear(x, layer.W, layer.b, out_size=5, seed=4).array)
    assert layer.W.shape == (7,)


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


@pytest.mark.parametrize('config_dtype, param_dtype', [
    (np.float16, np.float16), (np.float32, np.float32), (np.float64, np.float64),
    (chainer.mixed16, np.float16)])
def test_parameter_dtype_follows_config_like_linear(config_dtype, param_dtype):
    with chainer.using_config('dtype', config_dtype):
        layer = HashedLinear(6, 4, n_weights=5)
        lazy = HashedLinear(4, n_weights=5)
        y = lazy(np.ones((1, 6), chainer.get_dtype()))
        reference = L.Linear(6, 4)
    assert layer.W.dtype == layer.b.dtype == reference.W.dtype == param_dtype
    assert lazy.W.dtype == param_dtype
    assert y.dtype == param_dtype
    bucket, sign = layer.index_map()
    assert sign.dtype == param_dtype


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
    kept = _trained_like(HashedLinear(30, 20, n_weights=50, seed=4))
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


def test_the_signed_index_is_the_bucket_and_the_sign_in_one_array():
    # 70000 columns: more than one block of rows, and columns past 16 bits.
    for out_size, in_size, n_weights, seed in [(3, 70000, 1000, 5), (40, 900, 777, 2 ** 32 - 1),
                                               (1, 1, 1, 0)]:
        bucket, sign = hashed_index(out_size, in_size, n_weights, seed)
        index = signed_hashed_index(out_size, in_size, n_weights, seed)
        assert index.dtype == np.int32
        np.testing.assert_array_equal(index, bucket + n_weights * (sign < 0))


def test_initializers():
    layer = HashedLinear(4, 3, n_weights=5, initialW=np.arange(5, dtype=np.float32),
                         initial_bias=1.5)
    np.testing.assert_array_equal(layer.W.array, np.arange(5))
    np.testing.assert_array_equal(layer.b.array, np.full(3, 1.5, np.float32))
    constant = HashedLinear(4, 3, n_weights=5, initialW=chainer.initializers.One())
    np.testing.assert_array_equal(constant.W.array, np.ones(5, np.float32))
    assert HashedLinear(4, 3, n_weights=5, nobias=True).b is None
    with pytest.raises(ValueError, match=r'initialW has shape \(3, 4\).*has shape \(5,\)'):
        HashedLinear(4, 3, n_weights=5, initialW=np.zeros((3, 4), np.float32))


def test_lazy_initialisation_from_the_first_input():
    layer = HashedLinear(6, n_weights=10, seed=2)  # one size given: it is out_size
    assert layer.in_size is None and layer.W.array is None
    with pytest.raises(ValueError, match='has no index map yet'):
        layer.index_map()
    y = layer(np.ones((2, 3, 4), np.float32))  # 12 features once flattened
    assert y.shape == (2, 6)
    assert layer.in_size == 12 and layer.W.shape == (10,)
    assert repr(layer) == 'HashedLinear(in_size=12, out_size=6, n_weights=10, seed=2, ' \
                          'nobias=False)'
    np.testing.assert_array_equal(layer.index_map()[0], hashed_index(6, 12, 10, 2)[0])

    several = HashedLinear(None, 5, n_weights=3)
    assert several(np.ones((2, 3, 8), np.float32), n_batch_axes=2).shape == (2, 3, 5)
    assert several.in_size == 8


def test_lazy_initialisation_with_too_many_weights_is_refused_and_stays_lazy():
    layer = HashedLinear(2, n_weights=7)
    with pytest.raises(ValueError, match=r'n_weights=7 is more than the 2 x 3 = 6 virtual '
                                         r'weights of the layer'):
        layer(np.ones((1, 3), np.float32))
    assert layer.in_size is None and layer.W.array is None
    assert layer(np.ones((1, 4), np.float32)).shape == (1, 2)
    assert layer.in_size == 4


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


def test_an_input_of_another_size_is_a_type_error():
    layer = HashedLinear(12, 3, n_weights=5)
    with pytest.raises(InvalidType, match=r'x.shape\[1\] == index.shape\[1\]'):
        layer(np.ones((2, 8), np.float32))


# --- Saving and loading ------------------------------------------------------------------


def test_save_and_load_npz_round_trip(tmp_path):
    saved = _trained_like(HashedLinear(12, 3, n_weights=7, seed=5))
    path = tmp_path / 'layer.npz'
    chainer.serializers.save_npz(path, saved)
    with np.load(path) as f:
        # The parameters and four integers: never the (out_size, in_size) map.
        assert sorted(f.files) == ['W', 'b', 'in_size', 'n_weights', 'out_size', 'seed']
        assert [int(f[k]) for k in ('n_weights', 'seed', 'in_size', 'out_size')] == [
            7, 5, 12, 3]
        assert sum(f[k].size for k in f.files) == 7 + 3 + 4

    x = np.random.default_rng(0).standard_normal((2, 12)).astype(np.float32)
    loaded = HashedLinear(12, 3, n_weights=7, seed=5)
    chainer.serializers.load_npz(path, loaded)
    np.testing.assert_array_equal(loaded.W.array, saved.W.array)
    np.testing.assert_array_equal(loaded.b.array, saved.b.array)
    np.testing.assert_array_equal(loaded(x).array, saved(x).array)


def test_a_lazy_layer_takes_in_size_from_the_file(tmp_path):
    saved = _trained_like(HashedLinear(12, 3, n_weights=7, seed=5))
    path = tmp_path / 'layer.npz'
    chainer.serializers.save_npz(path, saved)
    lazy = HashedLinear(3, n_weights=7, seed=5)
    chainer.serializers.load_npz(path, lazy)
    assert lazy.in_size == 12
    np.testing.assert_array_equal(lazy.W.array, saved.W.array)
    x = np.random.default_rng(0).standard_normal((2, 12)).astype(np.float32)
    np.testing.assert_array_equal(lazy(x).array, saved(x).array)


def test_a_lazy_layer_is_saved_and_loaded_as_it_is(tmp_path):
    path = tmp_path / 'lazy.npz'
    chainer.serializers.save_npz(path, HashedLinear(3, n_weights=7, seed=5))
    target = HashedLinear(3, n_weights=7, seed=5)
    chainer.serializers.load_npz(path, target)
    assert target.in_size is None


@pytest.mark.parametrize('other, message', [
    (lambda: HashedLinear(12, 3, n_weights=7, seed=6), r'saved with seed=5 into'),
    (lambda: HashedLinear(12, 3, n_weights=8, seed=5), r'saved with n_weights=7 into'),
    (lambda: HashedLinear(10, 3, n_weights=7, seed=5), r'saved with in_size=12 into'),
    (lambda: HashedLinear(12, 4, n_weights=7, seed=5), r'saved with out_size=3 into'),
    (lambda: HashedLinear(3, n_weights=7, seed=6), r'saved with seed=5 into'),  # lazy
    (lambda: HashedLinear(12, 3, n_weights=7, seed=5, nobias=True),
     r'a bias b into HashedLinear\(.*\), which has none \(nobias=True\)'),
])
def test_loading_into_another_layer_is_refused_and_leaves_it_unchanged(tmp_path, other,
                                                                      message):
    path = tmp_path / 'layer.npz'
    chainer.serializers.save_npz(path, _trained_like(HashedLinear(12, 3, n_weights=7, seed=5)))
    target = other()
    before = {name: None if p.array is None else p.array.copy()
              for name, p in target.namedparams()}
    specs = dict(target.printable_specs)
    with pytest.raises(ValueError, match=r'cannot load .*' + message):
        chainer.serializers.load_npz(path, target)
    assert dict(target.printable_specs) == specs
    for name, param in target.namedparams():
        if before[name] is None:
            assert param.array is None
        else:
            np.testing.assert_array_equal(param.array, before[name])


def test_loading_a_weight_of_another_size_is_refused(tmp_path):
    # Chainer copies loaded arrays with broadcasting: a (1,) W would fill any W.
    path = tmp_path / 'one.npz'
    chainer.serializers.save_npz(path, {'W': np.ones(1, np.float32),
                                        'b': np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match=r'cannot load W of shape \(1,\) into .*whose W '
                                         r'has shape \(7,\)'):
        chainer.serializers.load_npz(path, HashedLinear(12, 3, n_weights=7))


def test_pickle_and_deepcopy_keep_everything_but_the_index_map():
    in_size, out_size = 300, 200
    layer = _trained_like(HashedLinear(in_size, out_size, n_weights=100, seed=8))
    x = np.random.default_rng(0).standard_normal((2, in_size)).astype(np.float32)
    expected = layer(x).array
    assert layer._index_map is not None  # the forward pass made it
    pickled = pickle.dumps(layer)
    # The map alone is out_size * in_size * 12 bytes (intp buckets, float32 signs); W is
    # 400 bytes.
    assert len(pickled) < out_size * in_size * 8 / 50
    for clone in (pickle.loads(pickled), copy.deepcopy(layer)):
        assert clone._index_map is None
        assert (clone.in_size, clone.out_size, clone.n_weights, clone.seed) == (
            in_size, out_size, 100, 8)
        assert clone.W.array is not layer.W.array
        np.testing.assert_array_equal(clone(x).array, expected)
    assert layer._index_map is not None  # copying did not drop the original's


def test_to_device_cpu():
    layer = _trained_like(HashedLinear(12, 3, n_weights=5)).to_device('@numpy')
    assert isinstance(layer.W.array, np.ndarray)
    assert layer.device == chainer.get_device('@numpy')
    bucket, sign = layer.index_map()
    assert isinstance(bucket, np.ndarray) and isinstance(sign, np.ndarray)


@pytest.mark.gpu
def test_to_device_gpu_gives_the_cpu_result():
    import cupy
    layer = _trained_like(HashedLinear(12, 3, n_weights=5, seed=3))
    x = np.random.default_rng(0).standard_normal((2, 12)).astype(np.float32)
    expected = layer(x).array
    layer.to_device('@cupy:0')
    y = layer(layer.device.send(x))
    bucket, sign = layer.index_map()  # made again, on the GPU
    assert isinstance(bucket, cupy.ndarray) and isinstance(sign, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(y.array), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(cupy.asnumpy(layer.to_linear().W.array),
                                  _trained_like(HashedLinear(12, 3, n_weights=5, seed=3))
                                  .to_linear().W.array)
    layer.to_device('@numpy')
    np.testing.assert_array_equal(layer(x).array, expected)


@pytest.mark.gpu
def test_from_linear_on_the_gpu_gives_the_cpu_result():
    import cupy
    dense = L.Linear(12, 3)
    expected = HashedLinear.from_linear(dense, n_weights=5).W.array
    dense.to_device('@cupy:0')
    hashed = HashedLinear.from_linear(dense, n_weights=5)
    assert hashed.device == dense.device
    np.testing.assert_allclose(cupy.asnumpy(hashed.W.array), expected, rtol=1e-6)


# --- to_linear and from_linear -----------------------------------------------------------


@pytest.mark.parametrize('dtype', [np.float16, np.float32, np.float64])
@pytest.mark.parametrize('nobias', [False, True])
def test_to_linear_is_exact(dtype, nobias):
    with chainer.using_config('dtype', dtype):
        layer = _trained_like(HashedLinear(16, 5, n_weights=9, seed=1, nobias=nobias))
    dense = layer.to_linear()
    assert type(dense) is L.Linear
    assert (dense.in_size, dense.out_size) == (16, 5)
    assert dense.W.dtype == dtype
    bucket, sign = spec_index(5, 16, 9, 1)
    np.testing.assert_array_equal(dense.W.array, sign * layer.W.array[bucket])
    np.testing.assert_array_equal(layer.dense_weight(), dense.W.array)
    assert_bias_copied(layer, dense)
    x = np.random.default_rng(0).standard_normal((7, 16)).astype(dtype)
    # The same products summed in another order: a few units in the last place.
    tolerance = {'rtol': 1e-12, 'atol': 1e-12} if dtype == np.float64 else \
        {'rtol': 1e-5, 'atol': 1e-6} if dtype == np.float32 else {'rtol': 4e-3, 'atol': 4e-3}
    np.testing.assert_allclose(dense(x).array, layer(x).array, **tolerance)


def test_to_linear_refuses_a_lazy_layer():
    with pytest.raises(ValueError, match=r'cannot convert HashedLinear\(in_size=None.*not '
                                         r'initialised yet'):
        HashedLinear(3, n_weights=2).to_linear()


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


@pytest.mark.parametrize('dtype', [np.float16, np.float32])
def test_from_linear_of_to_linear_gives_W_back(dtype):
    with chainer.using_config('dtype', dtype):
        hashed = _trained_like(HashedLinear(30, 20, n_weights=75, seed=9))
    back = HashedLinear.from_linear(hashed.to_linear(), n_weights=75, seed=9)
    assert back.W.dtype == dtype
    np.testing.assert_array_equal(back.W.array, hashed.W.array)
    np.testing.assert_array_equal(back.b.array, hashed.b.array)


def test_from_linear_with_another_seed_does_not_give_W_back():
    hashed = _trained_like(HashedLinear(30, 20, n_weights=75, seed=9))
    other = HashedLinear.from_linear(hashed.to_linear(), n_weights=75, seed=10)
    assert np.abs(other.W.array).max() < 0.5 * np.abs(hashed.W.array).max()


def test_from_linear_bad_input():
    with pytest.raises(ValueError, match=r'n_weights=41 is more than the 5 x 8 = 40'):
        HashedLinear.from_linear(L.Linear(8, 5), n_weights=41)
    with pytest.raises(ValueError, match=r'seed must be an integer'):
        HashedLinear.from_linear(L.Linear(8, 5), n_weights=4, seed=-1)
    with pytest.raises(ValueError, match=r'not initialised yet'):
        HashedLinear.from_linear(L.Linear(5), n_weights=4)
    with pytest.raises(TypeError, match=r'from_linear expects a chainer.links.Linear, '
                                        r'got HashedLinear'):
        HashedLinear.from_linear(HashedLinear(8, 5, n_weights=4), n_weights=4)


# --- Link hooks ----------------------------------------------------------------------------


@pytest.mark.parametrize('hook', [link_hooks.SpectralNormalization,
                                  link_hooks.WeightStandardization])
def test_weight_reparametrising_hooks_are_refused(hook):
    layer = HashedLinear(12, 5, n_weights=7)
    with pytest.raises(ValueError, match=r'{} is not supported on HashedLinear.*Apply it to '
                                         r'the L.Linear that to_linear\(\) returns instead'
                       .format(hook.__name__)):
        layer.add_hook(hook())
    assert not layer.local_link_hooks


def test_other_link_hooks_are_taken():
    layer = HashedLinear(12, 5, n_weights=7)
    layer.add_hook(link_hooks.TimerHook())
    assert list(layer.local_link_hooks) == ['TimerHook']
