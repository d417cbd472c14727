"""The dtypes the family computes in: one rule for every function.

A product of arrays is computed in the widest of their dtypes, and float16 in
float32, as a BLAS-backed dense layer accumulates it; the result is rounded to
the input's dtype at the end. A sum of many float16 terms (a fold of 2048
blocks of 40, a bucket of a hashed layer, a Kronecker product's terms) would
otherwise overflow at 65504 or lose most of its digits.
"""

import chainer.functions as F
import numpy


def accumulation_dtype(*dtypes) -> numpy.dtype:
    """The dtype that arrays of ``dtypes`` are multiplied and added up in.

    >>> accumulation_dtype(numpy.float16), accumulation_dtype(numpy.float16, numpy.float64)
    (dtype('float32'), dtype('float64'))
    """
    result = _FLOAT32
    for dtype in dtypes:  # promote_types is several times faster than result_type
        result = numpy.promote_types(result, dtype)
    return result


_FLOAT32 = numpy.dtype(numpy.float32)


def as_dtype(array, dtype):
    """``array`` in ``dtype``; the array itself if it has that dtype already."""
    return array.astype(dtype, copy=False)


def cast(variable, dtype):
    """``variable`` in ``dtype``: :func:`chainer.functions.cast` if it is of another one."""
    return variable if variable.dtype == dtype else F.cast(variable, dtype)
