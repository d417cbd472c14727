"""HashedNets: a linear function whose virtual weights are drawn from buckets by a hash.

Chen, Wilson, Tyree, Weinberger and Chen, "Compressing Neural Networks with
the Hashing Trick" (ICML 2015): every virtual weight ``V[i, j]`` of an
``(out_size, in_size)`` layer is ``ξ(i, j) · w[h(i, j)]``, one of the
``n_weights`` stored weights ``w`` chosen by a hash ``h``, times a sign
``ξ(i, j) = ±1`` chosen by another. Only ``w`` is stored; the map is a pure
function of ``(i, j)``, the sizes and a seed, recomputed when needed.

The hash, fixed once and for all because saved models depend on it, uses
32-bit unsigned integer arithmetic (which wraps alike on NumPy and CuPy) and
the ``lowbias32`` mixer of Chris Wellons' hash-prospector, a bijection of
32-bit integers::

    mix(z) = z ^ z >> 16;  z *= 0x7feb352d;  z ^= z >> 15;  z *= 0x846ca68b;  z ^= z >> 16
    row(i) = mix(mix(seed ^ 0x68e31da4) ^ i)
    hash(i, j) = mix(row(i) ^ j)
    bucket(i, j) = hash(i, j) % n_weights
    sign(i, j) = +1 if mix(hash(i, j) ^ 0x5bd1e995) < 2**31 else -1

For a given row the hash is a bijection of ``j``, so no two virtual weights
of a row ever get the same hash; the bucket and the sign come from unrelated
bits of it.
"""

import typing as tp

import chainer
import chainer.functions as F
import numpy
from chainer import backend

from chainer_sharedlinear import _checks
from chainer_sharedlinear.functions.tied_linear import TiedLinearFunction, apply_tied_linear

_MIX_MULTIPLIERS = (0x7feb352d, 0x846ca68b)
_SEED_KEY = 0x68e31da4
_SIGN_KEY = 0x5bd1e995
#: Sizes and bucket counts index 32-bit hashes.
HASH_LIMIT = 2 ** 32


def mix32(z, xp=numpy):
    """The ``lowbias32`` mixer: a bijection of ``uint32`` values, elementwise.

    >>> import numpy as np
    >>> mix32(np.array([0, 1, 2], np.uint32))
    array([         0, 1753845952, 3507691905], dtype=uint32)
    """
    z = xp.asarray(z, dtype=numpy.uint32)
    with numpy.errstate(over='ignore'):  # products wrap modulo 2**32 by design
        z = z ^ (z >> numpy.uint32(16))
        z = z * numpy.uint32(_MIX_MULTIPLIERS[0])
        z = z ^ (z >> numpy.uint32(15))
        z = z * numpy.uint32(_MIX_MULTIPLIERS[1])
        return z ^ (z >> numpy.uint32(16))


def hashed_index(out_size: int, in_size: int, n_weights: int, seed: int,
                 xp=numpy) -> tp.Tuple[tp.Any, tp.Any]:
    """The bucket and the sign of every virtual weight of a hashed layer.

    Args:
        out_size (int): Rows of the virtual weight.
        in_size (int): Its columns.
        n_weights (int): The number of stored weights (buckets).
        seed (int): The seed of the hash, in ``[0, 2**32)``.
        xp: ``numpy`` or ``cupy``: where the arrays are made.

    Returns:
        ``(bucket, sign)``: ``(out_size, in_size)`` arrays, ``bucket`` of
        ``numpy.intp`` in ``[0, n_weights)``, ``sign`` of ``int8`` ±1.

    .. admonition:: Example

        >>> bucket, sign = hashed_index(2, 3, n_weights=4, seed=0)
        >>> bucket
        array([[3, 1, 1],
               [2, 1, 2]])
        >>> sign
        array([[ 1,  1,  1],
               [-1, -1, -1]], dtype=int8)
    """
    out_size, in_size, n_weights, seed_key = _checked(out_size, in_size, n_weights, seed)
    bucket, negative = _hash_rows(xp.arange(out_size, dtype=numpy.uint32), in_size, n_weights,
                                  seed_key, xp)
    sign = (1 - 2 * negative.astype(numpy.int8)).astype(numpy.int8)
    return bucket.astype(numpy.intp), sign


def signed_hashed_index(out_size: int, in_size: int, n_weights: int, seed: int, xp=numpy,
                        rows: slice = slice(None)):
    """Where each virtual weight of a hashed layer is in ``[W, -W]``.

    Its bucket, plus ``n_weights`` where its sign is -1: the map of
    :func:`hashed_index` in one array of ``int32`` (``int64`` from
    ``2 * n_weights > 2**31``), 4 bytes per virtual weight where the bucket
    and the sign take 9 or more. It is computed a few rows at a time, so
    that the hash's intermediate arrays stay small; ``rows``, a slice of
    consecutive rows, computes those rows of it alone.

    >>> signed_hashed_index(2, 3, n_weights=4, seed=0)
    array([[3, 1, 1],
           [6, 5, 6]], dtype=int32)
    >>> signed_hashed_index(2, 3, n_weights=4, seed=0, rows=slice(1, 2))
    array([[6, 5, 6]], dtype=int32)
    """
    out_size, in_size, n_weights, seed_key = _checked(out_size, in_size, n_weights, seed)
    first, stop, _ = rows.indices(out_size)
    index = xp.empty((max(0, stop - first), in_size),
                     numpy.int32 if 2 * n_weights <= 2 ** 31 else numpy.int64)
    step = max(1, _BLOCK_SIZE // in_size)
    for start in range(0, len(index), step):
        numbers = xp.arange(first + start, first + min(start + step, len(index)),
                            dtype=numpy.uint32)
        bucket, negative = _hash_rows(numbers, in_size, n_weights, seed_key, xp)
        block = index[start:start + len(numbers)]
        block[...] = negative
        block *= n_weights
        block += bucket
    return index


# The rows of the map computed at once by signed_hashed_index hold about this many
# virtual weights.
_BLOCK_SIZE = 2 ** 14


def _checked(out_size, in_size, n_weights, seed) -> tp.Tuple[int, int, int, tp.Any]:
    """The sizes as ints, refused as :func:`hashed_index` documents, and the hashed seed."""
    out_size = _checks.positive_int('out_size', out_size)
    in_size = _checks.positive_int('in_size', in_size)
    n_weights = check_n_weights(n_weights, in_size, out_size)
    seed = _checks.seed(seed)
    if max(out_size, in_size) >= HASH_LIMIT:
        raise ValueError('hashed layers take sizes below 2**32, got {} x {}'.format(
            out_size, in_size))
    return out_size, in_size, n_weights, seed_key(seed)


def seed_key(seed: int):
    """``mix(seed ^ 0x68e31da4)``, the ``uint32`` that every row's hash starts from."""
    return mix32(numpy.uint32(seed) ^ numpy.uint32(_SEED_KEY))


def _hash_rows(rows, in_size: int, n_weights: int, key, xp):
    """``bucket`` (``uint32``) and ``negative`` (1 where the sign is -1) of the given rows."""
    rows = mix32(rows ^ key, xp)
    hashes = mix32(rows[:, None] ^ xp.arange(in_size, dtype=numpy.uint32)[None, :], xp)
    negative = mix32(hashes ^ numpy.uint32(_SIGN_KEY), xp) >> numpy.uint32(31)
    return hashes % numpy.uint32(n_weights), negative


def check_n_weights(n_weights, in_size: int, out_size: int) -> int:
    """``n_weights`` as an ``int``; ``ValueError`` unless it is from 1 to ``in_size·out_size``."""
    n_weights = _checks.positive_int('n_weights', n_weights)
    if n_weights > in_size * out_size:
        raise ValueError(
            'n_weights={} is more than the {} x {} = {} virtual weights of the layer: a hashed '
            'layer stores at most one weight per virtual weight'.format(
                n_weights, out_size, in_size, in_size * out_size))
    if n_weights >= HASH_LIMIT:
        raise ValueError('n_weights must be below 2**32, got {}'.format(n_weights))
    return n_weights


def hashed_linear(x, W, b=None, n_batch_axes: int = 1, *, out_size: int, seed: int):
    """HashedNets' linear function: ``y = x · Vᵀ + b`` with ``V[i, j] = ξ(i, j) · W[h(i, j)]``.

    The bucket ``h(i, j)`` and the sign ``ξ(i, j)`` of each virtual weight
    come from a seeded hash of ``(i, j)``
    (:func:`~chainer_sharedlinear.functions.hashed_index`, documented in this
    module). ``V`` is gathered, and the gradient of ``W`` is the signed
    sum, bucket by bucket, of the gradient of ``V`` (in a fixed order on the
    CPU). The map is recomputed on every call
    (``signed_hashed_index``); the
    :class:`~chainer_sharedlinear.HashedLinear` link keeps it.

    Args:
        x (:class:`~chainer.Variable` or :ref:`ndarray`): Input; the axes after
            the first ``n_batch_axes`` hold ``in_size`` features.
        W (:class:`~chainer.Variable` or :ref:`ndarray`): The stored weights,
            of shape ``(n_weights,)``.
        b (:class:`~chainer.Variable` or :ref:`ndarray`): Optional bias of
            shape ``(out_size,)``.
        n_batch_axes (int): The number of batch axes.
        out_size (int): The size of the outputs (keyword only).
        seed (int): The seed of the hash, in ``[0, 2**32)`` (keyword only).

    Returns:
        ~chainer.Variable: Output of shape ``(*batch_shape, out_size)``.

    .. admonition:: Example

        >>> import numpy as np
        >>> W = np.array([1, 10, 100, 1000], np.float32)
        >>> hashed_linear(np.eye(3, dtype=np.float32), W, out_size=2, seed=0).array.T
        array([[1000.,   10.,   10.],
               [-100.,  -10., -100.]], dtype=float32)
    """
    if W.ndim != 1:
        raise ValueError('W must be a vector, (n_weights,), got shape {}'.format(W.shape))
    in_size = _checks.in_size_of(x.shape, n_batch_axes)
    index = signed_hashed_index(out_size, in_size, W.shape[0], seed, backend.get_array_module(W))
    return apply_hashed_linear(x, W, index, seed, b, n_batch_axes)


def apply_hashed_linear(x, W, index, seed: int, b=None, n_batch_axes: int = 1):
    """:class:`HashedLinearFunction` on ``x`` with any batch axes.

    ``index`` is :func:`signed_hashed_index` of the layer, unchecked.
    The virtual weight is gathered from ``[W, -W]``, a differentiable
    concatenation of ``2 * n_weights`` values, so that the map needs no signs.
    """
    W = chainer.as_variable(W)
    return apply_tied_linear(x, F.concat((W, -W), axis=0), index, None, b, n_batch_axes,
                             node=HashedLinearFunction(index, W.shape[0], seed))


class HashedLinearFunction(TiedLinearFunction):
    """The node of a hashed layer: a ``TiedLinearFunction`` whose map is the layer's hash.

    Its inputs are ``x``, the table ``[W, -W]`` and the bias; ``index`` is
    :func:`signed_hashed_index` of the layer's sizes, ``n_weights`` and ``seed``,
    which the node keeps so that an ONNX file can compute the map instead of
    storing it (:mod:`chainer_sharedlinear.onnx_export`).
    """

    def __init__(self, index, n_weights: int, seed: int) -> None:
        super().__init__(index)
        self.n_weights = n_weights
        self.seed = seed
