"""Any sharing pattern: a linear function whose weight is gathered from a smaller one.

Every shared-weight linear layer maps each virtual weight ``V[i, j]`` of its
``(out_size, in_size)`` weight to a stored one. :func:`tied_linear` takes that
map as arrays, ``V[i, j] = sign[i, j] · W.ravel()[index[i, j]]``, and computes
``y = x · Vᵀ + b`` in one node, :class:`TiedLinearFunction`: it gathers ``V``
once and keeps it for the backward pass, which adds the gradient of ``V`` up
bucket by bucket, in a fixed order on the CPU, so that the same inputs give
the same gradient bit for bit. The gather and its adjoint are also nodes of
their own, :class:`TiedWeight` and :class:`TiedWeightGrad`, of which the
backward pass is made when it is itself differentiated (double backprop).
"""

import typing as tp

import chainer
import chainer.functions as F
import numpy
from chainer import backend, function_node, utils
from chainer.utils import type_check

from chainer_sharedlinear import _checks, _dtypes
from chainer_sharedlinear.functions import shapes


def scatter_add(size: int, index, values, dtype):
    """``out[k] = Σ values[index == k]``: an array of ``size``, in ``dtype``.

    The sums are taken in the accumulation dtype
    (float32 for float16 values) and in the order of ``values`` on NumPy.
    ``index`` and ``values`` are flat arrays of the same length.
    """
    xp = backend.get_array_module(values)
    out = xp.zeros(size, _dtypes.accumulation_dtype(dtype))
    values = values.astype(out.dtype, copy=False)
    if hasattr(xp.add, 'at'):  # NumPy, and CuPy from 13 (atomic adds, in no fixed order)
        xp.add.at(out, index, values)
    else:  # CuPy 12
        import cupyx
        cupyx.scatter_add(out, index, values)
    return out.astype(dtype, copy=False)


def gather(W, index, sign):
    """``sign · W.ravel()[index]``, a new array of ``index``'s shape in ``W``'s dtype."""
    flat = W.ravel()
    if index.dtype == numpy.intp or not isinstance(index, numpy.ndarray):
        V = flat.take(index)
    else:
        # NumPy's take first copies a whole index of another type to intp, an array twice
        # the size of V for int32: block by block, that copy stays small.
        V = numpy.empty(index.shape, W.dtype)
        flat_index, flat_V = index.reshape(-1), V.reshape(-1)
        for start in range(0, flat_index.size, _GATHER_BLOCK):
            block = slice(start, start + _GATHER_BLOCK)
            flat.take(flat_index[block], out=flat_V[block])
    if sign is not None:
        V *= sign
    return V


_GATHER_BLOCK = 2 ** 16


def dense_product(x, V, b=None):
    """``x · Vᵀ + b`` of arrays: in the accumulation dtype, rounded to ``x``'s.

    The forward pass of :class:`TiedLinearFunction` once ``V`` is gathered, and
    of a layer that keeps its dense weight (``VirtualLinear.cache_dense_weight``):
    the same arithmetic, so that both give the same outputs bit for bit.
    """
    dtype = _dtypes.accumulation_dtype(x.dtype, V.dtype)
    y = _dtypes.as_dtype(_dtypes.as_dtype(x, dtype).dot(_dtypes.as_dtype(V, dtype).T), x.dtype)
    if b is not None:
        y += b
    return y


class TiedLinearFunction(function_node.FunctionNode):
    """``y = x · Vᵀ + b`` with ``V = sign · W.ravel()[index]``, for ``x`` of ``(N, in_size)``.

    The node of :func:`tied_linear` (and, as its subclass
    ``HashedLinearFunction``, of the hashed
    layers). Its forward pass keeps ``x``, ``W`` and the gathered ``V``, which
    the backward pass lets go of before it computes ``gV``. In first-order
    backprop, which records no graph, the backward pass computes ``gx = gy · V``,
    ``gV = gyᵀ · x`` and the signed sums of ``gV`` per stored weight as arrays,
    as :func:`chainer.functions.linear` would with ``V`` and then
    :class:`TiedWeightGrad`, without their nodes; with double backprop it is
    made of those differentiable nodes.

    Args:
        index: As :class:`TiedWeight` takes it, ``(out_size, in_size)``.
        sign: As :class:`TiedWeight` takes it, or ``None``.
    """

    def __init__(self, index, sign=None) -> None:
        self.index = index
        self.sign = sign

    def check_type_forward(self, in_types):
        x_type, w_type = _checks.expect_inputs(in_types, ('x', 'W'), (2, None))
        out_size, in_size = (type_check.make_variable(n, 'index.shape[{}]'.format(axis))
                             for axis, n in enumerate(self.index.shape))
        type_check.expect(x_type.shape[1] == in_size)
        _checks.expect_bias(in_types, 1, out_size)

    def forward(self, inputs):
        _checks.type_check_always(self, inputs)
        x, W = inputs[:2]
        self.retain_inputs((0, 1))
        self._V = gather(W, self.index, self.sign)
        return dense_product(x, self._V, inputs[2] if len(inputs) == 3 else None),

    def backward(self, indexes, grad_outputs):
        x, W = self.get_retained_inputs()
        gy, = grad_outputs
        # Forgotten here so that V and gV are never kept together; a second backward
        # pass through the same graph gathers V again.
        V, self._V = self._V, None
        if chainer.config.enable_backprop:
            return self._backward_differentiable(indexes, x, W, gy)
        # First-order backprop records no graph: the arrays are computed directly,
        # in the accumulation dtype (as the differentiable nodes do), and the
        # signs are applied to this node's own gV in place.
        dtype = _dtypes.accumulation_dtype(x.dtype, W.dtype)
        gy = gy.array.astype(dtype, copy=False)
        grads = []
        if 0 in indexes:
            if V is None:
                V = gather(W.array, self.index, self.sign)
            grads.append(_dtypes.as_dtype(gy.dot(_dtypes.as_dtype(V, dtype)), x.dtype))
        del V
        if 1 in indexes:
            gV = gy.T.dot(x.array.astype(dtype, copy=False))
            if self.sign is not None:
                gV *= self.sign
            gW = scatter_add(W.size, self.index.ravel(), gV.ravel(), W.dtype)
            grads.append(gW.reshape(W.shape))
        if 2 in indexes:
            grads.append(grad_outputs[0].array.sum(axis=0))
        return [chainer.Variable(g, requires_grad=False) for g in grads]

    def _backward_differentiable(self, indexes, x, W, gy):
        dtype = _dtypes.accumulation_dtype(x.dtype, W.dtype)
        gy_ = _dtypes.cast(gy, dtype)
        grads = []
        if 0 in indexes:
            V, = TiedWeight(self.index, self.sign).apply((W,))
            grads.append(_dtypes.cast(F.matmul(gy_, _dtypes.cast(V, dtype)), x.dtype))
        if 1 in indexes:
            gV = F.matmul(gy_, _dtypes.cast(x, dtype), transa=True)
            gW, = TiedWeightGrad(self.index, self.sign, W.shape).apply((gV,))
            grads.append(_dtypes.cast(gW, W.dtype))
        if 2 in indexes:
            grads.append(F.sum(gy, axis=0))
        return grads


class TiedWeight(function_node.FunctionNode):
    """``V = sign · W.ravel()[index]``: the virtual weight, gathered from the stored one.

    Args:
        index: Integer array into ``W.ravel()``, of ``V``'s shape, already checked
            (see ``check_index`` in this module): ``numpy.intp``, which NumPy
            gathers with fastest, or ``int32``, half the memory.
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
        return gather(W, self.index, self.sign),

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
        gW = scatter_add(utils.size_of_shape(self.w_shape), self.index.ravel(), signed.ravel(),
                         gV.dtype)
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


def apply_tied_linear(x, W, index, sign=None, b=None, n_batch_axes: int = 1, node=None):
    """:class:`TiedLinearFunction` on ``x`` with any batch axes; ``index`` and ``sign`` unchecked.

    For callers whose index map is right by construction (the hashed and
    clustered layers); :func:`tied_linear` checks a map first. ``node`` is
    the node to apply, if not ``TiedLinearFunction(index, sign)``.
    """
    x, batch_shape = shapes.as_matrix(x, n_batch_axes)
    args = (x, W) if b is None else (x, W, b)
    y, = (TiedLinearFunction(index, sign) if node is None else node).apply(args)
    return shapes.with_batch_axes(y, batch_shape)


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
    return apply_tied_linear(x, W, index, sign, b, n_batch_axes)
