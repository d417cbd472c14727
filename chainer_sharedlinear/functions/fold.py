"""Array-level helpers for a weight shared across the blocks of an input.

An input row of ``in_size = n_shared * k`` features is ``n_shared`` blocks of
``k``. Multiplying it by the tiled weight ``[W W ... W]`` is the same as
multiplying the sum of its blocks by ``W``; these two helpers are that sum and
its adjoint. They take NumPy or CuPy arrays and return the same kind.
"""

from chainer import backend

from chainer_sharedlinear import _dtypes


def fold(x, n_shared):
    """Sums the ``n_shared`` blocks of each row: ``(B, n_shared * k) -> (B, k)``.

    The sum is taken and returned in the accumulation dtype (float32 for
    float16 blocks, as everywhere in the family); with
    ``n_shared == 1`` the input itself is returned.

    >>> import numpy as np
    >>> fold(np.arange(6.0).reshape(1, 6), 3)
    array([[6., 9.]])
    """
    if n_shared == 1:
        return x
    batch, in_size = x.shape
    xp = backend.get_array_module(x)
    blocks = x.reshape(batch, n_shared, in_size // n_shared)
    # A product with a vector of ones adds the blocks through BLAS, faster on
    # NumPy than blocks.sum(axis=1), which reduces over a middle axis
    # (docs/benchmarks.md); in float32 ones for float16 blocks, faster again.
    return xp.matmul(xp.ones(n_shared, dtype=_dtypes.accumulation_dtype(x.dtype)), blocks)


def unfold(g, n_shared):
    """Repeats each row ``n_shared`` times side by side: ``(B, k) -> (B, n_shared * k)``.

    The adjoint of :func:`fold`: the gradient of ``fold(x)`` with respect to
    ``x`` is ``unfold`` of the incoming gradient.

    >>> import numpy as np
    >>> unfold(np.array([[1.0, 2.0]]), 3)
    array([[1., 2., 1., 2., 1., 2.]])
    """
    if n_shared == 1:
        return g
    return backend.get_array_module(g).tile(g, (1, n_shared))
