"""monarch_linear: a Monarch weight ``P L Pᵀ R``, never built."""

import chainer
import chainer.functions as F
import numpy as np
import pytest
from chainer import testing
from chainer.utils.type_check import InvalidType
from hypothesis import given
from hypothesis import strategies as st

from chainer_sharedlinear import monarch_linear
from chainer_sharedlinear.functions._ops import ArrayOps
from tests.helpers import (
    BACKENDS,
    FamilyFunction,
    first_and_second_order_grads,
    grads_of,
)
from tests.monarch_oracle import factors, monarch_oracle, monarch_weight

FLOATS = [np.float16, np.float32, np.float64]


def _problem(x_dtype, w_dtype, sizes, nobias, batch_shape=(4,), seed=0, middle=None):
    """x, R, L and b of a layer of ``sizes``; ``middle`` is ``q`` if not ``min(p, s)``."""
    in_size, out_size, n_blocks = sizes
    _, _, _, (p, q, s) = factors(in_size, out_size, n_blocks, middle)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, batch_shape + (in_size,)).astype(x_dtype)
    R = rng.uniform(-1, 1, (n_blocks, q, p)).astype(w_dtype)
    L = rng.uniform(-1, 1, (n_blocks, s, q)).astype(w_dtype)
    b = None if nobias else rng.uniform(-1, 1, out_size).astype(x_dtype)
    return x, R, L, b


@st.composite
def monarch_problems(draw):
    x_dtype, w_dtype = draw(st.sampled_from(FLOATS)), draw(st.sampled_from(FLOATS))
    in_size, out_size = draw(st.integers(1, 20)), draw(st.integers(1, 20))
    n_blocks = draw(st.integers(1, min(in_size, out_size)))
    batch_shape = tuple(draw(st.lists(st.integers(0, 4), min_size=1, max_size=2)))
    # The function takes any middle size q; the link's is min(p, s).
    middle = draw(st.one_of(st.none(), st.integers(1, 5)))
    x, R, L, b = _problem(x_dtype, w_dtype, (in_size, out_size, n_blocks), draw(st.booleans()),
                          batch_shape, draw(st.integers(0, 2 ** 32 - 1)), middle)
    return x, R, L, b, len(batch_shape), out_size


@given(monarch_problems())
def test_forward_matches_the_dense_oracle(problem):
    x, R, L, b, n_batch_axes, out_size = problem
    y = monarch_linear(x, R, L, b, n_batch_axes, out_size=out_size).array

    expected = monarch_oracle(x, R, L, b, n_batch_axes, out_size)
    assert y.shape == expected.shape
    assert y.dtype == x.dtype
    # Two sums, of p and of q products, in float32 at least (float64 if any input is),
    # bounded by the sums of their magnitudes; then the rounding to x's dtype, before and
    # after the bias. A block misplaced or a permutation inverted is off by O(|y|).
    p, q = R.shape[2], R.shape[1]
    compute = np.result_type(np.float32, x.dtype, R.dtype, L.dtype)
    magnitude = monarch_oracle(np.abs(x), np.abs(R), np.abs(L),
                               None if b is None else np.abs(b), n_batch_axes, out_size)
    bound = ((p + q + 4) * np.finfo(compute).eps + 2 * np.finfo(x.dtype).eps) * magnitude
    assert np.all(np.abs(y.astype(np.float64) - expected) <= bound)


def test_a_square_monarch_matrix_is_P_L_P_R():
    # d = b²: P is the transpose of a b × b matrix, its own inverse, and M = P L Pᵀ R
    # with block-diagonal L and R, as Dao et al. write it.
    b = 3
    rng = np.random.default_rng(0)
    R, L = rng.standard_normal((b, b, b)), rng.standard_normal((b, b, b))
    P = np.eye(b * b)[np.arange(b * b).reshape(b, b).T.ravel()]
    diag = [np.kron(np.eye(b)[:, [k]] @ np.eye(b)[[k]], 1) for k in range(b)]
    block_diagonal = [sum(np.kron(d, blocks[k]) for k, d in enumerate(diag)) for blocks in (R, L)]
    expected = P @ block_diagonal[1] @ P.T @ block_diagonal[0]
    np.testing.assert_allclose(monarch_linear(np.eye(b * b), R, L).array.T, expected,
                               rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(monarch_weight(R, L, b * b, b * b), expected, rtol=1e-13,
                               atol=1e-13)


def test_the_shorter_input_blocks_come_last():
    # 7 features in 3 blocks: 3, 2 and 2 of them. With R = ones, middle feature j of
    # block k is the sum of that block's inputs.
    x = np.array([[1, 2, 3, 4, 5, 6, 7]], np.float64)
    R = np.ones((3, 1, 3))
    L = np.ones((3, 1, 1))
    assert monarch_linear(x, R, L).array.tolist() == [[6, 9, 13]]


# --- FunctionTestCase -------------------------------------------------------------------


@testing.parameterize(*testing.product({
    'dtypes': [(np.float16, np.float16), (np.float32, np.float32), (np.float64, np.float64),
               (np.float32, np.float64), (np.float16, np.float32)],
    'sizes': [(9, 9, 3), (7, 5, 2), (5, 11, 3)],
    'nobias': [True, False],
    'n_batch_axes': [1, 2],
}))
@testing.inject_backend_tests(None, BACKENDS)
class TestMonarchLinearFunction(FamilyFunction, testing.FunctionTestCase):

    def generate_inputs(self):
        x, R, L, b = _problem(*self.dtypes, self.sizes, self.nobias, self.batch_shape)
        return (x, R, L) if b is None else (x, R, L, b)

    def forward(self, inputs, device):
        return monarch_linear(*inputs[:3], inputs[3] if len(inputs) == 4 else None,
                              self.n_batch_axes, out_size=self.sizes[1]),

    def forward_expected(self, inputs):
        x, R, L = inputs[:3]
        b = inputs[3] if len(inputs) == 4 else None
        return monarch_oracle(x, R, L, b, self.n_batch_axes, self.sizes[1]).astype(x.dtype),


def _dense(in_size, out_size, n_blocks):
    """``monarch_linear`` as ``F.linear`` with the weight built from R and L by Chainer."""
    blocks, middle, outputs, _ = factors(in_size, out_size, n_blocks)
    eye = np.eye(n_blocks)

    def apply(x, R, L, b=None):
        def diagonal(factor):
            n, rows, cols = factor.shape
            return F.reshape(F.einsum('kji,kl->kjli', factor, eye.astype(factor.dtype)),
                             (n * rows, n * cols))
        W = F.matmul(F.matmul(outputs, diagonal(L)), F.matmul(middle, F.matmul(diagonal(R),
                                                                               blocks)))
        return F.linear(x, W, b)
    return apply


@pytest.mark.parametrize('sizes', [(16, 16, 4), (23, 17, 4), (10, 30, 4), (30, 10, 4)])
@pytest.mark.parametrize('nobias', [True, False])
def test_gradients_equal_a_dense_layer_with_the_monarch_weight(sizes, nobias):
    x, R, L, b = _problem(np.float64, np.float64, sizes, nobias, (7,))
    gy = np.random.default_rng(1).standard_normal((7, sizes[1]))

    ours = grads_of(lambda *a: monarch_linear(*a, out_size=sizes[1]), (x, R, L, b), gy)
    theirs = grads_of(_dense(*sizes), (x, R, L, b), gy)
    assert len(ours) == len(theirs) == (3 if nobias else 4)
    for mine, other in zip(ours, theirs):
        np.testing.assert_allclose(mine, other, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('x_dtype, w_dtype', [
    (np.float64, np.float64), (np.float32, np.float32), (np.float16, np.float64),
    (np.float32, np.float16)])
@pytest.mark.parametrize('sizes', [(16, 16, 4), (23, 17, 4)])
def test_first_order_fast_path_equals_the_differentiable_backward(x_dtype, w_dtype, sizes):
    x, R, L, b = _problem(x_dtype, w_dtype, sizes, False, (6,))
    fast_grads, node_grads = first_and_second_order_grads(
        lambda *a: monarch_linear(*a, out_size=sizes[1]), (x, R, L, b))

    tolerance = 1e-12 if x_dtype == w_dtype == np.float64 else 1e-5
    if x_dtype == np.float16:
        tolerance = 2 ** -10  # gx and gb come back in float16: a unit in the last place
    for fast, nodes in zip(fast_grads, node_grads):
        assert fast.dtype == nodes.dtype
        np.testing.assert_allclose(fast, nodes, rtol=tolerance, atol=tolerance)


def test_second_order_gradients_equal_a_dense_layer():
    sizes = (7, 5, 2)
    x, R, L, b = _problem(np.float64, np.float64, sizes, False, (3,))

    def second_order(f):
        xv, Rv, Lv, bv = (chainer.Variable(a) for a in (x, R, L, b))
        y = f(xv, Rv, Lv, bv)
        gx, gR, gL = chainer.grad([F.sum(y * y * y)], [xv, Rv, Lv],
                                  enable_double_backprop=True)
        loss = F.sum(gx * gx) + F.sum(gR * gR) + F.sum(gL * gL)
        return chainer.grad([loss], [xv, Rv, Lv, bv])

    ours = second_order(lambda *a: monarch_linear(*a, out_size=sizes[1]))
    for mine, theirs in zip(ours, second_order(_dense(*sizes))):
        np.testing.assert_allclose(mine.array, theirs.array, rtol=1e-10, atol=1e-12)


def test_float16_inputs_are_computed_in_float32():
    # R·x is 64 * 1000 * 2 = 128000 in every place, past float16's largest value (65504);
    # L brings it back to 64 * 1e-3 * 128000 ≈ 8200. Computed in float16 it would be inf.
    x = np.full((2, 64 * 64), 1000, np.float16)
    R = np.full((64, 64, 64), 2, np.float16)
    L = np.full((64, 64, 64), 1e-3, np.float16)
    y = monarch_linear(x, R, L).array
    assert y.dtype == np.float16
    assert np.isfinite(y).all()
    expected = monarch_linear(*(a.astype(np.float32) for a in (x, R, L))).array
    np.testing.assert_allclose(y, expected, rtol=2 ** -10, atol=0)


@pytest.mark.parametrize('sizes', [(64, 64, 8), (60, 50, 8), (23, 17, 4), (10, 30, 4)])
def test_the_batched_products_take_their_operands_without_a_copy(monkeypatch, sizes):
    # The layout lays each operand out as BLAS takes it: a copy of one (an activation
    # of N x features) would be a pass over memory that the arithmetic does not need.
    operands = []
    even_rows = ArrayOps._even_rows

    def spy(self, a):
        laid_out = even_rows(self, a)
        operands.append((a.shape, laid_out is a))
        return laid_out
    monkeypatch.setattr(ArrayOps, '_even_rows', spy)
    x, R, L, b = _problem(np.float32, np.float32, sizes, False, (16,))
    grads_of(lambda *a: monarch_linear(*a, out_size=sizes[1]), (x, R, L, b),
             np.ones((16, sizes[1]), np.float32))
    assert len(operands) == 12  # two of each of the six products of a step
    assert [shape for shape, as_it_is in operands if not as_it_is] == []


# --- What is refused --------------------------------------------------------------------


@pytest.mark.parametrize('type_check', [True, False])
@pytest.mark.parametrize('features, n_batch_axes', [(10, 1), (6, 1), (4, 2)])
def test_a_wrong_number_of_features_is_refused_with_type_checking_off_too(
        type_check, features, n_batch_axes):
    # R of (2, 3, 4) takes 7 or 8 features; 10 or 6 would make blocks of other sizes.
    R, L = np.ones((2, 3, 4), np.float32), np.ones((2, 3, 3), np.float32)
    shape = (2, features) if n_batch_axes == 1 else (2, 1, features)
    with chainer.using_config('type_check', type_check):
        with pytest.raises(InvalidType, match=r'R.shape\[2\] == \(x.shape\[1\] \+ R.shape\[0\] '
                                              r'- 1\) // R.shape\[0\]'):
            monarch_linear(np.ones(shape, np.float32), R, L, n_batch_axes=n_batch_axes)


@pytest.mark.parametrize('type_check', [True, False])
@pytest.mark.parametrize('R_shape, L_shape, out_size, message', [
    ((2, 3, 4), (3, 3, 3), None, r'L.shape\[0\] == R.shape\[0\]'),
    ((2, 3, 4), (2, 3, 2), None, r'L.shape\[2\] == R.shape\[1\]'),
    ((2, 3, 4), (2, 3, 3), 4, r'L.shape\[1\] == \(out_size \+ R.shape\[0\] - 1\) // '
                              r'R.shape\[0\]'),
    ((2, 3, 4), (2, 1, 3), 1, r'out_size >= R.shape\[0\]'),
    ((9, 3, 1), (9, 3, 3), None, r'x.shape\[1\] >= R.shape\[0\]'),
])
def test_factors_that_do_not_meet_are_refused(type_check, R_shape, L_shape, out_size, message):
    x = np.ones((2, 8), np.float32)
    with chainer.using_config('type_check', type_check):
        with pytest.raises(InvalidType, match=message):
            monarch_linear(x, np.ones(R_shape, np.float32), np.ones(L_shape, np.float32),
                           out_size=out_size)


def test_type_errors_name_what_was_wrong():
    x = np.ones((2, 8), np.float32)
    R, L = np.ones((2, 3, 4), np.float32), np.ones((2, 3, 3), np.float32)
    with pytest.raises(InvalidType, match=r'x.dtype.kind == f'):
        monarch_linear(x.astype(np.int32), R, L)
    with pytest.raises(InvalidType, match=r'R.ndim == 3'):
        monarch_linear(x, R[0], L)
    with pytest.raises(InvalidType, match=r'b.shape\[0\] == out_size'):
        monarch_linear(x, R, L, np.ones(5, np.float32))
    with pytest.raises(InvalidType, match=r'b.dtype == x.dtype'):
        monarch_linear(x, R, L, np.ones(6, np.float64))
    with pytest.raises(ValueError, match=r'out_size must be at least 1, got 0'):
        monarch_linear(x, R, L, out_size=0)
    with pytest.raises(ValueError, match=r'x has shape \(2, 8\), which leaves no feature axis '
                       r'after n_batch_axes=2'):
        monarch_linear(x, R, L, n_batch_axes=2)


@pytest.mark.parametrize('batch_shape, n_batch_axes', [((0,), 1), ((0, 3), 2)])
def test_an_empty_batch_gives_an_empty_output(batch_shape, n_batch_axes):
    R, L = np.ones((2, 3, 4), np.float32), np.ones((2, 3, 3), np.float32)
    x = chainer.Variable(np.ones(batch_shape + (7,), np.float32))
    y = monarch_linear(x, R, L, n_batch_axes=n_batch_axes, out_size=5)
    assert y.shape == batch_shape + (5,)
    F.sum(y).backward()
    assert x.grad.shape == x.shape
