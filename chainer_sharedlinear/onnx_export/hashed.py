"""The converter of ``HashedLinear``: the map computed by the graph, or stored."""

import typing as tp

from chainer_sharedlinear.onnx_export.graph import (
    _check_opset,
    _import_onnx,
    _to_numpy,
    _warn_the_exporter,
)
from chainer_sharedlinear.onnx_export.hash_graph import _BitwiseHashNodes, _HashNodes
from chainer_sharedlinear.onnx_export.tied import (
    _gather_gemm,
    _index_constant,
    _smallest_index_dtype,
)

# Range, which the in-graph hash needs, is in opset 11; BitwiseXor in opset 18.
_RANGE_OPSET = 11
_BITWISE_OPSET = 18


def convert_hashed_linear(params, hash_in_graph: bool = True) -> tp.Tuple:
    """The ``onnx_chainer`` converter of ``HashedLinearFunction``, the node of the hashed layers.

    The graph computes each virtual weight's place in the table ``[W, -W]``
    (its second input) from the sizes and the seed, exactly as
    ``signed_hashed_index`` does: from opset 18 with ``BitwiseXor`` on 32-bit
    unsigned integers (``_BitwiseHashNodes``), which onnxruntime folds at a
    small part of the time and memory, before with operators of opset 11 on
    64-bit unsigned integers (``_HashNodes`` says how); then ``Gather`` and
    ``Gemm``. With ``hash_in_graph=False``, or below
    opset 11 (with a warning), the map is stored as a constant of the
    smallest integer type that holds it.
    """
    onnx, onnx_helper = _import_onnx()
    func = params.func
    _check_opset('HashedLinearFunction', params.opset_version)
    out_size, in_size = func.index.shape
    gb = onnx_helper.GraphBuilder()
    if not hash_in_graph:
        return _gather_gemm(onnx, gb, params, params.input_names[1],
                            _index_constant(onnx, gb, _to_numpy(func.index)))
    if params.opset_version < _RANGE_OPSET:
        index = _to_numpy(func.index)
        _warn_the_exporter(
            'opset_version {} has no Range (opset 11), which the hash of a hashed layer needs: '
            'its {} x {} index map is stored in the ONNX file instead, {} bytes where W takes '
            '{}. Export with opset_version 11 or later (the default) to keep the file the size '
            'of W.'.format(params.opset_version, out_size, in_size,
                           _smallest_index_dtype(index).itemsize * index.size,
                           func.n_weights * func.inputs[1].dtype.itemsize))
        return _gather_gemm(onnx, gb, params, params.input_names[1],
                            _index_constant(onnx, gb, index))
    # onnx_chainer names a node's values after the node, 'HashedLinearFunction_3': its
    # number alone makes short names that no other value has.
    nodes = _BitwiseHashNodes if params.opset_version >= _BITWISE_OPSET else _HashNodes
    hash_nodes = nodes(onnx, 'hash{}_'.format(onnx_helper.get_func_name().split('_')[-1]))
    index = hash_nodes.signed_index(out_size, in_size, func.n_weights, func.seed)
    return tuple(hash_nodes.nodes) + _gather_gemm(onnx, gb, params, params.input_names[1], index)
