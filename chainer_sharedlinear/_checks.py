"""Argument checks shared by the functions and the links.

One mistake gets one message, whether a function or a link receives it.
"""

import numbers

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


def n_batch_axes(value, ndim: int) -> int:
    """``value`` as an ``int``; ``ValueError`` unless it is 1, or from 2 to ``ndim - 1``.

    Several batch axes must leave at least one feature axis. One batch axis is
    always taken here: an input of one axis is the type check's to refuse, as
    ``F.linear`` does (``x.ndim == 2``).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError('n_batch_axes must be a positive integer, got {!r}'.format(value))
    if value > 1 and value >= ndim:
        raise ValueError(
            'n_batch_axes={} leaves no feature axis in an input of {} axes: the axes after '
            'the first n_batch_axes are the features'.format(value, ndim))
    return int(value)
