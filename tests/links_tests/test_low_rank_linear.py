"""What is particular to LowRankLinear: the truncated SVD (Eckart–Young) and the rank.

What every link promises is in test_family_contract.
"""

import chainer.links as L
import numpy as np
import pytest

from chainer_sharedlinear import LowRankLinear


def _dense(out_size=12, in_size=9, seed=0):
    return L.Linear(in_size, out_size,
                    initialW=np.random.default_rng(seed).standard_normal((out_size, in_size)))


@pytest.mark.parametrize('rank', [1, 3, 9])
def test_from_linear_is_the_nearest_weight_of_its_rank(rank):
    dense = _dense()
    W = dense.W.array.astype(np.float64)
    layer = LowRankLinear.from_linear(dense, rank=rank)
    error = np.linalg.norm(layer.dense_weight() - W)
    singular = np.linalg.svd(W, compute_uv=False)
    # Eckart-Young: the error is that of the trailing singular values ...
    np.testing.assert_allclose(error, np.sqrt((singular[rank:] ** 2).sum()), rtol=1e-5,
                               atol=1e-5)
    # ... and no other product of the same shapes is nearer.
    rng = np.random.default_rng(1)
    for _ in range(20):
        U = layer.U.array + 0.01 * rng.standard_normal(layer.U.shape)
        V = layer.V.array + 0.01 * rng.standard_normal(layer.V.shape)
        assert np.linalg.norm(U.dot(V) - W) >= error - 1e-6


def test_from_linear_is_exact_on_a_weight_of_that_rank():
    rng = np.random.default_rng(2)
    W = rng.standard_normal((12, 2)).dot(rng.standard_normal((2, 9)))
    layer = LowRankLinear.from_linear(L.Linear(9, 12, initialW=W), rank=2)
    np.testing.assert_allclose(layer.dense_weight(), W, rtol=1e-5, atol=1e-5)


def test_a_rank_above_the_sizes_is_refused():
    with pytest.raises(ValueError, match=r'rank=10 is more than min\(in_size, out_size\) = '
                                         r'min\(9, 12\)'):
        LowRankLinear(9, 12, rank=10)
    with pytest.raises(ValueError, match=r'rank=10 is more than'):
        LowRankLinear.from_linear(_dense(), rank=10)


@pytest.mark.parametrize('rank', [4, 32])
def test_initial_outputs_have_the_variance_of_linear(rank):
    x = np.random.default_rng(3).standard_normal((2000, 64)).astype(np.float32)
    np.random.seed(0)
    outputs = [LowRankLinear(64, 64, rank=rank)(x).array.var() for _ in range(10)]
    dense = [L.Linear(64, 64)(x).array.var() for _ in range(10)]
    assert abs(np.mean(outputs) / np.mean(dense) - 1) < 0.15
