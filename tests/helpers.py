"""Dense oracles and small utilities shared by the tests."""

import numpy as np

BACKENDS = [{}, {'use_cuda': True}]  # NumPy, and CuPy where there is a GPU


def tiled(W, n_shared):
    """The dense weight ``[W W ... W]`` that a shared weight stands for."""
    return np.tile(W, (1, n_shared))


def dense_oracle(x, W, b=None, n_batch_axes=1):
    """``x · tile(W)ᵀ + b`` in float64, with the batch axes of ``x`` kept."""
    batch_shape = x.shape[:n_batch_axes]
    x2 = x.reshape(int(np.prod(batch_shape)), int(np.prod(x.shape[n_batch_axes:])))
    x2 = x2.astype(np.float64)
    W = W.astype(np.float64)
    y = x2 @ tiled(W, x2.shape[1] // W.shape[1]).T
    if b is not None:
        y += b.astype(np.float64)
    return y.reshape(batch_shape + (W.shape[0],))


def function_tolerances(dtypes):
    """``check_*_options`` of a ``FunctionTestCase`` whose inputs have these dtypes.

    Loose enough for the rounding of the narrowest dtype among them, and for the
    numerical gradients of ``gradient_check``, whose steps round in that dtype.
    """
    if np.float16 in dtypes:
        forward, backward = 5e-3, 5e-2
    elif np.float32 in dtypes:
        forward, backward = 1e-5, 1e-3
    else:
        forward, backward = 1e-6, 1e-4
    return {'check_forward_options': {'atol': forward, 'rtol': forward},
            'check_backward_options': {'atol': backward, 'rtol': backward},
            'check_double_backward_options': {'atol': backward, 'rtol': backward}}


def link_tolerances(dtype):
    """``check_*_options`` of a ``LinkTestCase`` whose parameters and inputs are ``dtype``."""
    if dtype == np.float16:
        return {'check_forward_options': {'atol': 5e-3, 'rtol': 5e-3},
                'check_backward_options': {'atol': 5e-2, 'rtol': 5e-2}}
    return {'check_backward_options': {'atol': 1e-3, 'rtol': 1e-3}}


def first_and_second_order_grads(apply, inputs):
    """The gradients of ``sum(apply(*inputs) ** 2)``: first-order, and with double backprop.

    A node that computes arrays in first-order backprop and builds differentiable
    nodes when its backward pass is itself differentiated must give the same
    gradients both ways; this returns both lists of arrays, in ``inputs``' order.
    """
    import chainer
    import chainer.functions as F

    def grads(enable_double_backprop):
        variables = [chainer.Variable(a) for a in inputs]
        y = apply(*variables)
        return [g.array for g in chainer.grad(
            [F.sum(y * y)], variables, enable_double_backprop=enable_double_backprop)]
    return grads(False), grads(True)


def assert_bias_copied(layer, dense):
    """``dense`` (from ``layer.to_linear()``) has ``layer``'s bias, or none, in its own array."""
    if layer.b is None:
        assert dense.b is None
    else:
        np.testing.assert_array_equal(dense.b.array, layer.b.array)
        assert dense.b.dtype == layer.b.dtype
        assert dense.b.array is not layer.b.array
