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
import chainer.functions as F
import numpy
from chainer import backend, function_node
from chainer.utils import type_check

from chainer_sharedlinear import _checks
from chainer_sharedlinear.functions import shapes


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


def _compute_dtype(*dtypes) -> numpy.dtype:
    # float16 products are accumulated in float32, as BLAS-backed dense layers do.
    return numpy.result_type(numpy.float32, *dtypes)


class KroneckerLinearFunction(function_node.FunctionNode):
    """``y = x · (Σ_r A[r] ⊗ B[r])ᵀ + b`` for ``x`` of shape ``(N, n1·n2)``."""

    def check_type_forward(self, in_types):
        n_in = in_types.size()
        type_check.expect(3 <= n_in, n_in <= 4)
        x_type, a_type, b_type = in_types[:3]
        type_check._argname((x_type, a_type, b_type), ('x', 'A', 'B'))
        type_check.expect(
            x_type.dtype.kind == 'f', a_type.dtype.kind == 'f', b_type.dtype.kind == 'f',
            x_type.ndim == 2, a_type.ndim == 3, b_type.ndim == 3)
        type_check.expect(
            a_type.shape[0] == b_type.shape[0],
            x_type.shape[1] == a_type.shape[2] * b_type.shape[2])
        if type_check.eval(n_in) == 4:
            bias_type = in_types[3]
            type_check._argname((bias_type,), ('b',))
            type_check.expect(bias_type.dtype == x_type.dtype, bias_type.ndim == 1)
            type_check.expect(bias_type.shape[0] == a_type.shape[1] * b_type.shape[1])

    def forward(self, inputs):
        x, A, B = inputs[:3]
        check_shapes(x.shape, A.shape, B.shape)
        xp = backend.get_array_module(x)
        n_terms, m1, n1 = A.shape
        _, m2, n2 = B.shape
        batch = x.shape[0]
        dtype = _compute_dtype(x.dtype, A.dtype, B.dtype)
        self.retain_inputs((0, 1, 2))
        # T[n, j, r, k] = Σ_l X[n, j, l] B[r, k, l]: one product for all terms.
        T = x.astype(dtype, copy=False).reshape(batch * n1, n2).dot(
            B.astype(dtype, copy=False).reshape(n_terms * m2, n2).T)
        # Kept for the gradient of A, laid out (N, R·n1, m2) as the product below wants it.
        self._T = _terms_first(T, batch, n1, n_terms, m2)
        # Y[n] = Σ_r A[r] T[n, :, r, :]: A's terms side by side, (m1, R·n1), times T.
        y = xp.matmul(_terms_side_by_side(A, dtype), self._T).reshape(batch, m1 * m2)
        y = y.astype(x.dtype, copy=False)
        if len(inputs) == 4:
            shapes.check_bias(inputs[3].shape, m1 * m2)
            y += inputs[3]
        return y,

    def backward(self, indexes, grad_outputs):
        x, A, B = self.get_retained_inputs()
        gy, = grad_outputs
        if chainer.config.enable_backprop:
            return self._backward_differentiable(indexes, x, A, B, gy)
        # First-order backprop records no graph: the arrays are computed directly.
        grads = self._backward_arrays(indexes, x.array, A.array, B.array, gy.array)
        return [chainer.Variable(g, requires_grad=False) for g in grads]

    def _backward_arrays(self, indexes, x, A, B, gy):
        xp = backend.get_array_module(x)
        n_terms, m1, n1 = A.shape
        _, m2, n2 = B.shape
        batch = x.shape[0]
        dtype = _compute_dtype(x.dtype, A.dtype, B.dtype)
        gY = gy.astype(dtype, copy=False).reshape(batch, m1, m2)
        grads = []
        if 0 in indexes or 2 in indexes:
            # Z[n, r, j, k] = Σ_i A[r, i, j] gY[n, i, k], laid out (N·n1, R·m2).
            Z = xp.matmul(_terms_side_by_side(A, dtype).T, gY)
            Z = _terms_last(Z, batch, n_terms, n1, m2)
            if 0 in indexes:
                gx = Z.dot(B.astype(dtype, copy=False).reshape(n_terms * m2, n2))
                grads.append(gx.reshape(batch, n1 * n2).astype(x.dtype, copy=False))
        if 1 in indexes:
            # gA[r, i, j] = Σ_n Σ_k gY[n, i, k] T[n, r·n1 + j, k]
            gA = xp.matmul(gY, self._T.transpose(0, 2, 1)).sum(axis=0)
            grads.append(gA.reshape(m1, n_terms, n1).transpose(1, 0, 2)
                         .astype(A.dtype, copy=False))
        if 2 in indexes:
            # gB[r, k, l] = Σ_n Σ_j Z[n, r, j, k] X[n, j, l]
            X = x.astype(dtype, copy=False).reshape(batch * n1, n2)
            grads.append(Z.T.dot(X).reshape(n_terms, m2, n2).astype(B.dtype, copy=False))
        if 3 in indexes:
            grads.append(gy.sum(axis=0))
        return grads

    def _backward_differentiable(self, indexes, x, A, B, gy):
        # Double backprop: the same sums as Chainer functions, each differentiable.
        n_terms, m1, n1 = A.shape
        _, m2, n2 = B.shape
        batch = x.shape[0]
        dtype = _compute_dtype(x.dtype, A.dtype, B.dtype)
        X = F.reshape(_cast(x, dtype), (batch, n1, n2))
        gY = F.reshape(_cast(gy, dtype), (batch, m1, m2))
        A_, B_ = _cast(A, dtype), _cast(B, dtype)
        grads = []
        if 0 in indexes:
            gx = F.einsum('rij,nik,rkl->njl', A_, gY, B_)
            grads.append(_cast(F.reshape(gx, (batch, n1 * n2)), x.dtype))
        if 1 in indexes:
            grads.append(_cast(F.einsum('nik,njl,rkl->rij', gY, X, B_), A.dtype))
        if 2 in indexes:
            grads.append(_cast(F.einsum('nik,rij,njl->rkl', gY, A_, X), B.dtype))
        if 3 in indexes:
            grads.append(F.sum(gy, axis=0))
        return grads


def _cast(v, dtype):
    return v if v.dtype == dtype else F.cast(v, dtype)


def _terms_side_by_side(A, dtype):
    """``A`` of shape (R, m1, n1) as the (m1, R·n1) matrix ``[A[0] A[1] …]``."""
    n_terms, m1, n1 = A.shape
    if n_terms == 1:
        return A.astype(dtype, copy=False)[0]
    return A.astype(dtype, copy=False).transpose(1, 0, 2).reshape(m1, n_terms * n1)


def _terms_first(T, batch, n1, n_terms, m2):
    """(N·n1, R·m2) laid out (N, n1, R, m2) to (N, R·n1, m2); a view for one term."""
    if n_terms == 1:
        return T.reshape(batch, n1, m2)
    return T.reshape(batch, n1, n_terms, m2).transpose(0, 2, 1, 3).reshape(
        batch, n_terms * n1, m2)


def _terms_last(Z, batch, n_terms, n1, m2):
    """(N, R·n1, m2) laid out (N, R, n1, m2) to (N·n1, R·m2); a view for one term."""
    if n_terms == 1:
        return Z.reshape(batch * n1, m2)
    return Z.reshape(batch, n_terms, n1, m2).transpose(0, 2, 1, 3).reshape(
        batch * n1, n_terms * m2)


def check_shapes(x_shape, a_shape, b_shape) -> None:
    """Raises ``InvalidType`` unless ``x``, ``A`` and ``B`` fit, type checking or not.

    With type checking off, an input of the wrong size would otherwise be
    reshaped into other factors and give a wrong answer silently.
    """
    if len(x_shape) != 2 or len(a_shape) != 3 or len(b_shape) != 3:
        raise type_check.InvalidType(
            'x.ndim == 2, A.ndim == 3, B.ndim == 3',
            '{}, {}, {}'.format(len(x_shape), len(a_shape), len(b_shape)))
    if a_shape[0] != b_shape[0]:
        shapes.refuse('A and B must have the same number of terms', 'A.shape[0] == B.shape[0]',
                      '{} != {}'.format(a_shape[0], b_shape[0]))
    if x_shape[1] != a_shape[2] * b_shape[2]:
        expected = a_shape[2] * b_shape[2]
        shapes.refuse('x has {} features, but A of shape {} and B of shape {} take {} x {} = {}'
                      .format(x_shape[1], tuple(a_shape), tuple(b_shape), a_shape[2],
                              b_shape[2], expected),
                      'x.shape[1] == A.shape[2] * B.shape[2]',
                      '{} != {}'.format(x_shape[1], expected))


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
