"""The converter of ``ClusteredLinear``: the index at its bit width, unpacked by the graph."""

import functools
import typing as tp

import numpy

from chainer_sharedlinear.functions.clustered_linear import index_bits, pack_index
from chainer_sharedlinear.onnx_export.graph import (
    _REDUCE_SUM_AXES_INPUT_OPSET,
    _SLICE_INPUTS_OPSET,
    _check_opset,
    _import_onnx,
)
from chainer_sharedlinear.onnx_export.hash_graph import _HashNodes
from chainer_sharedlinear.onnx_export.tied import _gather_gemm


def convert_clustered_linear(params) -> tp.Tuple:
    """The ``onnx_chainer`` converter of ``ClusteredLinearFunction``, the clustered layer's node.

    The index is stored as the layer's file stores it, at ``index_bits``
    bits a weight packed into bytes, and the graph unpacks it in int64 with
    operators of every opset: bit ``k`` of a byte ``v`` is
    ``v // 2**k - 2 · (v // 2**(k + 1))``; the first ``index_bits · out_size
    · in_size`` bits, grouped by entry, times the powers of two and added
    up, are the index. Then ``Gather`` from the codebook and ``Gemm``.
    """
    onnx, onnx_helper = _import_onnx()
    func = params.func
    _check_opset('ClusteredLinearFunction', params.opset_version)
    out_size, in_size = func.index.shape
    bits = index_bits(func.n_clusters)
    nodes = _HashNodes(onnx, 'index{}_'.format(onnx_helper.get_func_name().split('_')[-1]))
    int64 = functools.partial(nodes.const, dtype=numpy.int64)
    packed = nodes.const(pack_index(func.index, bits).reshape(-1, 1), numpy.uint8)
    packed = nodes._cast(packed, numpy.int64)
    powers = [2 ** k for k in range(8)]
    # (n_bytes, 8): bit k of each byte v, v // 2**k - 2 · (v // 2**(k + 1)).
    planes = nodes.op('Sub', nodes.op('Div', packed, int64(powers)), nodes.op(
        'Mul', int64(2), nodes.op('Div', packed, int64([2 * power for power in powers]))))
    count = out_size * in_size * bits
    flat = nodes.op('Reshape', planes, int64([-1]))
    if params.opset_version < _SLICE_INPUTS_OPSET:
        flat = nodes.op('Slice', flat, starts=[0], ends=[count], axes=[0])
    else:
        flat = nodes.op('Slice', flat, int64([0]), int64([count]), int64([0]))
    entries = nodes.op('Reshape', flat, int64([-1, bits]))
    weighted = nodes.op('Mul', entries, int64([2 ** k for k in range(bits)]))
    if params.opset_version < _REDUCE_SUM_AXES_INPUT_OPSET:
        index = nodes.op('ReduceSum', weighted, axes=[1], keepdims=0)
    else:
        index = nodes.op('ReduceSum', weighted, int64([1]), keepdims=0)
    index = nodes.op('Reshape', index, int64([out_size, in_size]))
    gb = onnx_helper.GraphBuilder()
    return tuple(nodes.nodes) + _gather_gemm(onnx, gb, params, params.input_names[1], index)
