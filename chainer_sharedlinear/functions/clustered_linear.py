"""The node of a clustered layer, and its index at the bit width it needs.

A clustered layer (:class:`~chainer_sharedlinear.ClusteredLinear`) is
:func:`~chainer_sharedlinear.tied_linear` with an index of ``n_clusters``
values: its node is that of ``tied_linear``, and knows ``n_clusters``, so that
an ONNX file stores the index at :func:`index_bits` bits a weight, as the
layer's own file does.
"""

import math

import chainer
import numpy

from chainer_sharedlinear.functions.tied_linear import TiedLinearFunction


class ClusteredLinearFunction(TiedLinearFunction):
    """``y = x · W[index]ᵀ + b``: :class:`TiedLinearFunction` with ``n_clusters`` values.

    Args:
        index: The cluster of every virtual weight, ``(out_size, in_size)``,
            of an unsigned integer type, each below ``n_clusters``.
        n_clusters (int): The size of the codebook ``W``.
    """

    def __init__(self, index, n_clusters: int) -> None:
        super().__init__(index)
        self.n_clusters = n_clusters


def index_bits(n_clusters: int) -> int:
    """The bits that one entry of the index takes in a saved file: ``⌈log2 n_clusters⌉``, ≥ 1.

    >>> index_bits(16), index_bits(17), index_bits(1)
    (4, 5, 1)
    """
    return max(1, math.ceil(math.log2(n_clusters)))


def index_dtype(n_clusters: int) -> numpy.dtype:
    """The smallest unsigned type that holds every entry of the index, in memory."""
    return numpy.dtype(numpy.uint8 if n_clusters <= 2 ** 8 else numpy.uint16)


def pack_index(index, bits: int) -> numpy.ndarray:
    """The entries of ``index`` at ``bits`` bits each, packed into bytes (NumPy).

    >>> pack_index(numpy.array([1, 2, 3]), 2)  # 01 10 11, low bit first
    array([57], dtype=uint8)
    """
    values = numpy.asarray(chainer.backend.CpuDevice().send(index)).ravel()
    planes = (values[:, None] >> numpy.arange(bits, dtype=values.dtype)) & 1
    return numpy.packbits(planes.astype(numpy.uint8).ravel(), bitorder='little')


def packed_size(count: int, bits: int) -> int:
    """The bytes that :func:`pack_index` packs ``count`` entries of ``bits`` bits into.

    >>> packed_size(3, 2), packed_size(5, 3)
    (1, 2)
    """
    return math.ceil(count * bits / 8)


def unpack_index(packed, bits: int, count: int, dtype) -> numpy.ndarray:
    """The ``count`` entries that :func:`pack_index` packed, in ``dtype`` (NumPy)."""
    planes = numpy.unpackbits(numpy.asarray(packed, numpy.uint8), count=count * bits,
                              bitorder='little').reshape(count, bits)
    weights = (1 << numpy.arange(bits)).astype(dtype)
    return planes.astype(dtype).dot(weights).astype(dtype)


