import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chainer_sharedlinear.compress import fitting
from chainer_sharedlinear.compress.calibration import LayerStatistics
from chainer_sharedlinear.compress.fitting import (
    cholesky_of_gram,
    corrected_bias,
    fit_low_rank_codebooks,
    output_error,
    round_to_codebook,
    whitened_svd,
)
from chainer_sharedlinear.links.clustered_linear import cluster


def statistics_of(x):
    return LayerStatistics(x.T @ x, len(x), x.sum(axis=0))


def correlated_inputs(n, size, seed=0, offset=0.0):
    """Inputs whose features share a few strong directions, as a network's activations do."""
    rng = np.random.RandomState(seed)
    return (rng.randn(n, 3) @ rng.randn(3, size) * 3 + rng.randn(n, size) * 0.3 + offset)


def oracle_error(x, w, v, shift=None):
    """‖X(W − V)ᵀ − 1δᵀ‖ / ‖XWᵀ‖ from the activations themselves."""
    difference = x @ (w - v).T
    if shift is not None:
        difference = difference - shift
    return np.linalg.norm(difference) / np.linalg.norm(x @ w.T)


@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 12), st.integers(0, 2 ** 16),
       st.booleans())
def test_output_error_is_that_of_the_activations(out_size, in_size, n, seed, with_bias):
    rng = np.random.RandomState(seed)
    x, w, v = rng.randn(n, in_size), rng.randn(out_size, in_size), rng.randn(out_size, in_size)
    shift = rng.randn(out_size) if with_bias else None
    assert output_error(statistics_of(x), w, v, bias_change=shift) == pytest.approx(
        oracle_error(x, w, v, shift), rel=1e-9)


def test_output_error_of_outputs_that_are_zero():
    stats = statistics_of(np.array([[1., 0.], [2., 0.]]))
    assert output_error(stats, np.array([[0., 1.]]), np.array([[0., 5.]])) == 0.0
    assert output_error(stats, np.array([[0., 1.]]), np.array([[1., 5.]])) == float('inf')


def test_output_error_refuses_weights_that_do_not_fit_the_statistics():
    stats = statistics_of(np.ones((3, 4)))
    with pytest.raises(ValueError, match=r'weight must be \(out_size, in_size\) with in_size = 4'
                                         r', the size of the inputs of the statistics, got '
                                         r'shape \(2, 3\)'):
        output_error(stats, np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match='replacement must be'):
        output_error(stats, np.ones((2, 4)), np.ones(4))
    with pytest.raises(ValueError, match=r'bias_change must have the shape \(out_size,\) = '
                                         r'\(2,\), got \(3,\)'):
        output_error(stats, np.ones((2, 4)), np.ones((2, 4)), bias_change=np.ones(3))


# --- the Cholesky factor ----------------------------------------------------------------

def test_the_factor_of_a_full_rank_gram_matrix_has_no_ridge():
    stats = statistics_of(correlated_inputs(40, 6))
    factor, ridge = cholesky_of_gram(stats)
    assert ridge == 0.0
    np.testing.assert_allclose(factor @ factor.T, stats.gram, rtol=1e-10)
    assert np.allclose(factor, np.tril(factor))


@pytest.mark.parametrize('x', [
    correlated_inputs(4, 6),  # fewer samples than inputs
    np.concatenate([correlated_inputs(40, 5), np.zeros((40, 1))], axis=1),  # a dead input
])
def test_a_singular_gram_matrix_gets_the_documented_ridge(x):
    stats = statistics_of(x)
    factor, ridge = cholesky_of_gram(stats)
    assert ridge == fitting.RIDGE
    scale = np.trace(stats.gram) / 6
    np.testing.assert_allclose(factor @ factor.T, stats.gram + ridge * scale * np.eye(6),
                               rtol=1e-10, atol=1e-12 * scale)


def test_a_ridge_given_is_the_ridge_used():
    stats = statistics_of(correlated_inputs(40, 6))
    factor, ridge = cholesky_of_gram(stats, ridge=0.5)
    scale = np.trace(stats.gram) / 6
    assert ridge == 0.5
    np.testing.assert_allclose(factor @ factor.T, stats.gram + 0.5 * scale * np.eye(6))
    with pytest.raises(ValueError, match='ridge must be a number of at least 0, got -1'):
        cholesky_of_gram(stats, ridge=-1)


def test_inputs_that_are_all_zero_whiten_with_the_identity():
    factor, _ = cholesky_of_gram(statistics_of(np.zeros((5, 3))))
    np.testing.assert_array_equal(factor, np.eye(3))


def test_a_gram_matrix_that_is_no_gram_matrix_is_an_error():
    stats = LayerStatistics(np.diag([1., -1e3]), 10, np.zeros(2))
    with pytest.raises(ValueError, match='has no Cholesky factor with a ridge of 1.0 times the '
                                         'mean of its diagonal: it is not positive '
                                         'semidefinite'):
        cholesky_of_gram(stats)


# --- whitened SVD -------------------------------------------------------------------------

def closed_form_error(stats, w, rank):
    factor = np.linalg.cholesky(stats.gram)
    values = np.linalg.svd(w @ factor, compute_uv=False)
    return np.sqrt((values[rank:] ** 2).sum() / (values ** 2).sum())


@given(st.integers(2, 7), st.integers(2, 7), st.data(), st.integers(0, 2 ** 16))
def test_whitened_svd_is_the_rank_r_weight_of_least_output_error(out_size, in_size, data,
                                                                   seed):
    rank = data.draw(st.integers(1, min(out_size, in_size)))
    rng = np.random.RandomState(seed)
    x = correlated_inputs(30, in_size, seed)
    stats = statistics_of(x)
    w = rng.randn(out_size, in_size)
    u, v = whitened_svd(stats, w, rank)
    assert u.shape == (out_size, rank) and v.shape == (rank, in_size)
    np.testing.assert_allclose(u.T @ u, np.eye(rank), atol=1e-10)
    best = output_error(stats, w, u @ v)
    assert best == pytest.approx(oracle_error(x, w, u @ v), rel=1e-6, abs=1e-9)
    assert best == pytest.approx(closed_form_error(stats, w, rank), rel=1e-6, abs=1e-9)
    p, s, q = np.linalg.svd(w, full_matrices=False)
    assert best <= output_error(stats, w, (p[:, :rank] * s[:rank]) @ q[:rank]) + 1e-9
    for scale in (1e-3, 1e-1, 1):  # no rank-r matrix nearby does better
        other = ((u + scale * rng.randn(*u.shape)) @ (v + scale * rng.randn(*v.shape)))
        assert best <= output_error(stats, w, other) + 1e-9


def test_whitened_svd_is_exact_at_full_rank():
    stats = statistics_of(correlated_inputs(50, 8))
    w = np.random.RandomState(1).randn(5, 8)
    u, v = whitened_svd(stats, w, 5)
    assert output_error(stats, w, u @ v) < 1e-7
    u, v = whitened_svd(LayerStatistics(np.eye(8), 8, np.zeros(8)), w, 5)
    np.testing.assert_allclose(u @ v, w, atol=1e-10)


def test_whitened_svd_beats_the_plain_svd_on_correlated_inputs():
    x = correlated_inputs(200, 20, seed=3)
    stats = statistics_of(x)
    w = np.random.RandomState(4).randn(10, 20)
    u, v = whitened_svd(stats, w, 3)
    p, s, q = np.linalg.svd(w, full_matrices=False)
    assert output_error(stats, w, u @ v) < 0.5 * output_error(stats, w, (p[:, :3] * s[:3]) @ q[:3])


def test_whitened_svd_with_fewer_samples_than_inputs_fits_them():
    x = correlated_inputs(6, 20, seed=5)
    stats = statistics_of(x)
    w = np.random.RandomState(6).randn(10, 20)
    u, v = whitened_svd(stats, w, 6)  # as many as the samples: the data's outputs kept
    assert np.all(np.isfinite(v))
    assert oracle_error(x, w, u @ v) < 1e-3


def test_whitened_svd_refuses_a_rank_too_high():
    with pytest.raises(ValueError, match=r'rank=4 is more than min\(in_size, out_size\)'):
        whitened_svd(statistics_of(np.eye(3)), np.ones((5, 3)), 4)
    with pytest.raises(ValueError, match='rank must be at least 1, got 0'):
        whitened_svd(statistics_of(np.eye(3)), np.ones((5, 3)), 0)


# --- rounding onto a codebook -------------------------------------------------------------

def rounding_errors(x, w, codebook, **options):
    stats = statistics_of(x)
    near = round_to_codebook(w, codebook, stats.gram, error_feedback=False)
    fed = round_to_codebook(w, codebook, stats.gram, **options)
    return output_error(stats, w, codebook[near]), output_error(stats, w, codebook[fed])


def test_nearest_rounding_takes_the_nearest_value():
    w = np.random.RandomState(0).randn(7, 9)
    codebook = np.array([0.5, -1., 1., 0., -0.5])  # any order
    index = round_to_codebook(w, codebook, np.eye(9), error_feedback=False)
    assert index.dtype == np.uint8
    np.testing.assert_array_equal(index, np.abs(w[..., None] - codebook).argmin(axis=-1))


def test_error_feedback_on_independent_inputs_is_nearest_rounding():
    w = np.random.RandomState(0).randn(7, 9)
    codebook, _ = cluster(w, 4)
    gram = np.diag(np.random.RandomState(1).uniform(0.5, 5, 9))  # no correlation to spread on
    np.testing.assert_array_equal(round_to_codebook(w, codebook, gram),
                                  round_to_codebook(w, codebook, gram, error_feedback=False))


@pytest.mark.parametrize('seed', range(5))
def test_error_feedback_is_no_worse_than_nearest_on_uncorrelated_inputs(seed):
    rng = np.random.RandomState(seed)
    x, w = rng.randn(500, 30), rng.randn(20, 30)
    near, fed = rounding_errors(x, w, cluster(w, 8)[0])
    assert fed <= near


@pytest.mark.parametrize('seed', range(5))
@pytest.mark.parametrize('block_size', [1, 7, 128])
def test_error_feedback_is_much_better_on_correlated_inputs(seed, block_size):
    rng = np.random.RandomState(seed)
    x, w = correlated_inputs(500, 30, seed, offset=1.0), rng.randn(20, 30)
    near, fed = rounding_errors(x, w, cluster(w, 8)[0], block_size=block_size)
    assert fed < 0.5 * near


def test_the_block_size_changes_only_the_order_of_the_arithmetic():
    rng = np.random.RandomState(0)
    x, w = correlated_inputs(100, 30), rng.randn(20, 30)
    codebook = cluster(w, 8)[0]
    one, many = (round_to_codebook(w, codebook, x.T @ x, block_size=size) for size in (1, 64))
    assert (one == many).mean() > 0.99  # rounding ties may fall either way


def test_rounding_refuses_what_does_not_fit():
    with pytest.raises(ValueError, match='matrix must be 2-dimensional'):
        round_to_codebook(np.ones(3), np.ones(2), np.eye(3))
    with pytest.raises(ValueError, match=r'gram must be \(in_size, in_size\) = \(3, 3\)'):
        round_to_codebook(np.ones((2, 3)), np.ones(2), np.eye(2))
    with pytest.raises(ValueError, match='damping must be a number above 0'):
        round_to_codebook(np.ones((2, 3)), np.ones(2), np.eye(3), damping=0)
    with pytest.raises(ValueError, match='gram is not positive semidefinite'):
        round_to_codebook(np.ones((2, 2)), np.ones(2), np.diag([1., -1e3]))


# --- low rank on codebooks ------------------------------------------------------------------

def test_low_rank_codebooks_decode_to_their_weight():
    x = correlated_inputs(300, 20)
    w = np.random.RandomState(1).randn(10, 20)
    fit = fit_low_rank_codebooks(statistics_of(x), w, 5, 16)
    assert fit.u_index.shape == (10, 5) and fit.v_index.shape == (5, 20)
    assert fit.u_codebook.shape == fit.v_codebook.shape == (16,)
    np.testing.assert_array_equal(fit.u, fit.u_codebook[fit.u_index])
    np.testing.assert_allclose(fit.weight(), fit.u @ fit.v)


@pytest.mark.parametrize('seed', range(3))
def test_error_feedback_makes_low_rank_codebooks_better(seed):
    x = correlated_inputs(400, 30, seed, offset=1.0)
    stats = statistics_of(x)
    w = np.random.RandomState(seed).randn(20, 30)
    u, v = whitened_svd(stats, w, 10)
    exact = output_error(stats, w, u @ v)
    near, fed = (output_error(stats, w, fit_low_rank_codebooks(
        stats, w, 10, 8, error_feedback=feedback).weight()) for feedback in (False, True))
    assert exact <= fed < near


def test_many_values_recover_the_whitened_svd():
    x = correlated_inputs(300, 20)
    stats = statistics_of(x)
    w = np.random.RandomState(1).randn(10, 20)
    u, v = whitened_svd(stats, w, 4)
    fit = fit_low_rank_codebooks(stats, w, 4, 2 ** 14)
    assert output_error(stats, w, fit.weight()) == pytest.approx(
        output_error(stats, w, u @ v), rel=1e-3)


# --- the bias ----------------------------------------------------------------------------------

def test_the_corrected_bias_keeps_the_mean_output():
    x = correlated_inputs(100, 8, offset=2.0)
    rng = np.random.RandomState(0)
    w, v, b = rng.randn(4, 8), rng.randn(4, 8), rng.randn(4)
    c = corrected_bias(statistics_of(x), w, v, b)
    np.testing.assert_allclose((x @ v.T + c).mean(axis=0), (x @ w.T + b).mean(axis=0))
    np.testing.assert_allclose(corrected_bias(statistics_of(x), w, v), c - b)


@given(st.integers(0, 2 ** 16))
def test_the_corrected_bias_is_the_bias_of_least_output_error(seed):
    x = correlated_inputs(30, 5, seed, offset=1.0)
    stats = statistics_of(x)
    rng = np.random.RandomState(seed)
    w, v, b = rng.randn(3, 5), rng.randn(3, 5), rng.randn(3)
    best = output_error(stats, w, v, bias_change=corrected_bias(stats, w, v, b) - b)
    assert best <= output_error(stats, w, v) + 1e-12
    assert best <= output_error(stats, w, v, bias_change=rng.randn(3)) + 1e-12
    centred = x - x.mean(axis=0)
    assert best == pytest.approx(np.linalg.norm(centred @ (w - v).T)
                                 / np.linalg.norm(x @ w.T), rel=1e-9)


def test_the_bias_must_fit():
    stats = statistics_of(np.ones((3, 2)))
    with pytest.raises(ValueError, match=r'bias must have the shape \(out_size,\) = \(1,\), got '
                                         r'\(2,\)'):
        corrected_bias(stats, np.ones((1, 2)), np.ones((1, 2)), np.ones(2))


@pytest.mark.gpu
def test_fitting_on_the_gpu_is_fitting_on_the_cpu():
    import cupy
    x = correlated_inputs(200, 20, offset=1.0)
    stats = statistics_of(x)
    on_gpu = LayerStatistics(cupy.asarray(stats.gram), stats.n_samples,
                             cupy.asarray(stats.column_sums))
    w = np.random.RandomState(1).randn(10, 20)
    u, v = whitened_svd(stats, w, 4)
    gpu_u, gpu_v = whitened_svd(on_gpu, cupy.asarray(w), 4)
    np.testing.assert_allclose((gpu_u @ gpu_v).get(), u @ v, rtol=1e-6, atol=1e-9)
    assert output_error(on_gpu, w, u @ v) == pytest.approx(output_error(stats, w, u @ v))
    codebook = cluster(w, 8)[0]
    np.testing.assert_array_equal(
        round_to_codebook(cupy.asarray(w), codebook, on_gpu.gram).get(),
        round_to_codebook(w, codebook, stats.gram))
    np.testing.assert_allclose(corrected_bias(on_gpu, w, u @ v).get(),
                               corrected_bias(stats, w, u @ v))
    fit = fit_low_rank_codebooks(on_gpu, cupy.asarray(w), 4, 16)
    assert isinstance(fit.weight(), cupy.ndarray)


def test_low_rank_codebooks_from_given_factors_are_those_it_computes():
    x = correlated_inputs(200, 12)
    stats = statistics_of(x)
    w = np.random.RandomState(3).randn(8, 12)
    computed = fit_low_rank_codebooks(stats, w, 5, 4)
    given_factors = fit_low_rank_codebooks(stats, w, 5, 4, factors=whitened_svd(stats, w, 5))
    for name in ('u_codebook', 'u_index', 'v_codebook', 'v_index'):
        np.testing.assert_array_equal(getattr(given_factors, name), getattr(computed, name))
    with pytest.raises(ValueError, match='factors must be'):
        fit_low_rank_codebooks(stats, w, 4, 4, factors=whitened_svd(stats, w, 5))


def test_a_gram_matrix_changed_in_place_is_rounded_on_as_it_is_now():
    # The rounding keeps what it computed of the latest Gram matrices: by their contents.
    rng = np.random.RandomState(0)
    matrix, codebook = rng.randn(6, 10), np.linspace(-2, 2, 5)
    gram = statistics_of(correlated_inputs(100, 10)).gram
    first = round_to_codebook(matrix, codebook, gram)
    np.testing.assert_array_equal(round_to_codebook(matrix, codebook, gram), first)
    other = statistics_of(correlated_inputs(100, 10, seed=5)).gram
    expected = round_to_codebook(matrix, codebook, other.copy())
    assert not np.array_equal(expected, first)
    gram[...] = other
    np.testing.assert_array_equal(round_to_codebook(matrix, codebook, gram), expected)
