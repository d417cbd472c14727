"""The Kronecker-product link: a weight ``Σ_r A[r] ⊗ B[r]``, and PHM layers."""

import collections
import math
import typing as tp

import chainer
import numpy
from chainer import backend, initializers

from chainer_sharedlinear import _checks, _dtypes
from chainer_sharedlinear.functions.kronecker_linear import (
    kronecker_linear,
    most_square_factors,
)
from chainer_sharedlinear.links.virtual_linear import N_SLICES, VirtualLinear, row_slices


class KroneckerLinear(VirtualLinear):
    """Linear layer whose weight is a sum of Kronecker products, ``Σ_r A[r] ⊗ B[r]``.

    ``A`` has shape ``(n_terms, m1, n1)`` and ``B`` ``(n_terms, m2, n2)``,
    with ``in_size = n1·n2`` and ``out_size = m1·m2``. It stores
    ``n_terms·(m1·n1 + m2·n2)`` numbers instead of ``m1·m2·n1·n2``, and computes
    ``y`` with products of the factors on the input seen as ``n1 × n2``
    matrices (:func:`~chainer_sharedlinear.kronecker_linear`), without ever
    building the ``(out_size, in_size)`` weight.

    The PHM layer of Zhang et al. (ICLR 2021) with ``n`` terms is
    ``KroneckerLinear(in_size, out_size, in_factors=(n, in_size // n),
    out_factors=(n, out_size // n), n_terms=n)``.

    Args:
        in_size (int or None): The size of the inputs; ``None`` defers it to
            the first forward pass. If only one size is given, it is ``out_size``.
        out_size (int): The size of the outputs.
        in_factors (tuple of int): ``(n1, n2)`` with ``n1·n2 = in_size``. By
            default the most square pair, ``n1 <= n2``.
        out_factors (tuple of int): ``(m1, m2)`` with ``m1·m2 = out_size``,
            likewise.
        n_terms (int): The number of Kronecker products added up.
        nobias (bool): If ``True``, there is no bias.
        initialA (:ref:`initializer <initializer>`): Initializer of ``A``.
        initialB (:ref:`initializer <initializer>`): Initializer of ``B``. By
            default both draw from normal distributions whose variances
            multiply to ``1 / (n_terms · in_size)``: each element of the
            weight then has ``L.Linear``'s variance ``1 / in_size``, and the
            outputs ``L.Linear``'s variance, whatever the mean of the inputs.
        initial_bias (:ref:`initializer <initializer>`): Initializer of the
            bias, zero by default.

    Attributes:
        A (~chainer.Parameter): ``(n_terms, m1, n1)``.
        B (~chainer.Parameter): ``(n_terms, m2, n2)``.
        b (~chainer.Parameter): The bias, ``(out_size,)``, or ``None``.
        out_factors (tuple of int): ``(m1, m2)``.
        n_terms (int): The number of terms.

    .. admonition:: Example

        >>> import numpy as np
        >>> from chainer_sharedlinear import KroneckerLinear
        >>> layer = KroneckerLinear(1000, 900)
        >>> layer.A.shape, layer.B.shape
        ((1, 30, 25), (1, 30, 40))
        >>> layer(np.zeros((2, 1000), np.float32)).shape
        (2, 900)
        >>> phm = KroneckerLinear(1000, 900, in_factors=(4, 250), out_factors=(4, 225),
        ...                       n_terms=4)
        >>> phm.A.shape, phm.B.shape
        ((4, 4, 4), (4, 225, 250))
    """

    weight_names = ('A', 'B')

    def __init__(
            self,
            in_size: tp.Optional[int],
            out_size: tp.Optional[int] = None,
            *,
            in_factors: tp.Optional[tp.Tuple[int, int]] = None,
            out_factors: tp.Optional[tp.Tuple[int, int]] = None,
            n_terms: int = 1,
            nobias: bool = False,
            initialA=None,
            initialB=None,
            initial_bias=None,
    ) -> None:
        super().__init__(in_size, out_size, nobias=nobias, initial_bias=initial_bias)
        self.n_terms = _checks.positive_int('n_terms', n_terms)
        self.out_factors = (most_square_factors(self.out_size) if out_factors is None
                            else _checks.factors('out_factors', out_factors, self.out_size))
        if in_factors is not None:
            in_factors = _checks.factors('in_factors', in_factors, self._in_size)
            # The factors tell in_size, so the layer need not wait for an input.
            self._in_size = in_factors[0] * in_factors[1]
        self._in_factors = in_factors
        self._add_weights(A=initialA, B=initialB)

    @property
    def in_factors(self) -> tp.Optional[tp.Tuple[int, int]]:
        """``(n1, n2)``, or ``None`` while ``in_size`` is not known."""
        if self.A.array is not None and self.B.array is not None:
            return self.A.shape[2], self.B.shape[2]
        if self._in_factors is not None:
            return self._in_factors
        if self.in_size is not None:
            return most_square_factors(self.in_size)
        return None

    def _weight_shapes(self, in_size):
        m1, m2 = self.out_factors
        if in_size is None:
            n1, n2 = self._in_factors or (None, None)
        else:
            # The factors the weights have, however they got them (a first load or
            # copyparams into a lazy layer), else those given, else the default.
            factors = self.in_factors
            if factors is None or factors[0] * factors[1] != in_size:
                factors = (most_square_factors(in_size) if self._in_factors is None
                           else _checks.factors('in_factors', self._in_factors, in_size))
            n1, n2 = factors
        return collections.OrderedDict([
            ('A', (self.n_terms, m1, n1)), ('B', (self.n_terms, m2, n2))])

    def _in_size_of_weights(self):
        if self.A.array is None or self.B.array is None:
            return None
        return self.A.shape[2] * self.B.shape[2]

    def _default_initializer(self, name, in_size):
        fan_in = self._weight_shapes(in_size)[name][2]  # n1 for A, n2 for B
        # Var(A)·Var(B)·n_terms = 1 / (n1·n2): each term adds its share of 1 / in_size.
        return initializers.Normal(scale=1 / math.sqrt(fan_in * math.sqrt(self.n_terms)))

    def dense_weight(self):
        """The weight ``Σ_r kron(A[r], B[r])``, ``(out_size, in_size)``."""
        return self._dense_weight_rows(slice(None))

    def _dense_weight_rows(self, rows):
        A, B = self.A.array, self.B.array
        start, stop, _ = rows.indices(self.out_size)
        m2 = B.shape[1]  # row a * m2 + b is A's row a by B's row b
        first, last = start // m2, -(-stop // m2)
        wide = _dtypes.accumulation_dtype(A.dtype, B.dtype)  # n_terms products summed
        weight = self.xp.einsum('rij,rkl->ikjl', A[:, first:last].astype(wide), B.astype(wide))
        weight = weight.reshape((last - first) * m2, self.in_size)[start - first * m2:
                                                                   stop - first * m2]
        return _dtypes.as_dtype(weight, numpy.promote_types(A.dtype, B.dtype))

    def _apply(self, x, n_batch_axes):
        return kronecker_linear(x, self.A, self.B, self.b, n_batch_axes)

    @classmethod
    def from_linear(cls, linear: 'chainer.links.Linear', *,
                    in_factors: tp.Optional[tp.Tuple[int, int]] = None,
                    out_factors: tp.Optional[tp.Tuple[int, int]] = None,
                    n_terms: int = 1) -> 'KroneckerLinear':
        """Makes the ``KroneckerLinear`` closest to a dense :class:`chainer.links.Linear`.

        Van Loan and Pitsianis' rearrangement turns the dense weight into an
        ``(m1·n1, m2·n2)`` matrix in which every Kronecker product ``A ⊗ B``
        is the outer product ``vec(A) vec(B)ᵀ``; the ``n_terms`` leading
        terms of its singular value decomposition are then the ``n_terms``
        products whose sum is nearest the dense weight in the Frobenius norm.
        The bias is copied; dtypes and device stay as they were.

        Args:
            linear (~chainer.links.Linear): An initialised dense layer.
            in_factors (tuple of int): ``(n1, n2)``, as in the constructor.
            out_factors (tuple of int): ``(m1, m2)``, as in the constructor.
            n_terms (int): The number of terms, at most ``min(m1·n1, m2·n2)``.

        Returns:
            KroneckerLinear: A new link, with ``in_size`` and ``out_size`` of ``linear``.

        .. admonition:: Example

            >>> import chainer.links as L
            >>> import numpy as np
            >>> A, B = np.array([[1., 2.], [3., 4.]]), np.array([[0., 1.], [1., 0.]])
            >>> dense = L.Linear(4, 4, initialW=np.kron(A, B))
            >>> layer = KroneckerLinear.from_linear(dense)
            >>> bool(np.allclose(layer.dense_weight(), dense.W.array, atol=1e-6))
            True
        """
        layer = cls._like_linear(linear, in_factors=in_factors, out_factors=out_factors,
                                 n_terms=n_terms)
        (m1, m2), (n1, n2) = layer.out_factors, layer.in_factors
        most = min(m1 * n1, m2 * n2)
        if layer.n_terms > most:
            raise ValueError(
                'n_terms={} is more than the {} terms a weight of factors {} x {} can need: '
                'n_terms is at most min(m1*n1, m2*n2) = {}'.format(
                    layer.n_terms, most, layer.out_factors, layer.in_factors, most))
        left, right = nearest_terms(linear.W.array, layer.in_factors, layer.out_factors,
                                    layer.n_terms)
        layer.A.array[...] = left.T.reshape(layer.n_terms, m1, n1)
        layer.B.array[...] = right.reshape(layer.n_terms, m2, n2)
        return layer

    def _options(self):
        return collections.OrderedDict([
            ('in_factors', self.in_factors), ('out_factors', self.out_factors),
            ('n_terms', self.n_terms)])


class Rearrangement:
    """Van Loan and Pitsianis' rearrangement of a weight, read a slice of columns at a time.

    ``R[(a, i), (b, j)] = W[a·m2 + b, i·n2 + j]``, ``(m1·n1, m2·n2)``: every
    Kronecker product ``A ⊗ B`` of ``(m1, n1)`` and ``(m2, n2)`` factors is in it
    the outer product ``vec(A) vec(B)ᵀ``. Where ``R`` has more rows than columns,
    its transpose is read instead (``transposed``), so that ``R Rᵀ`` is the
    smaller Gram matrix. ``R`` is never made whole: each slice of its columns is
    copied from the weight as it is, in float64.
    """

    def __init__(self, weight, in_factors, out_factors) -> None:
        (n1, n2), (m1, m2) = in_factors, out_factors
        blocks = weight.reshape(m1, m2, n1, n2)  # R[(a, i), (b, j)] = blocks[a, b, i, j]
        #: Whether the rows are those of ``Rᵀ``, ``(b, j)``.
        self.transposed = m1 * n1 > m2 * n2
        self.blocks = blocks.transpose(1, 0, 3, 2) if self.transposed else blocks
        rows_out, columns_out, rows_in, columns_in = self.blocks.shape
        #: ``(rows, columns)`` of the matrix read.
        self.shape = rows_out * rows_in, columns_out * columns_in

    def pieces(self) -> tp.Iterator[tp.Tuple[slice, tp.Any]]:
        """``(columns, piece)``: ``piece`` is ``R[:, columns]`` in float64, for consecutive
        slices of about ``1 / N_SLICES`` of the weight."""
        xp = backend.get_array_module(self.blocks)
        rows, (_, columns_out, _, columns_in) = self.shape[0], self.blocks.shape
        width = max(1, self.blocks.size // (N_SLICES * rows))
        # Whole blocks of columns_in columns, or parts of one: R's columns in order.
        per_b, per_j = max(1, width // columns_in), min(columns_in, width)
        for b in range(0, columns_out, per_b):
            for j in range(0, columns_in, per_j):
                piece = xp.ascontiguousarray(
                    self.blocks[:, b:b + per_b, :, j:j + per_j].transpose(0, 2, 1, 3),
                    numpy.float64).reshape(rows, -1)
                start = b * columns_in + j
                yield slice(start, start + piece.shape[1]), piece

    def gram(self):
        """``R Rᵀ``, ``(rows, rows)``, in float64: summed a piece and a slice of rows at a
        time, the lower blocks only, then mirrored (no temporary as large as it)."""
        xp = backend.get_array_module(self.blocks)
        rows = self.shape[0]
        gram = xp.zeros((rows, rows))
        for _, piece in self.pieces():
            for tile in row_slices(rows):
                gram[tile, :tile.stop] += piece[tile].dot(piece[:tile.stop].T)
        for tile in row_slices(rows):
            gram[:tile.start, tile] = gram[tile, :tile.start].T
        return gram

    def project(self, basis):
        """``basisᵀ R``, ``(k, columns)``, in float64, for a ``(rows, k)`` ``basis``."""
        xp = backend.get_array_module(self.blocks)
        projected = xp.empty((basis.shape[1], self.shape[1]))
        for columns, piece in self.pieces():
            projected[:, columns] = basis.T.dot(piece)
        return projected


def nearest_terms(weight, in_factors, out_factors, n_terms: int) -> tp.Tuple[tp.Any, tp.Any]:
    """``(left, right)``: ``(m1·n1, n_terms)`` and ``(n_terms, m2·n2)``, in float64, whose
    product is the nearest matrix of rank ``n_terms`` to the rearrangement of ``weight``.

    Term ``r`` is ``σ_r`` times the outer product of the ``r``-th singular vectors of the
    rearrangement (:class:`Rearrangement`), ``√σ_r`` on each side (Eckart and Young).
    The singular vectors on the side of the smaller Gram matrix are its leading
    eigenvectors, each with its largest entry positive, and the other side the
    projection of the rearrangement on them: a symmetric eigenvalue problem instead of a
    singular value decomposition, whose float64 copy of the weight and two square
    factors would take several times its bytes.
    """
    xp = backend.get_array_module(weight)
    rearranged = Rearrangement(weight, in_factors, out_factors)
    gram = rearranged.gram()
    vectors = xp.linalg.eigh(gram)[1]  # by ascending eigenvalue
    del gram
    basis = xp.ascontiguousarray(vectors[:, ::-1][:, :n_terms])
    del vectors
    # Either sign of a term gives the same product: the largest entry of its vector is
    # made positive (as scikit-learn's svd_flip does), not left to LAPACK.
    basis *= xp.sign(basis[xp.abs(basis).argmax(axis=0), xp.arange(n_terms)])
    projected = rearranged.project(basis)  # σ_r times the r-th right singular vector
    root = xp.sqrt(xp.sqrt(xp.einsum('ij,ij->i', projected, projected)))
    basis *= root
    projected /= xp.where(root > 0, root, 1)[:, None]
    return (projected.T, basis.T) if rearranged.transposed else (basis, projected)
