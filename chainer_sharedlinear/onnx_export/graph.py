"""What every converter builds its nodes with: the lazy import of onnx, casts, the output.

Also the opset versions at which an operator's form changes, where more than
one converter writes that operator.
"""

import itertools
import sys
import typing as tp
import warnings

import numpy

_MISSING_ONNX = (
    'exporting to ONNX needs onnx==1.14.1 and onnxruntime, the "onnx" extra: '
    'pip install "chainer-sharedlinear[onnx]" (with numpy<2). onnx_chainer imports '
    'onnx.mapping, which onnx 1.16 and later no longer have.')

# Gemm's bias input is optional from opset 11; ReduceSum takes its axes as an
# input instead of an attribute from opset 13.
_GEMM_OPTIONAL_BIAS_OPSET = 11
_REDUCE_SUM_AXES_INPUT_OPSET = 13


def _import_onnx():
    try:
        import onnx
        import onnx.mapping  # noqa: F401 (onnx_chainer needs it; newer onnx lacks it)
        from onnx_chainer import onnx_helper
    except ImportError as e:
        raise ImportError(_MISSING_ONNX) from e
    return onnx, onnx_helper


def _caster(onnx, gb):
    def cast(name, to, output_names=None):
        to = onnx.helper.np_dtype_to_tensor_dtype(numpy.dtype(to))
        if output_names is None:
            return gb.op('Cast', [name], to=to)
        return gb.op_output_named('Cast', [name], output_names, to=to)
    return cast


def _check_opset(name, opset):
    if opset < 7:
        raise RuntimeError('{} is exported for opset_version 7 or later, not {}'.format(
            name, opset))


def _bias_name(params, n_weights: int):
    """The name of the bias that follows ``x`` and ``n_weights`` weights, or ``None``."""
    names = params.input_names
    return names[n_weights + 1] if len(names) == n_weights + 2 else None


def _warn_the_exporter(message: str) -> None:
    """A ``UserWarning`` that names the line that called the export, not a converter.

    Converters run deep inside ``onnx_chainer.export``: the warning is given
    the frame of the first caller outside ``onnx_chainer`` and this package,
    whether that called :func:`export` or ``onnx_chainer.export``.
    """
    frame, stacklevel = sys._getframe(1), 2
    while frame.f_back is not None and _is_the_exporters(frame.f_globals.get('__name__', '')):
        frame, stacklevel = frame.f_back, stacklevel + 1
    warnings.warn(message, UserWarning, stacklevel=stacklevel)


def _is_the_exporters(module_name: str) -> bool:
    """Whether ``module_name`` is of ``onnx_chainer`` or of this package."""
    return any(module_name == package or module_name.startswith(package + '.')
               for package in ('onnx_chainer', __name__.rpartition('.')[0]))


# Slice takes its starts and ends as inputs from opset 10.
_SLICE_INPUTS_OPSET = 10


def _output(gb, cast, y, dtype, x_dtype, bias_name, output_names) -> tp.Tuple:
    """The nodes' output: ``y`` computed in ``dtype``, rounded to ``x``'s, plus the bias.

    As in Chainer, the product is rounded to the input's dtype before the bias
    (of that dtype) is added.
    """
    if x_dtype != dtype:
        y = cast(y, x_dtype)
    if bias_name is None:
        gb.op_output_named('Identity', [y], output_names)
    else:
        gb.op_output_named('Add', [y, bias_name], output_names)
    return gb.nodes()


def _numbered_constants(context, prefix: str):
    """A function that adds an array to the graph as a constant, each under a name of its own.

    onnx_chainer names a constant after its node and the name given, which
    must differ between the constants of one node.
    """
    count = itertools.count()

    def constant(array) -> str:
        return context.add_const(array, '{}{}'.format(prefix, next(count)))
    return constant


class _ProductGraph:
    """What a converter of products in the accumulation dtype builds with: the graph, a cast,
    numbered constants, shapes as constants, and inputs cast to ``dtype`` where they differ."""

    def __init__(self, onnx, onnx_helper, context, prefix: str, dtype) -> None:
        self.gb = onnx_helper.GraphBuilder()
        self.cast = _caster(onnx, self.gb)
        self.constant = _numbered_constants(context, prefix)
        self.dtype = numpy.dtype(dtype)

    def shape(self, *dims) -> str:
        return self.constant(numpy.array(dims, numpy.int64))

    def as_dtype(self, name: str, of) -> str:
        return name if numpy.dtype(of) == self.dtype else self.cast(name, self.dtype)


def _slice(gb, constant, opset: int, name: str, start: int, end: int, axis: int) -> str:
    """``name[start:end]`` along ``axis``, in the form of ``opset``."""
    if opset < _SLICE_INPUTS_OPSET:
        return gb.op('Slice', [name], starts=[start], ends=[end], axes=[axis])
    return gb.op('Slice', [name] + [constant(numpy.array([value], numpy.int64))
                                    for value in (start, end, axis)])


def _to_numpy(array):
    from chainer import backend
    return backend.CpuDevice().send(array)
