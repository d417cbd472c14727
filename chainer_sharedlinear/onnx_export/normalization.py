"""The converter of Chainer's ``LayerNormalization``, which onnx_chainer lacks."""

import typing as tp

import numpy

from chainer_sharedlinear.onnx_export.graph import _check_opset, _import_onnx

# LayerNormalization is an operator of its own from opset 17.
_LAYER_NORMALIZATION_OPSET = 17


def convert_layer_normalization(params) -> tp.Tuple:
    """The ``onnx_chainer`` converter of Chainer's ``LayerNormalization`` node.

    The node of ``F.layer_normalization`` and ``L.LayerNormalization``
    normalizes each row of a matrix ``x`` over its features, with the
    population variance and ``eps`` under the root, then scales by ``gamma``
    and shifts by ``beta``. From opset 17 it is ONNX's
    ``LayerNormalization`` over the last axis; below, the same arithmetic as
    Chainer's: ``ReduceMean``, ``Sub``, ``Mul`` (the square), ``ReduceMean``,
    ``Add`` of ``eps``, ``Sqrt``, ``Div``, then ``Mul`` by ``gamma`` and
    ``Add`` of ``beta``.
    """
    _, onnx_helper = _import_onnx()
    func, opset, context = params.func, params.opset_version, params.context
    _check_opset('LayerNormalization', opset)
    x = func.inputs[0]
    x_name, gamma_name, beta_name = params.input_names
    gb = onnx_helper.GraphBuilder()
    if opset >= _LAYER_NORMALIZATION_OPSET:
        gb.op_output_named('LayerNormalization', [x_name, gamma_name, beta_name],
                           params.output_names, axis=-1, epsilon=func.eps)
        return gb.nodes()
    # ReduceMean takes its axes as an attribute until opset 18, past this branch.
    mean = gb.op('ReduceMean', [x_name], axes=[1], keepdims=1)
    centred = gb.op('Sub', [x_name, mean])
    variance = gb.op('ReduceMean', [gb.op('Mul', [centred, centred])], axes=[1], keepdims=1)
    eps = context.add_const(numpy.array(func.eps, x.dtype), 'eps')
    normalized = gb.op('Div', [centred, gb.op('Sqrt', [gb.op('Add', [variance, eps])])])
    gb.op_output_named('Add', [gb.op('Mul', [normalized, gamma_name]), beta_name],
                       params.output_names)
    return gb.nodes()
