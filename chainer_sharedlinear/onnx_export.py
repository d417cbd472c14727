"""ONNX export of models that contain the family's layers, through ``onnx_chainer``.

``onnx_chainer`` (part of Chainer 7.8.1) converts a model by running it and
turning each :class:`chainer.FunctionNode` of the graph into ONNX nodes, with
a converter it looks up by the node's class name. It knows Chainer's own
functions only; its documented way to add one is the ``external_converters``
argument of :func:`onnx_chainer.export`. :data:`converters` is that argument
for this package, and :func:`export` passes it for you.

What the file holds, layer by layer:

- ``SharedLinear``: its fold form, as in Chainer: ``Reshape`` to
  ``(batch, n_shared, k)``, ``ReduceSum`` over the blocks (in float32 for
  float16 inputs), and ``Gemm`` with ``W`` of shape ``(out_size, k)`` and the
  bias. The tiled ``(out_size, in_size)`` weight is never built, in the file
  or at run time.
- ``KroneckerLinear``: ``A`` and ``B`` as they are, and two ``MatMul`` on the
  input reshaped to ``(batch·n1, n2)`` and ``(batch, n_terms·n1, m2)``; no
  ``(out_size, in_size)`` weight either.
- ``HashedLinear`` and ``tied_linear``: ONNX has no hash, so the file holds
  ``W`` and the index map, an ``(out_size, in_size)`` array of 32-bit
  integers (64-bit past 2**31 stored weights) with the signs folded in: the
  virtual weight is a ``Gather`` from ``[W, -W]``, then ``Gemm``. The file is
  as large as a dense float32 layer's: to keep the small one, ship the
  Chainer ``.npz``.

This module imports ``onnx`` and ``onnx_chainer`` only when a model is
exported: they come with the ``onnx`` extra (``onnx==1.14.1``; later
releases removed ``onnx.mapping``, which ``onnx_chainer`` imports).
"""

import typing as tp
import warnings

import numpy

from chainer_sharedlinear import _dtypes

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


def convert_tied_linear(params) -> tp.Tuple:
    """The ``onnx_chainer`` converter of ``TiedLinearFunction``: ``HashedLinear``, ``tied_linear``.

    ``V = sign · W.ravel()[index]`` as one ``Gather`` from ``[W, -W]``, the
    signs folded into the index, then ``Gemm`` with ``x`` and the bias.
    """
    onnx, onnx_helper = _import_onnx()
    func, context = params.func, params.context
    _check_opset('TiedLinearFunction', params.opset_version)
    x, W = func.inputs[:2]
    x_name, w_name = params.input_names[:2]
    bias_name = params.input_names[2] if len(params.input_names) == 3 else None
    n_weights = int(numpy.prod(W.shape))
    out_size = func.index.shape[0]
    x_dtype = numpy.dtype(x.dtype)
    # F.linear's arithmetic: the product in the wider dtype, the output in x's.
    dtype = numpy.promote_types(x_dtype, W.dtype)
    index = _to_numpy(func.index)
    gb = onnx_helper.GraphBuilder()
    cast = _caster(onnx, gb)
    table = gb.op('Reshape', [w_name, context.add_const(numpy.array([-1], numpy.int64), 'flat')])
    if func.sign is not None:
        table = gb.op('Concat', [table, gb.op('Neg', [table])], axis=0)
        index = index + n_weights * (_to_numpy(func.sign) < 0)
    small = numpy.int32 if 2 * n_weights < 2 ** 31 else numpy.int64
    V = gb.op('Gather', [table, context.add_const(index.astype(small), 'tied_index')], axis=0)
    if numpy.dtype(W.dtype) != dtype:
        V = cast(V, dtype)
    rows = x_name if x_dtype == dtype else cast(x_name, dtype)
    gemm_inputs = [rows, V]
    if params.opset_version < _GEMM_OPTIONAL_BIAS_OPSET:
        gemm_inputs.append(context.add_const(numpy.zeros(out_size, dtype), 'zero_bias'))
    y = gb.op('Gemm', gemm_inputs, transB=1)
    return _output(gb, cast, y, dtype, x_dtype, bias_name, params.output_names)


def convert_kronecker_linear(params) -> tp.Tuple:
    """The ``onnx_chainer`` converter of a ``KroneckerLinearFunction`` node.

    ``Σ_r A[r] · X · B[r]ᵀ`` for each input row ``X`` seen as an
    ``n1 × n2`` matrix: one ``MatMul`` with all of ``B``, one with all of
    ``A``, and the reshapes between them, as in Chainer.
    """
    onnx, onnx_helper = _import_onnx()
    func, context = params.func, params.context
    _check_opset('KroneckerLinearFunction', params.opset_version)
    x, A, B = func.inputs[:3]
    x_name, a_name, b_name = params.input_names[:3]
    bias_name = params.input_names[3] if len(params.input_names) == 4 else None
    n_terms, m1, n1 = A.shape
    _, m2, n2 = B.shape
    x_dtype = numpy.dtype(x.dtype)
    dtype = numpy.result_type(numpy.float32, x.dtype, A.dtype, B.dtype)
    gb = onnx_helper.GraphBuilder()
    cast = _caster(onnx, gb)

    shapes = []

    def shape(*dims):
        # Each constant needs a name of its own within the node.
        shapes.append(context.add_const(numpy.array(dims, numpy.int64),
                                        'shape{}'.format(len(shapes))))
        return shapes[-1]

    def as_dtype(name, of):
        return name if numpy.dtype(of) == dtype else cast(name, dtype)

    rows = gb.op('Reshape', [as_dtype(x_name, x.dtype), shape(-1, n2)])
    b_all = gb.op('Reshape', [as_dtype(b_name, B.dtype), shape(n_terms * m2, n2)])
    T = gb.op('MatMul', [rows, gb.op('Transpose', [b_all], perm=[1, 0])])
    if n_terms == 1:
        T = gb.op('Reshape', [T, shape(-1, n1, m2)])
        a_all = gb.op('Reshape', [as_dtype(a_name, A.dtype), shape(m1, n1)])
    else:
        T = gb.op('Transpose', [gb.op('Reshape', [T, shape(-1, n1, n_terms, m2)])],
                  perm=[0, 2, 1, 3])
        T = gb.op('Reshape', [T, shape(-1, n_terms * n1, m2)])
        a_all = gb.op('Reshape', [gb.op('Transpose', [as_dtype(a_name, A.dtype)],
                                        perm=[1, 0, 2]), shape(m1, n_terms * n1)])
    y = gb.op('Reshape', [gb.op('MatMul', [a_all, T]), shape(-1, m1 * m2)])
    return _output(gb, cast, y, dtype, x_dtype, bias_name, params.output_names)


def convert_monarch_linear(params) -> tp.Tuple:
    """The ``onnx_chainer`` converter of a ``MonarchLinearFunction`` node.

    ``P L Pᵀ R`` as in Chainer: the input cut into blocks (a ``Gather`` and a
    ``Mul`` by a mask where the shorter blocks are padded), one batched
    ``MatMul`` with ``R``, the interleaving as ``Transpose`` and ``Reshape``,
    one batched ``MatMul`` with ``L``, and a ``Gather`` of the first
    ``out_size`` outputs where the last blocks are cut. ``R`` and ``L`` are
    stored as they are.
    """
    from chainer_sharedlinear.functions.monarch_linear import input_positions

    onnx, onnx_helper = _import_onnx()
    func, context = params.func, params.context
    _check_opset('MonarchLinearFunction', params.opset_version)
    x, R, L = func.inputs[:3]
    x_name, r_name, l_name = params.input_names[:3]
    bias_name = params.input_names[3] if len(params.input_names) == 4 else None
    n_blocks, q, p = R.shape
    s = L.shape[1]
    in_size, out_size = x.shape[1], func.out_size
    x_dtype = numpy.dtype(x.dtype)
    dtype = _dtypes.accumulation_dtype(x.dtype, R.dtype, L.dtype)
    gb = onnx_helper.GraphBuilder()
    cast = _caster(onnx, gb)
    constants = []

    def constant(array):
        # Each constant needs a name of its own within the node.
        constants.append(context.add_const(array, 'monarch{}'.format(len(constants))))
        return constants[-1]

    def shape(*dims):
        return constant(numpy.array(dims, numpy.int64))

    def as_dtype(name, of):
        return name if numpy.dtype(of) == dtype else cast(name, dtype)

    features = as_dtype(x_name, x.dtype)
    if n_blocks * p != in_size:
        positions = input_positions(in_size, n_blocks).ravel()
        features = gb.op('Gather', [features, constant(numpy.maximum(positions, 0))], axis=1)
        features = gb.op('Mul', [features, constant((positions >= 0).astype(dtype))])
    X = gb.op('Transpose', [gb.op('Reshape', [features, shape(-1, n_blocks, p)])],
              perm=[1, 0, 2])
    R_t = gb.op('Transpose', [as_dtype(r_name, R.dtype)], perm=[0, 2, 1])
    Z = gb.op('Transpose', [gb.op('MatMul', [X, R_t])], perm=[1, 0, 2])
    Z = gb.op('Transpose', [gb.op('Reshape', [Z, shape(-1, q, n_blocks)])], perm=[2, 0, 1])
    L_t = gb.op('Transpose', [as_dtype(l_name, L.dtype)], perm=[0, 2, 1])
    Y = gb.op('Transpose', [gb.op('MatMul', [Z, L_t])], perm=[1, 2, 0])
    y = gb.op('Reshape', [Y, shape(-1, n_blocks * s)])
    if out_size < n_blocks * s:
        y = gb.op('Gather', [y, constant(numpy.arange(out_size, dtype=numpy.int64))], axis=1)
    return _output(gb, cast, y, dtype, x_dtype, bias_name, params.output_names)


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


def _to_numpy(array):
    from chainer import backend
    return backend.CpuDevice().send(array)


#: The ``external_converters`` for :func:`onnx_chainer.export` that this
#: package needs, keyed by ``FunctionNode`` class name as ``onnx_chainer``
#: looks them up.
converters = {
    'SharedLinearFunction': convert_shared_linear,
    'TiedLinearFunction': convert_tied_linear,
    'KroneckerLinearFunction': convert_kronecker_linear,
    'MonarchLinearFunction': convert_monarch_linear,
}


def export(model, args, filename=None, **kwargs):
    """:func:`onnx_chainer.export` for models that contain the family's layers.

    The same arguments and result as ``onnx_chainer.export``; the converters
    of this package are added to ``external_converters`` (a converter of your
    own under the same name is used instead).

    Args:
        model (~chainer.Chain): The model, called as ``model(*args)``.
        args: Its inputs: an array, a :class:`~chainer.Variable`, or a list,
            tuple or dict of them.
        filename (str or file-like): Where to write the ONNX model, if anywhere.
        **kwargs: The other arguments of ``onnx_chainer.export``, by keyword.

    Returns:
        onnx.ModelProto: The ONNX model (or what ``return_named_inout`` asks for).
    """
    _import_onnx()
    import onnx_chainer
    external = dict(converters)
    external.update(kwargs.pop('external_converters', None) or {})
    with warnings.catch_warnings():
        # onnx_chainer warns that external_converters may change in a future
        # release; Chainer 7.8.1, which this package pins, is the last one.
        warnings.filterwarnings(
            'ignore', message='external_converters is experimental', category=FutureWarning)
        return onnx_chainer.export(
            model, args, filename, external_converters=external, **kwargs)
