"""The converter of Chainer's ``Reshape``, which keeps the batch axes free."""

import typing as tp

import numpy
from chainer import utils

from chainer_sharedlinear.onnx_export.graph import _import_onnx, _numbered_constants, _slice


def convert_reshape(params) -> tp.Tuple:
    """The ``onnx_chainer`` converter of Chainer's ``Reshape`` node, the batch axes left free.

    onnx_chainer's own writes the shape the node was given, the export's
    batch size in it, so that a graph that flattens its input takes no other
    batch size: ``F.linear`` and every layer of the family flatten an input
    of more than two axes, or with ``n_batch_axes`` above 1, into a matrix,
    and give the output its batch axes back after. Those two reshapes are
    written so that every batch axis keeps the size it has at run time:

    - a flatten of the first ``k`` axes into one and the rest into another,
      ``(prod(shape[:k]), prod(shape[k:]))``, is ``Flatten(axis=k)``, the
      largest such ``k`` (an axis of size 1 there may be a batch axis);
    - its inverse, ``(n, m)`` to ``batch_shape + (m,)``, takes
      ``batch_shape`` at run time (``Shape``, ``Slice``) from the input of the
      flatten that made the ``n`` rows, found back along the nodes' first
      inputs (``_flattened_source``); without one, the first of them is
      inferred (``-1``) and the others are the export's;
    - a reshape of the last axes that keeps the first ``k`` as they are (an
      attention's split of the features into heads, and their merge), writes
      ``0`` for those ``k``, which ONNX's ``Reshape`` copies from its input
      at run time (``_kept_axes``).

    Each gives the node's own output at the export's shapes. Any other
    reshape is converted by onnx_chainer's converter, as without this one.
    """
    _, onnx_helper = _import_onnx()
    from onnx_chainer import mapping
    func, opset = params.func, params.opset_version
    x = func.inputs[0]
    y = func.outputs[0]()
    in_shape, out_shape = tuple(x.shape), None if y is None else tuple(y.shape)
    gb = onnx_helper.GraphBuilder()
    axis = None if out_shape is None else _flatten_axis(in_shape, out_shape)
    if axis is not None and (opset >= _FLATTEN_ANY_TYPE_OPSET or numpy.dtype(x.dtype).kind == 'f'):
        gb.op_output_named('Flatten', params.input_names[:1], params.output_names, axis=axis)
        return gb.nodes()
    if (out_shape is not None and len(in_shape) == 2 and len(out_shape) > 2
            and out_shape[-1] == in_shape[1] and 0 not in out_shape):
        constant = _numbered_constants(params.context, 'shape')
        source = _flattened_source(x, out_shape[:-1], params.context)
        if source is None:
            shape = constant(numpy.array((-1,) + out_shape[1:], numpy.int64))
        else:
            batch_shape = _slice(gb, constant, opset, gb.op('Shape', [source]),
                                 0, len(out_shape) - 1, axis=0)
            shape = gb.op('Concat', [batch_shape, constant(numpy.array(out_shape[-1:],
                                                                        numpy.int64))], axis=0)
        gb.op_output_named('Reshape', [params.input_names[0], shape], params.output_names)
        return gb.nodes()
    kept = 0 if out_shape is None or 0 in out_shape else _kept_axes(in_shape, out_shape)
    if kept:
        shape = numpy.array((0,) * kept + out_shape[kept:], numpy.int64)
        gb.op_output_named('Reshape', [params.input_names[0], params.context.add_const(
            shape, 'shape')], params.output_names)
        return gb.nodes()
    return mapping.converters['Reshape'](params)


def _kept_axes(in_shape, out_shape) -> int:
    """How many of the first axes ``in_shape`` and ``out_shape`` have the same.

    >>> _kept_axes((2, 5, 16), (2, 5, 4, 4)), _kept_axes((2, 5, 4, 4), (2, 5, 16))
    (2, 2)
    >>> _kept_axes((2, 6), (3, 4))
    0
    """
    kept = 0
    for before, after in zip(in_shape, out_shape):
        if before != after:
            break
        kept += 1
    return kept


# Flatten takes inputs of every type from opset 9, of float types only before.
_FLATTEN_ANY_TYPE_OPSET = 9


def _flatten_axis(in_shape, out_shape) -> tp.Optional[int]:
    """The largest ``k >= 1`` at which ``in_shape`` flattened is ``out_shape``, or ``None``.

    >>> _flatten_axis((2, 3, 4), (6, 4)), _flatten_axis((2, 1, 4), (2, 4))
    (2, 2)
    >>> _flatten_axis((2, 12), (6, 4)) is None
    True
    """
    if len(out_shape) != 2:
        return None
    for k in range(len(in_shape), 0, -1):
        if out_shape == (utils.size_of_shape(in_shape[:k]), utils.size_of_shape(in_shape[k:])):
            return k
    return None


def _flattened_source(node, batch_shape, context) -> tp.Optional[str]:
    """The name of the value whose axes ``batch_shape`` were flattened into ``node``'s rows.

    Goes back from ``node`` along the first input of each node while the
    values keep ``node``'s rows (as a linear layer's nodes do, and its
    activations), to a ``Reshape`` that made them as a flatten of
    ``batch_shape``. ``None`` if there is none, or if onnx_chainer has not
    named that value.
    """
    from chainer.functions.array.reshape import Reshape
    rows = node.shape[0]
    while len(node.shape) >= 1 and node.shape[0] == rows and node.creator_node is not None:
        creator = node.creator_node
        if not creator.inputs:
            return None
        source = creator.inputs[0]
        if (isinstance(creator, Reshape) and len(node.shape) == 2
                and tuple(source.shape[:len(batch_shape)]) == tuple(batch_shape)):
            variable = source.get_variable_or_none()
            named = context.name_list.get(id(source if variable is None else variable))
            return None if named is None else named[0]
        node = source
    return None
