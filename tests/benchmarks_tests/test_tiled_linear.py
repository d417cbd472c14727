"""The 2016 algorithm the benchmark times: it computes what shared_linear does, the dense way."""

import chainer
import chainer.functions as F
import numpy as np
import pytest

from benchmarks.measure import peak_allocated_bytes
from benchmarks.tiled_linear import TiledLinearFunction
from chainer_sharedlinear import SharedLinear, shared_linear


def _grads(f, x, W, b, gy):
    xv, Wv = chainer.Variable(x), chainer.Variable(W)
    bv = None if b is None else chainer.Variable(b)
    y = f(xv, Wv, bv)
    y.grad = gy
    y.backward()
    return [y.array] + [v.grad for v in (xv, Wv, bv) if v is not None]


def _tiled_linear(x, W, b):
    return TiledLinearFunction()(*((x, W) if b is None else (x, W, b)))


@pytest.mark.parametrize('n_shared', [1, 2, 10])
@pytest.mark.parametrize('nobias', [True, False])
def test_outputs_and_gradients_equal_shared_linear_and_the_tiled_dense_layer(n_shared, nobias):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (7, 5 * n_shared))
    W = rng.uniform(-1, 1, (6, 5))
    b = None if nobias else rng.uniform(-1, 1, 6)
    gy = rng.standard_normal((7, 6))

    old = _grads(_tiled_linear, x, W, b, gy)
    ours = _grads(shared_linear, x, W, b, gy)
    dense = _grads(lambda x, W, b: F.linear(x, F.tile(W, (1, n_shared)), b), x, W, b, gy)
    for mine, shared, tiled in zip(old, ours, dense):
        np.testing.assert_allclose(mine, shared, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(mine, tiled, rtol=1e-12, atol=1e-12)


def test_it_allocates_the_tiled_weight():
    # What the benchmark's peak_mib shows of it, and what tests/test_memory.py bounds
    # the shared layer by: one (out_size, in_size) array at least.
    batch, in_size, out_size, n_shared = 8, 4096, 4096, 8
    dense_bytes = out_size * in_size * 4
    link = SharedLinear(in_size, out_size, n_shared=n_shared)
    x = chainer.Variable(np.ones((batch, in_size), np.float32))
    gy = np.ones((batch, out_size), np.float32)

    def step():
        link.cleargrads()
        x.cleargrad()
        y = TiledLinearFunction()(x, link.W, link.b)
        y.grad = gy
        y.backward()

    step()  # Chainer's first call sets up caches; those are not the algorithm's.
    peak = peak_allocated_bytes(step)
    assert peak is not None, 'run without python -X tracemalloc'
    assert peak >= dense_bytes
