"""Argument checks shared by the functions and the links.

One mistake gets one message, whether a function or a link receives it.
"""

import numbers
import typing as tp

from chainer import utils

#: Seeds are 32-bit: the hash of :mod:`~chainer_sharedlinear.functions.hashed_linear`
#: mixes them as ``uint32``.
SEED_LIMIT = 2 ** 32


def positive_int(name: str, value) -> int:
    """``value`` as an ``int``; ``ValueError`` naming ``name`` unless it is an integer >= 1.

    >>> positive_int('n_shared', 3)
    3
    >>> positive_int('n_shared', 3.0)
    Traceback (most recent call last):
    ...
    ValueError: n_shared must be a positive integer, got 3.0
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError('{} must be a positive integer, got {!r}'.format(name, value))
    if value < 1:
        raise ValueError('{} must be at least 1, got {}'.format(name, value))
    return int(value)


def seed(value) -> int:
    """``value`` as an ``int``; ``ValueError`` unless it is an integer in ``[0, 2**32)``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError('seed must be an integer from 0 to 2**32 - 1, got {!r}'.format(value))
    if not 0 <= value < SEED_LIMIT:
        raise ValueError('seed must be an integer from 0 to 2**32 - 1, got {}'.format(value))
    return int(value)


def n_batch_axes(value, shape: tp.Tuple[int, ...]) -> int:
    """``value`` as an ``int``; ``ValueError`` unless it is 1, or from 2 to ``len(shape) - 1``.

    Several batch axes must leave at least one feature axis. One batch axis is
    always taken here: an input of one axis is the type check's to refuse, as
    ``F.linear`` does (``x.ndim == 2``).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError('n_batch_axes must be a positive integer, got {!r}'.format(value))
    if value > 1 and value >= len(shape):
        raise _no_feature_axis(shape, value)
    return int(value)


def in_size_of(shape: tp.Tuple[int, ...], n_batch_axes_: int) -> int:
    """The number of features of an input of ``shape``: its axes after the batch axes.

    ``ValueError`` if it has no such axis, where a type check would refuse the
    input only later: a lazy layer takes its ``in_size`` from this.
    """
    n_batch_axes_ = n_batch_axes(n_batch_axes_, shape)
    if len(shape) <= n_batch_axes_:
        raise _no_feature_axis(shape, n_batch_axes_)
    return utils.size_of_shape(shape[n_batch_axes_:])


def _no_feature_axis(shape, n_batch_axes_) -> ValueError:
    return ValueError(
        'x has shape {}, which leaves no feature axis after n_batch_axes={} batch axes: the '
        'axes after the batch axes are the features (a single example is a batch of one, '
        '(1, in_size))'.format(tuple(shape), n_batch_axes_))
