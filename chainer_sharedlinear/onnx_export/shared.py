"""The converter of ``SharedLinear``: its fold form, no tiled weight."""

import typing as tp

import numpy

from chainer_sharedlinear import _dtypes
from chainer_sharedlinear.onnx_export.graph import (
    _GEMM_OPTIONAL_BIAS_OPSET,
    _REDUCE_SUM_AXES_INPUT_OPSET,
    _caster,
    _import_onnx,
)


def convert_shared_linear(params) -> tp.Tuple:
    """The ``onnx_chainer`` converter of a ``SharedLinearFunction`` node.

    Args:
        params (onnx_chainer.functions.converter.FunctionConverterParams):
            The node, its input and output names, the opset version and the
            export context, as ``onnx_chainer`` passes them to an external
            converter.

    Returns:
        tuple of onnx.NodeProto: The nodes computing ``fold(x) · Wᵀ + b``.
    """
    onnx, onnx_helper = _import_onnx()
    func, opset, context = params.func, params.opset_version, params.context
    if opset < 7:
        raise RuntimeError(
            'SharedLinearFunction is exported for opset_version 7 or later, '
            'not {}'.format(opset))
    x, W = func.inputs[:2]
    x_name, w_name = params.input_names[:2]
    b_name = params.input_names[2] if len(params.input_names) == 3 else None
    out_size, k = W.shape
    n_shared = x.shape[1] // k
    x_dtype, w_dtype = numpy.dtype(x.dtype), numpy.dtype(W.dtype)
    # Chainer multiplies in the wider of the two dtypes, adds float16 blocks in
    # float32, and returns x's dtype.
    dtype = numpy.promote_types(x_dtype, w_dtype)
    if n_shared > 1:
        dtype = numpy.promote_types(dtype, _dtypes.accumulation_dtype(x_dtype))
    gb = onnx_helper.GraphBuilder()
    cast = _caster(onnx, gb)

    folded = x_name
    if n_shared > 1:
        # 0 copies the input's batch size, so the graph takes any batch size.
        blocks_shape = context.add_const(
            numpy.array([0, n_shared, k], numpy.int64), 'blocks_shape')
        blocks = gb.op('Reshape', [x_name, blocks_shape])
        if x_dtype != dtype:
            blocks = cast(blocks, dtype)
        if opset < _REDUCE_SUM_AXES_INPUT_OPSET:
            folded = gb.op('ReduceSum', [blocks], axes=[1], keepdims=0)
        else:
            axes = context.add_const(numpy.array([1], numpy.int64), 'blocks_axis')
            folded = gb.op('ReduceSum', [blocks, axes], keepdims=0)
    elif x_dtype != dtype:
        folded = cast(folded, dtype)
    if w_dtype != dtype:
        w_name = cast(w_name, dtype)

    gemm_inputs = [folded, w_name]
    if dtype == x_dtype:
        if b_name is not None:
            gemm_inputs.append(b_name)
        elif opset < _GEMM_OPTIONAL_BIAS_OPSET:
            gemm_inputs.append(context.add_const(numpy.zeros(out_size, dtype), 'zero_bias'))
        gb.op_output_named('Gemm', gemm_inputs, params.output_names, transB=1)
        return gb.nodes()

    # W is wider than x: the product is rounded to x's dtype before the bias is added.
    if opset < _GEMM_OPTIONAL_BIAS_OPSET:
        gemm_inputs.append(context.add_const(numpy.zeros(out_size, dtype), 'zero_bias'))
    y = gb.op('Gemm', gemm_inputs, transB=1)
    if b_name is None:
        cast(y, x_dtype, params.output_names)
    else:
        gb.op_output_named('Add', [cast(y, x_dtype), b_name], params.output_names)
    return gb.nodes()
