"""hashed_linear and hashed_index: HashedNets, ``V[i, j] = ξ(i, j) · W[h(i, j)]``."""

import chainer
import chainer.functions as F
import numpy as np
import pytest
from chainer import testing
from hypothesis import given
from hypothesis import strategies as st

from chainer_sharedlinear import HashedLinear, hashed_linear
from chainer_sharedlinear.functions.hashed_linear import hashed_index, signed_hashed_index
from tests.helpers import (
    BACKENDS,
    FLOATS,
    FamilyFunction,
    assert_refused,
    bucket_sums,
    hashed_oracle,
    spec_index,
)

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


@pytest.mark.parametrize('seed', [0, 1, 2, 12345, 2 ** 31, 2 ** 32 - 1])
def test_hashed_index_is_the_documented_hash_at_the_ends_of_the_seeds(seed):
    # The seed is mixed on its own first: these reach every bit of the mixer.
    for got, expected in zip(hashed_index(3, 4, 5, seed), spec_index(3, 4, 5, seed)):
        np.testing.assert_array_equal(got, expected)


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


# --- hashed_linear ----------------------------------------------------------------------


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
    # The gathered weight is exact: the bound is a dense product's (see test_shared_linear).
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
class TestHashedLinearFunction(FamilyFunction, testing.FunctionTestCase):

    out_size, in_size, n_weights, seed = 3, 4, 5, 7

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
    np.testing.assert_allclose(W.grad, bucket_sums(gy.T @ x, bucket, sign, n_weights),
                               rtol=1e-12, atol=1e-12)


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
    x = chainer.Variable(np.ones(batch_shape + (2, 3), np.float32))
    W = chainer.Variable(np.ones(5, np.float32))
    y = hashed_linear(x, W, n_batch_axes=n_batch_axes, out_size=3, seed=0)
    assert y.shape == batch_shape + (3,)
    F.sum(y).backward()
    assert x.grad.shape == x.shape
    np.testing.assert_array_equal(W.grad, np.zeros(5, np.float32))


@pytest.mark.parametrize('type_check', [True, False])
def test_a_bias_of_another_size_is_refused_with_type_checking_on_and_off(type_check):
    pattern = r'Expect: b.shape\[0\] == index.shape\[0\]\nActual: 1 != 3'
    # A bias of one element would broadcast to every output.
    x, W = np.ones((2, 6), np.float32), np.ones(4, np.float32)
    assert_refused(lambda: hashed_linear(x, W, np.ones(1, np.float32), out_size=3, seed=0),
                   type_check, pattern)


def test_the_signed_index_is_the_bucket_and_the_sign_in_one_array():
    # 70000 columns: more than one block of rows, and columns past 16 bits.
    for out_size, in_size, n_weights, seed in [(3, 70000, 1000, 5), (40, 900, 777, 2 ** 32 - 1),
                                               (1, 1, 1, 0)]:
        bucket, sign = hashed_index(out_size, in_size, n_weights, seed)
        index = signed_hashed_index(out_size, in_size, n_weights, seed)
        assert index.dtype == np.int32
        np.testing.assert_array_equal(index, bucket + n_weights * (sign < 0))
