"""The converter of ``KroneckerLinear``: two products, no ``(out_size, in_size)`` weight."""

import typing as tp

import numpy

from chainer_sharedlinear import _dtypes
from chainer_sharedlinear.onnx_export.graph import (
    _bias_name,
    _check_opset,
    _import_onnx,
    _output,
    _ProductGraph,
)


def convert_kronecker_linear(params) -> tp.Tuple:
    """The ``onnx_chainer`` converter of a ``KroneckerLinearFunction`` node.

    ``Σ_r A[r] · X · B[r]ᵀ`` for each input row ``X`` seen as an
    ``n1 × n2`` matrix: one ``MatMul`` with all of ``B``, one with all of
    ``A`` (its terms interleaved), and reshapes between them, the layout of
    Chainer's node: no ``Transpose`` of an array of the batch's size.
    """
    onnx, onnx_helper = _import_onnx()
    func, context = params.func, params.context
    _check_opset('KroneckerLinearFunction', params.opset_version)
    x, A, B = func.inputs[:3]
    x_name, a_name, b_name = params.input_names[:3]
    bias_name = _bias_name(params, 2)
    n_terms, m1, n1 = A.shape
    _, m2, n2 = B.shape
    x_dtype = numpy.dtype(x.dtype)
    dtype = _dtypes.accumulation_dtype(x.dtype, A.dtype, B.dtype)
    graph = _ProductGraph(onnx, onnx_helper, context, 'shape', dtype)
    gb, cast = graph.gb, graph.cast
    shape, as_dtype = graph.shape, graph.as_dtype

    rows = gb.op('Reshape', [as_dtype(x_name, x.dtype), shape(-1, n2)])
    b_all = gb.op('Reshape', [as_dtype(b_name, B.dtype), shape(n_terms * m2, n2)])
    T = gb.op('MatMul', [rows, gb.op('Transpose', [b_all], perm=[1, 0])])
    # T's columns are (r, k) for each row (n, j): as (N, n1·R, m2), its rows j·R + r, the
    # order of A's interleaved columns, so that no array of the batch's size is moved.
    T = gb.op('Reshape', [T, shape(-1, n1 * n_terms, m2)])
    a_all = gb.op('Reshape', [gb.op('Transpose', [as_dtype(a_name, A.dtype)], perm=[1, 2, 0]),
                              shape(m1, n1 * n_terms)])
    y = gb.op('Reshape', [gb.op('MatMul', [a_all, T]), shape(-1, m1 * m2)])
    return _output(gb, cast, y, dtype, x_dtype, bias_name, params.output_names)
