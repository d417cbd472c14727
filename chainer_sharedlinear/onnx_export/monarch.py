"""The converter of ``MonarchLinear``: two batched products, the short blocks padded."""

import typing as tp

import numpy

from chainer_sharedlinear import _dtypes
from chainer_sharedlinear.onnx_export.graph import (
    _bias_name,
    _check_opset,
    _import_onnx,
    _output,
    _ProductGraph,
    _slice,
)


def convert_monarch_linear(params) -> tp.Tuple:
    """The ``onnx_chainer`` converter of a ``MonarchLinearFunction`` node.

    ``P L Pᵀ R`` as in Chainer: the input cut into blocks
    (``_monarch_blocks``), one batched ``MatMul`` with ``R``, the
    interleaving as ``Transpose`` and ``Reshape``, one batched ``MatMul``
    with ``L``, and a ``Slice`` of the first ``out_size`` outputs where the
    last blocks are cut. ``R`` and ``L`` are stored as they are, and nothing
    else of the layer's size: the file is about the size of its ``.npz``.
    """
    onnx, onnx_helper = _import_onnx()
    func, context, opset = params.func, params.context, params.opset_version
    _check_opset('MonarchLinearFunction', opset)
    x, R, L = func.inputs[:3]
    x_name, r_name, l_name = params.input_names[:3]
    bias_name = _bias_name(params, 2)
    n_blocks, q, p = R.shape
    s = L.shape[1]
    in_size, out_size = x.shape[1], func.out_size
    x_dtype = numpy.dtype(x.dtype)
    dtype = _dtypes.accumulation_dtype(x.dtype, R.dtype, L.dtype)
    graph = _ProductGraph(onnx, onnx_helper, context, 'monarch', dtype)
    gb, cast, constant = graph.gb, graph.cast, graph.constant
    shape, as_dtype = graph.shape, graph.as_dtype

    blocks = _monarch_blocks(gb, constant, opset, as_dtype(x_name, x.dtype), in_size, n_blocks)
    X = gb.op('Transpose', [blocks], perm=[1, 0, 2])
    R_t = gb.op('Transpose', [as_dtype(r_name, R.dtype)], perm=[0, 2, 1])
    Z = gb.op('Transpose', [gb.op('MatMul', [X, R_t])], perm=[1, 0, 2])
    Z = gb.op('Transpose', [gb.op('Reshape', [Z, shape(-1, q, n_blocks)])], perm=[2, 0, 1])
    L_t = gb.op('Transpose', [as_dtype(l_name, L.dtype)], perm=[0, 2, 1])
    Y = gb.op('Transpose', [gb.op('MatMul', [Z, L_t])], perm=[1, 2, 0])
    y = gb.op('Reshape', [Y, shape(-1, n_blocks * s)])
    if out_size < n_blocks * s:
        y = _slice(gb, constant, opset, y, 0, out_size, axis=1)
    return _output(gb, cast, y, dtype, x_dtype, bias_name, params.output_names)


# Pad takes its pads as an input instead of an attribute from opset 11.
_PAD_INPUTS_OPSET = 11


def _monarch_blocks(gb, constant, opset: int, features: str, in_size: int, n_blocks: int) -> str:
    """The ``(batch, in_size)`` input as ``(batch, n_blocks, p)`` blocks, as ``input_positions``.

    The first blocks take ``p`` features each; where ``n_blocks`` does not
    divide ``in_size``, the last ones take ``p - 1`` and a zero after them
    (``Pad``), which the graph adds rather than store an index and a mask of
    the input's size.
    """
    p = -(-in_size // n_blocks)
    n_short = n_blocks * p - in_size
    n_full = n_blocks - n_short

    def blocks(name, n, size):
        # 0 copies the batch size.
        return gb.op('Reshape', [name, constant(numpy.array([0, n, size], numpy.int64))])

    if not n_short:
        return blocks(features, n_blocks, p)
    full = blocks(_slice(gb, constant, opset, features, 0, n_full * p, axis=1), n_full, p)
    short = blocks(_slice(gb, constant, opset, features, n_full * p, in_size, axis=1),
                   n_short, p - 1)
    pads = [0, 0, 0, 0, 0, 1]  # the begins of the three axes, then their ends
    if opset < _PAD_INPUTS_OPSET:
        short = gb.op('Pad', [short], pads=pads)
    else:
        short = gb.op('Pad', [short, constant(numpy.array(pads, numpy.int64))])
    return gb.op('Concat', [full, short], axis=1)
