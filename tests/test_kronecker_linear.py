"""KroneckerLinear and kronecker_linear: a weight ``Σ_r A[r] ⊗ B[r]``, never built."""

import copy
import pickle

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
import pytest
from chainer import link_hooks, testing
from chainer.utils.type_check import InvalidType
from hypothesis import given
from hypothesis import strategies as st

from chainer_sharedlinear import KroneckerLinear, kronecker_linear, shared_linear
from tests.helpers import (
    BACKENDS,
    assert_bias_copied,
    dense_oracle,
    first_and_second_order_grads,
    function_tolerances,
    link_tolerances,
)

FLOATS = [np.float16, np.float32, np.float64]


def kron_weight(A, B):
    """``Σ_r numpy.kron(A[r], B[r])`` in float64."""
    A, B = np.asarray(A, np.float64), np.asarray(B, np.float64)
    return sum(np.kron(a, b) for a, b in zip(A, B))


def kron_oracle(x, A, B, b=None, n_batch_axes=1):
    """``x · (Σ_r A[r] ⊗ B[r])ᵀ + b`` in float64, with the batch axes of ``x`` kept."""
    W = kron_weight(A, B)
    batch_shape = x.shape[:n_batch_axes]
    y = x.reshape(int(np.prod(batch_shape)), W.shape[1]).astype(np.float64) @ W.T
    if b is not None:
        y += b.astype(np.float64)
    return y.reshape(batch_shape + (W.shape[0],))


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


# --- FunctionTestCase -------------------------------------------------------------------


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
class TestKroneckerLinearFunction(testing.FunctionTestCase):

    def setUp(self):
        vars(self).update(function_tolerances(self.dtypes))

    def generate_inputs(self):
        batch_shape = (4,) if self.n_batch_axes == 1 else (2, 3)
        x, A, B, b = _problem(*self.dtypes, self.n_terms, self.nobias, batch_shape)
        return (x, A, B) if b is None else (x, A, B, b)

    def forward(self, inputs, device):
        return kronecker_linear(*inputs, n_batch_axes=self.n_batch_axes),

    def forward_expected(self, inputs):
        y = kron_oracle(*inputs, n_batch_axes=self.n_batch_axes)
        return y.astype(inputs[0].dtype),


def _grads(f, inputs, gy):
    variables = [None if a is None else chainer.Variable(a) for a in inputs]
    y = f(*variables)
    y.grad = gy
    y.backward()
    return [v.grad for v in variables if v is not None]


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

    ours = _grads(kronecker_linear, (x, A, B, b), gy)
    theirs = _grads(dense, (x, A, B, b), gy)
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

    kron = _grads(lambda x, W, b: kronecker_linear(x, A, W[None], b), (x, W, b), gy)
    shared = _grads(shared_linear, (x, W, b), gy)
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


# --- KroneckerLinear: the link ------------------------------------------------------------


@testing.parameterize(*testing.product({
    'dtype': [np.float16, np.float32, np.float64],
    'n_terms': [1, 3],
    'nobias': [True, False],
}))
@testing.inject_backend_tests(None, BACKENDS)
class TestKroneckerLinearLink(testing.LinkTestCase):

    in_factors, out_factors = (2, 3), (2, 2)

    def setUp(self):
        self.param_names = ('A', 'B') if self.nobias else ('A', 'B', 'b')
        vars(self).update(link_tolerances(self.dtype))

    def generate_params(self):
        (n1, n2), (m1, m2) = self.in_factors, self.out_factors
        rng = np.random.default_rng(0)
        A = rng.uniform(-1, 1, (self.n_terms, m1, n1)).astype(self.dtype)
        B = rng.uniform(-1, 1, (self.n_terms, m2, n2)).astype(self.dtype)
        b = rng.uniform(-1, 1, m1 * m2).astype(self.dtype)
        return (A, B) if self.nobias else (A, B, b)

    def create_link(self, initializers):
        initialA, initialB = initializers[:2]
        initial_bias = None if self.nobias else initializers[2]
        with chainer.using_config('dtype', self.dtype):
            return KroneckerLinear(6, 4, in_factors=self.in_factors,
                                   out_factors=self.out_factors, n_terms=self.n_terms,
                                   nobias=self.nobias, initialA=initialA, initialB=initialB,
                                   initial_bias=initial_bias)

    def generate_inputs(self):
        x = np.random.default_rng(1).uniform(-1, 1, (5, 6))
        return x.astype(self.dtype),

    def forward_expected(self, link, inputs):
        x, = inputs
        b = None if link.b is None else link.b.array
        return kron_oracle(x, link.A.array, link.B.array, b).astype(self.dtype),


def _trained_like(layer, seed=3):
    rng = np.random.default_rng(seed)
    for param in layer.params():
        param.array[...] = rng.standard_normal(param.shape)
    return layer


@pytest.mark.parametrize('in_size, out_size, in_factors, out_factors', [
    (1000, 900, (25, 40), (30, 30)),
    (4096, 4096, (64, 64), (64, 64)),
    (784, 10, (28, 28), (2, 5)),
    (12, 7, (3, 4), (1, 7)),
    (1, 1, (1, 1), (1, 1)),
])
def test_default_factors_are_the_most_square(in_size, out_size, in_factors, out_factors):
    layer = KroneckerLinear(in_size, out_size)
    assert layer.in_factors == in_factors and layer.out_factors == out_factors
    (n1, n2), (m1, m2) = in_factors, out_factors
    assert layer.A.shape == (1, m1, n1) and layer.B.shape == (1, m2, n2)
    assert layer.b.shape == (out_size,)


def test_explicit_factors():
    layer = KroneckerLinear(12, 10, in_factors=(6, 2), out_factors=(10, 1), n_terms=2)
    assert layer.A.shape == (2, 10, 6) and layer.B.shape == (2, 1, 2)
    assert (layer.in_factors, layer.out_factors, layer.n_terms) == ((6, 2), (10, 1), 2)
    assert repr(layer) == ('KroneckerLinear(in_size=12, out_size=10, in_factors=(6, 2), '
                           'out_factors=(10, 1), n_terms=2, nobias=False)')
    x = np.random.default_rng(0).standard_normal((3, 12)).astype(np.float32)
    np.testing.assert_allclose(layer(x).array,
                               kron_oracle(x, layer.A.array, layer.B.array, layer.b.array),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('n', [2, 4])
def test_phm_layer_shapes(n):
    # Zhang et al.'s PHM with n terms: n x n matrices A, and 1/n of the parameters.
    in_size, out_size = 1000, 900
    layer = KroneckerLinear(in_size, out_size, in_factors=(n, in_size // n),
                            out_factors=(n, out_size // n), n_terms=n, nobias=True)
    assert layer.A.shape == (n, n, n)
    assert layer.B.shape == (n, out_size // n, in_size // n)
    assert layer.count_params() == n ** 3 + in_size * out_size // n
    x = np.random.default_rng(0).standard_normal((2, in_size)).astype(np.float32)
    np.testing.assert_allclose(layer(x).array, x @ kron_weight(layer.A.array, layer.B.array).T,
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('kwargs, message', [
    ({'in_factors': (3, 5)}, r'in_factors=\(3, 5\) do not multiply to 12; choose one of '
                             r'\(1, 12\), \(2, 6\), \(3, 4\), \(4, 3\), \(6, 2\), \(12, 1\)$'),
    ({'out_factors': (2, 2)}, r'out_factors=\(2, 2\) do not multiply to 10; choose one of '
                              r'\(1, 10\), \(2, 5\), \(5, 2\), \(10, 1\)$'),
    ({'in_factors': (2.0, 6)}, r'in_factors must be a pair of positive integers, got '
                               r'\(2.0, 6\)'),
    ({'in_factors': ('2', 6)}, r"in_factors must be a pair of positive integers, got "
                               r"\('2', 6\)"),
    ({'in_factors': (0, 12)}, r'in_factors must be a pair of positive integers'),
    ({'in_factors': (-3, -4)}, r'in_factors must be a pair of positive integers'),
    ({'in_factors': (True, 12)}, r'in_factors must be a pair of positive integers'),
    ({'out_factors': 10}, r'out_factors must be a pair of positive integers, got 10'),
    ({'out_factors': (1, 2, 5)}, r'out_factors must be a pair of positive integers'),
    ({'n_terms': 0}, r'n_terms must be at least 1, got 0'),
    ({'n_terms': -2}, r'n_terms must be at least 1, got -2'),
    ({'n_terms': 1.5}, r'n_terms must be a positive integer, got 1.5'),
    ({'n_terms': None}, r'n_terms must be a positive integer, got None'),
])
def test_bad_factors_and_n_terms_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KroneckerLinear(12, 10, **kwargs)


def test_lazy_in_factors_of_the_wrong_product_are_refused():
    with pytest.raises(ValueError, match=r'in_factors=\(2, 3\) do not multiply to 8'):
        KroneckerLinear(8, 4, in_factors=(2, 3))


def test_lazy_initialisation_from_the_first_input():
    layer = KroneckerLinear(6, n_terms=2)  # one size given: it is out_size
    assert layer.in_size is None and layer.A.array is None and layer.in_factors is None
    y = layer(np.ones((2, 3, 4), np.float32))  # 12 features once flattened
    assert y.shape == (2, 6)
    assert layer.in_size == 12 and layer.in_factors == (3, 4)
    assert layer.A.shape == (2, 2, 3) and layer.B.shape == (2, 3, 4)

    several = KroneckerLinear(None, 5)
    assert several(np.ones((2, 3, 10), np.float32), n_batch_axes=2).shape == (2, 3, 5)
    assert several.in_factors == (2, 5)


def test_in_factors_imply_in_size():
    layer = KroneckerLinear(6, in_factors=(2, 5))  # no in_size, but the factors tell it
    assert layer.in_size == 10
    assert layer.A.shape == (1, 2, 2) and layer.B.shape == (1, 3, 5)
    assert layer(np.ones((1, 10), np.float32)).shape == (1, 6)
    with pytest.raises(InvalidType, match=r'x.shape\[1\] == A.shape\[2\] \* B.shape\[2\]'):
        layer(np.ones((1, 12), np.float32))


def test_in_size_follows_A_and_B_however_they_are_filled():
    source = _trained_like(KroneckerLinear(12, 6, in_factors=(2, 6)))
    copied = KroneckerLinear(6)
    copied.copyparams(source)
    assert copied.in_size == 12 and copied.in_factors == (2, 6)
    np.testing.assert_array_equal(copied.to_linear().W.array, source.to_linear().W.array)


@pytest.mark.parametrize('config_dtype, param_dtype', [
    (np.float16, np.float16), (np.float32, np.float32), (np.float64, np.float64),
    (chainer.mixed16, np.float16)])
def test_parameter_dtype_follows_config_like_linear(config_dtype, param_dtype):
    with chainer.using_config('dtype', config_dtype):
        layer = KroneckerLinear(6, 4, n_terms=2)
        lazy = KroneckerLinear(4)
        y = lazy(np.ones((1, 6), chainer.get_dtype()))
        reference = L.Linear(6, 4)
    assert layer.A.dtype == layer.B.dtype == layer.b.dtype == reference.W.dtype == param_dtype
    assert lazy.A.dtype == lazy.B.dtype == param_dtype
    assert y.dtype == param_dtype


def test_initializers():
    A = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    layer = KroneckerLinear(6, 4, in_factors=(3, 2), initialA=A,
                            initialB=chainer.initializers.One(), initial_bias=1.5)
    np.testing.assert_array_equal(layer.A.array, A)
    np.testing.assert_array_equal(layer.B.array, np.ones((1, 2, 2), np.float32))
    np.testing.assert_array_equal(layer.b.array, np.full(4, 1.5, np.float32))
    assert KroneckerLinear(6, 4, nobias=True).b is None
    with pytest.raises(ValueError, match=r'initialA has shape \(1, 2, 3\), but the A of '
                                         r'KroneckerLinear\(.*\) has shape \(1, 2, 2\)'):
        KroneckerLinear(6, 4, initialA=A)


# Each element of the default weight has variance 1 / in_size, L.Linear's; the outputs
# then have L.Linear's mean square, also for inputs with a mean. A layer's A and B are a
# few thousand draws, and its outputs for inputs with a mean depend on the sums of A's
# rows and of B's rows (m1 + m2 draws), so the figures are averaged over layers.
_N_LAYERS = 8


@pytest.mark.parametrize('n_terms', [1, 4])
def test_initial_output_scale_matches_linear(n_terms):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 1024)).astype(np.float32)
    relu = np.maximum(x, 0)
    np.random.seed(0)
    dense = L.Linear(1024, 1024)
    zero_mean, with_mean = [], []
    for _ in range(_N_LAYERS):
        layer = KroneckerLinear(1024, 1024, n_terms=n_terms)
        assert layer.A.shape == (n_terms, 32, 32)
        zero_mean.append(layer(x).array.var())
        with_mean.append(np.mean(layer(relu).array ** 2))
    # L.Linear: the variance of x's features (1), and the mean square of relu's, s2 + m^2.
    assert dense(x).array.var() == pytest.approx(1.0, rel=0.1)
    assert np.mean(dense(relu).array ** 2) == pytest.approx(np.mean(relu ** 2), rel=0.1)
    # A fan-in of n1 or n2 alone, or a scale that ignores n_terms, is off by far more.
    assert np.mean(zero_mean) == pytest.approx(1.0, rel=0.1)
    assert np.mean(with_mean) == pytest.approx(np.mean(relu ** 2), rel=0.1)


@pytest.mark.parametrize('n_terms', [1, 4])
def test_default_dense_weight_has_variance_one_over_in_size(n_terms):
    np.random.seed(1)
    variances = [KroneckerLinear(1024, 256, n_terms=n_terms).dense_weight().var()
                 for _ in range(_N_LAYERS)]
    assert np.mean(variances) == pytest.approx(1 / 1024, rel=0.1)


# --- Saving and loading ------------------------------------------------------------------


def test_save_and_load_npz_round_trip(tmp_path):
    saved = _trained_like(KroneckerLinear(12, 6, in_factors=(2, 6), n_terms=2))
    path = tmp_path / 'layer.npz'
    chainer.serializers.save_npz(path, saved)
    with np.load(path) as f:
        # The factors, not an (out_size, in_size) weight.
        assert sum(f[k].size for k in f.files) == 2 * 2 * 2 + 2 * 3 * 6 + 6 < 12 * 6

    x = np.random.default_rng(0).standard_normal((2, 12)).astype(np.float32)
    loaded = KroneckerLinear(12, 6, in_factors=(2, 6), n_terms=2)
    chainer.serializers.load_npz(path, loaded)
    for name in ('A', 'B', 'b'):
        np.testing.assert_array_equal(getattr(loaded, name).array, getattr(saved, name).array)
    np.testing.assert_array_equal(loaded(x).array, saved(x).array)

    lazy = KroneckerLinear(6, n_terms=2)  # in_size and in_factors from the file
    chainer.serializers.load_npz(path, lazy)
    assert lazy.in_size == 12 and lazy.in_factors == (2, 6)
    np.testing.assert_array_equal(lazy(x).array, saved(x).array)


@pytest.mark.parametrize('other, message', [
    (lambda: KroneckerLinear(12, 6, in_factors=(3, 4), n_terms=2),
     r'cannot load A of shape \(2, 2, 2\) into .*, whose A has shape \(2, 2, 3\)'),
    (lambda: KroneckerLinear(12, 6, in_factors=(2, 6), out_factors=(3, 2), n_terms=2),
     r'cannot load A of shape \(2, 2, 2\) into .*, whose A has shape \(2, 3, 2\)'),
    (lambda: KroneckerLinear(12, 6, in_factors=(2, 6), n_terms=1),
     r'cannot load A of shape \(2, 2, 2\) into .*, whose A has shape \(1, 2, 2\)'),
    (lambda: KroneckerLinear(6, n_terms=3),  # lazy
     r'cannot load A of shape \(2, 2, 2\) into .*, whose A has shape \(3, 2, \?\)'),
    (lambda: KroneckerLinear(24, 6, in_factors=(2, 12), n_terms=2),
     r'cannot load B of shape \(2, 3, 6\) into .*, whose B has shape \(2, 3, 12\)'),
    (lambda: KroneckerLinear(12, 6, in_factors=(2, 6), n_terms=2, nobias=True),
     r'cannot load a bias b into KroneckerLinear\(.*\), which has none \(nobias=True\)'),
])
def test_loading_into_another_layer_is_refused_and_leaves_it_unchanged(tmp_path, other,
                                                                      message):
    path = tmp_path / 'layer.npz'
    chainer.serializers.save_npz(
        path, _trained_like(KroneckerLinear(12, 6, in_factors=(2, 6), n_terms=2)))
    target = other()
    before = {name: None if p.array is None else p.array.copy()
              for name, p in target.namedparams()}
    specs = dict(target.printable_specs)
    with pytest.raises(ValueError, match=message):
        chainer.serializers.load_npz(path, target)
    assert dict(target.printable_specs) == specs
    for name, param in target.namedparams():
        if before[name] is None:
            assert param.array is None
        else:
            np.testing.assert_array_equal(param.array, before[name])


def test_pickle_and_deepcopy_keep_everything():
    layer = _trained_like(KroneckerLinear(12, 6, in_factors=(2, 6), n_terms=2))
    x = np.random.default_rng(0).standard_normal((2, 12)).astype(np.float32)
    for clone in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
        assert (clone.in_size, clone.out_size, clone.in_factors, clone.out_factors,
                clone.n_terms) == (12, 6, (2, 6), (2, 3), 2)
        assert clone.A.array is not layer.A.array
        np.testing.assert_array_equal(clone(x).array, layer(x).array)
    lazy = pickle.loads(pickle.dumps(KroneckerLinear(6, in_factors=None, n_terms=2)))
    assert lazy.in_size is None
    lazy(np.ones((1, 12), np.float32))
    assert lazy.A.shape == (2, 2, 3)


def test_to_device_cpu():
    layer = KroneckerLinear(12, 6).to_device('@numpy')
    assert isinstance(layer.A.array, np.ndarray) and isinstance(layer.B.array, np.ndarray)
    assert layer.device == chainer.get_device('@numpy')


@pytest.mark.gpu
def test_to_device_gpu_gives_the_cpu_result():
    import cupy
    layer = _trained_like(KroneckerLinear(12, 6, n_terms=2))
    x = np.random.default_rng(0).standard_normal((2, 12)).astype(np.float32)
    expected = layer(x).array
    dense_expected = layer.to_linear().W.array
    layer.to_device('@cupy:0')
    y = layer(layer.device.send(x))
    np.testing.assert_allclose(cupy.asnumpy(y.array), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cupy.asnumpy(layer.to_linear().W.array), dense_expected,
                               rtol=1e-6, atol=1e-7)
    back = KroneckerLinear.from_linear(layer.to_linear(), n_terms=2)
    assert back.device == layer.device


# --- to_linear and from_linear -----------------------------------------------------------


@pytest.mark.parametrize('dtype', [np.float16, np.float32, np.float64])
@pytest.mark.parametrize('n_terms', [1, 3])
@pytest.mark.parametrize('nobias', [False, True])
def test_to_linear_is_exact(dtype, n_terms, nobias):
    with chainer.using_config('dtype', dtype):
        layer = _trained_like(KroneckerLinear(12, 6, in_factors=(3, 4), n_terms=n_terms,
                                              nobias=nobias))
    dense = layer.to_linear()
    assert type(dense) is L.Linear
    assert (dense.in_size, dense.out_size) == (12, 6)
    assert dense.W.dtype == dtype
    A, B = layer.A.array, layer.B.array
    if n_terms == 1:  # one product each, rounded once, as numpy.kron does
        np.testing.assert_array_equal(dense.W.array, np.kron(A[0], B[0]))
    else:  # n_terms products, rounded and added in float32 at least, then rounded once
        wide = np.finfo(np.promote_types(dtype, np.float32)).eps
        terms = sum(np.abs(np.kron(a, b)) for a, b in zip(A.astype('d'), B.astype('d')))
        error = np.abs(dense.W.array - kron_weight(A, B))
        assert np.all(error <= (n_terms + 1) * wide * terms
                      + np.finfo(dtype).eps / 2 * np.abs(kron_weight(A, B)))
    np.testing.assert_array_equal(layer.dense_weight(), dense.W.array)
    assert_bias_copied(layer, dense)
    x = np.random.default_rng(0).standard_normal((7, 12)).astype(dtype)
    tolerance = {'rtol': 1e-12, 'atol': 1e-12} if dtype == np.float64 else \
        {'rtol': 1e-5, 'atol': 1e-5} if dtype == np.float32 else {'rtol': 1e-2, 'atol': 1e-2}
    np.testing.assert_allclose(dense(x).array, layer(x).array, **tolerance)


def test_to_linear_refuses_a_lazy_layer():
    with pytest.raises(ValueError, match=r'cannot convert KroneckerLinear\(in_size=None.*not '
                                         r'initialised yet'):
        KroneckerLinear(3).to_linear()


def _rearranged(W, in_factors, out_factors):
    """Van Loan and Pitsianis' rearrangement, element by element: kron(A, B) -> vec(A) vec(B)ᵀ."""
    (n1, n2), (m1, m2) = in_factors, out_factors
    R = np.empty((m1 * n1, m2 * n2))
    for i in range(m1):
        for j in range(n1):
            for k in range(m2):
                for l in range(n2):  # noqa: E741
                    R[i * n1 + j, k * n2 + l] = W[i * m2 + k, j * n2 + l]
    return R


def _float64_linear(W, b=None):
    with chainer.using_config('dtype', np.float64):
        return L.Linear(W.shape[1], W.shape[0], initialW=W, nobias=b is None, initial_bias=b)


@pytest.mark.parametrize('n_terms', [1, 2, 3])
@pytest.mark.parametrize('in_factors, out_factors', [((2, 3), (4, 2)), ((3, 3), (3, 3)),
                                                     ((5, 1), (1, 4))])
def test_from_linear_recovers_an_exact_sum_of_products(n_terms, in_factors, out_factors):
    (n1, n2), (m1, m2) = in_factors, out_factors
    if n_terms > min(m1 * n1, m2 * n2):
        pytest.skip('more terms than the rearranged matrix has rank')
    rng = np.random.default_rng(n_terms)
    A = rng.standard_normal((n_terms, m1, n1))
    B = rng.standard_normal((n_terms, m2, n2))
    W = kron_weight(A, B)
    dense = _float64_linear(W, np.arange(m1 * m2, dtype=np.float64))
    layer = KroneckerLinear.from_linear(dense, in_factors=in_factors, out_factors=out_factors,
                                        n_terms=n_terms)
    assert layer.A.shape == (n_terms, m1, n1) and layer.B.shape == (n_terms, m2, n2)
    assert layer.A.dtype == np.float64
    np.testing.assert_allclose(layer.dense_weight(), W, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(layer.b.array, dense.b.array)
    x = rng.standard_normal((3, n1 * n2))
    np.testing.assert_allclose(layer(x).array, dense(x).array, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('n_terms', [1, 2, 4])
def test_from_linear_is_the_best_sum_of_n_terms_products(n_terms):
    in_factors, out_factors = (3, 4), (2, 5)
    rng = np.random.default_rng(0)
    W = rng.standard_normal((10, 12))
    layer = KroneckerLinear.from_linear(_float64_linear(W), in_factors=in_factors,
                                        out_factors=out_factors, n_terms=n_terms)
    W_best = layer.dense_weight()
    residual = W - W_best

    # Eckart-Young on the rearranged matrix: the error is the trailing singular values.
    s = np.linalg.svd(_rearranged(W, in_factors, out_factors), compute_uv=False)
    np.testing.assert_allclose(np.sum(residual ** 2), np.sum(s[n_terms:] ** 2), rtol=1e-10)

    # Stationary: the residual is orthogonal to every change of one factor of one term,
    # kron(X, B[r]) and kron(A[r], Y), and so to the weight itself.
    A, B = layer.A.array, layer.B.array
    scale = np.sqrt(np.sum(W ** 2))
    for r in range(n_terms):
        X, Y = rng.standard_normal(A.shape[1:]), rng.standard_normal(B.shape[1:])
        assert abs(np.sum(residual * np.kron(X, B[r]))) < 1e-10 * scale * np.abs(B[r]).sum()
        assert abs(np.sum(residual * np.kron(A[r], Y))) < 1e-10 * scale * np.abs(A[r]).sum()
    assert abs(np.sum(residual * W_best)) < 1e-10 * scale ** 2

    # And any other n_terms products are farther away.
    best = np.sum(residual ** 2)
    for size in (1e-3, 1e-1, 1.0):
        for _ in range(5):
            other = kron_weight(A + size * rng.standard_normal(A.shape),
                                B + size * rng.standard_normal(B.shape))
            assert np.sum((W - other) ** 2) > best


def test_from_linear_with_default_factors_and_dtypes():
    dense = L.Linear(12, 6)
    layer = KroneckerLinear.from_linear(dense)
    assert (layer.in_factors, layer.out_factors, layer.n_terms) == ((3, 4), (2, 3), 1)
    assert layer.A.dtype == layer.B.dtype == layer.b.dtype == np.float32
    with chainer.using_config('dtype', np.float16):
        half = L.Linear(12, 6, nobias=True)
    assert KroneckerLinear.from_linear(half).A.dtype == np.float16
    assert KroneckerLinear.from_linear(half).b is None


def test_from_linear_of_to_linear_gives_the_weight_back():
    layer = _trained_like(KroneckerLinear(12, 6, in_factors=(2, 6), n_terms=2))
    back = KroneckerLinear.from_linear(layer.to_linear(), in_factors=(2, 6), n_terms=2)
    np.testing.assert_allclose(back.dense_weight(), layer.dense_weight(), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize('kwargs, message', [
    ({'n_terms': 7}, r'n_terms=7 is more than the 6 terms a weight of factors \(2, 3\) x '
                     r'\(3, 4\) can need: n_terms is at most min\(m1\*n1, m2\*n2\) = 6'),
    ({'in_factors': (12, 1), 'out_factors': (6, 1), 'n_terms': 2},
     r'n_terms=2 is more than the 1 terms'),
    ({'in_factors': (5, 2)}, r'in_factors=\(5, 2\) do not multiply to 12; choose one of'),
    ({'n_terms': 0}, r'n_terms must be at least 1, got 0'),
])
def test_from_linear_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KroneckerLinear.from_linear(L.Linear(12, 6), **kwargs)


def test_from_linear_refuses_what_is_not_an_initialised_linear():
    with pytest.raises(ValueError, match=r'not initialised yet'):
        KroneckerLinear.from_linear(L.Linear(6))
    with pytest.raises(TypeError, match=r'from_linear expects a chainer.links.Linear, '
                                        r'got KroneckerLinear'):
        KroneckerLinear.from_linear(KroneckerLinear(12, 6))


# --- Link hooks ----------------------------------------------------------------------------


@pytest.mark.parametrize('hook', [link_hooks.SpectralNormalization,
                                  link_hooks.WeightStandardization])
def test_weight_reparametrising_hooks_are_refused(hook):
    layer = KroneckerLinear(12, 6)
    with pytest.raises(ValueError, match=r'{} is not supported on KroneckerLinear.*Apply it '
                                         r'to the L.Linear that to_linear\(\) returns instead'
                       .format(hook.__name__)):
        layer.add_hook(hook(weight_name='A'))
    assert not layer.local_link_hooks
