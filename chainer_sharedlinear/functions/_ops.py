"""The array operations that the family's layouts are written in, on arrays or on variables.

A layout (the products and reshapes of one function) is written once against
``ops`` and run twice: on arrays (:class:`ArrayOps`) in the forward pass and in
first-order backprop, where no graph is needed, and on Chainer functions
(:class:`VariableOps`) when the backward pass is itself differentiated.
"""

import chainer.functions as F
from chainer import backend

from chainer_sharedlinear import _dtypes


class ArrayOps:
    """The operations on arrays of one array module: first-order backprop and forward."""

    def __init__(self, xp) -> None:
        self.xp = xp
        self.matmul = xp.matmul

    @classmethod
    def of(cls, array) -> 'ArrayOps':
        """The operations of ``array``'s module (NumPy or CuPy)."""
        return cls(backend.get_array_module(array))

    @staticmethod
    def reshape(a, shape):
        return a.reshape(shape)

    @staticmethod
    def transpose(a, axes=None):
        return a.transpose(axes)

    @staticmethod
    def sum(a, axis):
        return a.sum(axis=axis)

    def batch_matmul(self, a, b):
        """``matmul`` of stacks of matrices, each laid out as BLAS takes it.

        NumPy multiplies a stack of matrices whose rows are not evenly spaced
        (a transposed view of more than two axes) element by element, far
        slower than the copy that gives them even rows.
        """
        return self.xp.matmul(self._even_rows(a), self._even_rows(b))

    def batch_matmul_interleaved(self, a, b):
        """``batch_matmul(a, b)``, ``(n, M, K)``, as a view of an array laid out ``(M, n, K)``:
        row ``i`` of the ``n`` products side by side, so that the array read as
        ``(M, n·K)`` or as ``(M·n, K)`` is a view, not a copy.
        """
        xp = self.xp
        out = xp.empty((a.shape[1], a.shape[0], b.shape[2]), xp.result_type(a, b))
        return xp.matmul(self._even_rows(a), self._even_rows(b), out=out.transpose(1, 0, 2))

    def _even_rows(self, a):
        # BLAS takes a matrix whose elements are adjacent along one of its axes.
        if a.itemsize in (abs(a.strides[-1]), abs(a.strides[-2])):
            return a
        return self.xp.ascontiguousarray(a)

    def contiguous(self, a):
        """``a`` in one block of memory: copied once if it is used more than once."""
        return self.xp.ascontiguousarray(a)

    @staticmethod
    def get_item(a, key):
        return a[key]

    def concat(self, arrays, axis):
        return self.xp.concatenate(arrays, axis=axis)

    def pad_last(self, a, width: int):
        """``a`` with ``width`` zeros after the end of its last axis."""
        zeros = self.xp.zeros(a.shape[:-1] + (width,), a.dtype)
        return self.xp.concatenate((a, zeros), axis=-1)

    cast = staticmethod(_dtypes.as_dtype)


class VariableOps:
    """The same operations as Chainer functions, differentiable: double backprop."""

    matmul = staticmethod(F.matmul)
    batch_matmul = staticmethod(F.matmul)
    batch_matmul_interleaved = staticmethod(F.matmul)
    reshape = staticmethod(F.reshape)
    transpose = staticmethod(F.transpose)
    sum = staticmethod(F.sum)
    get_item = staticmethod(F.get_item)
    cast = staticmethod(_dtypes.cast)

    @staticmethod
    def contiguous(a):
        return a

    @staticmethod
    def concat(variables, axis):
        return F.concat(variables, axis=axis)

    @staticmethod
    def pad_last(a, width: int):
        xp = backend.get_array_module(a)
        zeros = xp.zeros(a.shape[:-1] + (width,), a.dtype)
        return F.concat((a, zeros), axis=-1)
