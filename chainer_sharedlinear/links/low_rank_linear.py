"""The low-rank link: a weight ``U · V`` of rank ``rank``, the product of two thin matrices."""

import collections
import typing as tp

import chainer
import numpy
from chainer import initializers

from chainer_sharedlinear import _checks, _dtypes
from chainer_sharedlinear.functions.low_rank_linear import low_rank_linear
from chainer_sharedlinear.links.kronecker_linear import nearest_terms
from chainer_sharedlinear.links.virtual_linear import VirtualLinear


def factor_product(U, V):
    """``U · V``, added up in the accumulation dtype and rounded to the factors' dtype."""
    wide = _dtypes.accumulation_dtype(U.dtype, V.dtype)
    return _dtypes.as_dtype(U.astype(wide).dot(V.astype(wide)),
                            numpy.promote_types(U.dtype, V.dtype))


class LowRankLinear(VirtualLinear):
    """Linear layer whose ``(out_size, in_size)`` weight has rank ``rank``: ``U · V``.

    ``U`` has shape ``(out_size, rank)`` and ``V`` ``(rank, in_size)``: the
    layer stores ``rank · (in_size + out_size)`` numbers and computes
    ``(x · Vᵀ) · Uᵀ + b`` with two of Chainer's linear functions
    (:func:`~chainer_sharedlinear.low_rank_linear`). :meth:`from_linear`
    gives the nearest layer of that rank to a trained dense one (a truncated
    singular value decomposition).

    Args:
        in_size (int or None): The size of the inputs; ``None`` defers it to
            the first forward pass. If only one size is given, it is ``out_size``.
        out_size (int): The size of the outputs.
        rank (int): The rank of the weight, at most ``min(in_size, out_size)``
            (keyword only).
        nobias (bool): If ``True``, there is no bias.
        initialU (:ref:`initializer <initializer>`): Initializer of ``U``.
        initialV (:ref:`initializer <initializer>`): Initializer of ``V``. By
            default both draw from normal distributions of variance one over
            their fan-in, ``1 / rank`` for ``U`` and ``1 / in_size`` for ``V``:
            each element of ``U · V`` then has ``L.Linear``'s variance
            ``1 / in_size``, and the outputs ``L.Linear``'s variance.
        initial_bias (:ref:`initializer <initializer>`): Initializer of the
            bias, zero by default.

    Attributes:
        U (~chainer.Parameter): ``(out_size, rank)``.
        V (~chainer.Parameter): ``(rank, in_size)``.
        b (~chainer.Parameter): The bias, ``(out_size,)``, or ``None``.
        rank (int): The rank.

    .. admonition:: Example

        >>> import numpy as np
        >>> from chainer_sharedlinear import LowRankLinear
        >>> layer = LowRankLinear(1000, 900, rank=50)
        >>> layer.U.shape, layer.V.shape
        ((900, 50), (50, 1000))
        >>> layer(np.zeros((2, 1000), np.float32)).shape
        (2, 900)
    """

    weight_names = ('U', 'V')

    def __init__(
            self,
            in_size: tp.Optional[int],
            out_size: tp.Optional[int] = None,
            *,
            rank: int,
            nobias: bool = False,
            initialU=None,
            initialV=None,
            initial_bias=None,
    ) -> None:
        super().__init__(in_size, out_size, nobias=nobias, initial_bias=initial_bias)
        self.rank = _checks.positive_int('rank', rank)
        self._add_weights(U=initialU, V=initialV)

    def _weight_shapes(self, in_size):
        if in_size is not None:
            _checks.rank(self.rank, in_size, self.out_size)
        return collections.OrderedDict([('U', (self.out_size, self.rank)),
                                        ('V', (self.rank, in_size))])

    def _in_size_of_weights(self):
        return None if self.V.array is None else self.V.shape[1]

    def _default_initializer(self, name, in_size):
        # Var(U)·Var(V)·rank = 1 / in_size: each element of U·V has L.Linear's variance.
        return initializers.LeCunNormal()

    def _options(self):
        return collections.OrderedDict(rank=self.rank)

    def dense_weight(self):
        """The weight ``U · V``, ``(out_size, in_size)``."""
        return self._dense_weight_rows(slice(None))

    def _dense_weight_rows(self, rows):
        return factor_product(self.U.array[rows], self.V.array)

    def _apply(self, x, n_batch_axes):
        return low_rank_linear(x, self.U, self.V, self.b, n_batch_axes)

    @classmethod
    def from_linear(cls, linear: 'chainer.links.Linear', *, rank: int) -> 'LowRankLinear':
        """Makes the ``LowRankLinear`` of rank ``rank`` closest to a dense layer.

        The ``rank`` leading terms of the singular value decomposition of the
        dense weight, each singular value split evenly between ``U`` and ``V``:
        of all weights of that rank, the nearest in the Frobenius norm
        (Eckart and Young). The bias is copied; dtypes and device stay as they were.

        Args:
            linear (~chainer.links.Linear): An initialised dense layer.
            rank (int): The rank, at most ``min(in_size, out_size)``.

        Returns:
            LowRankLinear: A new link, with ``in_size`` and ``out_size`` of ``linear``.

        .. admonition:: Example

            >>> import chainer.links as L
            >>> import numpy as np
            >>> dense = L.Linear(3, 2, initialW=np.outer([1., 2.], [1., 0., -1.]))
            >>> layer = LowRankLinear.from_linear(dense, rank=1)
            >>> bool(np.allclose(layer.dense_weight(), dense.W.array, atol=1e-6))
            True
        """
        layer = cls._like_linear(linear, rank=rank)
        # (out_size, 1) ⊗ (1, in_size) is an outer product: the rearrangement is the weight.
        out_size, in_size = linear.W.shape
        layer.U.array[...], layer.V.array[...] = nearest_terms(
            linear.W.array, (1, in_size), (out_size, 1), layer.rank)
        return layer
