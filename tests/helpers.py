"""What the tests share: dense NumPy oracles of every pattern, tolerances by dtype, builders.

The oracles are written from the documentation, in float64, with nothing of the
package: a test compares the package with them, never with itself.
"""

import contextlib
import re

import chainer
import numpy as np

FLOATS = [np.float16, np.float32, np.float64]
BACKENDS = [{}, {'use_cuda': True}]  # NumPy, and CuPy where there is a GPU


# --- Oracles: the dense weight of each pattern, and y = x · Vᵀ + b -------------------------


def tiled(W, n_shared):
    """The dense weight ``[W W ... W]`` that a shared weight stands for."""
    return np.tile(W, (1, n_shared))


def dense_linear(x, V, b=None, n_batch_axes=1):
    """``x · Vᵀ + b`` in float64 for a dense weight ``V``, with the batch axes of ``x`` kept."""
    batch_shape = x.shape[:n_batch_axes]
    x2 = x.reshape(int(np.prod(batch_shape)), V.shape[1]).astype(np.float64)
    y = x2 @ np.asarray(V, np.float64).T
    if b is not None:
        y += b.astype(np.float64)
    return y.reshape(batch_shape + (V.shape[0],))


def dense_oracle(x, W, b=None, n_batch_axes=1):
    """``x · tile(W)ᵀ + b`` in float64, with the batch axes of ``x`` kept."""
    in_size = int(np.prod(x.shape[n_batch_axes:]))
    return dense_linear(x, tiled(np.asarray(W, np.float64), in_size // W.shape[1]), b,
                        n_batch_axes)


def tiled_linear_grads(x, W, gy):
    """``(gx, gW, gb)`` of ``y = x · tile(W)ᵀ + b`` in float64, for matrices ``x`` and ``gy``."""
    x, W, gy = (np.asarray(a, np.float64) for a in (x, W, gy))
    out_size, k = W.shape
    gx = gy @ tiled(W, x.shape[1] // k)
    gW = (gy.T @ x).reshape(out_size, -1, k).sum(axis=1)
    return gx, gW, gy.sum(axis=0)


_M32 = 0xffffffff


def mix(z):
    """The ``lowbias32`` mixer of the hashed module's docstring, on one Python integer."""
    z ^= z >> 16
    z = (z * 0x7feb352d) & _M32
    z ^= z >> 15
    z = (z * 0x846ca68b) & _M32
    return z ^ (z >> 16)


def spec_index(out_size, in_size, n_weights, seed):
    """``(bucket, sign)`` from the documented hash, in Python integers, one by one."""
    bucket = np.empty((out_size, in_size), np.int64)
    sign = np.empty((out_size, in_size), np.int64)
    seed_key = mix(seed ^ 0x68e31da4)
    for i in range(out_size):
        row = mix(seed_key ^ i)
        for j in range(in_size):
            h = mix(row ^ j)
            bucket[i, j] = h % n_weights
            sign[i, j] = 1 if mix(h ^ 0x5bd1e995) < 2 ** 31 else -1
    return bucket, sign


def hashed_weight(W, out_size, in_size, seed):
    """The virtual weight ``ξ · W[h]`` of the documented hash, in float64."""
    bucket, sign = spec_index(out_size, in_size, W.shape[0], seed)
    return sign * np.asarray(W, np.float64)[bucket]


def hashed_oracle(x, W, b, out_size, seed, n_batch_axes=1):
    """``x · Vᵀ + b`` in float64 with ``V`` built from the documented hash."""
    in_size = int(np.prod(x.shape[n_batch_axes:]))
    return dense_linear(x, hashed_weight(W, out_size, in_size, seed), b, n_batch_axes)


def kron_weight(A, B):
    """``Σ_r numpy.kron(A[r], B[r])`` in float64."""
    A, B = np.asarray(A, np.float64), np.asarray(B, np.float64)
    return sum(np.kron(a, b) for a, b in zip(A, B))


def kron_oracle(x, A, B, b=None, n_batch_axes=1):
    """``x · (Σ_r A[r] ⊗ B[r])ᵀ + b`` in float64, with the batch axes of ``x`` kept."""
    return dense_linear(x, kron_weight(A, B), b, n_batch_axes)


def virtual_weight(W, index, sign=None):
    """The dense ``V`` that ``(W, index, sign)`` stand for, in float64, by a loop."""
    flat = np.asarray(W, np.float64).ravel()
    V = np.empty(index.shape)
    for i in range(index.shape[0]):
        for j in range(index.shape[1]):
            V[i, j] = flat[index[i, j]] * (1 if sign is None else sign[i, j])
    return V


def tied_oracle(x, W, index, sign=None, b=None, n_batch_axes=1):
    """``x · Vᵀ + b`` in float64, with the batch axes of ``x`` kept."""
    return dense_linear(x, virtual_weight(W, index, sign), b, n_batch_axes)


def bucket_sums(gV, index, sign, size):
    """``gW[k] = Σ_{index[i, j] = k} sign[i, j] · gV[i, j]`` in float64, by a loop."""
    gW = np.zeros(size)
    for (i, j), k in np.ndenumerate(index):
        gW[k] += float(gV[i, j]) * (1 if sign is None else int(sign[i, j]))
    return gW


# --- Tolerances by dtype ------------------------------------------------------------------


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


def reordered_sum_tolerance(dtype):
    """``assert_allclose`` options for two sums of the same products taken in other orders.

    For inputs and weights of order 1 and a few dozen terms: a few units in the
    last place of ``dtype``; a wrong weight is off by order 1.
    """
    return {np.dtype(np.float16): {'rtol': 1e-2, 'atol': 1e-2},
            np.dtype(np.float32): {'rtol': 1e-5, 'atol': 1e-5},
            np.dtype(np.float64): {'rtol': 1e-12, 'atol': 1e-12}}[np.dtype(dtype)]


# --- Builders and checks ------------------------------------------------------------------


def standard_normal(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def set_non_default(link, seed=3):
    """Sets every parameter of ``link``, the bias included, to random values; returns it.

    No initializer gives these, so a round trip that loses any of them fails.
    """
    rng = np.random.default_rng(seed)
    for param in link.params(include_uninit=False):
        param.array[...] = rng.standard_normal(param.shape)
    return link


def param_arrays(link):
    """``{name: copy of the array, or None}`` of every parameter of ``link``."""
    return {name: None if param.array is None else param.array.copy()
            for name, param in link.namedparams()}


def assert_params_equal(link, arrays):
    """``link``'s parameters are ``arrays`` (from :func:`param_arrays`), uninitialised alike."""
    assert sorted(name for name, _ in link.namedparams()) == sorted(arrays)
    for name, param in link.namedparams():
        if arrays[name] is None:
            assert param.array is None, name
        else:
            assert param.dtype == arrays[name].dtype, name
            np.testing.assert_array_equal(param.array, arrays[name], err_msg=name)


def grads_of(f, inputs, gy):
    """The gradients of ``f(*inputs)`` for the output gradient ``gy``, of the inputs not None."""
    variables = [None if a is None else chainer.Variable(a) for a in inputs]
    y = f(*variables)
    y.grad = gy
    y.backward()
    return [v.grad for v in variables if v is not None]


def first_and_second_order_grads(apply, inputs):
    """The gradients of ``sum(apply(*inputs) ** 2)``: first-order, and with double backprop.

    A node that computes arrays in first-order backprop and builds differentiable
    nodes when its backward pass is itself differentiated must give the same
    gradients both ways; this returns both lists of arrays, in ``inputs``' order.
    """
    import chainer.functions as F

    def grads(enable_double_backprop):
        variables = [chainer.Variable(a) for a in inputs]
        y = apply(*variables)
        return [g.array for g in chainer.grad(
            [F.sum(y * y)], variables, enable_double_backprop=enable_double_backprop)]
    return grads(False), grads(True)


def assert_refused(call, type_check, pattern):
    """``call()`` raises ``InvalidType`` matching ``pattern`` with type checking on or off."""
    import pytest
    from chainer.utils.type_check import InvalidType

    with chainer.using_config('type_check', type_check):
        with pytest.raises(InvalidType, match=pattern):
            call()


def assert_bias_copied(layer, dense):
    """``dense`` (from ``layer.to_linear()``) has ``layer``'s bias, or none, in its own array."""
    if layer.b is None:
        assert dense.b is None
    else:
        np.testing.assert_array_equal(dense.b.array, layer.b.array)
        assert dense.b.dtype == layer.b.dtype
        assert dense.b.array is not layer.b.array


#: What ``register()`` adds to ``chainer.links`` and ``chainer.functions``, as documented.
REGISTERED_LINKS = ('SharedLinear', 'HashedLinear', 'KroneckerLinear', 'LowRankLinear',
                    'ClusteredLinear', 'ClusteredLowRankLinear', 'MonarchLinear')
REGISTERED_FUNCTIONS = ('shared_linear', 'hashed_linear', 'kronecker_linear', 'low_rank_linear',
                        'monarch_linear', 'tied_linear')


@contextlib.contextmanager
def chainer_namespaces_as_they_were():
    """Runs the block with the names ``register()`` adds removed, then puts back what was there.

    A doctest or another test may have called ``register()`` already in this process.
    """
    import chainer.functions
    import chainer.links

    missing = object()
    names = [(chainer.links, name) for name in REGISTERED_LINKS] + [
        (chainer.functions, name) for name in REGISTERED_FUNCTIONS]
    saved = [(module, name, getattr(module, name, missing)) for module, name in names]
    for module, name, _ in saved:
        if hasattr(module, name):
            delattr(module, name)
    try:
        yield names
    finally:
        for module, name, value in saved:
            if value is missing:
                if hasattr(module, name):
                    delattr(module, name)
            else:
                setattr(module, name, value)


def escaped(text):
    """``text`` as a regular expression that matches it literally."""
    return re.escape(str(text))


def outputs(link, x, train):
    """``link(x)``'s array in train or test mode, without a graph."""
    with chainer.using_config('train', train), chainer.no_backprop_mode():
        return link(x).array.copy()


def warm_up(link, x, steps=3):
    """Calls ``link`` in train mode: power iterations move SpectralNormalization's vector u."""
    for _ in range(steps):
        outputs(link, x, train=True)


class FamilyFunction:
    """What the ``FunctionTestCase`` of a function of the family has in common (a mixin).

    The parameters ``dtypes`` (those of the inputs and of the weights) set the
    tolerances, and ``n_batch_axes`` (1 by default) the :attr:`batch_shape`.
    """

    def setUp(self):
        vars(self).update(function_tolerances(self.dtypes))

    @property
    def batch_shape(self):
        return (4,) if getattr(self, 'n_batch_axes', 1) == 1 else (2, 3)


# --- ONNX: onnxruntime sessions of exported models -----------------------------------------

ONNX_NEEDS = ('needs the "onnx" extra (onnx==1.14.1, onnxruntime): '
              'pip install ".[onnx]", as scripts/test.sh does')


def onnxruntime_or_skip():
    """The ``onnxruntime`` module; the test is skipped, saying why, without the ``onnx`` extra."""
    import pytest
    pytest.importorskip('onnx', reason=ONNX_NEEDS)
    return pytest.importorskip('onnxruntime', reason=ONNX_NEEDS)


def onnx_session(onnx_model):
    """An onnxruntime session of ``onnx_model`` on the CPU, with its default options."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # not the warning about initializers listed as inputs
    return onnxruntime.InferenceSession(onnx_model.SerializeToString(), options,
                                        providers=['CPUExecutionProvider'])


def run_onnx(onnx_model, *inputs):
    """The outputs of ``onnx_model`` on ``inputs``, given to its first inputs in order."""
    session = onnx_session(onnx_model)
    names = [i.name for i in session.get_inputs()][:len(inputs)]
    return session.run(None, dict(zip(names, inputs)))
