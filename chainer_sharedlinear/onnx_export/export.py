"""``export``: ``onnx_chainer.export`` with this package's converters and a dynamic batch axis."""

import functools
import warnings

from chainer_sharedlinear.onnx_export.graph import _import_onnx
from chainer_sharedlinear.onnx_export.hashed import convert_hashed_linear
from chainer_sharedlinear.onnx_export.mapping import converters


def export(model, args, filename=None, *, hash_in_graph: bool = True, **kwargs):
    """:func:`onnx_chainer.export` for models that contain the family's layers.

    The same arguments and result as ``onnx_chainer.export``, with these
    differences:

    - the converters of this package are added to ``external_converters`` (a
      converter of your own under the same name is used instead);
    - unless ``input_shapes`` is given, the first axis of every input is a
      dynamic axis, ``'batch'``: the graph takes any batch size. To fix it
      to the sample's, pass ``input_shapes`` with the sizes, e.g.
      ``input_shapes=[(8, 784)]``;
    - the parameters are initializers only, not also inputs of the graph, so
      onnxruntime treats them as constants (and warns about none of them);
      the file holds no shapes of intermediate values;
    - ``hash_in_graph`` chooses how a hashed layer's map is shipped: computed
      by the graph (the default: the file is the size of ``W``), or stored,
      which makes a larger file that loads faster (see
      :doc:`/existing-models`).

    Args:
        model (~chainer.Chain): The model, called as ``model(*args)``.
        args: Its inputs: an array, a :class:`~chainer.Variable`, or a list,
            tuple or dict of them.
        filename (str or file-like): Where to write the ONNX model, if anywhere.
        hash_in_graph (bool): Whether the graph computes the map of each
            hashed layer (opset 11 or later) rather than store it (keyword only).
        **kwargs: The other arguments of ``onnx_chainer.export``, by keyword.

    Returns:
        onnx.ModelProto: The ONNX model (or what ``return_named_inout`` asks for).

    Raises:
        TypeError: ``model`` is an ``L.Classifier``, whose output is a loss:
            export its ``predictor``.
    """
    _check_exportable(model)
    _import_onnx()
    import onnx_chainer
    external = dict(converters)
    if not hash_in_graph:
        external['HashedLinearFunction'] = functools.partial(convert_hashed_linear,
                                                             hash_in_graph=False)
    external.update(kwargs.pop('external_converters', None) or {})
    if kwargs.get('input_shapes') is None:
        kwargs['input_shapes'] = _batch_shapes(args)
    save_text = kwargs.pop('save_text', False)
    with warnings.catch_warnings():
        # onnx_chainer warns that external_converters may change in a future
        # release; Chainer 7.8.1, which this package pins, is the last one.
        warnings.filterwarnings(
            'ignore', message='external_converters is experimental', category=FutureWarning)
        # onnx_chainer reads onnx.mapping, which onnx 1.14.1 deprecates; neither is
        # the user's to change.
        warnings.filterwarnings('ignore', message='`mapping.', category=DeprecationWarning)
        result = onnx_chainer.export(
            model, args, None, external_converters=external, **kwargs)
    onnx_model = result[0] if isinstance(result, tuple) else result
    _initializers_are_not_inputs(onnx_model)
    # The shapes of the intermediate values, which onnx_chainer infers when given
    # input_shapes, are optional: a hashed layer has some 180 of them.
    del onnx_model.graph.value_info[:]
    if isinstance(filename, str):
        with open(filename, 'wb') as f:
            f.write(onnx_model.SerializeToString())
        if save_text:
            with open(filename + '.txt', 'w') as f:
                print(onnx_model, file=f)
    elif hasattr(filename, 'write'):
        filename.write(onnx_model.SerializeToString())
    return result


def _check_exportable(model) -> None:
    """Refuses a model whose outputs are not its predictions: a classifier's loss.

    ``L.Classifier`` passes all its inputs but the last (the labels) to its
    predictor, so that with the sample alone its predictor is called with
    nothing, and fails far from the cause.
    """
    from chainer.links import Classifier
    if isinstance(model, Classifier):
        raise TypeError(
            'export exports the outputs of model(*args); {} computes a loss from inputs and '
            'labels. Export the network that makes the predictions, its predictor: '
            'export(model.predictor, x)'.format(type(model).__name__))


def _batch_shapes(args):
    """``input_shapes`` for onnx_chainer: each input's shape, its first axis ``'batch'``."""
    def shape(array):
        return ('batch',) + tuple(array.shape[1:]) if array.ndim else ()
    if isinstance(args, dict):
        return {key: shape(value) for key, value in args.items()}
    if isinstance(args, (list, tuple)):
        return [shape(value) for value in args]
    return shape(args)


def _initializers_are_not_inputs(onnx_model) -> None:
    # onnx_chainer lists every parameter among the graph's inputs too (as IR version 3
    # required): onnxruntime then warns once per parameter and folds no constant.
    initializers = {tensor.name for tensor in onnx_model.graph.initializer}
    inputs = [value for value in onnx_model.graph.input if value.name not in initializers]
    del onnx_model.graph.input[:]
    onnx_model.graph.input.extend(inputs)
