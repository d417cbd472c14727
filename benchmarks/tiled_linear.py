"""The 2016 algorithm of a shared-weight linear layer: the benchmark's baseline.

The original patch to Chainer 1.14's ``linear.py`` tiled the weight into an
``(out_size, in_size)`` array on every call and paid the full cost of a dense
layer. It is reproduced here, on the legacy :class:`chainer.Function` API it
was written for, so that the benchmark can time it beside
:func:`chainer_sharedlinear.shared_linear`, which computes the same thing
without the tiled weight.
"""

from chainer import backend, function

from chainer_sharedlinear.functions.shared_linear import check_input_types


class TiledLinearFunction(function.Function):
    """``y = x · tile(W, n_shared)ᵀ + b``, computed with the tiled weight.

    ``n_shared`` is implied by the shapes: ``x.shape[1] / W.shape[1]``.

    .. admonition:: Example

        >>> import numpy as np
        >>> x = np.ones((1, 4), np.float32)
        >>> W = np.array([[1, 2]], np.float32)
        >>> TiledLinearFunction()(x, W).array
        array([[6.]], dtype=float32)
    """

    def check_type_forward(self, in_types):
        check_input_types(in_types)

    @staticmethod
    def _tiled(x, W):
        xp = backend.get_array_module(W)
        return xp.tile(W, (1, x.shape[1] // W.shape[1]))

    def forward(self, inputs):
        x, W = inputs[:2]
        y = x.dot(self._tiled(x, W).T).astype(x.dtype, copy=False)
        if len(inputs) == 3:
            y += inputs[2]
        return y,

    def backward(self, inputs, grad_outputs):
        x, W = inputs[:2]
        gy, = grad_outputs
        out_size, k = W.shape
        gx = gy.dot(self._tiled(x, W)).astype(x.dtype, copy=False)
        gW_full = gy.T.dot(x)
        gW = gW_full.reshape(out_size, -1, k).sum(axis=1).astype(W.dtype, copy=False)
        if len(inputs) == 3:
            return gx, gW, gy.sum(axis=0)
        return gx, gW
