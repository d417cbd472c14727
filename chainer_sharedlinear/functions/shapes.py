"""The batch axes of the family's functions.

Each function computes on a matrix, ``(batch, in_size)``: the batch axes of
its input are flattened into one first and restored in the output after. The
sizes are spelled out rather than ``-1``, which fails on an empty batch.
"""

import typing as tp

import chainer.functions as F
from chainer import utils

from chainer_sharedlinear import _checks


def as_matrix(x, n_batch_axes: int) -> tp.Tuple[tp.Any, tp.Tuple[int, ...]]:
    """``x`` as a ``(batch, in_size)`` matrix, and the batch shape to restore.

    ``n_batch_axes`` is checked (:func:`chainer_sharedlinear._checks.n_batch_axes`);
    the features are the axes after the batch axes, flattened.
    """
    n_batch_axes = _checks.n_batch_axes(n_batch_axes, x.shape)
    batch_shape = tuple(x.shape[:n_batch_axes])
    if x.ndim > 2 or n_batch_axes > 1:
        x = F.reshape(x, (utils.size_of_shape(batch_shape),
                          utils.size_of_shape(x.shape[n_batch_axes:])))
    return x, batch_shape


def with_batch_axes(y, batch_shape: tp.Tuple[int, ...]):
    """``y`` of shape ``(batch, out_size)`` as ``batch_shape + (out_size,)``."""
    if len(batch_shape) > 1:
        y = F.reshape(y, batch_shape + (y.shape[1],))
    return y
