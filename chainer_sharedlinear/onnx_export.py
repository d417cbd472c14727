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
- ``HashedLinear``: ``W``, and the nodes that compute each virtual weight's
  place in ``[W, -W]`` from the sizes and the seed (opset 11; see
  :func:`convert_hashed_linear`), then a ``Gather`` from ``[W, -W]`` and
  ``Gemm``: the file is about the size of ``W``.
- ``tied_linear``: ``W`` and the user's index, a constant of its smallest
  integer type with the signs folded in, the same ``Gather``, then ``Gemm``.
- ``MonarchLinear``: ``R`` and ``L``, two batched ``MatMul``, and a ``Pad``
  of the short blocks where ``n_blocks`` does not divide ``in_size``.

Chainer's ``Reshape`` has a converter here too (:func:`convert_reshape`):
the reshapes with which every layer, ``F.linear`` included, flattens an
input of several batch or feature axes and restores them keep the batch
axes free, where onnx_chainer's would write the export's batch size.

This module imports ``onnx`` and ``onnx_chainer`` only when a model is
exported: they come with the ``onnx`` extra (``onnx==1.14.1``; later
releases removed ``onnx.mapping``, which ``onnx_chainer`` imports).
"""

import functools
import itertools
import sys
import typing as tp
import warnings

import numpy
from chainer import utils

from chainer_sharedlinear import _dtypes
from chainer_sharedlinear.functions.clustered_linear import index_bits, pack_index
from chainer_sharedlinear.functions.hashed_linear import _MIX_MULTIPLIERS, _SIGN_KEY, seed_key

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


def _bias_name(params, n_weights: int):
    """The name of the bias that follows ``x`` and ``n_weights`` weights, or ``None``."""
    names = params.input_names
    return names[n_weights + 1] if len(names) == n_weights + 2 else None


def convert_tied_linear(params) -> tp.Tuple:
    """The ``onnx_chainer`` converter of ``TiedLinearFunction``, the node of ``tied_linear``.

    ``V = sign · W.ravel()[index]`` as one ``Gather`` from ``[W, -W]``, the
    signs folded into the index, a constant of the smallest integer type that
    holds it, then ``Gemm`` with ``x`` and the bias.
    """
    onnx, onnx_helper = _import_onnx()
    func, context = params.func, params.context
    _check_opset('TiedLinearFunction', params.opset_version)
    W = func.inputs[1]
    gb = onnx_helper.GraphBuilder()
    table = gb.op('Reshape', [params.input_names[1], context.add_const(
        numpy.array([-1], numpy.int64), 'flat')])
    index = _to_numpy(func.index)
    if func.sign is not None:
        table = gb.op('Concat', [table, gb.op('Neg', [table])], axis=0)
        index = index + utils.size_of_shape(W.shape) * (_to_numpy(func.sign) < 0)
    return _gather_gemm(onnx, gb, params, table, _index_constant(onnx, gb, index))


def convert_hashed_linear(params, hash_in_graph: bool = True) -> tp.Tuple:
    """The ``onnx_chainer`` converter of ``HashedLinearFunction``, the node of the hashed layers.

    The graph computes each virtual weight's place in the table ``[W, -W]``
    (its second input) from the sizes and the seed, exactly as
    ``signed_hashed_index`` does, with
    operators of opset 11 on 64-bit unsigned integers (``_HashNodes`` says how);
    then ``Gather`` and ``Gemm``. With ``hash_in_graph=False``, or below
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
    hash_nodes = _HashNodes(onnx, 'hash{}_'.format(onnx_helper.get_func_name().split('_')[-1]))
    index = hash_nodes.signed_index(out_size, in_size, func.n_weights, func.seed)
    return tuple(hash_nodes.nodes) + _gather_gemm(onnx, gb, params, params.input_names[1], index)


def _warn_the_exporter(message: str) -> None:
    """A ``UserWarning`` that names the line that called the export, not a converter.

    Converters run deep inside ``onnx_chainer.export``: the warning is given
    the frame of the first caller outside ``onnx_chainer`` and this module,
    whether that called :func:`export` or ``onnx_chainer.export``.
    """
    frame, stacklevel = sys._getframe(1), 2
    while frame.f_back is not None and (
            frame.f_globals.get('__name__') == __name__
            or frame.f_globals.get('__name__', '').partition('.')[0] == 'onnx_chainer'):
        frame, stacklevel = frame.f_back, stacklevel + 1
    warnings.warn(message, UserWarning, stacklevel=stacklevel)


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


# Slice takes its starts and ends as inputs from opset 10.
_SLICE_INPUTS_OPSET = 10

# Range, which the in-graph hash needs, is in opset 11.
_RANGE_OPSET = 11


def _gather_gemm(onnx, gb, params, table, index) -> tp.Tuple:
    """``Gather`` of the virtual weight from ``table`` by ``index``, then ``x · Vᵀ + b``."""
    func, context = params.func, params.context
    x, W = func.inputs[:2]
    bias_name = _bias_name(params, 1)
    out_size = func.index.shape[0]
    x_dtype = numpy.dtype(x.dtype)
    # The node's arithmetic: the product in the accumulation dtype, the output in x's.
    dtype = _dtypes.accumulation_dtype(x_dtype, W.dtype)
    cast = _caster(onnx, gb)
    V = gb.op('Gather', [table, index], axis=0)
    if numpy.dtype(W.dtype) != dtype:
        V = cast(V, dtype)
    rows = params.input_names[0] if x_dtype == dtype else cast(params.input_names[0], dtype)
    gemm_inputs = [rows, V]
    if params.opset_version < _GEMM_OPTIONAL_BIAS_OPSET:
        gemm_inputs.append(context.add_const(numpy.zeros(out_size, dtype), 'zero_bias'))
    y = gb.op('Gemm', gemm_inputs, transB=1)
    return _output(gb, cast, y, dtype, x_dtype, bias_name, params.output_names)


def _smallest_index_dtype(index) -> numpy.dtype:
    """The smallest integer type that holds every value of ``index``, all at least 0."""
    high = int(index.max()) if index.size else 0
    for dtype in (numpy.uint8, numpy.uint16, numpy.int32):
        if high <= numpy.iinfo(dtype).max:
            return numpy.dtype(dtype)
    return numpy.dtype(numpy.int64)


def _index_constant(onnx, gb, index) -> str:
    """``index`` as a constant of its smallest integer type, cast to the ``Gather`` index type.

    ``Gather`` takes int32 or int64 indices; the constant is stored as raw
    bytes, so that a uint8 index takes one byte each in the file.
    """
    from onnx import numpy_helper
    dtype = _smallest_index_dtype(index)
    tensor = numpy_helper.from_array(index.astype(dtype), 'index')
    name = gb.op('Constant', [], value=tensor)
    if dtype.itemsize < 4:
        name = _caster(onnx, gb)(name, numpy.int32)
    return name


class _HashNodes:
    """The nodes that compute ``signed_hashed_index``.

    ONNX has no bitwise xor before opset 18, later than ``onnx_chainer`` goes,
    so the hash is computed in uint64 with operators of opset 11, every step
    exact, none relying on a product that wraps:

    - a value in ``[0, 2**32)`` times a 32-bit multiplier is below ``2**64``;
      its low 32 bits are kept by a ``BitShift`` left by 32, then right by 32;
    - ``a ^ b`` is computed byte by byte: the four bytes of each, taken along
      a last axis of size 4, index a table of the 65536 xors of two bytes,
      which the graph builds from their bits, and the four results are put
      back together by a ``MatMul`` with ``[1, 2**8, 2**16, 2**24]``.

    Values keep a last axis of size 1 for that, until the end. The names of
    the values are short (``prefix`` and a number): there are some 180 of them
    per layer, and the file should be about the size of ``W``.
    """

    def __init__(self, onnx, prefix: str) -> None:
        self._onnx = onnx
        self._prefix = prefix
        self.nodes: tp.List = []
        self._constants: tp.Dict = {}
        self._xor_table = None

    def op(self, op_type: str, *inputs: str, **attributes) -> str:
        name = '{}{}'.format(self._prefix, len(self.nodes))
        self.nodes.append(self._onnx.helper.make_node(op_type, list(inputs), [name],
                                                      **attributes))
        return name

    def const(self, value, dtype=numpy.uint64) -> str:
        """A constant, one node per value."""
        from onnx import numpy_helper
        value = numpy.asarray(value, dtype)
        key = (value.dtype, value.shape, value.tobytes())
        if key not in self._constants:
            self._constants[key] = self.op('Constant', value=numpy_helper.from_array(value))
        return self._constants[key]

    def arange(self, size: int, shape) -> str:
        int64 = functools.partial(self.const, dtype=numpy.int64)
        values = self.op('Range', int64(0), int64(size), int64(1))  # Range has no uint64
        return self.op('Reshape', self._cast(values, numpy.uint64), int64(shape))

    def _cast(self, z: str, dtype) -> str:
        return self.op('Cast', z, to=self._onnx.helper.np_dtype_to_tensor_dtype(
            numpy.dtype(dtype)))

    def shift(self, z: str, bits, direction: str = 'RIGHT') -> str:
        return self.op('BitShift', z, self.const(bits), direction=direction)

    def low_bits(self, z: str, bits: int, of=None) -> str:
        """The low ``bits`` bits of ``z``, or of ``z >> of`` (``of`` a shift or a list of them)."""
        to_top = 64 - bits if of is None else [64 - bits - k for k in of]
        return self.shift(self.shift(z, to_top, 'LEFT'), 64 - bits)

    def mul32(self, z: str, multiplier: int) -> str:
        return self.low_bits(self.op('Mul', z, self.const(multiplier)), 32)

    def xor(self, a: str, b: str) -> str:
        if self._xor_table is None:
            # codes = 256·a + b for every pair of bytes; bit k of a ^ b is the low bit
            # of (bit k of a + bit k of b).
            codes = self.arange(2 ** 16, [-1, 1])
            sums = self.op('Add', self.shift(codes, [k + 8 for k in range(8)]),
                           self.shift(codes, list(range(8))))
            self._xor_table = self.op('MatMul', self.low_bits(sums, 1),
                                      self.const([2 ** k for k in range(8)]))
        byte_shifts = [8 * k for k in range(4)]
        codes = self.op('Add', self.shift(self.low_bits(a, 8, of=byte_shifts), 8, 'LEFT'),
                        self.low_bits(b, 8, of=byte_shifts))
        xors = self.op('Gather', self._xor_table, self._cast(codes, numpy.int64), axis=0)
        return self.op('MatMul', xors, self.const([[2 ** k] for k in byte_shifts]))

    def mix(self, z: str, last_shift: bool = True) -> str:
        """``lowbias32``; without its last xorshift, which leaves the top 16 bits as they are."""
        first, second = _MIX_MULTIPLIERS
        z = self.mul32(self.xor(z, self.shift(z, 16)), first)
        z = self.mul32(self.xor(z, self.shift(z, 15)), second)
        return self.xor(z, self.shift(z, 16)) if last_shift else z

    def signed_index(self, out_size: int, in_size: int, n_weights: int, seed: int) -> str:
        """The name of the ``(out_size, in_size)`` int64 map that ``signed_hashed_index`` makes."""
        rows = self.mix(self.xor(self.arange(out_size, [-1, 1, 1]),
                                 self.const(int(seed_key(seed)))))
        hashes = self.mix(self.xor(rows, self.arange(in_size, [1, -1, 1])))
        # The sign is the top bit of mix(hash ^ key), which its last xorshift keeps.
        negative = self.shift(self.mix(self.xor(hashes, self.const(_SIGN_KEY)), last_shift=False),
                              31)
        index = self.op('Add', self.op('Mod', hashes, self.const(n_weights)),
                        self.op('Mul', negative, self.const(n_weights)))
        return self.op('Reshape', self._cast(index, numpy.int64),
                       self.const([out_size, in_size], numpy.int64))


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
    bias_name = _bias_name(params, 2)
    n_terms, m1, n1 = A.shape
    _, m2, n2 = B.shape
    x_dtype = numpy.dtype(x.dtype)
    dtype = _dtypes.accumulation_dtype(x.dtype, A.dtype, B.dtype)
    gb = onnx_helper.GraphBuilder()
    cast = _caster(onnx, gb)

    constant = _numbered_constants(context, 'shape')

    def shape(*dims):
        return constant(numpy.array(dims, numpy.int64))

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
    gb = onnx_helper.GraphBuilder()
    cast = _caster(onnx, gb)
    constant = _numbered_constants(context, 'monarch')

    def shape(*dims):
        return constant(numpy.array(dims, numpy.int64))

    def as_dtype(name, of):
        return name if numpy.dtype(of) == dtype else cast(name, dtype)

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
      inferred (``-1``) and the others are the export's.

    Both give the node's own output at the export's shapes. Any other
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
    return mapping.converters['Reshape'](params)


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


def _numbered_constants(context, prefix: str):
    """A function that adds an array to the graph as a constant, each under a name of its own.

    onnx_chainer names a constant after its node and the name given, which
    must differ between the constants of one node.
    """
    count = itertools.count()

    def constant(array) -> str:
        return context.add_const(array, '{}{}'.format(prefix, next(count)))
    return constant


def _slice(gb, constant, opset: int, name: str, start: int, end: int, axis: int) -> str:
    """``name[start:end]`` along ``axis``, in the form of ``opset``."""
    if opset < _SLICE_INPUTS_OPSET:
        return gb.op('Slice', [name], starts=[start], ends=[end], axes=[axis])
    return gb.op('Slice', [name] + [constant(numpy.array([value], numpy.int64))
                                    for value in (start, end, axis)])


def _to_numpy(array):
    from chainer import backend
    return backend.CpuDevice().send(array)


#: The ``external_converters`` for :func:`onnx_chainer.export` that this
#: package needs, keyed by ``FunctionNode`` class name as ``onnx_chainer``
#: looks them up.
converters = {
    'SharedLinearFunction': convert_shared_linear,
    'TiedLinearFunction': convert_tied_linear,
    'HashedLinearFunction': convert_hashed_linear,
    'ClusteredLinearFunction': convert_clustered_linear,
    'KroneckerLinearFunction': convert_kronecker_linear,
    'MonarchLinearFunction': convert_monarch_linear,
    'Reshape': convert_reshape,
}


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
