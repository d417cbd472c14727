"""The shared-weight linear function, ``y = fold(x) · Wᵀ + b``.

Mathematically a linear layer whose weight is ``W`` tiled ``n_shared`` times
along the input axis; computed without ever building that tiled weight. The
structure mirrors :mod:`chainer.functions.connection.linear`: one node for the
forward pass and two grad nodes whose own backward passes make double
backprop work.
"""

import typing as tp

import chainer
import numpy
from chainer import function_node
from chainer.utils import type_check

from chainer_sharedlinear import _checks, _dtypes
from chainer_sharedlinear.functions import shapes
from chainer_sharedlinear.functions.fold import fold, unfold


def _as_dot_operand(a):
    # NumPy's dot rejects some non-contiguous arrays with a unit axis
    # (chainer/chainer#2744); F.linear works around it the same way.
    if (isinstance(a, numpy.ndarray)
            and not (a.flags.c_contiguous or a.flags.f_contiguous)
            and 1 in a.shape):
        return numpy.ascontiguousarray(a)
    return a


def _n_shared_of(x, W):
    return x.shape[1] // W.shape[1]


def _grad_x(W, gy, n_shared):
    # gx has the dtype of gy, which is that of x since y takes x's dtype.
    return unfold(_dtypes.as_dtype(_as_dot_operand(gy).dot(W), gy.dtype), n_shared)


def _grad_W(x_folded, gy, w_dtype):
    return _dtypes.as_dtype(_as_dot_operand(gy).T.dot(x_folded), w_dtype)


def check_input_types(in_types, n_shared=None):
    """The type check of a shared-weight linear function's ``(x, W[, b])``.

    ``x`` and ``W`` are float matrices, ``W.shape[1]`` divides ``x.shape[1]``
    (``n_shared`` times exactly, if given), and ``b`` has ``x``'s dtype and
    ``W.shape[0]`` elements.
    """
    x_type, w_type = _checks.expect_inputs(in_types, ('x', 'W'), (2, 2))
    # Shapes only once the ranks are known to be right: the arguments of
    # one expect() are all built before any is checked.
    type_check.expect(w_type.shape[1] > 0)
    if n_shared is None:
        type_check.expect(x_type.shape[1] > 0, x_type.shape[1] % w_type.shape[1] == 0)
    else:
        type_check.expect(x_type.shape[1] == n_shared * w_type.shape[1])
    _checks.expect_bias(in_types, 1, w_type.shape[0])


class SharedLinearFunction(function_node.FunctionNode):
    """``y = fold(x, n_shared) · Wᵀ + b`` for ``x`` of shape ``(B, n_shared * k)``.

    Args:
        n_shared (int or None): The number of blocks the input must have.
            ``None`` accepts any input whose size is a multiple of ``W.shape[1]``.
    """

    def __init__(self, n_shared: tp.Optional[int] = None) -> None:
        self.n_shared = None if n_shared is None else _checks.positive_int('n_shared', n_shared)

    def check_type_forward(self, in_types):
        check_input_types(in_types, self.n_shared)

    def forward(self, inputs):
        _checks.type_check_always(self, inputs)
        x, W = inputs[:2]
        self.retain_inputs((0, 1))
        # Kept for SharedLinearGradWeight, which would otherwise fold x again;
        # it is 1/n_shared the size of x (in the accumulation dtype).
        self._x_folded = fold(x, _n_shared_of(x, W))
        y = _dtypes.as_dtype(_as_dot_operand(self._x_folded).dot(W.T), x.dtype)
        if len(inputs) == 3:
            y += inputs[2]
        return y,

    def backward(self, indexes, grad_outputs):
        x, W = self.get_retained_inputs()
        gy, = grad_outputs
        n_shared = _n_shared_of(x, W)
        if not chainer.config.enable_backprop:
            # First-order backprop records no graph, so the grad nodes' bookkeeping
            # buys nothing there (docs/benchmarks.md says what it costs).
            return self._backward_arrays(indexes, x, W, gy.array, n_shared)
        ret = []
        if 0 in indexes:
            gx, = SharedLinearGradData(n_shared).apply((W, gy))
            ret.append(_dtypes.cast(gx, x.dtype))
        if 1 in indexes:
            gW, = SharedLinearGradWeight(n_shared, W.dtype, self._x_folded).apply((x, gy))
            ret.append(gW)
        if 2 in indexes:
            ret.append(chainer.functions.sum(gy, axis=0))
        return ret

    def _backward_arrays(self, indexes, x, W, gy, n_shared):
        grads = []
        if 0 in indexes:
            grads.append(_dtypes.as_dtype(_grad_x(W.array, gy, n_shared), x.dtype))
        if 1 in indexes:
            grads.append(_grad_W(self._x_folded, gy, W.dtype))
        if 2 in indexes:
            grads.append(gy.sum(axis=0))
        return [chainer.Variable(g, requires_grad=False) for g in grads]


class SharedLinearGradData(function_node.FunctionNode):
    """``gx = unfold(gy · W, n_shared)``: the gradient of the input."""

    def __init__(self, n_shared: int) -> None:
        self.n_shared = n_shared

    def forward(self, inputs):
        self.retain_inputs((0, 1))
        W, gy = inputs
        return _grad_x(W, gy, self.n_shared),

    def backward(self, indexes, grad_outputs):
        W, gy = self.get_retained_inputs()
        ggx, = grad_outputs
        ret = []
        if 0 in indexes:
            gW, = SharedLinearGradWeight(self.n_shared, W.dtype).apply((ggx, gy))
            ret.append(gW)
        if 1 in indexes:
            ggy = shared_linear(ggx, W)
            ret.append(_dtypes.cast(ggy, gy.dtype))
        return ret


class SharedLinearGradWeight(function_node.FunctionNode):
    """``gW = gyᵀ · fold(x, n_shared)``: the gradient of the shared weight.

    Args:
        n_shared (int): The number of blocks of ``x``.
        w_dtype: The dtype of ``W``, which ``gW`` takes.
        x_folded: ``fold(x, n_shared)`` if the caller already has it.
    """

    def __init__(self, n_shared: int, w_dtype, x_folded=None) -> None:
        self.n_shared = n_shared
        self._w_dtype = w_dtype
        self._x_folded = x_folded

    def forward(self, inputs):
        self.retain_inputs((0, 1))
        x, gy = inputs
        x_folded = self._x_folded
        if x_folded is None:
            x_folded = fold(x, self.n_shared)
        self._x_folded = None
        return _grad_W(x_folded, gy, self._w_dtype),

    def backward(self, indexes, grad_outputs):
        x, gy = self.get_retained_inputs()
        ggW, = grad_outputs
        ret = []
        if 0 in indexes:
            gx, = SharedLinearGradData(self.n_shared).apply((ggW, gy))
            ret.append(_dtypes.cast(gx, x.dtype))
        if 1 in indexes:
            ggy = shared_linear(x, ggW)
            ret.append(_dtypes.cast(ggy, gy.dtype))
        return ret


def shared_linear(x, W, b=None, n_batch_axes=1, *, n_shared=None):
    """Linear function whose weight is shared across the blocks of the input.

    The input's features (all axes after the first ``n_batch_axes``, flattened
    to ``in_size``) are cut into ``n_shared = in_size / W.shape[1]`` blocks
    of ``k = W.shape[1]``, and each block is multiplied by the same ``W``:

    .. math:: y = x \\cdot [W \\; W \\; \\cdots \\; W]^\\top + b
                = \\Big(\\sum_{j<n} x_{[jk, (j+1)k)}\\Big) \\cdot W^\\top + b

    It is computed in the right-hand form: about ``1/n_shared`` of the
    arithmetic of a dense layer, and no ``(out_size, in_size)`` array. With
    ``n_shared == 1`` it is :func:`chainer.functions.linear`.

    Args:
        x (:class:`~chainer.Variable` or :ref:`ndarray`): Input of shape
            ``(s_1, ..., s_n)``; the first ``n_batch_axes`` axes are batch
            axes and the rest are flattened into ``in_size`` features.
        W (:class:`~chainer.Variable` or :ref:`ndarray`): Shared weight of
            shape ``(out_size, k)``, where ``k`` divides ``in_size``.
        b (:class:`~chainer.Variable` or :ref:`ndarray`): Optional bias of
            shape ``(out_size,)``.
        n_batch_axes (int): The number of batch axes, 1 or more.
        n_shared (int): If given, ``in_size`` must be ``n_shared * k``;
            otherwise ``n_shared`` is whatever the shapes imply. The shapes
            are checked with ``chainer.config.type_check`` off too.

    Returns:
        ~chainer.Variable: Output of shape ``(s_1, ..., s_{n_batch_axes}, out_size)``
        and of the dtype of ``x``.

    .. admonition:: Example

        >>> import numpy as np
        >>> x = np.ones((2, 6), np.float32)
        >>> W = np.array([[1, 2], [0, 1]], np.float32)  # k = 2, so n_shared = 3
        >>> shared_linear(x, W).array
        array([[9., 3.],
               [9., 3.]], dtype=float32)

    """
    x, batch_shape = shapes.as_matrix(x, n_batch_axes)
    args = (x, W) if b is None else (x, W, b)
    y, = SharedLinearFunction(n_shared).apply(args)
    return shapes.with_batch_axes(y, batch_shape)
