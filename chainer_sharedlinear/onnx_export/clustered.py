"""The converter of ``ClusteredLinear``: the index at its bit width, decoded by a lookup."""

import math
import typing as tp

import numpy
from chainer import utils

from chainer_sharedlinear.functions.clustered_linear import index_bits, pack_index
from chainer_sharedlinear.onnx_export.graph import (
    _caster,
    _check_opset,
    _import_onnx,
    _numbered_constants,
    _slice,
)
from chainer_sharedlinear.onnx_export.tied import _signed_gather, _virtual_gemm

# The most bits a key of the lookup takes: its table has 2**_KEY_BITS rows at most
# (a key of one entry may be wider, up to the 16 bits of 65536 clusters).
_KEY_BITS = 12


def convert_clustered_linear(params) -> tp.Tuple:
    """The ``onnx_chainer`` converter of ``ClusteredLinearFunction``, the clustered layer's node.

    The index is stored as the layer's file stores it, ``index_bits`` bits a
    weight in one stream of bytes, and decoded by a lookup, each step on
    arrays much smaller than the weight but the last (``_decoded``);
    then ``Gemm``.
    """
    onnx, onnx_helper = _import_onnx()
    _check_opset('ClusteredLinearFunction', params.opset_version)
    gb = onnx_helper.GraphBuilder()
    func = params.func
    V = _decoded(onnx, gb, params, params.input_names[1], func.inputs[1].dtype, func.index,
                 func.n_clusters)
    return _virtual_gemm(onnx, gb, params, V)


def convert_tied_weight(params) -> tp.Tuple:
    """The ``onnx_chainer`` converter of ``TiedWeight``: a factor gathered from its codebook.

    ``ClusteredLowRankLinear`` gathers each of its two factors from a
    codebook of ``n_clusters`` values by a ``TiedWeight`` node; each index is
    stored and decoded as :func:`convert_clustered_linear` stores and decodes
    a clustered layer's, and the two products that follow are Chainer's
    ``F.linear``, which onnx_chainer converts. A node with signs, which no
    layer of the package makes, is a ``Gather`` from ``[W, -W]`` as in
    :func:`~chainer_sharedlinear.onnx_export.convert_tied_linear`.
    """
    onnx, onnx_helper = _import_onnx()
    func = params.func
    _check_opset('TiedWeight', params.opset_version)
    gb = onnx_helper.GraphBuilder()
    n_clusters = utils.size_of_shape(func.inputs[0].shape)
    if func.sign is None:
        V = _decoded(onnx, gb, params, params.input_names[0], func.inputs[0].dtype, func.index,
                     n_clusters)
    else:
        V = _signed_gather(onnx, gb, params.context, params.input_names[0], n_clusters,
                           func.index, func.sign)
    gb.op_output_named('Identity', [V], params.output_names)
    return gb.nodes()


def _decoded(onnx, gb, params, codebook: str, dtype, index, n_clusters: int) -> str:
    """The nodes that decode ``index`` into the values of ``codebook`` (named, of ``dtype``).

    The index, an ``(out_size, in_size)`` array of values below
    ``n_clusters``, is stored at ``index_bits`` bits an entry in one stream of
    bytes, and decoded by a lookup:

    - ``m`` consecutive entries make a key of ``m · index_bits`` bits (8 where
      ``index_bits`` divides 8, so that a key is a byte, else at most 12), and
      the keys of a group of whole bytes are read from those bytes: by a
      ``MatMul`` on ``uint32`` from opset 9 (``_key_windows``) and one
      division, by a ``MatMul`` in float32 and ``Floor`` before
      (``_key_layout``), exact for integers below ``2**24``;
    - a table of the ``m`` codebook values of every key, which the graph
      builds from the codebook (``_key_table``), gives them all by one
      ``Gather``: the weight, as onnxruntime folds it into a constant when it
      loads the file.
    """
    from onnx import numpy_helper
    opset = params.opset_version
    out_size, in_size = index.shape
    count = out_size * in_size
    bits = index_bits(n_clusters)
    per_key = 8 // bits if 8 % bits == 0 else max(1, _KEY_BITS // bits)
    key_bits = per_key * bits
    group_bytes = _lcm(key_bits, 8) // 8
    keys_per_group = group_bytes * 8 // key_bits
    n_groups = -(-count // (keys_per_group * per_key))

    cast = _caster(onnx, gb)
    constant = _numbered_constants(params.context, 'clustered')
    packed = numpy.zeros(n_groups * group_bytes, numpy.uint8)
    stream = pack_index(index, bits)
    packed[:stream.size] = stream
    # Raw bytes: onnx_chainer's constants list their values as int32 each.
    packed = gb.op('Constant', [], value=numpy_helper.from_array(
        packed.reshape(n_groups, group_bytes), 'index'))
    if group_bytes == 1:
        keys = packed  # a key is a byte
    elif opset >= _UINT32_MATMUL_OPSET:
        windows = gb.op('MatMul', [cast(packed, numpy.uint32),
                                   constant(_key_windows(key_bits, group_bytes))])
        keys = gb.op('Div', [windows, constant(numpy.uint32(2 ** (32 - key_bits)))])
    else:
        weights, scale = _key_layout(key_bits, group_bytes)
        # Each key with the bits before it as a fraction and those after it above 2**key_bits.
        spans = gb.op('MatMul', [cast(packed, numpy.float32), constant(weights)])
        above = gb.op('Floor', [gb.op('Mul', [spans, constant(numpy.float32(scale))])])
        keys = gb.op('Sub', [gb.op('Floor', [spans]),
                             gb.op('Mul', [above, constant(numpy.float32(2 ** key_bits))])])
    table = _key_table(gb, constant, codebook, dtype, n_clusters, bits, per_key)
    V = gb.op('Gather', [table, cast(keys, numpy.int32)], axis=0)
    if n_groups * keys_per_group * per_key > count:
        # The entries of the last group past the index.
        V = _slice(gb, constant, opset, gb.op('Reshape', [
            V, constant(numpy.array([-1], numpy.int64))]), 0, count, axis=0)
    return gb.op('Reshape', [V, constant(numpy.array([out_size, in_size], numpy.int64))])


def _lcm(a: int, b: int) -> int:
    return a * b // math.gcd(a, b)


# MatMul takes unsigned integers from opset 9.
_UINT32_MATMUL_OPSET = 9


def _key_windows(key_bits: int, group_bytes: int):
    """The ``uint32`` weights that put each key of a group of bytes at the top of a ``uint32``.

    ``bytes · weights``, modulo ``2**32`` as ``MatMul`` wraps on ``uint32``,
    is for each key the stream shifted so that the key's last bit is bit 31:
    each byte's bits land where the stream has them, so that they add
    without carries, those after the key past bit 31, where they wrap away,
    those before it below ``32 - key_bits``, where the division by
    ``2**(32 - key_bits)`` drops them.

    >>> _key_windows(12, 3).tolist()  # two keys of 12 bits in 3 bytes
    [[1048576, 256], [268435456, 65536], [0, 16777216]]
    """
    n_keys = group_bytes * 8 // key_bits
    weights = numpy.zeros((group_bytes, n_keys), numpy.uint32)
    for key in range(n_keys):
        for byte in range(group_bytes):
            exponent = 8 * byte - key * key_bits + 32 - key_bits
            if 0 <= exponent < 32:
                weights[byte, key] = 2 ** exponent
    return weights


def _key_layout(key_bits: int, group_bytes: int):
    """How the keys of a group of bytes of the stream are read from them.

    Returns ``(weights, scale)``: ``bytes · weights`` is, for each key, the
    stream from its first bit on (the bits before it of its first byte as a
    fraction, those of its last byte after it from ``2**key_bits`` up),
    exact in float32 since a key spans at most three bytes; ``scale`` is
    ``2**-key_bits``, so that the key is ``floor(s) - 2**key_bits ·
    floor(s · scale)``.

    >>> weights, scale = _key_layout(12, 3)  # two keys of 12 bits in 3 bytes
    >>> weights.tolist(), scale
    ([[1.0, 0.0], [256.0, 0.0625], [0.0, 16.0]], 0.000244140625)
    """
    n_keys = group_bytes * 8 // key_bits
    weights = numpy.zeros((group_bytes, n_keys), numpy.float32)
    for key in range(n_keys):
        start, end = key * key_bits, (key + 1) * key_bits
        for byte in range(start // 8, (end - 1) // 8 + 1):
            weights[byte, key] = 2.0 ** (8 * byte - start)
    return weights, 2.0 ** -key_bits


def _key_table(gb, constant, codebook: str, dtype, n_clusters: int, bits: int,
               per_key: int) -> str:
    """The ``(2**(per_key · bits), per_key)`` table of the codebook values of every key.

    Row ``key`` holds ``codebook[(key >> (bits · t)) % 2**bits]`` for each
    ``t``: the codebook, padded to ``2**bits`` values (rows of codes past
    ``n_clusters`` never appear), tiled along one axis of a
    ``(2**bits,) * per_key`` array for each ``t``, the last axis for ``t = 0``.
    """
    codes = 2 ** bits
    if n_clusters < codes:
        codebook = gb.op('Concat', [codebook, constant(numpy.zeros(codes - n_clusters, dtype))],
                         axis=0)
    columns = []
    for t in range(per_key):
        axis = per_key - 1 - t
        shape = [1] * per_key + [1]
        shape[axis] = codes
        repeats = [codes] * per_key + [1]
        repeats[axis] = 1
        column = gb.op('Reshape', [codebook, constant(numpy.array(shape, numpy.int64))])
        columns.append(gb.op('Tile', [column, constant(numpy.array(repeats, numpy.int64))]))
    table = columns[0] if per_key == 1 else gb.op('Concat', columns, axis=per_key)
    return gb.op('Reshape', [table, constant(numpy.array([codes ** per_key, per_key],
                                                         numpy.int64))])
