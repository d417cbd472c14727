"""tied_linear: any sharing pattern, ``V[i, j] = sign[i, j] · W.ravel()[index[i, j]]``."""

import chainer
import chainer.functions as F
import numpy as np
import pytest
from chainer import testing
from chainer.utils.type_check import InvalidType
from hypothesis import given
from hypothesis import strategies as st

from chainer_sharedlinear import shared_linear, tied_linear
from chainer_sharedlinear.functions.tied_linear import TiedWeight
from tests.helpers import (
    BACKENDS,
    FLOATS,
    FamilyFunction,
    assert_refused,
    bucket_sums,
    first_and_second_order_grads,
    tied_oracle,
    virtual_weight,
)


@st.composite
def tied_linear_problems(draw):
    x_dtype = draw(st.sampled_from(FLOATS))
    w_dtype = draw(st.sampled_from(FLOATS))
    out_size = draw(st.integers(1, 6))
    # The features as one axis, or as two that flatten to in_size.
    feature_shape = draw(st.sampled_from([(1,), (5,), (8,), (2, 3), (3, 1)]))
    in_size = int(np.prod(feature_shape))
    w_shape = draw(st.sampled_from([(1,), (4,), (7,), (2, 3), (2, 2, 2)]))
    batch_shape = tuple(draw(st.lists(st.integers(0, 4), min_size=1, max_size=2)))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    x = rng.uniform(-1, 1, batch_shape + feature_shape).astype(x_dtype)
    W = rng.uniform(-1, 1, w_shape).astype(w_dtype)
    index = rng.integers(0, W.size, (out_size, in_size))
    sign = rng.choice([-1, 1], (out_size, in_size)) if draw(st.booleans()) else None
    b = rng.uniform(-1, 1, out_size).astype(x_dtype) if draw(st.booleans()) else None
    return x, W, index, sign, b, len(batch_shape)


@given(tied_linear_problems())
def test_forward_matches_dense_oracle(problem):
    x, W, index, sign, b, n_batch_axes = problem
    y = tied_linear(x, W, index, sign, b, n_batch_axes=n_batch_axes).array

    expected = tied_oracle(x, W, index, sign, b, n_batch_axes)
    assert y.shape == expected.shape
    assert y.dtype == x.dtype
    # The gathered weight is exact; the rest is a sum of in_size products, the bias
    # and the final rounding to x's dtype, bounded with the larger of the two
    # epsilons. A wrong weight is off by O(|y|), far beyond it.
    in_size = index.shape[1]
    eps = max(np.finfo(x.dtype).eps, np.finfo(W.dtype).eps)
    magnitude = tied_oracle(np.abs(x), np.abs(W), index, None,
                            None if b is None else np.abs(b), n_batch_axes)
    bound = (in_size + 3) * eps * magnitude
    assert np.all(np.abs(y.astype(np.float64) - expected) <= bound)


def _problem(x_dtype, W_dtype, with_sign, nobias, batch_shape=(4,), out_size=3, in_size=4,
             w_shape=(2, 3), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, batch_shape + (in_size,)).astype(x_dtype)
    W = rng.uniform(-1, 1, w_shape).astype(W_dtype)
    # 12 virtual weights from 6 stored ones: every bucket is shared.
    index = rng.permutation(np.arange(out_size * in_size) % W.size).reshape(out_size, in_size)
    sign = rng.choice([-1, 1], (out_size, in_size)) if with_sign else None
    b = None if nobias else rng.uniform(-1, 1, out_size).astype(x_dtype)
    return x, W, index, sign, b


@testing.parameterize(*testing.product({
    'dtypes': [(np.float16, np.float16), (np.float32, np.float32), (np.float64, np.float64),
               (np.float32, np.float64), (np.float64, np.float32), (np.float16, np.float32)],
    'with_sign': [False, True],
    'nobias': [True, False],
    'n_batch_axes': [1, 2],
}))
@testing.inject_backend_tests(None, BACKENDS)
class TestTiedLinearFunction(FamilyFunction, testing.FunctionTestCase):

    def setUp(self):
        super().setUp()
        self.problem = _problem(*self.dtypes, self.with_sign, self.nobias, self.batch_shape)

    def generate_inputs(self):
        x, W, _, _, b = self.problem
        return (x, W) if b is None else (x, W, b)

    def forward(self, inputs, device):
        x, W = inputs[:2]
        b = inputs[2] if len(inputs) == 3 else None
        _, _, index, sign, _ = self.problem
        return tied_linear(x, W, index, sign, b, n_batch_axes=self.n_batch_axes),

    def forward_expected(self, inputs):
        x, W = inputs[:2]
        b = inputs[2] if len(inputs) == 3 else None
        _, _, index, sign, _ = self.problem
        y = tied_oracle(x, W, index, sign, b, self.n_batch_axes)
        return y.astype(x.dtype),


@pytest.mark.parametrize('with_sign', [False, True])
@pytest.mark.parametrize('w_shape', [(7,), (3, 4)])
def test_gW_is_the_signed_bucket_sum_of_gV(with_sign, w_shape):
    rng = np.random.default_rng(0)
    W = chainer.Variable(rng.standard_normal(w_shape))
    index = rng.integers(0, W.size, (9, 11))
    sign = rng.choice([-1, 1], index.shape) if with_sign else None
    gV = rng.standard_normal(index.shape)

    V, = TiedWeight(index.astype(np.intp), sign).apply((W,))
    np.testing.assert_array_equal(V.array, virtual_weight(W.array, index, sign))
    V.grad = gV
    V.backward()
    assert W.grad.shape == w_shape
    np.testing.assert_allclose(W.grad.ravel(), bucket_sums(gV, index, sign, W.size),
                               rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize('with_sign', [False, True])
def test_tied_linear_gradients_are_the_bucket_sums_of_the_dense_gradients(with_sign):
    x, W, index, sign, b = _problem(np.float64, np.float64, with_sign, False, (5,))
    xv, Wv, bv = (chainer.Variable(a) for a in (x, W, b))
    y = tied_linear(xv, Wv, index, sign, bv)
    gy = np.random.default_rng(1).standard_normal(y.shape)
    y.grad = gy
    y.backward()

    V = virtual_weight(W, index, sign)
    np.testing.assert_allclose(xv.grad, gy @ V, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(Wv.grad.ravel(), bucket_sums(gy.T @ x, index, sign, W.size),
                               rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(bv.grad, gy.sum(axis=0), rtol=1e-13, atol=1e-13)


def _gW(index, sign, gV, w_size, dtype):
    W = chainer.Variable(np.zeros(w_size, dtype))
    V, = TiedWeight(index, None if sign is None else sign.astype(dtype)).apply((W,))
    V.grad = gV
    V.backward()
    return W.grad


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_gW_is_summed_in_a_fixed_order_bit_for_bit(dtype):
    # Terms of very different sizes in few buckets: the rounding of the sums
    # depends on their order, so the same bits every time means the same order.
    rng = np.random.default_rng(0)
    index = rng.integers(0, 5, (40, 50)).astype(np.intp)
    sign = rng.choice([-1, 1], index.shape)
    gV = (rng.standard_normal(index.shape) * 10.0 ** rng.integers(-8, 8, index.shape)).astype(
        dtype)

    first = _gW(index, sign, gV, 5, dtype)
    for _ in range(5):
        np.testing.assert_array_equal(_gW(index, sign, gV, 5, dtype), first)
    # The order is the documented one: gV read row by row, each term added in turn.
    expected = np.zeros(5, dtype)
    for (i, j), k in np.ndenumerate(index):
        expected[k] = dtype(expected[k] + dtype(gV[i, j] * sign[i, j]))
    np.testing.assert_array_equal(first, expected)


def test_float16_gW_is_summed_in_float32():
    # 4096 ones in one bucket: float16 stops counting at 2048 (2048 + 1 rounds
    # to 2048); summed in float32 the total is exact, and 4096 is a float16.
    index = np.zeros((64, 64), np.intp)
    gW = _gW(index, None, np.ones((64, 64), np.float16), 3, np.float16)
    assert gW.dtype == np.float16
    np.testing.assert_array_equal(gW, np.array([4096, 0, 0], np.float16))


def test_shared_linear_is_tied_linear_with_the_tiling_index():
    rng = np.random.default_rng(0)
    out_size, k, n_shared = 5, 3, 4
    x = rng.standard_normal((6, k * n_shared))
    W = rng.standard_normal((out_size, k))
    b = rng.standard_normal(out_size)
    gy = rng.standard_normal((6, out_size))
    # [W W ... W]: V[i, j] = W[i, j % k] = W.ravel()[i * k + j % k].
    i, j = np.ogrid[:out_size, :k * n_shared]
    index = i * k + j % k

    def run(f):
        xv, Wv, bv = (chainer.Variable(a) for a in (x, W, b))
        y = f(xv, Wv, bv)
        y.grad = gy
        y.backward()
        return y.array, xv.grad, Wv.grad, bv.grad

    for tied, shared in zip(run(lambda x, W, b: tied_linear(x, W, index, b=b)),
                            run(shared_linear)):
        np.testing.assert_allclose(tied, shared, rtol=1e-12, atol=1e-12)


def test_the_toeplitz_example_of_the_docstring():
    out_size, in_size = 3, 4
    i, j = np.ogrid[:out_size, :in_size]
    index = j - i + out_size - 1  # one stored weight per diagonal
    W = chainer.Variable(np.arange(6, dtype=np.float32))
    V = tied_linear(np.eye(4, dtype=np.float32), W, index).T
    np.testing.assert_array_equal(V.array, [[2, 3, 4, 5], [1, 2, 3, 4], [0, 1, 2, 3]])
    # Constant along every diagonal: a Toeplitz matrix.
    np.testing.assert_array_equal(V.array[1:, 1:], V.array[:-1, :-1])

    # The gradient of each stored weight sums its diagonal.
    gV = np.arange(12, dtype=np.float32).reshape(3, 4)
    F.sum(V * gV).backward()
    diagonals = [np.trace(gV, offset=d) for d in range(-(out_size - 1), in_size)]
    np.testing.assert_array_equal(W.grad, diagonals)


def test_the_sign_is_applied_and_W_is_read_flattened():
    W = np.array([[1, 2], [3, 4]], np.float32)
    index = np.array([[3, 0, 1], [2, 2, 0]])
    sign = np.array([[1, -1, 1], [-1, 1, -1]], np.int8)
    y = tied_linear(np.eye(3, dtype=np.float32), W, index, sign).array
    np.testing.assert_array_equal(y.T, [[4, -1, 2], [-3, 3, -1]])


def test_the_index_is_not_changed():
    W = np.ones(4, np.float32)
    index = np.array([[0, 3], [1, 2]], np.int32)
    sign = np.array([[1, -1], [-1, 1]], np.float64)
    before = index.copy(), sign.copy()
    tied_linear(np.ones((1, 2), np.float32), W, index, sign)
    np.testing.assert_array_equal(index, before[0])
    np.testing.assert_array_equal(sign, before[1])


# --- Bad input gets a clear error -------------------------------------------------------


_X = np.ones((2, 4), np.float32)


_W = np.ones(6, np.float32)


_INDEX = np.arange(12).reshape(3, 4) % 6


@pytest.mark.parametrize('index, message', [
    (np.full((3, 4), 6), r'index must be in \[0, W.size\) = \[0, 6\), got values from 6 to 6'),
    (_INDEX + 1, r'index must be in \[0, W.size\) = \[0, 6\), got values from 1 to 6'),
    (_INDEX - 1, r'index must be in \[0, W.size\) = \[0, 6\), got values from -1 to 4'),
    (np.full((3, 4), -7), r'got values from -7 to -7'),
    (np.zeros(4, int), r'index must have 2 axes, \(out_size, in_size\), got shape \(4,\)'),
    (np.zeros((1, 3, 4), int),
     r'index must have 2 axes, \(out_size, in_size\), got shape \(1, 3, 4\)'),
    (_INDEX.astype(np.float32), r'index must be an array of integers, got dtype float32'),
    (_INDEX.astype(bool), r'index must be an array of integers, got dtype bool'),
])
def test_a_bad_index_is_a_clear_error(index, message):
    with pytest.raises(ValueError, match=message):
        tied_linear(_X, _W, index)


@pytest.mark.parametrize('type_check', [True, False])
def test_an_index_of_another_width_than_x_is_an_error(type_check):
    # 5 columns for 4 features: no answer is right, so none may come out.
    index = np.zeros((3, 5), int)
    with chainer.using_config('type_check', type_check):
        with pytest.raises(InvalidType, match=r'x.shape\[1\] == index.shape\[1\]'):
            tied_linear(_X, _W, index)


@pytest.mark.parametrize('type_check', [True, False])
def test_a_bias_of_another_size_is_refused_with_type_checking_on_and_off(type_check):
    pattern = r'Expect: b.shape\[0\] == index.shape\[0\]\nActual: 1 != 3'
    # A bias of one element would broadcast to every output.
    assert_refused(lambda: tied_linear(_X, _W, _INDEX, b=np.ones(1, np.float32)), type_check,
                   pattern)


@pytest.mark.parametrize('sign, message', [
    (np.ones((4, 3)), r'sign must have the shape of index, \(3, 4\), got \(4, 3\)'),
    (np.ones(12), r'sign must have the shape of index, \(3, 4\), got \(12,\)'),
    (np.ones((1, 4)), r'sign must have the shape of index, \(3, 4\), got \(1, 4\)'),
    (np.zeros((3, 4)), r'sign must hold only 1 and -1'),
    (np.full((3, 4), 2), r'sign must hold only 1 and -1'),
    (np.full((3, 4), 0.5), r'sign must hold only 1 and -1'),
    (np.full((3, 4), np.nan), r'sign must hold only 1 and -1'),
])
def test_a_bad_sign_is_a_clear_error(sign, message):
    with pytest.raises(ValueError, match=message):
        tied_linear(_X, _W, _INDEX, sign)


def test_a_sign_with_one_bad_value_is_refused():
    sign = np.ones((3, 4))
    sign[2, 3] = -2
    with pytest.raises(ValueError, match='sign must hold only 1 and -1'):
        tied_linear(_X, _W, _INDEX, sign)


def test_an_integer_W_is_a_type_error():
    with pytest.raises(InvalidType, match=r'W.dtype.kind == f'):
        tied_linear(_X, np.ones(6, np.int32), _INDEX)


@pytest.mark.parametrize('batch_shape, n_batch_axes', [((0,), 1), ((0, 3), 2), ((3, 0), 2)])
@pytest.mark.parametrize('feature_shape', [(4,), (2, 2)])
def test_an_empty_batch_gives_an_empty_output(batch_shape, n_batch_axes, feature_shape):
    # As shared_linear and kronecker_linear do; F.linear's reshape by -1 fails here.
    x = chainer.Variable(np.ones(batch_shape + feature_shape, np.float32))
    W = chainer.Variable(np.ones(6, np.float32))
    y = tied_linear(x, W, _INDEX, b=np.ones(3, np.float32), n_batch_axes=n_batch_axes)
    assert y.shape == batch_shape + (3,)
    F.sum(y).backward()
    assert x.grad.shape == x.shape
    np.testing.assert_array_equal(W.grad, np.zeros(6, np.float32))


@pytest.mark.parametrize('n_batch_axes, message', [
    (0, 'n_batch_axes must be a positive integer, got 0'),
    (1.0, 'n_batch_axes must be a positive integer, got 1.0'),
    (2, r'x has shape \(2, 4\), which leaves no feature axis after n_batch_axes=2 batch axes'),
])
def test_a_bad_n_batch_axes_is_a_clear_error(n_batch_axes, message):
    with pytest.raises(ValueError, match=message):
        tied_linear(_X, _W, np.zeros((3, 1), int), n_batch_axes=n_batch_axes)


@pytest.mark.parametrize('x_dtype, W_dtype', [(np.float32, np.float32), (np.float16, np.float64)])
@pytest.mark.parametrize('with_sign', [False, True])
def test_first_order_fast_path_equals_the_differentiable_nodes(x_dtype, W_dtype, with_sign):
    # Plain backward computes arrays in TiedLinearFunction itself; with double backprop
    # enabled the same gradients come from TiedWeight, F.matmul and TiedWeightGrad.
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (6, 5)).astype(x_dtype)
    W = rng.uniform(-1, 1, 4).astype(W_dtype)
    b = rng.uniform(-1, 1, 3).astype(x_dtype)
    index = rng.integers(0, 4, (3, 5))
    sign = rng.choice([-1.0, 1.0], (3, 5)) if with_sign else None

    def apply(x, W, b):
        return tied_linear(x, W, index, sign, b)

    for fast, nodes in zip(*first_and_second_order_grads(apply, (x, W, b))):
        assert fast.dtype == nodes.dtype
        np.testing.assert_array_equal(fast, nodes)
