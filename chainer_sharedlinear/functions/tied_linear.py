"""Any sharing pattern: a linear function whose weight is gathered from a smaller one.

Every shared-weight linear layer maps each virtual weight ``V[i, j]`` of its
``(out_size, in_size)`` weight to a stored one. :func:`tied_linear` takes that
map as arrays, ``V[i, j] = sign[i, j] · W.ravel()[index[i, j]]``, and computes
``y = x · Vᵀ + b``: :class:`TiedWeight` gathers ``V``, and
:func:`chainer.functions.linear` does the rest. Its backward pass adds the
gradient of ``V`` up bucket by bucket (:class:`TiedWeightGrad`), in a fixed
order on the CPU, so that the same inputs give the same gradient bit for bit.
"""

import typing as tp

import chainer
import chainer.functions as F
import numpy
from chainer import backend, function_node
from chainer.utils import type_check

from chainer_sharedlinear.functions import shapes
from chainer_sharedlinear.functions.fold import fold_dtype


def scatter_add(size: int, index, values, dtype):
    """``out[k] = Σ values[index == k]``: an array of ``size``, in ``dtype``.

    The sums are taken in :func:`~chainer_sharedlinear.functions.fold_dtype`
    (float32 for float16 values) and in the order of ``values`` on NumPy.
    ``index`` and ``values`` are flat arrays of the same length.
    """
    xp = backend.get_array_module(values)
    out = xp.zeros(size, fold_dtype(dtype))
    values = values.astype(out.dtype, copy=False)
    if xp is numpy:
        numpy.add.at(out, index, values)
    else:  # CuPy: atomic adds, whose order is not fixed
        import cupyx
        cupyx.scatter_add(out, index, values)
    return out.astype(dtype, copy=False)


class TiedWeight(function_node.FunctionNode):
    """``V = sign · W.ravel()[index]``: the virtual weight, gathered from the stored one.

    Args:
        index: Integer array into ``W.ravel()``, of ``V``'s shape, already checked
            (see :func:`check_index`) and of the platform's integer type
            (``numpy.intp``), which NumPy gathers with fastest.
        sign: Array of ±1 of ``V``'s shape and ``W``'s dtype, or ``None`` for all +1.
    """

    def __init__(self, index, sign=None) -> None:
        self.index = index
        self.sign = sign

    def check_type_forward(self, in_types):
        type_check._argname(in_types, ('W',))
        w_type, = in_types
        type_check.expect(w_type.dtype.kind == 'f')

    def forward(self, inputs):
        W, = inputs
        self._w_shape = W.shape
        V = W.ravel().take(self.index)
        if self.sign is not None:
            V *= self.sign
        return V,

    def backward(self, indexes, grad_outputs):
        gV, = grad_outputs
        return TiedWeightGrad(self.index, self.sign, self._w_shape).apply((gV,))


class TiedWeightGrad(function_node.FunctionNode):
    """``gW[k] = Σ_{index[i, j] = k} sign[i, j] · gV[i, j]``: :class:`TiedWeight`'s adjoint."""

    def __init__(self, index, sign, w_shape) -> None:
        self.index = index
        self.sign = sign
        self.w_shape = w_shape

    def forward(self, inputs):
        gV, = inputs
        signed = gV if self.sign is None else gV * self.sign
        size = 1
        for n in self.w_shape:
            size *= n
        gW = scatter_add(size, self.index.ravel(), signed.ravel(), gV.dtype)
        return gW.reshape(self.w_shape),

    def backward(self, indexes, grad_outputs):
        ggW, = grad_outputs
        return TiedWeight(self.index, self.sign).apply((ggW,))


def check_index(index, sign, n_weights: int, xp) -> tp.Tuple[tp.Any, tp.Any]:
    """``index`` and ``sign`` as :class:`TiedWeight` takes them, or a ``ValueError``.

    ``index`` must be an integer array of 2 axes (``(out_size, in_size)``) with
    values in ``[0, n_weights)``; ``sign``, if given, an array of ``index``'s
    shape whose values are all 1 or -1. Both are moved to the array module
    ``xp`` of the weight.
    """
    index = xp.asarray(chainer.as_array(index))
    if index.dtype.kind not in 'iu':
        raise ValueError('index must be an array of integers, got dtype {}'.format(index.dtype))
    if index.ndim != 2:
        raise ValueError('index must have 2 axes, (out_size, in_size), got shape {}'.format(
            index.shape))
    if index.size:
        low, high = int(index.min()), int(index.max())
        if low < 0 or high >= n_weights:
            raise ValueError('index must be in [0, W.size) = [0, {}), got values from {} to {}'
                             .format(n_weights, low, high))
    index = index.astype(numpy.intp, copy=False)
    if sign is None:
        return index, None
    sign = xp.asarray(chainer.as_array(sign))
    if sign.shape != index.shape:
        raise ValueError('sign must have the shape of index, {}, got {}'.format(
            index.shape, sign.shape))
    if sign.size and not bool(xp.all(xp.abs(sign) == 1)):
        raise ValueError('sign must hold only 1 and -1')
    return index, sign


def linear(x, V, b=None, n_batch_axes: int = 1):
    """:func:`chainer.functions.linear` of a gathered weight, checked as the family checks.

    ``F.linear`` reshapes with ``-1``, which fails on an empty batch with
    several feature or batch axes, and, with type checking off, broadcasts a
    bias of the wrong size; here neither happens.
    """
    x, batch_shape = shapes.as_matrix(x, n_batch_axes)
    if b is not None:
        shapes.check_bias(b.shape, V.shape[0])
    return shapes.with_batch_axes(F.linear(x, V, b), batch_shape)


def tied_linear(x, W, index, sign=None, b=None, n_batch_axes: int = 1):
    """Linear function whose weight is tied to a smaller one by an index map.

    The virtual weight ``V`` of shape ``(out_size, in_size)`` is

    .. math:: V_{ij} = s_{ij} \\, W_{\\mathrm{index}_{ij}},
              \\qquad y = x V^\\top + b,

    where ``W`` is read flattened, whatever its shape. Several virtual
    weights may share a stored one: its gradient is the sum of theirs, each
    times its sign, added up in a fixed order on the CPU. This is the general
    form of every pattern of this package, and the way to write your own.

    Args:
        x (:class:`~chainer.Variable` or :ref:`ndarray`): Input; the axes after
            the first ``n_batch_axes`` hold ``in_size`` features.
        W (:class:`~chainer.Variable` or :ref:`ndarray`): The stored weights,
            of any shape, read flattened.
        index (:ref:`ndarray`): Integers of shape ``(out_size, in_size)``,
            each in ``[0, W.size)``.
        sign (:ref:`ndarray`): Optional ±1 of ``index``'s shape, in ``W``'s dtype.
        b (:class:`~chainer.Variable` or :ref:`ndarray`): Optional bias of
            shape ``(out_size,)``.
        n_batch_axes (int): The number of batch axes.

    Returns:
        ~chainer.Variable: Output of shape ``(*batch_shape, out_size)``.

    Raises:
        ValueError: ``index`` is not an integer matrix with values in
            ``[0, W.size)``, or ``sign`` is not ±1 of ``index``'s shape.

    .. admonition:: Example

        A Toeplitz layer: ``V[i, j]`` depends on ``j - i`` alone, so an
        ``(out_size, in_size)`` layer stores ``out_size + in_size - 1`` weights.

        >>> import numpy as np
        >>> out_size, in_size = 3, 4
        >>> i, j = np.ogrid[:out_size, :in_size]
        >>> index = j - i + out_size - 1            # 0 .. out_size + in_size - 2
        >>> W = np.arange(6, dtype=np.float32)      # one weight per diagonal
        >>> x = np.eye(4, dtype=np.float32)
        >>> tied_linear(x, W, index).array.T        # the virtual weight itself
        array([[2., 3., 4., 5.],
               [1., 2., 3., 4.],
               [0., 1., 2., 3.]], dtype=float32)
    """
    W_array = chainer.as_array(W)
    xp = backend.get_array_module(W_array)
    index, sign = check_index(index, sign, W_array.size, xp)
    if sign is not None:
        sign = sign.astype(W_array.dtype, copy=False)
    V, = TiedWeight(index, sign).apply((W,))
    return linear(x, V, b, n_batch_axes)
