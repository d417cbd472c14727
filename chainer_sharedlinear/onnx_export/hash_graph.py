"""The graph of ``signed_hashed_index``: a hashed layer's map from its sizes and seed."""

import functools
import typing as tp

import numpy

from chainer_sharedlinear.functions.hashed_linear import _MIX_MULTIPLIERS, _SIGN_KEY, seed_key


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


class _BitwiseHashNodes(_HashNodes):
    """The nodes that compute ``signed_hashed_index`` with the bitwise operators of opset 18.

    Every value is a ``uint32``, as in the hash itself: ``BitwiseXor``,
    ``BitShift``, and ``Mul``, whose product wraps modulo ``2**32`` as the
    hash's does. The map is an ``int32`` where ``2 · n_weights`` fits in it.
    Each step makes one array of 4 bytes a virtual weight, which onnxruntime
    holds until it has folded the whole graph, against some 150 bytes a
    weight for :class:`_HashNodes`'s byte-wise xor.
    """

    def const(self, value, dtype=numpy.uint32) -> str:
        return super().const(value, dtype)

    def arange(self, size: int, shape) -> str:
        int64 = functools.partial(self.const, dtype=numpy.int64)
        values = self.op('Range', int64(0), int64(size), int64(1))
        return self.op('Reshape', self._cast(values, numpy.uint32), int64(shape))

    def mul32(self, z: str, multiplier: int) -> str:
        return self.op('Mul', z, self.const(multiplier))

    def xor(self, a: str, b: str) -> str:
        return self.op('BitwiseXor', a, b)

    def signed_index(self, out_size: int, in_size: int, n_weights: int, seed: int) -> str:
        """The ``(out_size, in_size)`` map, with as few steps over every weight as exact allows.

        onnxruntime holds each folded array until it has folded the whole graph, so
        every step over the ``(out, in)`` weights costs 4 bytes a weight when the
        file loads. Two identities of xor and ``>>`` (which distributes over it)
        move work to the rows and columns or drop it:

        - the hash's first xorshift, of ``row(i) ^ j``, is ``A(i) ^ B(j)`` with
          ``A = row ^ row >> 16`` and ``B = j ^ j >> 16``;
        - with ``h = d ^ d >> 16`` the end of the mixer, ``h >> 16 = d >> 16``,
          so the sign's first xorshift, of ``h ^ key``, is ``d ^ key ^ key >> 16``.
        """
        first, second = _MIX_MULTIPLIERS

        def first_xorshift(z):
            return self.xor(z, self.shift(z, 16))

        rows = self.mix(self.xor(self.arange(out_size, [-1, 1]), self.const(int(seed_key(seed)))))
        z = self.xor(first_xorshift(rows), first_xorshift(self.arange(in_size, [1, -1])))
        z = self.mul32(z, first)
        d = self.mul32(self.xor(z, self.shift(z, 15)), second)
        hashes = self.xor(d, self.shift(d, 16))
        z = self.mul32(self.xor(d, self.const(_SIGN_KEY ^ (_SIGN_KEY >> 16))), first)
        z = self.mul32(self.xor(z, self.shift(z, 15)), second)
        negative = self.shift(z, 31)  # the top bit, which the mixer's last xorshift keeps
        bucket = self.op('Mod', hashes, self.const(n_weights), fmod=0)
        if 2 * n_weights <= 2 ** 31:
            return self._cast(self.op('Add', bucket, self.op('Mul', negative,
                                                             self.const(n_weights))), numpy.int32)
        int64 = functools.partial(self.const, dtype=numpy.int64)
        return self.op('Add', self._cast(bucket, numpy.int64),
                       self.op('Mul', self._cast(negative, numpy.int64), int64(n_weights)))
