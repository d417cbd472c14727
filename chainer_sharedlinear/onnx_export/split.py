"""The converter of Chainer's ``SplitAxis`` at opsets where onnx_chainer's writes no valid node."""

import typing as tp

import numpy

from chainer_sharedlinear.onnx_export.graph import _import_onnx

# Split takes the sizes of its parts as an input instead of an attribute from opset 13.
_SPLIT_INPUT_OPSET = 13


def convert_split_axis(params) -> tp.Tuple:
    """The ``onnx_chainer`` converter of Chainer's ``SplitAxis`` node (``F.split_axis``).

    onnx_chainer writes the parts' sizes as the attribute ``split``, which
    ONNX's ``Split`` no longer has from opset 13: there they are its second
    input. Below opset 13 this is onnx_chainer's converter.
    """
    _, onnx_helper = _import_onnx()
    from onnx_chainer import mapping
    func, opset = params.func, params.opset_version
    if opset < _SPLIT_INPUT_OPSET:
        return mapping.converters['SplitAxis'](params)
    gb = onnx_helper.GraphBuilder()
    split = params.context.add_const(numpy.array(_part_sizes(func), numpy.int64), 'split')
    gb.op_output_named('Split', [params.input_names[0], split], params.output_names,
                       axis=func.axis)
    return gb.nodes()


def _part_sizes(func) -> tp.List[int]:
    """The sizes of ``func``'s parts along its axis, as ``numpy.split`` cuts them."""
    total = func.inputs[0].shape[func.axis]
    if func.indices is None:
        return [total // func.sections] * func.sections
    starts = [0] + list(func.indices)
    ends = list(func.indices) + [total]
    return [len(range(total)[start:end]) for start, end in zip(starts, ends)]
