"""The Monarch link: a weight ``P L Pᵀ R`` of two block-diagonal factors."""

import collections
import math
import typing as tp

import chainer
import numpy
from chainer import backend, initializer, initializers

from chainer_sharedlinear import _checks
from chainer_sharedlinear.functions.monarch_linear import (
    block_sizes,
    input_positions,
    monarch_linear,
)
from chainer_sharedlinear.links.virtual_linear import VirtualLinear, row_slices


class _BlockNormal(initializer.Initializer):
    """Normal draws with a standard deviation of each entry's own: ``scales``, broadcast."""

    def __init__(self, scales: numpy.ndarray, dtype=None) -> None:
        super().__init__(dtype)
        self.scales = scales

    def __call__(self, array):
        if self.dtype is not None:
            assert array.dtype == self.dtype
        initializers.Normal(scale=1.0, dtype=self.dtype)(array)
        array *= backend.get_array_module(array).asarray(self.scales, array.dtype)


class MonarchLinear(VirtualLinear):
    """Linear layer whose weight is a Monarch matrix, ``M = P L Pᵀ R`` (Dao et al., 2022).

    ``R`` and ``L`` are block-diagonal with ``n_blocks`` blocks, stored as
    ``(n_blocks, q, p)`` and ``(n_blocks, s, q)`` with ``p = ⌈in_size / n_blocks⌉``,
    ``s = ⌈out_size / n_blocks⌉`` and ``q = min(p, s)``; ``P`` interleaves the
    middle features between the blocks. It stores and computes
    ``n_blocks·q·(p + s)`` numbers and multiply-adds per example instead of
    ``in_size·out_size``: ``2·d²/b`` for ``d = b·q`` features both ways.
    Where ``n_blocks`` does not divide the sizes (:doc:`/monarch-linear`),
    the shorter blocks hold one feature fewer, and the entries of ``R`` that
    meet the padding and the rows of ``L`` whose outputs are cut do not
    change the output (they start at zero).

    Args:
        in_size (int or None): The size of the inputs; ``None`` defers it to
            the first forward pass. If only one size is given, it is ``out_size``.
        out_size (int): The size of the outputs.
        n_blocks (int): The number of blocks of ``R`` and of ``L``, at most
            ``min(in_size, out_size)``.
        nobias (bool): If ``True``, there is no bias.
        initialR (:ref:`initializer <initializer>`): Initializer of ``R``.
        initialL (:ref:`initializer <initializer>`): Initializer of ``L``. By
            default each block of each is drawn from a normal distribution of
            variance one over the block's fan-in (the features of its input
            block for ``R``, ``q`` for ``L``): the outputs then have
            ``L.Linear``'s variance.
        initial_bias (:ref:`initializer <initializer>`): Initializer of the
            bias, zero by default.

    Attributes:
        R (~chainer.Parameter): ``(n_blocks, q, p)``, applied first.
        L (~chainer.Parameter): ``(n_blocks, s, q)``, applied second.
        b (~chainer.Parameter): The bias, ``(out_size,)``, or ``None``.
        n_blocks (int): The number of blocks.

    .. admonition:: Example

        >>> import numpy as np
        >>> from chainer_sharedlinear import MonarchLinear
        >>> layer = MonarchLinear(4096, 4096, n_blocks=64)
        >>> layer.R.shape, layer.L.shape, (layer.R.size + layer.L.size) * 32 == 4096 ** 2
        ((64, 64, 64), (64, 64, 64), True)
        >>> layer = MonarchLinear(1000, 900, n_blocks=16)
        >>> layer.R.shape, layer.L.shape
        ((16, 57, 63), (16, 57, 57))
        >>> layer(np.zeros((2, 1000), np.float32)).shape
        (2, 900)
    """

    weight_names = ('R', 'L')
    saved_options = ('n_blocks', 'in_size', 'out_size')

    def __init__(
            self,
            in_size: tp.Optional[int],
            out_size: tp.Optional[int] = None,
            *,
            n_blocks: int,
            nobias: bool = False,
            initialR=None,
            initialL=None,
            initial_bias=None,
    ) -> None:
        super().__init__(in_size, out_size, nobias=nobias, initial_bias=initial_bias)
        self.n_blocks = _checks.n_blocks(n_blocks, self._in_size, self.out_size)
        self._add_weights(R=initialR, L=initialL)

    def _weight_shapes(self, in_size):
        b = self.n_blocks
        s = -(-self.out_size // b)
        if in_size is None:
            return collections.OrderedDict([('R', (b, None, None)), ('L', (b, s, None))])
        _checks.n_blocks(b, in_size, self.out_size)
        p, q, s = block_sizes(in_size, self.out_size, b)
        return collections.OrderedDict([('R', (b, q, p)), ('L', (b, s, q))])

    def _default_initializer(self, name, in_size):
        b = self.n_blocks
        p, q, s = block_sizes(in_size, self.out_size, b)
        if name == 'R':
            real = input_positions(in_size, b) >= 0           # (b, p)
            fan_in = real.sum(axis=1, keepdims=True)          # p or p - 1 per block
            scales = numpy.broadcast_to((real / numpy.sqrt(fan_in))[:, None, :], (b, q, p))
        else:
            scales = self._live_outputs(in_size)[:, :, None] / math.sqrt(q)
        return _BlockNormal(numpy.ascontiguousarray(scales))

    def _live_outputs(self, in_size) -> numpy.ndarray:
        """``(n_blocks, s)``: whether output ``t`` of block ``l``, ``t·n_blocks + l``, is kept."""
        b, s = self.n_blocks, block_sizes(in_size, self.out_size, self.n_blocks)[2]
        return (numpy.arange(s)[None, :] * b + numpy.arange(b)[:, None]) < self.out_size

    def _options(self):
        return collections.OrderedDict(n_blocks=self.n_blocks)

    def dense_weight(self):
        """The weight ``P L Pᵀ R``, ``(out_size, in_size)``: the layer applied to the identity."""
        R, L = self.R.array, self.L.array
        dtype = numpy.promote_types(R.dtype, L.dtype)
        dense = self.xp.empty((self.out_size, self.in_size), dtype)
        # A slice of the identity's rows at a time: its columns, and the layer's outputs.
        for inputs in row_slices(self.in_size):
            identity = self.xp.eye(inputs.stop - inputs.start, self.in_size, inputs.start,
                                   dtype=dtype)
            with chainer.no_backprop_mode():
                dense[:, inputs] = monarch_linear(identity, R, L, out_size=self.out_size).array.T
        return dense

    def _apply(self, x, n_batch_axes):
        return monarch_linear(x, self.R, self.L, self.b, n_batch_axes, out_size=self.out_size)

    @classmethod
    def from_linear(cls, linear: 'chainer.links.Linear', *, n_blocks: int) -> 'MonarchLinear':
        """Makes the ``MonarchLinear`` nearest a dense :class:`chainer.links.Linear`.

        Block ``(l, k)`` of the dense weight (the outputs of block ``l`` by the
        inputs of block ``k``) is, in a Monarch matrix, the sum of one outer
        product ``L[l, :, r] · R[k, j, :]`` for each middle feature that joins
        input block ``k`` to output block ``l``, and each middle feature joins
        exactly one pair: the blocks are independent matrices of a rank at
        most the number of such features (one each for ``n_blocks = q``). The
        leading terms of each block's singular value decomposition are then
        the nearest Monarch matrix in the Frobenius norm (Eckart–Young, block
        by block), and a Monarch matrix comes back exactly. The bias is
        copied; dtypes and device stay as they were.

        Args:
            linear (~chainer.links.Linear): An initialised dense layer.
            n_blocks (int): The number of blocks, as in the constructor.

        Returns:
            MonarchLinear: A new link, with ``in_size`` and ``out_size`` of ``linear``.

        .. admonition:: Example

            >>> import chainer.links as L
            >>> import numpy as np
            >>> layer = MonarchLinear(12, 10, n_blocks=3)
            >>> back = MonarchLinear.from_linear(layer.to_linear(), n_blocks=3)
            >>> bool(np.allclose(back.dense_weight(), layer.dense_weight(), atol=1e-5))
            True
        """
        layer = cls._like_linear(linear, n_blocks=n_blocks)
        xp, b, m, n = layer.xp, layer.n_blocks, layer.out_size, layer.in_size
        p, q, s = block_sizes(n, m, b)
        weight = linear.W.array
        positions = input_positions(n, b)
        real = positions >= 0
        # Middle feature f joins row j of input block k to column r of output block l:
        # it is the order-th term of the pair (l, k), whose features have consecutive r.
        f = numpy.arange(b * q)
        k, j, out_block, r = f // q, f % q, f % b, f // b
        order = r - numpy.maximum(0, -(-(k * q - out_block) // b))
        pair = out_block * b + k
        k, j, out_block, r, order = (xp.asarray(i) for i in (k, j, out_block, r, order))
        R = xp.zeros((b, q, p))
        L = xp.zeros((b, s, q))
        # The block pairs (l, k), a slice of them at a time, each in float64 and zero where
        # it is padded: output t of block l is row t·b + l, input i of block k is column
        # positions[k, i].
        for pairs in row_slices(b * b):
            ls, ks = numpy.divmod(numpy.arange(pairs.start, pairs.stop), b)
            rows = numpy.arange(s)[None, :] * b + ls[:, None]
            live = (rows < m)[:, :, None] & real[ks][:, None, :]
            blocks = weight[xp.asarray(numpy.minimum(rows, m - 1))[:, :, None],
                            xp.asarray(numpy.maximum(positions[ks], 0))[:, None, :]]
            blocks = xp.where(xp.asarray(live), blocks.astype('d'), 0.0)
            u, sigma, vt = xp.linalg.svd(blocks, full_matrices=False)
            del blocks
            features = numpy.flatnonzero((pair >= pairs.start) & (pair < pairs.stop))
            block = xp.asarray(pair[features] - pairs.start)
            features = xp.asarray(features)
            term = order[features]
            root = xp.sqrt(sigma[block, term])
            R[k[features], j[features], :] = vt[block, term, :] * root[:, None]
            L[out_block[features], :, r[features]] = u[block, :, term] * root[:, None]
            del u, vt
        # The entries that meet padding or cut outputs come out of the SVD as zero up to
        # rounding; they are set to zero, as they start.
        R *= xp.asarray(real)[:, None, :]
        L *= xp.asarray(layer._live_outputs(n))[:, :, None]
        layer.R.array[...] = R
        layer.L.array[...] = L
        return layer
