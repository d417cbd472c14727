"""What is particular to ClusteredLowRankLinear: decoding, the codebooks' gradients, the file.

What every link promises is in test_family_contract.
"""

import math

import chainer
import chainer.links as L
import numpy as np
import pytest
from chainer import gradient_check

from chainer_sharedlinear import ClusteredLowRankLinear, LowRankLinear
from chainer_sharedlinear.functions.clustered_linear import index_bits, unpack_index
from chainer_sharedlinear.links.clustered_linear import cluster
from tests.helpers import (
    assert_params_equal,
    bucket_sums,
    dense_linear,
    function_tolerances,
    param_arrays,
    set_non_default,
    standard_normal,
    virtual_weight,
)
from tests.test_memory import peak_bytes


def _trained_linear():
    return L.Linear(40, 30, initialW=standard_normal((30, 40)) * 0.1,
                    initial_bias=standard_normal(30, seed=1))


def _layer(n_clusters=6, rank=4, dtype=np.float32):
    with chainer.using_config('dtype', dtype):
        return set_non_default(ClusteredLowRankLinear(40, 30, rank=rank, n_clusters=n_clusters,
                                                      seed=2))


def _factors(layer):
    """The dense factors in float64, gathered entry by entry."""
    return (virtual_weight(layer.U.array, layer.U_index),
            virtual_weight(layer.V.array, layer.V_index))


def test_the_factors_are_the_codebooks_gathered_by_the_fixed_indices():
    layer = _layer()
    U, V = layer.factors()
    assert U.shape == (30, 4) and V.shape == (4, 40)
    expected_U, expected_V = _factors(layer)
    np.testing.assert_array_equal(U.array, expected_U.astype(np.float32))
    np.testing.assert_array_equal(V.array, expected_V.astype(np.float32))
    np.testing.assert_allclose(layer.dense_weight(), expected_U.dot(expected_V), rtol=1e-6,
                               atol=1e-6)
    x = standard_normal((5, 40), seed=1)
    np.testing.assert_allclose(layer(x).array,
                               dense_linear(x, expected_U.dot(expected_V), layer.b.array),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('dtype', [np.float16, np.float32, np.float64])
def test_the_gradient_of_a_codebook_value_is_the_sum_of_its_entries_gradients(dtype):
    layer = _layer(dtype=dtype)
    x = standard_normal((5, 40), seed=1, dtype=dtype)
    gy = standard_normal((5, 30), seed=2, dtype=dtype)
    layer.cleargrads()
    y = layer(x)
    y.grad = gy
    y.backward()
    U, V = _factors(layer)
    x64, gy64 = x.astype(np.float64), gy.astype(np.float64)
    gU = gy64.T.dot(x64.dot(V.T))  # y = (x · Vᵀ) · Uᵀ: the dense factors' gradients
    gV = gy64.dot(U).T.dot(x64)
    tolerance = {'rtol': 2e-2, 'atol': 5e-2} if dtype == np.float16 else {'rtol': 1e-4,
                                                                          'atol': 1e-4}
    np.testing.assert_allclose(layer.U.grad, bucket_sums(gU, layer.U_index, None, 6),
                               **tolerance)
    np.testing.assert_allclose(layer.V.grad, bucket_sums(gV, layer.V_index, None, 6),
                               **tolerance)
    np.testing.assert_allclose(layer.b.grad, gy64.sum(axis=0), **tolerance)


def _as_function(layer):
    """The layer's own forward as a function of its input and of its parameters."""
    def apply(x, U, V, b):
        # Outside init_scope these are plain attributes: the variables gradient_check varies.
        layer.U, layer.V, layer.b = U, V, b
        return layer(x)
    return apply


def test_backward_and_double_backward_against_numerical_gradients():
    layer = _layer(dtype=np.float64)
    rng = np.random.default_rng(4)
    inputs = (rng.uniform(-1, 1, (3, 40)), layer.U.array.copy(), layer.V.array.copy(),
              layer.b.array.copy())
    gy = rng.uniform(-1, 1, (3, 30))
    apply = _as_function(layer)
    options = function_tolerances([np.float64])
    gradient_check.check_backward(apply, inputs, gy, dtype=np.float64,
                                  **options['check_backward_options'])
    ggs = tuple(rng.uniform(-1, 1, a.shape) for a in inputs)
    gradient_check.check_double_backward(apply, inputs, gy, ggs, dtype=np.float64,
                                         **options['check_double_backward_options'])


def test_training_updates_the_codebooks_and_never_the_indices():
    layer = ClusteredLowRankLinear.from_linear(_trained_linear(), rank=4, n_clusters=8)
    indices = [layer.U_index.copy(), layer.V_index.copy()]
    codebooks = [layer.U.array.copy(), layer.V.array.copy()]
    assert sorted(name for name, _ in layer.namedparams()) == ['/U', '/V', '/b']
    optimizer = chainer.optimizers.SGD(lr=0.1)
    optimizer.setup(layer)
    x = standard_normal((5, 40), seed=1)
    for _ in range(3):
        layer.cleargrads()
        chainer.functions.sum(layer(x) ** 2).backward()
        optimizer.update()
    np.testing.assert_array_equal(layer.U_index, indices[0])
    np.testing.assert_array_equal(layer.V_index, indices[1])
    assert not np.array_equal(layer.U.array, codebooks[0])
    assert not np.array_equal(layer.V.array, codebooks[1])


def test_from_linear_clusters_the_balanced_factors_of_the_truncated_svd():
    dense = _trained_linear()
    layer = ClusteredLowRankLinear.from_linear(dense, rank=5, n_clusters=16)
    low_rank = LowRankLinear.from_linear(dense, rank=5)
    # Balanced: each singular value split evenly, so both factors have its root as norm.
    np.testing.assert_allclose(np.linalg.norm(low_rank.U.array, axis=0),
                               np.linalg.norm(low_rank.V.array, axis=1), rtol=1e-5)
    for codebook, index, factor in [(layer.U, layer.U_index, low_rank.U),
                                    (layer.V, layer.V_index, low_rank.V)]:
        centroids, labels = cluster(factor.array, 16)
        np.testing.assert_allclose(codebook.array, centroids.astype(np.float32))
        np.testing.assert_array_equal(index, labels)
        assert index.dtype == np.uint8 and codebook.dtype == np.float32
    np.testing.assert_array_equal(layer.b.array, dense.b.array)
    assert (layer.rank, layer.n_clusters, layer.seed) == (5, 16, 0)
    # Sixteen values a factor lose little beyond the truncation itself.
    truncation = np.linalg.norm(low_rank.dense_weight() - dense.W.array)
    error = np.linalg.norm(layer.dense_weight() - dense.W.array)
    assert truncation < error < 1.05 * truncation


def test_from_linear_is_deterministic_for_a_seed():
    dense = _trained_linear()
    first, second = (ClusteredLowRankLinear.from_linear(dense, rank=3, n_clusters=5,
                                                        init='random', seed=4)
                     for _ in range(2))
    assert_params_equal(second, param_arrays(first))
    np.testing.assert_array_equal(first.U_index, second.U_index)
    np.testing.assert_array_equal(first.V_index, second.V_index)
    fresh = [ClusteredLowRankLinear(40, 30, rank=3, n_clusters=5, seed=2) for _ in range(2)]
    np.testing.assert_array_equal(fresh[0].V_index, fresh[1].V_index)
    other = ClusteredLowRankLinear(40, 30, rank=3, n_clusters=5)
    assert not np.array_equal(fresh[0].V_index, other.V_index)


def test_a_fresh_layer_starts_with_low_rank_linears_scale():
    # Each entry of U[U_index] · V[V_index] has L.Linear's variance 1 / in_size.
    layer = ClusteredLowRankLinear(400, 300, rank=50, n_clusters=64)
    assert abs(layer.dense_weight().var() * 400 - 1) < 0.05


@pytest.mark.parametrize('n_clusters, dtype', [(5, np.uint8), (256, np.uint8),
                                               (300, np.uint16)])
def test_a_saved_file_holds_the_indices_at_their_bits_and_stored_bytes_counts_them(
        tmp_path, n_clusters, dtype):
    layer = set_non_default(ClusteredLowRankLinear(40, 30, rank=4, n_clusters=n_clusters))
    bits = index_bits(n_clusters)
    path = str(tmp_path / 'layer.npz')
    chainer.serializers.save_npz(path, layer)
    with np.load(path) as f:
        for name, count in [('U_index', 30 * 4), ('V_index', 4 * 40)]:
            assert f[name].dtype == np.uint8 and f[name].size == math.ceil(count * bits / 8)
            np.testing.assert_array_equal(
                unpack_index(f[name], bits, count, dtype).reshape(getattr(layer, name).shape),
                getattr(layer, name))
        assert (int(f['n_clusters']), int(f['rank'])) == (n_clusters, 4)
        arrays = sum(f[name].nbytes for name in ('U', 'V', 'b', 'U_index', 'V_index'))
    assert layer.U_index.dtype == dtype and layer.V_index.dtype == dtype
    assert layer.stored_bytes() == arrays == (2 * n_clusters * 4 + math.ceil(120 * bits / 8)
                                              + math.ceil(160 * bits / 8) + 30 * 4)
    loaded = ClusteredLowRankLinear(30, rank=4, n_clusters=n_clusters, seed=5)
    chainer.serializers.load_npz(path, loaded)
    assert loaded.in_size == 40
    np.testing.assert_array_equal(loaded.U_index, layer.U_index)
    np.testing.assert_array_equal(loaded.V_index, layer.V_index)
    x = standard_normal((2, 40))
    np.testing.assert_array_equal(loaded(x).array, layer(x).array)


def test_stored_bytes_without_bias_and_of_a_lazy_layer():
    layer = ClusteredLowRankLinear(1000, 900, rank=100, n_clusters=16, nobias=True)
    assert layer.stored_bytes() == 2 * 16 * 4 + 900 * 100 // 2 + 100 * 1000 // 2
    with pytest.raises(ValueError, match=r'ClusteredLowRankLinear\(in_size=None.*has no '
                                         r'indices yet: it is not initialised yet'):
        ClusteredLowRankLinear(3, rank=2, n_clusters=4).stored_bytes()


def _saved_arrays(tmp_path):
    path = str(tmp_path / 'layer.npz')
    chainer.serializers.save_npz(path, ClusteredLowRankLinear(8, 3, rank=2, n_clusters=5))
    with np.load(path) as f:
        return path, dict(f)


@pytest.mark.parametrize('change, message', [
    (lambda a: dict(a, U_index=a['U_index'][:-1]),
     r'cannot load U_index of 2 bytes into ClusteredLowRankLinear\(.*\): 3 x 2 entries of 3 '
     r'bits take 3'),
    (lambda a: dict(a, V_index=np.full_like(a['V_index'], 255)),
     r'cannot load V_index with entries up to 7 into .*, whose codebook V has 5 values'),
    (lambda a: {k: v for k, v in a.items() if k != 'V_index'},
     r'cannot load the indices of .*: the file does not hold V_index'),
    (lambda a: {k: v for k, v in a.items() if k != 'in_size'},
     r'cannot load the indices of .*: the file does not hold its in_size'),
])
def test_a_file_with_wrong_indices_is_refused_and_changes_nothing(tmp_path, change, message):
    path, arrays = _saved_arrays(tmp_path)
    np.savez(path, **change(arrays))
    for target in (ClusteredLowRankLinear(8, 3, rank=2, n_clusters=5, seed=9),
                   ClusteredLowRankLinear(3, rank=2, n_clusters=5, seed=9)):
        before = param_arrays(target)
        indices = [None if i is None else i.copy() for i in (target.U_index, target.V_index)]
        with pytest.raises(ValueError, match=message):
            chainer.serializers.load_npz(path, target)
        assert_params_equal(target, before)
        for index, kept in zip((target.U_index, target.V_index), indices):
            if kept is None:
                assert index is None
            else:
                np.testing.assert_array_equal(index, kept)


def test_copyparams_copies_the_indices_only_with_the_persistent_values():
    source = ClusteredLowRankLinear(8, 3, rank=2, n_clusters=5, seed=1)
    target = ClusteredLowRankLinear(8, 3, rank=2, n_clusters=5, seed=2)
    kept = target.V_index.copy()
    target.copyparams(source, copy_persistent=False)
    np.testing.assert_array_equal(target.V_index, kept)
    target.copyparams(source)
    np.testing.assert_array_equal(target.U_index, source.U_index)
    np.testing.assert_array_equal(target.V_index, source.V_index)
    assert target.V_index is not source.V_index


@pytest.mark.parametrize('kwargs, message', [
    (dict(rank=2, n_clusters=0), 'n_clusters must be at least 1, got 0'),
    (dict(rank=2, n_clusters=2 ** 16 + 1), r'n_clusters must be at most 2\*\*16'),
    (dict(rank=0, n_clusters=4), 'rank must be at least 1, got 0'),
    (dict(rank=4, n_clusters=4), r'rank=4 is more than min\(in_size, out_size\) = min\(4, 3\)'),
])
def test_bad_options_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClusteredLowRankLinear(4, 3, **kwargs)


def test_a_training_step_allocates_nothing_of_the_dense_weights_size():
    # One (out_size, in_size) float32 array is 64 MiB; the factors at rank 16 are 0.5 MiB.
    layer = ClusteredLowRankLinear(4096, 4096, rank=16, n_clusters=32)
    x = chainer.Variable(standard_normal((8, 4096)))
    gy = standard_normal((8, 4096))

    def step():
        layer.cleargrads()
        y = layer(x)
        y.grad = gy
        y.backward()

    assert peak_bytes(step) < 4096 * 4096 * 4 // 16
