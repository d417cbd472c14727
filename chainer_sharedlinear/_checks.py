"""The checks of the family: every argument and every shape, each stated once.

One mistake gets one message, whether a function or a link receives it. The
shapes a function takes are stated once, in its node's ``check_type_forward``;
:func:`type_check_always` runs it where Chainer would not (``type_check``
off), since a wrong shape there would give a wrong answer silently.
"""

import fractions
import math
import numbers
import typing as tp

import chainer
import numpy
from chainer import utils
from chainer.utils import type_check

#: Why a lazy layer has no weights yet, in every message that needs them.
NOT_INITIALISED = ('not initialised yet: in_size is only known after the first forward pass; '
                   'run one, or build the layer with in_size')

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


def expect_inputs(in_types, names: tp.Sequence[str], ndims: tp.Sequence[tp.Optional[int]]):
    """The type check of a node's ``(x, weights...[, b])``, all but the bias.

    There are ``len(names)`` inputs, or one more for the bias (its check is
    :func:`expect_bias`); each is named for the messages, of a float dtype,
    and of its ``ndims`` (``None``: any). Returns their types.
    """
    n_in = in_types.size()
    type_check.expect(len(names) <= n_in, n_in <= len(names) + 1)
    types = tuple(in_types[:len(names)])
    type_check._argname(types, tuple(names))
    type_check.expect(*[t.dtype.kind == 'f' for t in types],
                      *[t.ndim == ndim for t, ndim in zip(types, ndims) if ndim is not None])
    return types


def expect_bias(in_types, n_weights: int, out_size) -> None:
    """The type check of the optional bias that follows ``x`` and ``n_weights`` weights.

    It must have ``x``'s dtype and the shape ``(out_size,)`` (``out_size`` an
    expression of the type check): a bias of another size would broadcast.
    """
    if type_check.eval(in_types.size()) == n_weights + 2:
        x_type, b_type = in_types[0], in_types[n_weights + 1]
        type_check._argname((b_type,), ('b',))
        type_check.expect(b_type.dtype == x_type.dtype, b_type.ndim == 1)
        type_check.expect(b_type.shape[0] == out_size)


def type_check_always(node: chainer.FunctionNode, inputs: tp.Tuple) -> None:
    """Runs ``node.check_type_forward`` on ``inputs`` if Chainer did not (``type_check`` off).

    Called first thing in the ``forward`` of each node of the family: with type
    checking off, an input of the wrong size would be reshaped or broadcast
    into another layer's arithmetic. Chainer's own light check is cheap; a
    failing one is checked again in full for the message, as Chainer does.
    """
    if not chainer.config.type_check:
        node._check_data_type_forward(inputs)


def shared_in_size(in_size, n_shared: int) -> int:
    """``in_size`` as an ``int``; ``ValueError`` unless ``n_shared`` divides it."""
    in_size = positive_int('in_size', in_size)
    if in_size % n_shared:
        raise ValueError(
            'in_size={} is not divisible by n_shared={}: the input must split into '
            'n_shared equal blocks (in_size = n_shared * k)'.format(in_size, n_shared))
    return in_size


def factors(name: str, value, size: tp.Optional[int] = None) -> tp.Tuple[int, int]:
    """``value`` as a pair of positive ints whose product is ``size``, or a ``ValueError``.

    The error lists the pairs that would do. ``size=None`` takes any product.

    >>> factors('in_factors', (25, 40), 1000)
    (25, 40)
    >>> factors('in_factors', (3, 5), 12)
    Traceback (most recent call last):
    ...
    ValueError: in_factors=(3, 5) do not multiply to 12; choose one of (1, 12), (2, 6), \
(3, 4), (4, 3), (6, 2), (12, 1)
    """
    # Imported here: the Kronecker function's module imports this one.
    from chainer_sharedlinear.functions.kronecker_linear import factor_pairs
    try:
        first, second = value
    except (TypeError, ValueError):
        raise ValueError('{} must be a pair of positive integers, got {!r}'.format(
            name, value)) from None
    for factor in (first, second):
        if isinstance(factor, bool) or not isinstance(factor, numbers.Integral) or factor < 1:
            raise ValueError('{} must be a pair of positive integers, got {!r}'.format(
                name, value))
    if size is not None and first * second != size:
        raise ValueError('{}=({}, {}) do not multiply to {}; choose one of {}'.format(
            name, first, second, size, ', '.join(str(pair) for pair in factor_pairs(size))))
    return int(first), int(second)


def rank(value: int, in_size: int, out_size: int) -> int:
    """``value``; ``ValueError`` unless it is at most ``min(in_size, out_size)``."""
    if value > min(in_size, out_size):
        raise ValueError(
            'rank={} is more than min(in_size, out_size) = min({}, {}): a weight of rank r '
            'stores r * (in_size + out_size) numbers, and a rank above that is no product of '
            'thinner matrices'.format(value, in_size, out_size))
    return value


#: The most clusters a clustered layer takes: its index is then 16 bits a weight.
MAX_CLUSTERS = 2 ** 16


def n_clusters(value) -> int:
    """``value`` as an ``int``; ``ValueError`` unless it is from 1 to :data:`MAX_CLUSTERS`."""
    value = positive_int('n_clusters', value)
    if value > MAX_CLUSTERS:
        raise ValueError('n_clusters must be at most 2**16 = 65536 (an index of 16 bits a '
                         'weight), got {}'.format(value))
    return value


def positive_float(name: str, value) -> float:
    """``value`` as a ``float``; ``ValueError`` naming ``name`` unless it is a number above 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError('{} must be a number above 0, got {!r}'.format(name, value))
    return float(value)


def fraction(name: str, value) -> float:
    """``value`` as a ``float``; ``ValueError`` naming ``name`` unless it is from 0 to 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ValueError('{} must be a number from 0 to 1, got {!r}'.format(name, value))
    return float(value)


#: The largest denominator a float budget is read with: at most one fraction of a
#: denominator up to 2**26 rounds to a given float in (0, 1] (two such fractions differ
#: by at least 2**-52, twice the spacing of the floats below 1), so the reading is
#: never a choice between two.
BUDGET_DENOMINATOR = 2 ** 26


def budget(value) -> fractions.Fraction:
    """``value`` as a :class:`~fractions.Fraction`; ``ValueError`` unless it is in ``(0, 1]``.

    A float is read as the simple fraction it was written as: the fraction of
    denominator up to :data:`BUDGET_DENOMINATOR` that rounds to it, if there is
    one, so that ``1/3`` is one third (not 0.3333333333333333, a little less);
    else as it prints (``0.1`` is one tenth either way). A
    :class:`~fractions.Fraction` or an integer is taken as it is.

    >>> budget(1/8), budget(0.1), budget(1/3), budget(2/3)
    (Fraction(1, 8), Fraction(1, 10), Fraction(1, 3), Fraction(2, 3))
    >>> budget(0.123456789012)
    Fraction(30864197253, 250000000000)
    """
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value)):
        raise ValueError('budget must be a fraction of the dense bytes in (0, 1], such as 1/8, '
                         'got {!r}'.format(value))
    if isinstance(value, numbers.Rational):
        fraction = fractions.Fraction(value)
    else:
        simple = fractions.Fraction(float(value)).limit_denominator(BUDGET_DENOMINATOR)
        fraction = (simple if float(simple) == float(value)
                    else fractions.Fraction(repr(float(value))))
    if not 0 < fraction <= 1:
        raise ValueError('budget must be a fraction of the dense bytes in (0, 1], such as 1/8, '
                         'got {}'.format(value))
    return fraction


def n_blocks(value, in_size: tp.Optional[int], out_size: int) -> int:
    """``value`` as an ``int``; ``ValueError`` unless every block of the sizes can be non-empty.

    A Monarch layer of ``n_blocks`` blocks gives each block at least one input
    and one output, so ``n_blocks`` is at most ``in_size`` (once known) and
    ``out_size``.

    >>> n_blocks(16, 1000, 900)
    16
    >>> n_blocks(16, 1000, 10)
    Traceback (most recent call last):
    ...
    ValueError: n_blocks=16 is more than out_size=10: each block needs at least one output \
(n_blocks <= min(in_size, out_size))
    """
    value = positive_int('n_blocks', value)
    for name, size in (('in_size', in_size), ('out_size', out_size)):
        if size is not None and value > size:
            word = 'input' if name == 'in_size' else 'output'
            raise ValueError(
                'n_blocks={} is more than {}={}: each block needs at least one {} '
                '(n_blocks <= min(in_size, out_size))'.format(value, name, size, word))
    return value


def float_dtype(name: str, value) -> numpy.dtype:
    """``value`` as a :class:`numpy.dtype`; ``ValueError`` naming ``name`` unless it is a float.

    >>> float_dtype('dtype', 'float16')
    dtype('float16')
    >>> float_dtype('dtype', 'int8')
    Traceback (most recent call last):
    ...
    ValueError: dtype must be a floating dtype (float16, float32, float64), got 'int8'
    """
    try:  # numpy.dtype(None) is float64: None is no dtype here
        dtype = None if value is None else numpy.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind != 'f':
        raise ValueError('{} must be a floating dtype (float16, float32, float64), got {!r}'
                         .format(name, value))
    return dtype
