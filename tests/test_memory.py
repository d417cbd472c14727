"""Forward + backward of SharedLinear and KroneckerLinear allocates no ``(out, in)`` array.

Measured with ``tracemalloc``, which NumPy tells about every array buffer it
allocates (through ``PyTraceMalloc_Track``, since NumPy 1.13). The peak that
``tracemalloc`` reports is at least the size of the largest single allocation,
so a peak below half the size of one ``(out_size, in_size)`` array shows that no
such array (nor the tiled weight, nor a dense gradient) existed at any moment.

At batch 8, 4096 -> 4096 and n_shared 8, one such float32 array is 64 MiB,
while everything the shared layer allocates is about 8.5 MiB: the weight
gradient (out_size, in_size / 8) of 8 MiB, and activations of B x 4096. The
dense layer must allocate its 64 MiB weight gradient, and the 2016 algorithm
the tiled weight and a dense gradient too, so the same bound fails for them: the test can fail.

HashedLinear(1000, 900) at batch 8 cannot avoid one (out_size, in_size) array, its
gathered weight (and then that weight's gradient): its step is bounded by 1.5 times the
dense layer's, whose weight gradient is that size.

KroneckerLinear with 64x64 factors at the same shape stores two 64x64 factors and
allocates activations of B x 4096 and the products with B of (B·64, 64): well under 1 MiB,
while a Kronecker layer that built its weight would allocate the 64 MiB.

Fitting a layer to a trained weight (k-means, a dense weight) is measured the same way,
beside what was held before it, in the float32 weight's bytes.
"""

import tracemalloc

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
import pytest

from benchmarks.measure import peak_allocated_bytes
from chainer_sharedlinear import (
    HashedLinear,
    KroneckerLinear,
    MonarchLinear,
    SharedLinear,
    kronecker_linear,
    shared_linear,
)
from chainer_sharedlinear.functions.clustered_linear import index_dtype
from chainer_sharedlinear.links.clustered_linear import cluster

BATCH, IN_SIZE, OUT_SIZE, N_SHARED = 8, 4096, 4096, 8
DENSE_BYTES = OUT_SIZE * IN_SIZE * np.dtype(np.float32).itemsize  # 64 MiB
BOUND = DENSE_BYTES // 2


def peak_bytes(step):
    """The most memory allocated at once while ``step()`` runs, and not before."""
    step()  # Chainer's first call sets up caches; those are not the layer's.
    peak = peak_allocated_bytes(step)
    assert peak is not None, 'run without python -X tracemalloc'
    return peak


def forward_backward(apply, params):
    """A training step of one layer: forward, then backward of a fixed output gradient."""
    rng = np.random.default_rng(0)
    x = chainer.Variable(rng.standard_normal((BATCH, IN_SIZE), dtype=np.float32))
    gy = rng.standard_normal((BATCH, OUT_SIZE), dtype=np.float32)

    def step():
        for param in params:
            param.cleargrad()
        x.cleargrad()
        y = apply(x)
        y.grad = gy
        y.backward()
        assert x.grad is not None and all(param.grad is not None for param in params)
    return step


@pytest.fixture(scope='module')
def shared_link():
    return SharedLinear(IN_SIZE, OUT_SIZE, n_shared=N_SHARED)


def test_numpy_reports_its_arrays_to_tracemalloc():
    # Without this, every bound below would hold vacuously.
    assert peak_bytes(lambda: np.ones(DENSE_BYTES // 4, np.float32)) >= DENSE_BYTES


def test_shared_linear_link_allocates_no_dense_array(shared_link):
    step = forward_backward(shared_link, list(shared_link.params()))
    assert peak_bytes(step) < BOUND


def test_shared_linear_function_without_bias_allocates_no_dense_array(shared_link):
    W = shared_link.W
    step = forward_backward(lambda x: shared_linear(x, W), [W])
    assert peak_bytes(step) < BOUND


def test_dense_linear_allocates_a_dense_gradient():
    dense = L.Linear(IN_SIZE, OUT_SIZE)
    step = forward_backward(dense, list(dense.params()))
    assert peak_bytes(step) >= DENSE_BYTES > BOUND


@pytest.fixture(scope='module')
def kronecker_link():
    return KroneckerLinear(IN_SIZE, OUT_SIZE)


def test_kronecker_linear_link_allocates_no_dense_array(kronecker_link):
    assert kronecker_link.A.shape == kronecker_link.B.shape == (1, 64, 64)
    step = forward_backward(kronecker_link, list(kronecker_link.params()))
    assert peak_bytes(step) < BOUND


def test_kronecker_linear_function_with_several_terms_allocates_no_dense_array():
    rng = np.random.default_rng(0)
    A = chainer.Parameter(rng.standard_normal((4, 64, 64), dtype=np.float32))
    B = chainer.Parameter(rng.standard_normal((4, 64, 64), dtype=np.float32))
    step = forward_backward(lambda x: kronecker_linear(x, A, B), [A, B])
    assert peak_bytes(step) < BOUND


def test_a_kronecker_layer_that_builds_its_weight_allocates_it(kronecker_link):
    A, B = kronecker_link.A, kronecker_link.B

    def built(x):
        # kron(A[0], B[0]) by broadcasting: the (out_size, in_size) weight.
        W = F.reshape(F.reshape(A[0], (64, 1, 64, 1)) * F.reshape(B[0], (1, 64, 1, 64)),
                      (OUT_SIZE, IN_SIZE))
        return F.linear(x, W)

    step = forward_backward(built, [A, B])
    assert peak_bytes(step) >= DENSE_BYTES > BOUND


# --- HashedLinear (issue 22): its map and its gathered weight -----------------------------

HASHED_IN, HASHED_OUT = 1000, 900


def _hashed_step(link):
    rng = np.random.default_rng(0)
    x = chainer.Variable(rng.standard_normal((BATCH, HASHED_IN), dtype=np.float32))
    gy = rng.standard_normal((BATCH, HASHED_OUT), dtype=np.float32)

    def step():
        link.cleargrads()
        x.cleargrad()
        y = link(x)
        y.grad = gy
        y.backward()
        assert x.grad is not None and link.W.grad is not None
    return step


def test_a_training_step_of_a_hashed_layer_takes_at_most_1_5_times_a_dense_one():
    # The gathered weight and its gradient are the size of the dense layer's weight
    # gradient; kept together, or with a map of intp buckets, they make 2x and more.
    dense = L.Linear(HASHED_IN, HASHED_OUT)
    hashed = HashedLinear(HASHED_IN, HASHED_OUT, n_weights=HASHED_IN * HASHED_OUT // 64)
    dense_peak = peak_bytes(_hashed_step(dense))
    assert dense_peak >= HASHED_IN * HASHED_OUT * 4  # its weight gradient
    assert peak_bytes(_hashed_step(hashed)) <= 1.5 * dense_peak


def test_the_kept_map_of_a_hashed_layer_takes_4_bytes_per_virtual_weight():
    hashed = HashedLinear(HASHED_IN, HASHED_OUT, n_weights=HASHED_IN * HASHED_OUT // 64)
    # Made a few rows at a time: the hash's own arrays are small beside the map.
    assert peak_allocated_bytes(hashed.signed_index) <= 1.25 * HASHED_IN * HASHED_OUT * 4
    assert hashed.signed_index().nbytes == HASHED_IN * HASHED_OUT * 4


# --- fitting a layer to a trained weight (issue 30): no float64 copy of the weight ----------

FIT_SIZE = 576  # 24², so that a Kronecker layer's squarest factors are 24 x 24
FIT_BYTES = FIT_SIZE * FIT_SIZE * 4


def _fit_peak(step):
    """The most bytes ``step()`` held at once beyond what was held before it."""
    before = []

    def measured():
        before.append(tracemalloc.get_traced_memory()[0])
        step()

    peak = peak_allocated_bytes(measured)
    assert peak is not None, 'run without python -X tracemalloc'
    return peak - before[0]


def _old_cluster(values, n_clusters, *, init='linear', seed=0, max_iter=300):
    """``cluster`` as it was before it kept the sorted numbers in their own dtype (the oracle):
    a float64 copy, its argsort, the sorted copy, float64 prefix sums of all of them."""
    host = np.asarray(values, np.float64)
    flat = host.ravel()
    order = np.argsort(flat, kind='stable')
    ordered = flat[order]
    prefix = np.concatenate([[0.0], np.cumsum(ordered)])
    if init == 'linear':
        centroids = np.linspace(ordered[0], ordered[-1], n_clusters)
    elif init == 'density':
        centroids = np.quantile(ordered, (np.arange(n_clusters) + 0.5) / n_clusters)
    else:
        picks = np.random.RandomState(seed).choice(
            flat.size, size=n_clusters, replace=flat.size < n_clusters)
        centroids = np.sort(flat[picks])
    cuts = None
    for _ in range(max_iter):
        new_cuts = np.searchsorted(ordered, (centroids[1:] + centroids[:-1]) / 2)
        counts = np.diff(np.concatenate([[0], new_cuts, [flat.size]]))
        empty = counts == 0
        if empty.any():
            distance = np.abs(ordered - np.repeat(centroids, counts))
            n_moved = min(int(empty.sum()), int(np.count_nonzero(distance)))
            if n_moved:
                farthest = np.sort(np.argsort(-distance, kind='stable')[:n_moved])
                centroids = np.sort(np.concatenate(
                    [centroids[~empty], ordered[farthest], centroids[empty][n_moved:]]))
                cuts = None
                continue
        if cuts is not None and np.array_equal(new_cuts, cuts):
            break
        cuts = new_cuts
        starts = np.concatenate([[0], cuts])
        ends = np.concatenate([cuts, [flat.size]])
        sums = prefix[ends] - prefix[starts]
        centroids = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), centroids))
    cuts = np.searchsorted(ordered, (centroids[1:] + centroids[:-1]) / 2)
    counts = np.diff(np.concatenate([[0], cuts, [flat.size]]))
    labels = np.empty(flat.size, index_dtype(n_clusters))
    labels[order] = np.repeat(np.arange(n_clusters), counts)
    return centroids, labels.reshape(host.shape)


def _numbers(kind, shape, dtype, seed):
    rng = np.random.default_rng(seed)
    if kind == 'normal':
        values = rng.standard_normal(shape)
    elif kind == 'heavy tails':  # outliers leave clusters of a linear start empty
        values = rng.standard_t(1.5, shape)
    elif kind == 'ties':  # few distinct numbers, zeros of both signs among them
        values = rng.integers(-3, 4, shape) * 0.5 * rng.choice([1.0, -1.0], shape)
    else:  # rounded: long runs of equal numbers
        values = np.round(rng.standard_normal(shape), 1)
    return values.astype(dtype)


@pytest.mark.parametrize('init', ['linear', 'density', 'random'])
@pytest.mark.parametrize('kind', ['normal', 'heavy tails', 'ties', 'rounded'])
@pytest.mark.parametrize('shape, n_clusters, dtype', [
    ((1,), 1, np.float32), ((7,), 3, np.float64), ((5, 4), 30, np.float32),
    ((33, 65), 16, np.float16), ((300, 301), 256, np.float32), ((120, 90), 1000, np.float64),
    ((40, 50), 7, np.int64)])
def test_k_means_in_less_memory_gives_the_same_clusters_as_before(shape, n_clusters, dtype,
                                                                    kind, init):
    values = _numbers(kind, shape, dtype, seed=n_clusters)
    centroids, labels = cluster(values, n_clusters, init=init, seed=3)
    expected_centroids, expected_labels = _old_cluster(values, n_clusters, init=init, seed=3)
    np.testing.assert_array_equal(centroids, expected_centroids)
    assert labels.dtype == expected_labels.dtype and labels.shape == expected_labels.shape
    np.testing.assert_array_equal(labels, expected_labels)


def test_k_means_of_a_weight_takes_its_sorted_copy_and_the_labels():
    # The numbers sorted in their float32 (1), the labels (1/4 for 16 clusters), one prefix
    # sum in 32 in float64 (1/16), and a slice's search (1/8): before, a float64 copy,
    # its argsort, the sorted copy and the prefix sums made 8 and more.
    weight = np.random.default_rng(0).standard_normal((FIT_SIZE, FIT_SIZE), dtype=np.float32)
    assert _fit_peak(lambda: cluster(weight, 16)) <= 1.5 * FIT_BYTES


@pytest.mark.parametrize('layer', [
    lambda: HashedLinear(FIT_SIZE, FIT_SIZE, n_weights=FIT_SIZE * FIT_SIZE // 8),
    lambda: MonarchLinear(FIT_SIZE, FIT_SIZE, n_blocks=24),
], ids=['hashed', 'monarch'])
def test_a_dense_weight_takes_its_own_bytes_and_a_slice_more(layer):
    # A slice of rows (of the identity's, for Monarch) at a time: the gather's index and
    # the layer's outputs of a slice beside the dense weight. Before: 3.25 and 5.
    layer = layer()
    assert _fit_peak(layer.dense_weight) <= 1.5 * FIT_BYTES
