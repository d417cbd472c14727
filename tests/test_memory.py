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
"""

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
import pytest

from benchmarks.measure import peak_allocated_bytes
from chainer_sharedlinear import (
    HashedLinear,
    KroneckerLinear,
    SharedLinear,
    kronecker_linear,
    shared_linear,
)

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
