"""kronecker_linear: a weight ``Σ_r A[r] ⊗ B[r]``, never built."""

import chainer
import chainer.functions as F
import numpy as np
import pytest
from chainer import testing
from chainer.utils.type_check import InvalidType
from hypothesis import given
from hypothesis import strategies as st

from chainer_sharedlinear import kronecker_linear, shared_linear
from chainer_sharedlinear.functions._ops import ArrayOps
from tests.helpers import (
    BACKENDS,
    FLOATS,
    FamilyFunction,
    assert_refused,
    dense_oracle,
    first_and_second_order_grads,
    grads_of,
    kron_oracle,
)


@st.composite
def kronecker_problems(draw):
    x_dtype = draw(st.sampled_from(FLOATS))
    w_dtype = draw(st.sampled_from(FLOATS))
    n_terms = draw(st.integers(1, 3))
    m1, n1, m2, n2 = (draw(st.integers(1, 4)) for _ in range(4))
    batch_shape = tuple(draw(st.lists(st.integers(0, 4), min_size=1, max_size=2)))
    # The features as one axis, or as (n1, n2): both flatten to in_size.
    feature_shape = draw(st.sampled_from([(n1 * n2,), (n1, n2)]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    x = rng.uniform(-1, 1, batch_shape + feature_shape).astype(x_dtype)
    A = rng.uniform(-1, 1, (n_terms, m1, n1)).astype(w_dtype)
    B = rng.uniform(-1, 1, (n_terms, m2, n2)).astype(w_dtype)
    b = rng.uniform(-1, 1, m1 * m2).astype(x_dtype) if draw(st.booleans()) else None
    return x, A, B, b, len(batch_shape)


@given(kronecker_problems())
def test_forward_matches_the_kron_oracle(problem):
    x, A, B, b, n_batch_axes = problem
    y = kronecker_linear(x, A, B, b, n_batch_axes=n_batch_axes).array

    expected = kron_oracle(x, A, B, b, n_batch_axes)
    assert y.shape == expected.shape
    assert y.dtype == x.dtype
    # Products and sums in float32 at least (float64 if any input is): per output, a sum
    # of n_terms * n1 products of A with sums of n2 products of x and B, bounded by the
    # sum of their magnitudes. Then the rounding to x's dtype, before and after the bias.
    # A term dropped or a factor transposed is off by O(|y|), far beyond it.
    n_terms, _, n1 = A.shape
    n2 = B.shape[2]
    compute = np.result_type(np.float32, x.dtype, A.dtype, B.dtype)
    magnitude = kron_oracle(np.abs(x), np.abs(A), np.abs(B),
                            None if b is None else np.abs(b), n_batch_axes)
    bound = ((n_terms * (n1 + n2) + 4) * np.finfo(compute).eps
             + 2 * np.finfo(x.dtype).eps) * magnitude
    assert np.all(np.abs(y.astype(np.float64) - expected) <= bound)


def _problem(x_dtype, w_dtype, n_terms, nobias, batch_shape=(4,), factors=(2, 3, 2, 2),
             seed=0):
    n1, n2, m1, m2 = factors
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, batch_shape + (n1 * n2,)).astype(x_dtype)
    A = rng.uniform(-1, 1, (n_terms, m1, n1)).astype(w_dtype)
    B = rng.uniform(-1, 1, (n_terms, m2, n2)).astype(w_dtype)
    b = None if nobias else rng.uniform(-1, 1, m1 * m2).astype(x_dtype)
    return x, A, B, b


@testing.parameterize(*testing.product({
    'dtypes': [(np.float16, np.float16), (np.float32, np.float32), (np.float64, np.float64),
               (np.float32, np.float64), (np.float64, np.float32), (np.float16, np.float32)],
    'n_terms': [1, 3],
    'nobias': [True, False],
    'n_batch_axes': [1, 2],
}))
@testing.inject_backend_tests(None, BACKENDS)
class TestKroneckerLinearFunction(FamilyFunction, testing.FunctionTestCase):

    def generate_inputs(self):
        x, A, B, b = _problem(*self.dtypes, self.n_terms, self.nobias, self.batch_shape)
        return (x, A, B) if b is None else (x, A, B, b)

    def forward(self, inputs, device):
        return kronecker_linear(*inputs, n_batch_axes=self.n_batch_axes),

    def forward_expected(self, inputs):
        y = kron_oracle(*inputs, n_batch_axes=self.n_batch_axes)
        return y.astype(inputs[0].dtype),


@pytest.mark.parametrize('n_terms', [1, 2, 4])
@pytest.mark.parametrize('nobias', [True, False])
def test_gradients_equal_a_dense_layer_with_the_kron_weight(n_terms, nobias):
    x, A, B, b = _problem(np.float64, np.float64, n_terms, nobias, (7,), (3, 4, 2, 5))
    gy = np.random.default_rng(1).standard_normal((7, 10))

    def dense(x, A, B, b):
        # kron(A[r], B[r])[i·m2 + k, j·n2 + l] = A[r, i, j] · B[r, k, l], by broadcasting.
        W = sum(F.reshape(F.reshape(A[r], (2, 1, 3, 1)) * F.reshape(B[r], (1, 5, 1, 4)),
                          (10, 12)) for r in range(n_terms))
        return F.linear(x, W, b)

    ours = grads_of(kronecker_linear, (x, A, B, b), gy)
    theirs = grads_of(dense, (x, A, B, b), gy)
    assert len(ours) == len(theirs) == (3 if nobias else 4)
    for mine, other in zip(ours, theirs):
        np.testing.assert_allclose(mine, other, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('x_dtype, w_dtype', [
    (np.float64, np.float64), (np.float32, np.float32), (np.float16, np.float64),
    (np.float32, np.float16)])
@pytest.mark.parametrize('n_terms', [1, 3])
def test_first_order_fast_path_equals_the_differentiable_backward(x_dtype, w_dtype, n_terms):
    # Plain backward computes arrays directly; with double backprop enabled the same
    # gradients come from einsums of Chainer functions. Both sum in float32 at least,
    # in other orders.
    x, A, B, b = _problem(x_dtype, w_dtype, n_terms, False, (6,), (3, 4, 2, 5))
    fast_grads, node_grads = first_and_second_order_grads(kronecker_linear, (x, A, B, b))

    tolerance = (1e-12 if np.float16 not in (x_dtype, w_dtype) and
                 np.float32 not in (x_dtype, w_dtype) else 1e-5)
    if x_dtype == np.float16:
        tolerance = 2 ** -10  # gx and gb come back in float16: a unit in the last place
    for fast, nodes in zip(fast_grads, node_grads):
        assert fast.dtype == nodes.dtype
        np.testing.assert_allclose(fast, nodes, rtol=tolerance, atol=tolerance)


def test_second_order_gradients_equal_a_dense_layer():
    # d/d(x, A, B) of |gx|^2 + |gA|^2 + |gB|^2 goes through the differentiable backward.
    x, A, B, b = _problem(np.float64, np.float64, 2, False, (3,), (2, 3, 2, 2))

    def dense(x, A, B, b):
        W = sum(F.reshape(F.reshape(A[r], (2, 1, 2, 1)) * F.reshape(B[r], (1, 2, 1, 3)),
                          (4, 6)) for r in range(2))
        return F.linear(x, W, b)

    def second_order(f):
        xv, Av, Bv, bv = (chainer.Variable(a) for a in (x, A, B, b))
        y = f(xv, Av, Bv, bv)
        gx, gA, gB = chainer.grad([F.sum(y * y * y)], [xv, Av, Bv],
                                  enable_double_backprop=True)
        loss = F.sum(gx * gx) + F.sum(gA * gA) + F.sum(gB * gB)
        return chainer.grad([loss], [xv, Av, Bv, bv])

    for mine, theirs in zip(second_order(kronecker_linear), second_order(dense)):
        np.testing.assert_allclose(mine.array, theirs.array, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('n_shared', [1, 2, 5])
def test_kronecker_linear_with_a_row_of_ones_is_shared_linear(n_shared):
    # [W W ... W] = 1ᵀ ⊗ W: the tiling of SharedLinear is a Kronecker product.
    rng = np.random.default_rng(0)
    W = rng.standard_normal((4, 3))
    x = rng.standard_normal((6, 3 * n_shared))
    b = rng.standard_normal(4)
    gy = rng.standard_normal((6, 4))
    A = np.ones((1, 1, n_shared))

    kron = grads_of(lambda x, W, b: kronecker_linear(x, A, W[None], b), (x, W, b), gy)
    shared = grads_of(shared_linear, (x, W, b), gy)
    np.testing.assert_allclose(kronecker_linear(x, A, W[None], b).array,
                               shared_linear(x, W, b).array, rtol=1e-13, atol=1e-13)
    for mine, theirs in zip(kron, shared):
        np.testing.assert_allclose(mine, theirs, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(kronecker_linear(x, A, W[None], b).array,
                               dense_oracle(x, W, b), rtol=1e-13, atol=1e-13)


def test_float16_inputs_are_computed_in_float32():
    # X · Bᵀ is 64 * 1000 * 2 = 128000 in every place, past float16's largest value
    # (65504); A brings it back to 128 * 1e-3 * 64 ≈ 8.2. Computed in float16 it
    # would be inf.
    x = np.full((2, 64 * 64), 1000, np.float16)
    A = np.full((1, 3, 64), 1e-3, np.float16)
    B = np.full((1, 5, 64), 2, np.float16)
    b = np.full(15, 0.5, np.float16)
    y = kronecker_linear(x, A, B, b).array
    assert y.dtype == np.float16
    assert np.isfinite(y).all()
    expected = kronecker_linear(x.astype(np.float32), A.astype(np.float32),
                                B.astype(np.float32), b.astype(np.float32)).array
    # One rounding to float16 of the float32 result, then the float16 bias: within
    # a unit in the last place or two.
    np.testing.assert_allclose(y, expected, rtol=2 ** -9, atol=0)
    np.testing.assert_allclose(y, kron_oracle(x, A, B, b), rtol=2 ** -9, atol=0)

    # The gradients of x and B too. (A's, 2 * 5 * 128000, is past float16's range.)
    def grads(dtype):
        xv, Bv = chainer.Variable(x.astype(dtype)), chainer.Variable(B.astype(dtype))
        y = kronecker_linear(xv, A.astype(dtype), Bv)
        y.grad = np.ones_like(y.array)
        y.backward()
        return xv.grad, Bv.grad

    for half, single in zip(grads(np.float16), grads(np.float32)):
        assert half.dtype == np.float16 and np.isfinite(half).all()
        np.testing.assert_allclose(half, single, rtol=2 ** -10, atol=0)


@pytest.mark.parametrize('n_terms', [1, 4])
def test_a_step_copies_no_activation_between_its_products(monkeypatch, n_terms):
    # Every reshape between two products is a view: a copy of an activation (the
    # (N·n1, R·m2) products with B, as large as R times the input) would be a pass over
    # memory that the arithmetic does not need. Only A, of the weights' size, is
    # rearranged.
    copied = []
    reshape = ArrayOps.reshape

    def spy(a, shape):
        laid_out = reshape(a, shape)
        if not np.shares_memory(laid_out, a):
            copied.append(a.shape)
        return laid_out
    monkeypatch.setattr(ArrayOps, 'reshape', staticmethod(spy))
    rng = np.random.default_rng(0)
    x, gy = rng.standard_normal((8, 6 * 5)), rng.standard_normal((8, 3 * 7))
    A, B = rng.standard_normal((n_terms, 3, 6)), rng.standard_normal((n_terms, 7, 5))
    grads_of(kronecker_linear, (x, A, B), gy)
    assert [shape for shape in copied if np.prod(shape) != A.size] == []


@pytest.mark.parametrize('type_check', [True, False])
@pytest.mark.parametrize('features, n_batch_axes', [(12, 1), (7, 1), (5, 2)])
def test_a_wrong_number_of_features_is_refused_with_type_checking_off_too(
        type_check, features, n_batch_axes):
    # A (1, 2, 2), B (1, 3, 3): 6 features. 12 would reshape into other factors.
    A, B = np.ones((1, 2, 2), np.float32), np.ones((1, 3, 3), np.float32)
    shape = (2, features) if n_batch_axes == 1 else (2, 1, features)
    with chainer.using_config('type_check', type_check):
        with pytest.raises(InvalidType, match=r'x.shape\[1\] == A.shape\[2\] \* B.shape\[2\]'):
            kronecker_linear(np.ones(shape, np.float32), A, B, n_batch_axes=n_batch_axes)


@pytest.mark.parametrize('type_check', [True, False])
def test_factors_with_other_numbers_of_terms_are_refused(type_check):
    with chainer.using_config('type_check', type_check):
        with pytest.raises(InvalidType, match=r'A.shape\[0\] == B.shape\[0\]'):
            kronecker_linear(np.ones((2, 6), np.float32), np.ones((2, 2, 2), np.float32),
                             np.ones((1, 3, 3), np.float32))


@pytest.mark.parametrize('type_check', [True, False])
def test_a_bias_of_another_size_is_refused_with_type_checking_on_and_off(type_check):
    # A bias of one element would broadcast to every output.
    x, A, B = np.ones((2, 6), np.float32), np.ones((1, 1, 2), np.float32), np.ones((1, 3, 3))
    assert_refused(lambda: kronecker_linear(x, A, B.astype(np.float32), np.ones(1, np.float32)),
                   type_check, r'Expect: b.shape\[0\] == A.shape\[1\] \* B.shape\[1\]')


def test_type_errors_name_what_was_wrong():
    x = np.ones((2, 6), np.float32)
    A, B = np.ones((1, 2, 2), np.float32), np.ones((1, 3, 3), np.float32)
    with pytest.raises(InvalidType, match=r'x.dtype.kind == f'):
        kronecker_linear(x.astype(np.int32), A, B)
    with pytest.raises(InvalidType, match=r'A.ndim == 3'):
        kronecker_linear(x, A[0], B)
    with pytest.raises(InvalidType, match=r'b.shape\[0\] == A.shape\[1\] \* B.shape\[1\]'):
        kronecker_linear(x, A, B, np.ones(5, np.float32))
    with pytest.raises(InvalidType, match=r'b.dtype == x.dtype'):
        kronecker_linear(x, A, B, np.ones(6, np.float64))
    with pytest.raises(ValueError, match=r'x has shape \(2, 6\), which leaves no feature axis '
                       r'after n_batch_axes=2'):
        kronecker_linear(x, A, B, n_batch_axes=2)


@pytest.mark.parametrize('batch_shape, n_batch_axes', [((0,), 1), ((0, 3), 2)])
def test_an_empty_batch_gives_an_empty_output(batch_shape, n_batch_axes):
    A, B = np.ones((2, 2, 2), np.float32), np.ones((2, 3, 3), np.float32)
    x = chainer.Variable(np.ones(batch_shape + (2, 3), np.float32))
    y = kronecker_linear(x, A, B, n_batch_axes=n_batch_axes)
    assert y.shape == batch_shape + (6,)
    F.sum(y).backward()
    assert x.grad.shape == x.shape
