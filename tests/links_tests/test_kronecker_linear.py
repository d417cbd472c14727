"""KroneckerLinear's own promises: its factors, PHM layers, its initial scale, and
from_linear's best sum of products. What every link promises is in test_family_contract."""


import chainer
import chainer.links as L
import numpy as np
import pytest
from chainer import serializers
from chainer.utils.type_check import InvalidType

from chainer_sharedlinear import KroneckerLinear
from tests.helpers import (
    FLOATS,
    kron_oracle,
    kron_weight,
    set_non_default,
)


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


def test_the_factors_of_a_number_too_large_to_scan_are_found():
    p, q = 8191, 2 ** 31 - 1  # Mersenne primes
    # A lazy layer without a bias allocates nothing of out_size.
    assert KroneckerLinear(p * q, nobias=True).out_factors == (p, q)
    assert KroneckerLinear(2 ** 62, nobias=True).out_factors == (2 ** 31, 2 ** 31)
    with pytest.raises(ValueError, match=r'in_factors=\(2, 3\) do not multiply to {0}; choose '
                                         r'one of \(1, {0}\), \({1}, {2}\), \({2}, {1}\), '
                                         r'\({0}, 1\)$'.format(p * q, p, q)):
        KroneckerLinear(p * q, 4, in_factors=(2, 3))
    with pytest.raises(ValueError, match=r'choose one of \(1, 36\), \(2, 18\), \(3, 12\), '
                                         r'\(4, 9\), \(6, 6\), \(9, 4\), \(12, 3\), \(18, 2\), '
                                         r'\(36, 1\)$'):
        KroneckerLinear(36, 4, in_factors=(5, 7))


def test_a_kronecker_layer_of_a_huge_size_builds_lazily_without_a_scan():
    assert KroneckerLinear(2 ** 24, nobias=True).out_factors == (2 ** 12, 2 ** 12)


def test_a_lazy_layer_takes_the_most_square_in_factors_of_the_first_input():
    layer = KroneckerLinear(6, n_terms=2)  # one size given: it is out_size
    assert layer.in_factors is None
    layer(np.ones((2, 3, 4), np.float32))  # 12 features once flattened
    assert layer.in_factors == (3, 4)
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


def test_a_lazy_kronecker_layer_loads_its_file_again_and_its_own(tmp_path):
    source = KroneckerLinear(12, 4, in_factors=(2, 6), out_factors=(2, 2))
    source_file = str(tmp_path / 'source.npz')
    serializers.save_npz(source_file, source)

    lazy = KroneckerLinear(4, out_factors=(2, 2))
    serializers.load_npz(source_file, lazy)
    assert lazy.in_factors == (2, 6) and lazy.A.shape == (1, 2, 2)
    serializers.load_npz(source_file, lazy)  # the same file again
    np.testing.assert_array_equal(lazy.A.array, source.A.array)

    own_file = str(tmp_path / 'own.npz')
    serializers.save_npz(own_file, lazy)
    serializers.load_npz(own_file, lazy)
    np.testing.assert_array_equal(lazy.B.array, source.B.array)

    copied = KroneckerLinear(4, out_factors=(2, 2))
    copied.copyparams(source)
    serializers.load_npz(source_file, copied)
    assert copied.in_factors == (2, 6)


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


@pytest.mark.parametrize('dtype', FLOATS)
@pytest.mark.parametrize('n_terms', [1, 3])
def test_the_dense_weight_is_the_sum_of_kronecker_products(dtype, n_terms):
    with chainer.using_config('dtype', dtype):
        layer = set_non_default(KroneckerLinear(12, 6, in_factors=(3, 4), n_terms=n_terms))
    A, B = layer.A.array, layer.B.array
    weight = layer.dense_weight()
    assert weight.dtype == dtype
    if n_terms == 1:  # one product each, rounded once, as numpy.kron does
        np.testing.assert_array_equal(weight, np.kron(A[0], B[0]))
    else:  # n_terms products, rounded and added in float32 at least, then rounded once
        wide = np.finfo(np.promote_types(dtype, np.float32)).eps
        terms = sum(np.abs(np.kron(a, b)) for a, b in zip(A.astype('d'), B.astype('d')))
        error = np.abs(weight - kron_weight(A, B))
        assert np.all(error <= (n_terms + 1) * wide * terms
                      + np.finfo(dtype).eps / 2 * np.abs(kron_weight(A, B)))


# --- from_linear: the best sum of n_terms products -------------------------------------


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
