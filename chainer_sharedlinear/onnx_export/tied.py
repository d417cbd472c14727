"""The converter of ``tied_linear``, and the ``Gather`` and ``Gemm`` that tied layers share."""

import typing as tp

import numpy
from chainer import utils

from chainer_sharedlinear import _dtypes
from chainer_sharedlinear.onnx_export.graph import (
    _GEMM_OPTIONAL_BIAS_OPSET,
    _bias_name,
    _caster,
    _check_opset,
    _import_onnx,
    _output,
    _to_numpy,
)


def convert_tied_linear(params) -> tp.Tuple:
    """The ``onnx_chainer`` converter of ``TiedLinearFunction``, the node of ``tied_linear``.

    ``V = sign · W.ravel()[index]`` as one ``Gather`` from ``[W, -W]``, the
    signs folded into the index, a constant of the smallest integer type that
    holds it, then ``Gemm`` with ``x`` and the bias.
    """
    onnx, onnx_helper = _import_onnx()
    func, context = params.func, params.context
    _check_opset('TiedLinearFunction', params.opset_version)
    gb = onnx_helper.GraphBuilder()
    V = _signed_gather(onnx, gb, context, params.input_names[1],
                       utils.size_of_shape(func.inputs[1].shape), func.index, func.sign)
    return _virtual_gemm(onnx, gb, params, V)


def _signed_gather(onnx, gb, context, w_name: str, n_weights: int, index, sign) -> str:
    """``sign · W.ravel()[index]``: one ``Gather`` from ``[W, -W]``, the signs in the index."""
    table = gb.op('Reshape', [w_name, context.add_const(numpy.array([-1], numpy.int64), 'flat')])
    index = _to_numpy(index)
    if sign is not None:
        table = gb.op('Concat', [table, gb.op('Neg', [table])], axis=0)
        index = index + n_weights * (_to_numpy(sign) < 0)
    return gb.op('Gather', [table, _index_constant(onnx, gb, index)], axis=0)


def _gather_gemm(onnx, gb, params, table, index) -> tp.Tuple:
    """``Gather`` of the virtual weight from ``table`` by ``index``, then ``x · Vᵀ + b``."""
    return _virtual_gemm(onnx, gb, params, gb.op('Gather', [table, index], axis=0))


def _virtual_gemm(onnx, gb, params, V) -> tp.Tuple:
    """``x · Vᵀ + b`` for the virtual weight ``V`` of a tied layer, in ``W``'s dtype."""
    func, context = params.func, params.context
    x, W = func.inputs[:2]
    bias_name = _bias_name(params, 1)
    out_size = func.index.shape[0]
    x_dtype = numpy.dtype(x.dtype)
    # The node's arithmetic: the product in the accumulation dtype, the output in x's.
    dtype = _dtypes.accumulation_dtype(x_dtype, W.dtype)
    cast = _caster(onnx, gb)
    if numpy.dtype(W.dtype) != dtype:
        V = cast(V, dtype)
    if x_dtype == dtype and bias_name is not None:
        # The bias in the Gemm, as onnx_chainer exports L.Linear: onnxruntime then fuses
        # the activation that follows into it, as it does the dense layer's.
        gb.op_output_named('Gemm', [params.input_names[0], V, bias_name], params.output_names,
                           transB=1)
        return gb.nodes()
    rows = params.input_names[0] if x_dtype == dtype else cast(params.input_names[0], dtype)
    gemm_inputs = [rows, V]
    if params.opset_version < _GEMM_OPTIONAL_BIAS_OPSET:
        gemm_inputs.append(context.add_const(numpy.zeros(out_size, dtype), 'zero_bias'))
    y = gb.op('Gemm', gemm_inputs, transB=1)
    return _output(gb, cast, y, dtype, x_dtype, bias_name, params.output_names)


def _smallest_index_dtype(index) -> numpy.dtype:
    """The smallest integer type that holds every value of ``index``, all at least 0."""
    high = int(index.max()) if index.size else 0
    for dtype in (numpy.uint8, numpy.uint16, numpy.int32):
        if high <= numpy.iinfo(dtype).max:
            return numpy.dtype(dtype)
    return numpy.dtype(numpy.int64)


def _index_constant(onnx, gb, index) -> str:
    """``index`` as a constant of its smallest integer type, cast to the ``Gather`` index type.

    ``Gather`` takes int32 or int64 indices; the constant is stored as raw
    bytes, so that a uint8 index takes one byte each in the file.
    """
    from onnx import numpy_helper
    dtype = _smallest_index_dtype(index)
    tensor = numpy_helper.from_array(index.astype(dtype), 'index')
    name = gb.op('Constant', [], value=tensor)
    if dtype.itemsize < 4:
        name = _caster(onnx, gb)(name, numpy.int32)
    return name
