"""shared_linear: one weight shared by the blocks of the input, ``y = fold(x) · Wᵀ + b``."""

import chainer
import chainer.functions as F
import numpy as np
import pytest
from chainer import testing
from chainer.utils.type_check import InvalidType
from hypothesis import given
from hypothesis import strategies as st

from chainer_sharedlinear import SharedLinear, shared_linear
from tests.helpers import (
    BACKENDS,
    FLOATS,
    FamilyFunction,
    assert_refused,
    dense_oracle,
    first_and_second_order_grads,
    grads_of,
    tiled,
    tiled_linear_grads,
)


@st.composite
def shared_linear_problems(draw):
    dtype = draw(st.sampled_from(FLOATS))
    n_shared = draw(st.sampled_from([1, 2, 3, 10]) | st.integers(4, 40))
    k = draw(st.integers(1, 8))
    out_size = draw(st.integers(1, 8))
    batch_shape = tuple(draw(st.lists(st.integers(0, 4), min_size=1, max_size=2)))
    # The features as one axis, or as (n_shared, k): both flatten to in_size.
    feature_shape = draw(st.sampled_from([(n_shared * k,), (n_shared, k)]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    x = rng.uniform(-1, 1, batch_shape + feature_shape).astype(dtype)
    W = rng.uniform(-1, 1, (out_size, k)).astype(dtype)
    b = rng.uniform(-1, 1, out_size).astype(dtype) if draw(st.booleans()) else None
    return x, W, b, len(batch_shape)


@given(shared_linear_problems())
def test_forward_matches_dense_oracle(problem):
    x, W, b, n_batch_axes = problem
    y = shared_linear(x, W, b, n_batch_axes=n_batch_axes).array

    expected = dense_oracle(x, W, b, n_batch_axes)
    assert y.shape == expected.shape
    assert y.dtype == x.dtype
    # Rounding-error bound of a sum of in_size products, plus the bias and
    # the final rounding; a wrong answer is off by O(|y|), far beyond it.
    in_size = int(np.prod(x.shape[n_batch_axes:]))
    magnitude = dense_oracle(np.abs(x), np.abs(W), None if b is None else np.abs(b),
                             n_batch_axes)
    bound = (in_size + 3) * np.finfo(x.dtype).eps * magnitude
    assert np.all(np.abs(y.astype(np.float64) - expected) <= bound)


def _problem(x_dtype, W_dtype, n_shared, nobias, batch_shape=(4,), k=3, out_size=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, batch_shape + (n_shared * k,)).astype(x_dtype)
    W = rng.uniform(-1, 1, (out_size, k)).astype(W_dtype)
    b = None if nobias else rng.uniform(-1, 1, out_size).astype(x_dtype)
    return x, W, b


@testing.parameterize(*testing.product({
    'dtypes': [(np.float16, np.float16), (np.float32, np.float32), (np.float64, np.float64),
               (np.float32, np.float64), (np.float64, np.float32), (np.float16, np.float32)],
    'n_shared': [1, 3],
    'nobias': [True, False],
    'n_batch_axes': [1, 2],
    'contiguous': [None, 'C'],
}))
@testing.inject_backend_tests(None, BACKENDS)
class TestSharedLinearFunction(FamilyFunction, testing.FunctionTestCase):

    def generate_inputs(self):
        x, W, b = _problem(*self.dtypes, self.n_shared, self.nobias, self.batch_shape)
        return (x, W) if b is None else (x, W, b)

    def forward(self, inputs, device):
        return shared_linear(*inputs, n_batch_axes=self.n_batch_axes),

    def forward_expected(self, inputs):
        y = dense_oracle(*inputs, n_batch_axes=self.n_batch_axes)
        return y.astype(inputs[0].dtype),


@pytest.mark.parametrize('n_shared', [1, 2, 10])
@pytest.mark.parametrize('nobias', [True, False])
def test_gradients_are_those_of_the_tiled_weight(n_shared, nobias):
    x, W, b = _problem(np.float64, np.float64, n_shared, nobias, batch_shape=(7,), k=5,
                       out_size=6)
    gy = np.random.default_rng(1).standard_normal((7, 6))

    ours = grads_of(shared_linear, (x, W, b), gy)
    dense = grads_of(lambda x, W, b: F.linear(x, F.tile(W, (1, n_shared)), b), (x, W, b), gy)
    assert len(ours) == len(dense) == (2 if nobias else 3)
    for mine, theirs, oracle in zip(ours, dense, tiled_linear_grads(x, W, gy)):
        np.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(mine, oracle, rtol=1e-12, atol=1e-12)


def test_second_order_gradients_equal_tiled_linear():
    # d/dW of |gx|^2 goes through the grad nodes' own backward passes.
    x, W, b = _problem(np.float64, np.float64, 4, False, batch_shape=(3,), k=2, out_size=5)

    def second_order(f):
        xv, Wv, bv = (chainer.Variable(a) for a in (x, W, b))
        y = f(xv, Wv, bv)
        gx, gW = chainer.grad([F.sum(y * y)], [xv, Wv], enable_double_backprop=True)
        loss = F.sum(gx * gx) + F.sum(gW * gW)
        return chainer.grad([loss], [xv, Wv, bv])

    ours = second_order(shared_linear)
    dense = second_order(lambda x, W, b: F.linear(x, F.tile(W, (1, 4)), b))
    for mine, theirs in zip(ours, dense):
        np.testing.assert_allclose(mine.array, theirs.array, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('x_dtype, W_dtype', [
    (np.float32, np.float32), (np.float16, np.float16), (np.float32, np.float64),
    (np.float64, np.float16)])
@pytest.mark.parametrize('batch_shape, n_batch_axes', [((5,), 1), ((0,), 1), ((2, 3), 2)])
@pytest.mark.parametrize('nobias', [True, False])
@pytest.mark.parametrize('noncontiguous', [False, True])
def test_n_shared_1_is_exactly_f_linear(x_dtype, W_dtype, batch_shape, n_batch_axes, nobias,
                                        noncontiguous):
    x, W, b = _problem(x_dtype, W_dtype, 1, nobias, batch_shape, k=4, out_size=3)
    if noncontiguous:
        x = np.asfortranarray(x)[..., ::-1].copy()[..., ::-1]  # same values, not C-ordered
        x = np.swapaxes(np.swapaxes(x, 0, -1).copy(), 0, -1)
        assert not x.flags.c_contiguous or x.size == 0
    gy = np.random.default_rng(2).uniform(-1, 1, batch_shape + (3,)).astype(x_dtype)

    def run(f):
        xv, Wv = chainer.Variable(x), chainer.Variable(W)
        bv = None if b is None else chainer.Variable(b)
        y = f(xv, Wv, bv, n_batch_axes=n_batch_axes)
        y.grad = gy
        y.backward()
        return [y.array, xv.grad, Wv.grad] + ([] if b is None else [bv.grad])

    for mine, theirs in zip(run(shared_linear), run(F.linear)):
        assert mine.dtype == theirs.dtype
        assert mine.shape == theirs.shape
        np.testing.assert_array_equal(mine, theirs)


def test_backward_keeps_only_x_and_W():
    x, W, b = _problem(np.float32, np.float32, 3, False)
    node = shared_linear(x, W, b).creator_node
    assert node.label == 'SharedLinearFunction'
    retained = node.get_retained_inputs()
    assert len(retained) == 2
    assert retained[0].array is x and retained[1].array is W


@pytest.mark.parametrize('x_dtype, W_dtype', [(np.float32, np.float32), (np.float16, np.float64)])
def test_first_order_fast_path_equals_the_differentiable_nodes(x_dtype, W_dtype):
    # Plain backward computes arrays directly; with double backprop enabled the
    # same gradients come from SharedLinearGradData and SharedLinearGradWeight.
    x, W, b = _problem(x_dtype, W_dtype, 5, False, batch_shape=(6,), k=4, out_size=3)
    for fast, nodes in zip(*first_and_second_order_grads(shared_linear, (x, W, b))):
        assert fast.dtype == nodes.dtype
        np.testing.assert_array_equal(fast, nodes)


def test_float16_blocks_are_added_in_float32():
    # 2048 blocks of 40 sum to 81920, past float16's largest value (65504).
    x = np.full((1, 2048), 40, np.float16)
    W = np.full((1, 1), 1e-3, np.float16)
    y = shared_linear(x, W).array
    expected = F.linear(x, tiled(W, 2048)).array  # BLAS-backed: accumulates in float32
    assert y.dtype == np.float16
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, expected, rtol=2 ** -10)
    np.testing.assert_allclose(y, dense_oracle(x, W), rtol=2 ** -9)


def test_float16_fold_is_kept_in_float32_for_the_weight_gradient():
    # Each row folds to 2048 + 1 = 2049, which float16 rounds to 2048. gW = gy^T fold(x)
    # is 6 * 2049 = 12294 (float16: 12296) from the float32 fold, 6 * 2048 = 12288
    # from a fold rounded to float16.
    x = np.tile(np.array([[2048, 1]], np.float16), (6, 1))
    W = chainer.Variable(np.ones((1, 1), np.float16))
    y = shared_linear(x, W)
    y.grad = np.ones_like(y.array)
    y.backward()
    assert W.grad.dtype == np.float16
    assert W.grad[0, 0] == np.float16(6 * 2049) == 12296


_X, _W = np.zeros((2, 6), np.float32), np.zeros((3, 2), np.float32)


# Shapes no answer fits: refused whatever chainer.config.type_check says (with it off, they
# would otherwise be folded into another number of blocks, or broadcast, silently), with the
# condition as Chainer's type check prints it.
SHAPE_REFUSALS = [
    pytest.param(lambda: shared_linear(np.zeros((2, 7), np.float32), _W),
                 r'x.shape\[1\] % W.shape\[1\] == 0', id='no-multiple-of-k'),
    pytest.param(lambda: shared_linear(np.zeros((2, 0), np.float32), np.zeros((3, 4))),
                 r'x.shape\[1\] > 0', id='no-features'),
    pytest.param(lambda: shared_linear(_X, _W, n_shared=2),
                 r'x.shape\[1\] == 2 \* W.shape\[1\]', id='6-features-for-2-blocks'),
    # k = 2: 12, 8 and 3 features fold into 6, 4 and 1.5 blocks, not the 3 asked for.
    *[pytest.param(lambda features=features: shared_linear(
        np.ones((2, features), np.float32), np.ones((4, 2), np.float32), n_shared=3),
        r'x.shape\[1\] == 3 \* W.shape\[1\]', id='{}-features-for-3-blocks'.format(
            features)) for features in (12, 8, 3)],
    pytest.param(lambda: shared_linear(_X, np.zeros(2, np.float32)), r'W.ndim == 2',
                 id='W-not-a-matrix'),
    pytest.param(lambda: shared_linear(np.zeros(6, np.float32), _W), r'x.ndim == 2',
                 id='x-of-one-axis'),
    # A bias of one element would broadcast to every output.
    pytest.param(lambda: shared_linear(_X, _W, np.zeros(1, np.float32)),
                 r'b.shape\[0\] == W.shape\[0\]', id='b-of-1'),
]


@pytest.mark.parametrize('type_check', [True, False])
@pytest.mark.parametrize('call, pattern', SHAPE_REFUSALS)
def test_a_shape_no_answer_fits_is_refused_with_type_checking_on_and_off(type_check, call,
                                                                         pattern):
    assert_refused(call, type_check, pattern)


@pytest.mark.parametrize('call, pattern', [
    (lambda: shared_linear(np.zeros((2, 6), np.int32), _W), r'x.dtype.kind == f'),
    (lambda: shared_linear(_X, _W, np.zeros(3, np.float64)), r'b.dtype == x.dtype'),
    (lambda: shared_linear(_X, _W, np.zeros((), np.float32)), r'b.ndim == 1'),
])
def test_type_errors_name_what_was_wrong(call, pattern):
    with pytest.raises(InvalidType, match=pattern):
        call()


def test_a_bias_of_the_right_size_is_taken_with_type_checking_off():
    with chainer.using_config('type_check', False):
        assert shared_linear(_X, _W, np.ones(3, np.float32)).shape == (2, 3)


@pytest.mark.parametrize('n_shared', ['3', 3.0, 0, -1, True])
def test_a_bad_n_shared_gets_the_same_error_from_the_function_and_the_link(n_shared):

    x, W = np.ones((2, 6), np.float32), np.ones((3, 2), np.float32)
    with pytest.raises(ValueError, match='n_shared must be') as from_function:
        shared_linear(x, W, n_shared=n_shared)
    with pytest.raises(ValueError) as from_link:
        SharedLinear(6, 3, n_shared=n_shared)
    assert str(from_function.value) == str(from_link.value)


@pytest.mark.parametrize('n_batch_axes', [0, 1.0, '1'])
def test_a_bad_n_batch_axes_is_a_clear_error(n_batch_axes):
    with pytest.raises(ValueError, match='n_batch_axes must be'):
        shared_linear(np.ones((2, 6), np.float32), np.ones((3, 2), np.float32),
                      n_batch_axes=n_batch_axes)


def test_n_batch_axes_must_leave_a_feature_axis():
    with pytest.raises(ValueError, match=r'x has shape \(2, 6\), which leaves no feature axis '
                       r'after n_batch_axes=2'):
        shared_linear(np.ones((2, 6), np.float32), np.ones((3, 1), np.float32), n_batch_axes=2)
