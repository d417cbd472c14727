"""Kronecker-product and PHM layers: ``y = x · (Σ_r A_r ⊗ B_r)ᵀ + b``, never building the product.

With ``A`` of shape ``(n_terms, m1, n1)`` and ``B`` of shape
``(n_terms, m2, n2)``, the layer's weight ``Σ_r kron(A[r], B[r])`` is
``(m1·m2, n1·n2)``. Seen as an ``n1 × n2`` matrix ``X``, an input row maps to
the ``m1 × m2`` matrix ``Σ_r A[r] · X · B[r]ᵀ`` (the row-major form of
``(A ⊗ B) vec(X) = vec(A X Bᵀ)``): two matrix products per term instead of
one with the whole weight. Zhang et al.'s parameterized hypercomplex
multiplication (PHM, ICLR 2021) is the case ``n_terms = n`` with ``n × n``
matrices ``A[r]``; tiling, ``[W … W] = 1ᵀ ⊗ W``, the case ``A = ones((1, 1, n))``.
"""

import typing as tp

import chainer
from chainer import function_node
from chainer.utils import type_check

from chainer_sharedlinear import _checks, _dtypes
from chainer_sharedlinear.functions import shapes
from chainer_sharedlinear.functions._ops import ArrayOps, VariableOps


def divisors(n: int) -> tp.List[int]:
    """The divisors of ``n``, ascending, made from its prime factors.

    The primes are found by trial division up to the square root of what is
    left to factor: a few thousand steps for any size a layer can have.

    >>> divisors(12)
    [1, 2, 3, 4, 6, 12]
    """
    n = _checks.positive_int('size', n)
    found = [1]
    rest, prime = n, 2
    while prime * prime <= rest:
        if rest % prime == 0:
            multiples = found
            while rest % prime == 0:
                rest //= prime
                multiples = [d * prime for d in multiples]
                found = found + multiples
        prime += 1 if prime == 2 else 2
    if rest > 1:
        found = found + [d * rest for d in found]
    return sorted(found)


def factor_pairs(n: int) -> tp.List[tp.Tuple[int, int]]:
    """Every ``(a, b)`` with ``a · b = n``, ``a`` ascending.

    >>> factor_pairs(12)
    [(1, 12), (2, 6), (3, 4), (4, 3), (6, 2), (12, 1)]
    """
    return [(a, n // a) for a in divisors(n)]


def most_square_factors(n: int) -> tp.Tuple[int, int]:
    """The ``(a, b)`` with ``a · b = n``, ``a <= b``, and ``a`` as large as can be.

    >>> most_square_factors(1000), most_square_factors(4096), most_square_factors(7)
    ((25, 40), (64, 64), (1, 7))
    """
    return max((a, b) for a, b in factor_pairs(n) if a <= b)


class _Products:
    """The layout of ``Σ_r A[r] · X · B[r]ᵀ`` as matrix products, for the forward pass
    and for both backward passes, on arrays or on variables (``ops``).

    The terms are interleaved in the inner axis of the products with ``A``
    (``j·n_terms + r``, the order in which the product with ``B`` lays them
    out), so that every reshape between two products is a view on arrays:
    a step copies nothing. Every product is taken in the accumulation dtype
    of ``x``, ``A`` and ``B``.
    """

    def __init__(self, ops, x, A, B) -> None:
        self.ops = ops
        self.n_terms, self.m1, self.n1 = A.shape
        _, self.m2, self.n2 = B.shape
        self.batch = x.shape[0]
        dtype = _dtypes.accumulation_dtype(x.dtype, A.dtype, B.dtype)
        self.dtype = dtype
        # X: each input row as an (n1, n2) matrix, the rows stacked: (N·n1, n2).
        self.X = ops.reshape(ops.cast(x, dtype), (self.batch * self.n1, self.n2))
        # B's terms stacked: (R·m2, n2). A's interleaved, column j·R + r of A[r]'s j: (m1, n1·R).
        self.B_stacked = ops.reshape(ops.cast(B, dtype), (self.n_terms * self.m2, self.n2))
        self.A_interleaved = ops.reshape(ops.transpose(ops.cast(A, dtype), (1, 2, 0)),
                                         (self.m1, self.n1 * self.n_terms))

    def t(self):
        """``T[n, j·R + r, k] = Σ_l X[n, j, l] B[r, k, l]``: one product for all terms."""
        T = self.ops.matmul(self.X, self.ops.transpose(self.B_stacked))  # (N·n1, R·m2)
        return self.ops.reshape(T, (self.batch, self.n1 * self.n_terms, self.m2))

    def y(self, T):
        """``Y[n] = Σ_r A[r] T[n, r]``, ``(N, m1·m2)``."""
        return self.ops.reshape(self.ops.matmul(self.A_interleaved, T),
                                (self.batch, self.m1 * self.m2))

    def gradients(self, indexes, gy, T=None, dtypes=None):
        """The gradients of ``x``, ``A``, ``B`` and the bias asked for in ``indexes``.

        ``T`` is :meth:`t`, if kept; ``dtypes`` those of ``x``, ``A``, ``B``.
        """
        ops, batch = self.ops, self.batch
        n_terms, m1, n1, m2, n2 = self.n_terms, self.m1, self.n1, self.m2, self.n2
        gY = ops.reshape(ops.cast(gy, self.dtype), (batch, m1, m2))
        grads = []
        if 0 in indexes or 2 in indexes:
            # Z[n, j·R + r, k] = Σ_i A[r, i, j] gY[n, i, k], laid out (N·n1, R·m2).
            Z = ops.reshape(ops.matmul(ops.transpose(self.A_interleaved), gY),
                            (batch * n1, n_terms * m2))
        if 0 in indexes:
            gx = ops.reshape(ops.matmul(Z, self.B_stacked), (batch, n1 * n2))
            grads.append(ops.cast(gx, dtypes[0]))
        if 1 in indexes:
            # gA[r, i, j] = Σ_n Σ_k gY[n, i, k] T[n, j·R + r, k]
            T = self.t() if T is None else T
            gA = ops.sum(ops.matmul(gY, ops.transpose(T, (0, 2, 1))), axis=0)
            gA = ops.transpose(ops.reshape(gA, (m1, n1, n_terms)), (2, 0, 1))
            grads.append(ops.cast(gA, dtypes[1]))
        if 2 in indexes:
            # gB[r, k, l] = Σ_n Σ_j Z[n, j, r·m2 + k] X[n, j, l]
            gB = ops.reshape(ops.matmul(ops.transpose(Z), self.X), (n_terms, m2, n2))
            grads.append(ops.cast(gB, dtypes[2]))
        if 3 in indexes:
            grads.append(ops.sum(gy, axis=0))
        return grads


class KroneckerLinearFunction(function_node.FunctionNode):
    """``y = x · (Σ_r A[r] ⊗ B[r])ᵀ + b`` for ``x`` of shape ``(N, n1·n2)``.

    The forward pass and both backward passes are the matrix products of one
    layout (``_Products``): on arrays in the forward pass and in first-order
    backprop, and as Chainer functions when the backward pass is itself
    differentiated.
    """

    def check_type_forward(self, in_types):
        x_type, a_type, b_type = _checks.expect_inputs(in_types, ('x', 'A', 'B'), (2, 3, 3))
        type_check.expect(
            a_type.shape[0] == b_type.shape[0],
            x_type.shape[1] == a_type.shape[2] * b_type.shape[2])
        _checks.expect_bias(in_types, 2, a_type.shape[1] * b_type.shape[1])

    def forward(self, inputs):
        _checks.type_check_always(self, inputs)
        x, A, B = inputs[:3]
        self.retain_inputs((0, 1, 2))
        products = _Products(ArrayOps.of(x), x, A, B)
        # Kept for the gradient of A.
        self._T = products.t()
        y = _dtypes.as_dtype(products.y(self._T), x.dtype)
        if len(inputs) == 4:
            y += inputs[3]
        return y,

    def backward(self, indexes, grad_outputs):
        x, A, B = self.get_retained_inputs()
        gy, = grad_outputs
        dtypes = (x.dtype, A.dtype, B.dtype)
        if chainer.config.enable_backprop:
            return _Products(VariableOps, x, A, B).gradients(indexes, gy, dtypes=dtypes)
        # First-order backprop records no graph: the same products on the arrays.
        products = _Products(ArrayOps.of(x.array), x.array, A.array, B.array)
        grads = products.gradients(indexes, gy.array, self._T, dtypes)
        return [chainer.Variable(g, requires_grad=False) for g in grads]


def kronecker_linear(x, A, B, b=None, n_batch_axes: int = 1):
    """Linear function whose weight is a sum of Kronecker products, ``Σ_r A[r] ⊗ B[r]``.

    .. math:: y = x \\cdot \\Big(\\sum_r A_r \\otimes B_r\\Big)^\\top + b

    with the Kronecker product in :func:`numpy.kron`'s order. It is computed
    on the input seen as ``n1 × n2`` matrices, ``Σ_r A[r] · X · B[r]ᵀ``: per
    term ``N·(n1·n2·m2 + m1·n1·m2)`` multiply-adds where a dense layer takes
    ``N·n1·n2·m1·m2``, and no ``(out_size, in_size)`` array is ever made.

    Args:
        x (:class:`~chainer.Variable` or :ref:`ndarray`): Input; the axes after
            the first ``n_batch_axes`` hold ``in_size = n1·n2`` features.
        A (:class:`~chainer.Variable` or :ref:`ndarray`): ``(n_terms, m1, n1)``.
        B (:class:`~chainer.Variable` or :ref:`ndarray`): ``(n_terms, m2, n2)``.
        b (:class:`~chainer.Variable` or :ref:`ndarray`): Optional bias of
            shape ``(m1·m2,)``.
        n_batch_axes (int): The number of batch axes.

    Returns:
        ~chainer.Variable: Output of shape ``(*batch_shape, m1·m2)`` and of
        the dtype of ``x``.

    .. admonition:: Example

        >>> import numpy as np
        >>> A = np.array([[[1, 2]]], np.float32)           # (1, 1, 2)
        >>> B = np.array([[[1, 0], [0, 1]]], np.float32)   # (1, 2, 2)
        >>> kronecker_linear(np.eye(4, dtype=np.float32), A, B).array.T  # kron(A, B)
        array([[1., 0., 2., 0.],
               [0., 1., 0., 2.]], dtype=float32)
    """
    x, batch_shape = shapes.as_matrix(x, n_batch_axes)
    args = (x, A, B) if b is None else (x, A, B, b)
    y, = KroneckerLinearFunction().apply(args)
    return shapes.with_batch_axes(y, batch_shape)
