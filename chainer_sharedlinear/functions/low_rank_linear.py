"""The low-rank linear function, ``y = (x · Vᵀ) · Uᵀ + b``: a weight ``U · V`` of rank ``r``.

Two of Chainer's own linear functions: ``x`` is mapped to the ``r`` numbers
``x · Vᵀ``, and those to the outputs. Nothing of size ``(out_size, in_size)``
is ever built, every backward pass and the ONNX export are Chainer's, and the
arithmetic is ``r · (in_size + out_size)`` multiply-adds per row where a
dense layer takes ``in_size · out_size``.
"""

import chainer.functions as F

from chainer_sharedlinear.functions import shapes


def low_rank_linear(x, U, V, b=None, n_batch_axes: int = 1):
    """Linear function whose weight is the product of two thin matrices, ``U · V``.

    .. math:: y = x \\, (U V)^\\top + b = (x V^\\top) \\, U^\\top + b

    Args:
        x (:class:`~chainer.Variable` or :ref:`ndarray`): Input; the axes after
            the first ``n_batch_axes`` hold ``in_size`` features.
        U (:class:`~chainer.Variable` or :ref:`ndarray`): ``(out_size, rank)``.
        V (:class:`~chainer.Variable` or :ref:`ndarray`): ``(rank, in_size)``.
        b (:class:`~chainer.Variable` or :ref:`ndarray`): Optional bias of
            shape ``(out_size,)``.
        n_batch_axes (int): The number of batch axes.

    Returns:
        ~chainer.Variable: Output of shape ``(*batch_shape, out_size)``.

    .. admonition:: Example

        >>> import numpy as np
        >>> U = np.array([[1], [2]], np.float32)     # (2, 1)
        >>> V = np.array([[1, 0, -1]], np.float32)   # (1, 3): rank 1
        >>> low_rank_linear(np.eye(3, dtype=np.float32), U, V).array.T  # U · V
        array([[ 1.,  0., -1.],
               [ 2.,  0., -2.]], dtype=float32)
    """
    # The batch axes are flattened here: F.linear's own reshape fails on an empty batch.
    x, batch_shape = shapes.as_matrix(x, n_batch_axes)
    return shapes.with_batch_axes(F.linear(F.linear(x, V), U, b), batch_shape)
