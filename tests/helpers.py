"""Dense oracles and small utilities shared by the tests."""

import numpy as np

BACKENDS = [{}, {'use_cuda': True}]  # NumPy, and CuPy where there is a GPU


def tiled(W, n_shared):
    """The dense weight ``[W W ... W]`` that a shared weight stands for."""
    return np.tile(W, (1, n_shared))


def dense_oracle(x, W, b=None, n_batch_axes=1):
    """``x · tile(W)ᵀ + b`` in float64, with the batch axes of ``x`` kept."""
    batch_shape = x.shape[:n_batch_axes]
    x2 = x.reshape(int(np.prod(batch_shape)), int(np.prod(x.shape[n_batch_axes:])))
    x2 = x2.astype(np.float64)
    W = W.astype(np.float64)
    y = x2 @ tiled(W, x2.shape[1] // W.shape[1]).T
    if b is not None:
        y += b.astype(np.float64)
    return y.reshape(batch_shape + (W.shape[0],))
