"""Monarch layers: ``y = x · Mᵀ + b`` with ``M = P L Pᵀ R``, two batched matrix products.

Dao et al.'s Monarch matrices (ICML 2022): ``R`` and ``L`` are block-diagonal,
``n_blocks`` blocks each, and ``P`` is the permutation that reads a vector of
``n_blocks · q`` numbers as a ``q × n_blocks`` matrix and transposes it. For
``d = b²`` features and ``b`` blocks that is ``2·d²/b`` numbers and
multiply-adds instead of ``d²``.

Sizes that ``n_blocks`` does not divide are met as follows, with
``p = ⌈in_size / n_blocks⌉``, ``s = ⌈out_size / n_blocks⌉`` and ``q = min(p, s)``:

- The input is cut into ``n_blocks`` consecutive blocks of ``p`` or ``p - 1``
  features, the shorter ones last, each padded with a zero to ``p``: no block
  is left with only padding, as a single zero tail could leave it.
- ``R`` is ``(n_blocks, q, p)``: block ``k`` maps input block ``k`` to ``q``
  middle features. ``P`` interleaves them: middle feature ``f = k·q + j``
  goes to output block ``f mod n_blocks``.
- ``L`` is ``(n_blocks, s, q)``, and output ``t`` of block ``l`` is output
  feature ``t · n_blocks + l``; the features from ``out_size`` on are cut, so
  the shorter output blocks (``s - 1`` rows) are again the last ones.

Entries of ``R`` that meet the padding, and rows of ``L`` that are cut, do not
change the output.
"""

import typing as tp

import chainer
import numpy
from chainer import function_node
from chainer.utils import type_check

from chainer_sharedlinear import _checks, _dtypes
from chainer_sharedlinear.functions import shapes
from chainer_sharedlinear.functions._ops import ArrayOps, VariableOps


def block_sizes(in_size: int, out_size: int, n_blocks: int) -> tp.Tuple[int, int, int]:
    """``(p, q, s)``: the sizes of the input, middle and output blocks of a Monarch layer.

    ``p = ⌈in_size / n_blocks⌉``, ``s = ⌈out_size / n_blocks⌉`` and ``q = min(p, s)``,
    the middle as wide as the narrower side can use.

    >>> block_sizes(4096, 4096, 64), block_sizes(1000, 900, 16)
    ((64, 64, 64), (63, 57, 57))
    """
    p, s = -(-in_size // n_blocks), -(-out_size // n_blocks)
    return p, min(p, s), s


def input_positions(in_size: int, n_blocks: int) -> numpy.ndarray:
    """The input feature at each place of each input block, ``(n_blocks, p)``; ``-1`` for padding.

    >>> input_positions(7, 3)
    array([[ 0,  1,  2],
           [ 3,  4, -1],
           [ 5,  6, -1]])
    """
    p = -(-in_size // n_blocks)
    n_short = n_blocks * p - in_size
    n_full = n_blocks - n_short
    positions = numpy.full((n_blocks, p), -1)
    positions[:n_full] = numpy.arange(n_full * p).reshape(n_full, p)
    positions[n_full:, :p - 1] = n_full * p + numpy.arange(n_short * (p - 1)).reshape(
        n_short, p - 1)
    return positions


class _Layout:
    """The layout of ``P L Pᵀ R`` as batched matrix products, for the forward pass and for
    both backward passes, on arrays or on variables (``ops``).

    Blocks are the leading axis of every batched product, and each product
    finds its operands, on arrays, as views laid out as BLAS takes them:

    - the input blocks, ``(n_blocks, N, p)``, are a view of ``x`` (a padded
      copy where ``n_blocks`` does not divide ``in_size``);
    - the middle is one ``(n_blocks·q, N)`` array, a row per middle feature
      ``f``, held as ``(n_blocks, q, N)``: ``R``'s blocks write its
      consecutive rows, and ``L``'s blocks read every ``n_blocks``-th row,
      which is ``P``, as another view;
    - ``L``'s products are laid out ``(N, n_blocks, s)``, one transpose of
      small ``(n_blocks, s)`` matrices from the output's order.

    That transpose and its inverse on the output's gradient are the only
    copies a step makes, with the padding where ``n_blocks`` does not divide
    the sizes. Every product is taken in the accumulation dtype of
    ``x``, ``R`` and ``L``.
    """

    def __init__(self, ops, x, R, L, out_size: int) -> None:
        self.ops = ops
        self.batch, self.in_size = x.shape
        self.n_blocks, self.q, self.p = R.shape
        self.s = L.shape[1]
        self.out_size = out_size
        dtype = _dtypes.accumulation_dtype(x.dtype, R.dtype, L.dtype)
        self.dtype = dtype
        self.R = ops.cast(R, dtype)
        self.L = ops.cast(L, dtype)
        self.X = self._input_blocks(ops.cast(x, dtype))

    def _input_blocks(self, x):
        """``(N, in_size)`` -> ``(n_blocks, N, p)``: the shorter blocks last, zero-padded."""
        ops, batch, n_blocks, p = self.ops, self.batch, self.n_blocks, self.p
        n_short = n_blocks * p - self.in_size
        if n_short == 0:
            X = ops.reshape(x, (batch, n_blocks, p))
        else:
            n_full = n_blocks - n_short
            full = ops.reshape(ops.get_item(x, (slice(None), slice(0, n_full * p))),
                               (batch, n_full, p))
            short = ops.reshape(ops.get_item(x, (slice(None), slice(n_full * p, None))),
                                (batch, n_short, p - 1))
            X = ops.concat((full, ops.pad_last(short, 1)), axis=1)
        return ops.transpose(X, (1, 0, 2))

    def _input_features(self, gX):
        """The inverse of :meth:`_input_blocks`, the padding dropped: ``(N, in_size)``."""
        ops, batch, n_blocks, p = self.ops, self.batch, self.n_blocks, self.p
        gX = ops.transpose(gX, (1, 0, 2))
        n_short = n_blocks * p - self.in_size
        if n_short == 0:
            return ops.reshape(gX, (batch, self.in_size))
        n_full = n_blocks - n_short
        full = ops.reshape(ops.get_item(gX, (slice(None), slice(0, n_full))),
                           (batch, n_full * p))
        short = ops.reshape(ops.get_item(gX, (slice(None), slice(n_full, None), slice(0, p - 1))),
                            (batch, n_short * (p - 1)))
        return ops.concat((full, short), axis=1)

    def _by_output_block(self, H):
        """``Pᵀ``: the middle ``(n_blocks, q, N)`` by input block ``k``, row ``j``, to
        the same by output block: feature ``f = k·q + j`` to block ``f mod n_blocks``,
        row ``f // n_blocks``."""
        ops = self.ops
        return ops.transpose(ops.reshape(H, (self.q, self.n_blocks, self.batch)), (1, 0, 2))

    def _by_input_block(self, Z):
        """The inverse of :meth:`_by_output_block`."""
        ops = self.ops
        return ops.reshape(ops.transpose(Z, (1, 0, 2)), (self.n_blocks, self.q, self.batch))

    def z(self):
        """``Pᵀ R x``, transposed, by output block: ``(n_blocks, q, N)``."""
        ops = self.ops
        return self._by_output_block(ops.batch_matmul(self.R, ops.transpose(self.X, (0, 2, 1))))

    def output_blocks(self, Z):
        """``L Z``, transposed, by output block: ``(n_blocks, N, s)``."""
        ops = self.ops
        return ops.batch_matmul_interleaved(ops.transpose(Z, (0, 2, 1)),
                                            ops.transpose(self.L, (0, 2, 1)))

    def y(self, Z):
        """``P L Z``: ``(N, out_size)``, output ``t`` of block ``l`` at ``t · n_blocks + l``."""
        ops, batch, n_padded = self.ops, self.batch, self.n_blocks * self.s
        y = ops.reshape(ops.transpose(self.output_blocks(Z), (1, 2, 0)), (batch, n_padded))
        if self.out_size == n_padded:
            return y
        return ops.get_item(y, (slice(None), slice(0, self.out_size)))

    def output_gradient_blocks(self, gy):
        """``Pᵀ`` of the output's gradient, by output block as :meth:`output_blocks`."""
        ops, batch, n_padded = self.ops, self.batch, self.n_blocks * self.s
        gY = ops.cast(gy, self.dtype)
        if self.out_size < n_padded:
            gY = ops.pad_last(gY, n_padded - self.out_size)
        gY = ops.contiguous(
            ops.transpose(ops.reshape(gY, (batch, self.s, self.n_blocks)), (0, 2, 1)))
        return ops.transpose(gY, (1, 0, 2))

    def block_gradients(self, indexes, gY, Z=None):
        """The gradients of the input blocks, ``R`` and ``L`` asked for in ``indexes``
        (0, 1, 2), from :meth:`output_gradient_blocks`; ``Z`` is :meth:`z`, if kept."""
        ops = self.ops
        grads = {}
        if 0 in indexes or 1 in indexes:
            gH = self._by_input_block(ops.batch_matmul_interleaved(
                ops.transpose(self.L, (0, 2, 1)), ops.transpose(gY, (0, 2, 1))))
        if 0 in indexes:
            grads[0] = ops.batch_matmul_interleaved(ops.transpose(gH, (0, 2, 1)), self.R)
        if 1 in indexes:
            grads[1] = ops.batch_matmul(gH, self.X)
        if 2 in indexes:
            Z = self.z() if Z is None else Z
            grads[2] = ops.batch_matmul(ops.transpose(gY, (0, 2, 1)),
                                        ops.transpose(Z, (0, 2, 1)))
        return grads

    def gradients(self, indexes, gy, Z=None, dtypes=None):
        """The gradients of ``x``, ``R``, ``L`` and the bias asked for in ``indexes``.

        ``Z`` is :meth:`z`, if kept; ``dtypes`` those of ``x``, ``R``, ``L``.
        """
        ops = self.ops
        block_grads = {}
        if any(i in indexes for i in (0, 1, 2)):
            block_grads = self.block_gradients(indexes, self.output_gradient_blocks(gy), Z)
        if 0 in block_grads:
            block_grads[0] = self._input_features(block_grads[0])
        grads = [ops.cast(block_grads[i], dtypes[i]) for i in (0, 1, 2) if i in indexes]
        if 3 in indexes:
            grads.append(ops.sum(gy, axis=0))
        return grads


class MonarchLinearFunction(function_node.FunctionNode):
    """``y = x · (P L Pᵀ R)ᵀ + b`` for ``x`` of shape ``(N, in_size)``.

    The forward pass and both backward passes are the batched matrix products
    of one layout (``_Layout``): on arrays in the forward pass and in
    first-order backprop, and as Chainer functions when the backward pass is
    itself differentiated.

    Args:
        out_size (int): The number of outputs, from ``n_blocks · (s - 1) + 1``
            to ``n_blocks · s`` for ``L`` of shape ``(n_blocks, s, q)``.
    """

    def __init__(self, out_size: int) -> None:
        self.out_size = _checks.positive_int('out_size', out_size)

    def check_type_forward(self, in_types):
        x_type, r_type, l_type = _checks.expect_inputs(in_types, ('x', 'R', 'L'), (2, 3, 3))
        n_blocks = r_type.shape[0]
        out_size = type_check.make_variable(self.out_size, 'out_size')
        type_check.expect(
            l_type.shape[0] == n_blocks,
            l_type.shape[2] == r_type.shape[1],
            x_type.shape[1] >= n_blocks,
            r_type.shape[2] == (x_type.shape[1] + n_blocks - 1) // n_blocks,
            out_size >= n_blocks,
            l_type.shape[1] == (out_size + n_blocks - 1) // n_blocks)
        _checks.expect_bias(in_types, 2, out_size)

    def forward(self, inputs):
        _checks.type_check_always(self, inputs)
        x, R, L = inputs[:3]
        self.retain_inputs((0, 1, 2))
        layout = _Layout(ArrayOps.of(x), x, R, L, self.out_size)
        # Kept for the gradient of L.
        self._Z = layout.z()
        y = _dtypes.as_dtype(layout.y(self._Z), x.dtype)
        if len(inputs) == 4:
            y = y + inputs[3]
        return layout.ops.xp.ascontiguousarray(y),

    def backward(self, indexes, grad_outputs):
        x, R, L = self.get_retained_inputs()
        gy, = grad_outputs
        dtypes = (x.dtype, R.dtype, L.dtype)
        if chainer.config.enable_backprop:
            return _Layout(VariableOps, x, R, L, self.out_size).gradients(
                indexes, gy, dtypes=dtypes)
        # First-order backprop records no graph: the same products on the arrays.
        layout = _Layout(ArrayOps.of(x.array), x.array, R.array, L.array, self.out_size)
        grads = layout.gradients(indexes, gy.array, self._Z, dtypes)
        return [chainer.Variable(g, requires_grad=False) for g in grads]


def monarch_linear(x, R, L, b=None, n_batch_axes: int = 1, *, out_size: tp.Optional[int] = None):
    """Linear function whose weight is a Monarch matrix, ``M = P L Pᵀ R``.

    .. math:: y = x \\cdot (P L P^\\top R)^\\top + b

    with ``R`` and ``L`` block-diagonal (``n_blocks`` blocks each) and ``P``
    the interleaving permutation; :doc:`/monarch-linear` says how sizes that
    ``n_blocks`` does not divide are met. It is two
    batched matrix products: ``N·n_blocks·q·(p + s)`` multiply-adds where a
    dense layer takes ``N·in_size·out_size``, and no ``(out_size, in_size)``
    array is ever made.

    Args:
        x (:class:`~chainer.Variable` or :ref:`ndarray`): Input; the axes after
            the first ``n_batch_axes`` hold ``in_size`` features, with
            ``p = ⌈in_size / n_blocks⌉``.
        R (:class:`~chainer.Variable` or :ref:`ndarray`): ``(n_blocks, q, p)``,
            the blocks applied first.
        L (:class:`~chainer.Variable` or :ref:`ndarray`): ``(n_blocks, s, q)``,
            the blocks applied second.
        b (:class:`~chainer.Variable` or :ref:`ndarray`): Optional bias of
            shape ``(out_size,)``.
        n_batch_axes (int): The number of batch axes.
        out_size (int): The number of outputs, with ``s = ⌈out_size / n_blocks⌉``;
            ``n_blocks · s`` by default.

    Returns:
        ~chainer.Variable: Output of shape ``(*batch_shape, out_size)`` and of
        the dtype of ``x``.

    .. admonition:: Example

        >>> import numpy as np
        >>> R = np.ones((2, 2, 2), np.float32)       # two blocks of 2 x 2
        >>> L = np.eye(2, dtype=np.float32)[None].repeat(2, axis=0)
        >>> monarch_linear(np.array([[1, 2, 3, 4]], np.float32), R, L).array
        array([[3., 3., 7., 7.]], dtype=float32)
    """
    x, batch_shape = shapes.as_matrix(x, n_batch_axes)
    if out_size is None:
        out_size = L.shape[0] * L.shape[1]
    args = (x, R, L) if b is None else (x, R, L, b)
    y, = MonarchLinearFunction(out_size).apply(args)
    return shapes.with_batch_axes(y, batch_shape)
