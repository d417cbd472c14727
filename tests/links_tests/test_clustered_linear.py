"""What is particular to ClusteredLinear: k-means, the index and its packing, the file.

What every link promises is in test_family_contract.
"""

import chainer
import chainer.links as L
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chainer_sharedlinear import (
    ClusteredLinear,
    compress_linears,
    load_compressed,
    save_compressed,
)
from chainer_sharedlinear.functions.clustered_linear import (
    index_bits,
    index_dtype,
    pack_index,
    unpack_index,
)
from chainer_sharedlinear.links import clustered_linear
from chainer_sharedlinear.links.clustered_linear import cluster
from tests.helpers import set_non_default


def _trained_linear(in_size=40, out_size=30, seed=0):
    rng = np.random.default_rng(seed)
    return L.Linear(in_size, out_size, initialW=rng.standard_normal((out_size, in_size)) * 0.1,
                    initial_bias=rng.standard_normal(out_size))


@given(st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=60),
       st.integers(1, 8), st.sampled_from(['linear', 'density', 'random']))
def test_k_means_is_a_fixed_point_of_lloyd(values, n_clusters, init):
    values = np.array(values)
    centroids, labels = cluster(values, n_clusters, init=init, seed=3)
    assert centroids.shape == (n_clusters,) and labels.shape == values.shape
    assert np.all(np.diff(centroids) >= 0)
    # Every number is in the cluster of a nearest centroid ...
    distance = np.abs(values[:, None] - centroids[None, :])
    np.testing.assert_allclose(distance[np.arange(values.size), labels], distance.min(axis=1),
                               atol=1e-12)
    # ... and every centroid that has numbers is their mean.
    for k in np.unique(labels):
        np.testing.assert_allclose(centroids[k], values[labels == k].mean(), rtol=1e-9,
                                   atol=1e-12)


def test_every_cluster_is_used_when_there_are_enough_distinct_numbers():
    # Linear initialisation leaves the middle clusters of these numbers empty: they move.
    values = np.array([0., 0.1, 0.9, 1.0, 5.0])
    centroids, labels = cluster(values, 3)
    np.testing.assert_allclose(centroids, [0.05, 0.95, 5.0])
    np.testing.assert_array_equal(labels, [0, 0, 1, 1, 2])
    weights = np.random.default_rng(0).standard_normal(5000) ** 3
    assert len(np.unique(cluster(weights, 256)[1])) == 256


def test_k_means_is_deterministic_for_a_seed():
    dense = _trained_linear()
    first = ClusteredLinear.from_linear(dense, n_clusters=7, init='random', seed=5)
    second = ClusteredLinear.from_linear(dense, n_clusters=7, init='random', seed=5)
    np.testing.assert_array_equal(first.W.array, second.W.array)
    np.testing.assert_array_equal(first.index, second.index)
    other = ClusteredLinear.from_linear(dense, n_clusters=7, init='random', seed=6)
    assert first.seed == 5 and other.seed == 6
    fresh = [ClusteredLinear(40, 30, n_clusters=7, seed=2) for _ in range(2)]
    np.testing.assert_array_equal(fresh[0].index, fresh[1].index)
    np.testing.assert_array_equal(fresh[0].W.array, fresh[1].W.array)
    assert not np.array_equal(fresh[0].index, ClusteredLinear(40, 30, n_clusters=7).index)


def test_from_linear_replaces_each_weight_by_its_centroid_and_keeps_the_rest():
    dense = _trained_linear()
    layer = ClusteredLinear.from_linear(dense, n_clusters=16)
    centroids, labels = cluster(dense.W.array, 16)
    np.testing.assert_allclose(layer.W.array, centroids.astype(np.float32))
    np.testing.assert_array_equal(layer.index, labels)
    np.testing.assert_array_equal(layer.b.array, dense.b.array)
    assert layer.W.dtype == dense.W.dtype and layer.index.dtype == np.uint8
    error = np.linalg.norm(layer.dense_weight() - dense.W.array) / np.linalg.norm(dense.W.array)
    # The best 16 values of a normal weight (Lloyd-Max) leave a relative error of 0.0975.
    assert error < 0.11


@pytest.fixture
def k_means_runs(monkeypatch):
    """The list of the sizes of the weights that the layer's module clustered since."""
    runs = []

    def counted(values, *args, **kwargs):
        runs.append(np.size(values))
        return cluster(values, *args, **kwargs)

    monkeypatch.setattr(clustered_linear, 'cluster', counted)
    return runs


def test_from_linear_runs_k_means_once_on_the_trained_weight(k_means_runs):
    ClusteredLinear.from_linear(_trained_linear(), n_clusters=16)
    assert k_means_runs == [40 * 30]


def test_a_given_codebook_takes_no_k_means_and_an_index_drawn_from_the_seed(k_means_runs):
    layers = [ClusteredLinear(40, 30, n_clusters=7, seed=seed, initialW=np.arange(7.))
              for seed in (3, 3, 4)]
    lazy = ClusteredLinear(30, n_clusters=7, seed=3, initialW=np.arange(7.))
    lazy(np.zeros((1, 40), np.float32))
    assert k_means_runs == []
    index = layers[0].index
    assert index.shape == (30, 40) and index.dtype == np.uint8
    assert sorted(np.unique(index)) == list(range(7))  # every value of the codebook is used
    np.testing.assert_array_equal(layers[1].index, index)
    np.testing.assert_array_equal(lazy.index, index)
    assert not np.array_equal(layers[2].index, index)
    np.testing.assert_array_equal(layers[0].W.array, np.arange(7.))
    # Without a codebook, the layer is still the clustering of a drawn weight.
    ClusteredLinear(40, 30, n_clusters=7)
    assert k_means_runs == [40 * 30]


def test_a_compressed_file_loads_without_k_means(k_means_runs, tmp_path):
    def model():
        return chainer.Sequential(L.Linear(40, 30), L.Linear(30, 20))

    compressed = model()
    report = compress_linears(compressed, 1 / 4, pattern='clustered', allocation='layer')
    assert len(k_means_runs) == 2  # one per layer, by from_linear
    path = str(tmp_path / 'model.npz')
    save_compressed(path, compressed, report.plan)
    fresh = model()
    load_compressed(path, fresh)
    assert len(k_means_runs) == 2
    for loaded, saved in zip(fresh, compressed):
        np.testing.assert_array_equal(loaded.index, saved.index)
        np.testing.assert_array_equal(loaded.W.array, saved.W.array)


@pytest.mark.parametrize('n_clusters, bits, dtype', [
    (1, 1, np.uint8), (2, 1, np.uint8), (16, 4, np.uint8), (17, 5, np.uint8),
    (256, 8, np.uint8), (257, 9, np.uint16), (2 ** 16, 16, np.uint16)])
def test_the_index_takes_its_bits_in_a_file_and_its_smallest_type_in_memory(n_clusters, bits,
                                                                            dtype):
    assert index_bits(n_clusters) == bits and index_dtype(n_clusters) == dtype


@given(st.integers(1, 16).flatmap(lambda bits: st.tuples(
    st.just(bits), st.lists(st.integers(0, 2 ** bits - 1), min_size=0, max_size=50))))
def test_packing_the_index_and_unpacking_it_gives_it_back(bits_and_values):
    bits, values = bits_and_values
    index = np.array(values, dtype=np.uint16)
    packed = pack_index(index, bits)
    assert packed.dtype == np.uint8 and packed.size == -(-index.size * bits // 8)
    np.testing.assert_array_equal(unpack_index(packed, bits, index.size, np.uint16), index)


def test_a_saved_file_holds_the_index_packed_and_the_sizes(tmp_path):
    layer = set_non_default(ClusteredLinear.from_linear(_trained_linear(), n_clusters=16))
    path = str(tmp_path / 'layer.npz')
    chainer.serializers.save_npz(path, layer)
    with np.load(path) as f:
        assert f['index'].dtype == np.uint8 and f['index'].size == 40 * 30 // 2
        assert int(f['n_clusters']) == 16
    assert layer.stored_bytes() == 16 * 4 + 40 * 30 // 2 + 30 * 4
    loaded = ClusteredLinear(30, n_clusters=16)
    chainer.serializers.load_npz(path, loaded)
    np.testing.assert_array_equal(loaded.index, layer.index)
    assert loaded.in_size == 40


def test_an_index_of_the_wrong_length_or_values_is_refused_and_changes_nothing(tmp_path):
    layer = ClusteredLinear(8, 3, n_clusters=5)
    path = str(tmp_path / 'layer.npz')
    chainer.serializers.save_npz(path, layer)
    with np.load(path) as f:
        arrays = dict(f)
    target = ClusteredLinear(8, 3, n_clusters=5, seed=9)
    before = target.index.copy()
    for index, message in [
            (arrays['index'][:-1], r'cannot load an index of 8 bytes into .*: 3 x 8 entries of 3 '
                                   r'bits take 9'),
            (np.full_like(arrays['index'], 255), r'cannot load an index with entries up to 7 '
                                                 r'into .*, whose codebook has 5 values')]:
        np.savez(path, **dict(arrays, index=index))
        with pytest.raises(ValueError, match=message):
            chainer.serializers.load_npz(path, target)
        np.testing.assert_array_equal(target.index, before)


@pytest.mark.parametrize('n_clusters, message', [
    (0, 'n_clusters must be at least 1, got 0'),
    (2 ** 16 + 1, r'n_clusters must be at most 2\*\*16 = 65536 \(an index of 16 bits a weight\), '
                  r'got 65537'),
    (2.0, 'n_clusters must be a positive integer, got 2.0'),
])
def test_bad_n_clusters_is_a_clear_error(n_clusters, message):
    with pytest.raises(ValueError, match=message):
        ClusteredLinear(4, 3, n_clusters=n_clusters)


def test_bad_init_is_a_clear_error():
    with pytest.raises(ValueError, match="init must be one of linear, density, random, got "
                                         "'kmeans'"):
        ClusteredLinear.from_linear(_trained_linear(), n_clusters=4, init='kmeans')


def test_training_updates_the_codebook_by_the_sum_of_its_weights_gradients():
    layer = ClusteredLinear.from_linear(_trained_linear(), n_clusters=6)
    x = np.random.default_rng(1).standard_normal((5, 40)).astype(np.float32)
    layer.cleargrads()
    y = layer(x)
    gy = np.random.default_rng(2).standard_normal(y.shape).astype(np.float32)
    y.grad = gy
    y.backward()
    gV = gy.T.dot(x)  # the gradient of the virtual weight
    expected = np.array([gV[layer.index == k].sum() for k in range(6)])
    np.testing.assert_allclose(layer.W.grad, expected, rtol=1e-5, atol=1e-5)


def test_what_is_not_a_parameter_goes_with_copyparams_to_device_and_files(tmp_path):
    # The index decides the function but is not a parameter: each way Chainer copies,
    # moves or saves a link must take it along, not the codebook alone.
    source = ClusteredLinear.from_linear(_trained_linear(), n_clusters=6)
    x = np.random.default_rng(1).standard_normal((3, 40)).astype(np.float32)
    expected = source(x).array
    target = ClusteredLinear(40, 30, n_clusters=6, seed=4)
    assert not np.array_equal(target.index, source.index)
    target.copyparams(source)
    np.testing.assert_array_equal(target(x).array, expected)
    path = str(tmp_path / 'layer.npz')
    chainer.serializers.save_npz(path, source)
    loaded = ClusteredLinear(40, 30, n_clusters=6, seed=4)
    chainer.serializers.load_npz(path, loaded)
    np.testing.assert_array_equal(loaded(x).array, expected)
    source.to_device('@numpy')
    assert isinstance(source.index, np.ndarray)
    np.testing.assert_array_equal(source(x).array, expected)
