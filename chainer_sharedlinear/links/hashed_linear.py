"""HashedNets' linear link: ``n_weights`` stored weights, drawn into the layer by a hash."""

import collections
import math
import typing as tp

import chainer
import numpy
from chainer import initializers

from chainer_sharedlinear import _checks
from chainer_sharedlinear.functions.hashed_linear import (
    apply_hashed_linear,
    check_n_weights,
    signed_hashed_index,
)
from chainer_sharedlinear.links.virtual_linear import VirtualLinear, row_slices


class HashedLinear(VirtualLinear):
    """Linear layer whose ``(out_size, in_size)`` weight is hashed into ``n_weights`` buckets.

    HashedNets (Chen et al., ICML 2015): the virtual weight ``V[i, j]`` is
    ``ξ(i, j) · W[h(i, j)]``, with the bucket ``h`` and the sign ``ξ = ±1``
    of each ``(i, j)`` from a seeded hash (see
    :func:`~chainer_sharedlinear.hashed_linear`). It stores ``n_weights``
    numbers for any ``in_size`` and ``out_size``; every bucket is used about
    ``in_size · out_size / n_weights`` times, at random places, with random
    signs. The arithmetic is a dense layer's: ``V`` is gathered for each
    call, and the gradient of ``W`` is summed from ``V``'s, bucket by bucket.

    The map of buckets and signs is computed when first needed on a device
    and kept in memory, 4 bytes per virtual weight (each one's place in
    ``[W, -W]``, ``signed_hashed_index``),
    or, with ``keep_index_map=False``, computed again on every call. It is
    never saved. In inference (test mode without a graph) the layer keeps its dense ``V``
    between calls (:attr:`keep_decoded_weight`, ``True`` by default). A saved layer
    holds ``W``, ``b`` and the integers ``n_weights``, ``seed``, ``in_size`` and
    ``out_size``, and loading it into a layer that differs in any of them is a
    ``ValueError``.

    Args:
        in_size (int or None): The size of the inputs; ``None`` defers it to
            the first forward pass. If only one size is given, it is ``out_size``.
        out_size (int): The size of the outputs.
        n_weights (int): The number of stored weights, from 1 to
            ``in_size · out_size`` (keyword only).
        seed (int): The seed of the hash, from 0 to ``2**32 - 1``.
        nobias (bool): If ``True``, there is no bias.
        initialW (:ref:`initializer <initializer>`): Initializer of ``W``. The
            default draws from a normal distribution of variance
            ``1 / in_size``: with random signs and buckets, the outputs have
            ``L.Linear``'s variance, whatever the mean of the inputs.
        initial_bias (:ref:`initializer <initializer>`): Initializer of the
            bias, zero by default.
        keep_index_map (bool): If ``False``, the map is not kept between
            calls: no memory for it outside a forward and backward pass, at the
            cost of the hash on every call (see :doc:`/benchmarks`).

    Attributes:
        W (~chainer.Parameter): The stored weights, ``(n_weights,)``.
        b (~chainer.Parameter): The bias, ``(out_size,)``, or ``None``.
        n_weights (int): The number of stored weights.
        seed (int): The seed of the hash.
        keep_index_map (bool): Whether the map is kept between calls.

    .. admonition:: Example

        >>> import numpy as np
        >>> from chainer_sharedlinear import HashedLinear
        >>> layer = HashedLinear(1000, 900, n_weights=900 * 1000 // 8)
        >>> layer.W.shape
        (112500,)
        >>> layer(np.zeros((2, 1000), np.float32)).shape
        (2, 900)
        >>> layer
        HashedLinear(in_size=1000, out_size=900, n_weights=112500, seed=0, nobias=False)
    """

    weight_names = ('W',)
    # W's shape does not tell the sizes: saving them makes a file of another
    # layer a clear error instead of another function.
    saved_options = ('n_weights', 'seed', 'in_size', 'out_size')
    keeps_decoded_weight_by_default = True

    def __init__(
            self,
            in_size: tp.Optional[int],
            out_size: tp.Optional[int] = None,
            *,
            n_weights: int,
            seed: int = 0,
            nobias: bool = False,
            initialW=None,
            initial_bias=None,
            keep_index_map: bool = True,
    ) -> None:
        super().__init__(in_size, out_size, nobias=nobias, initial_bias=initial_bias)
        self.n_weights = _checks.positive_int('n_weights', n_weights)
        self.seed = _checks.seed(seed)
        self.keep_index_map = bool(keep_index_map)
        self._index_map: tp.Optional[tuple] = None
        self._add_weights(W=initialW)

    def _weight_shapes(self, in_size):
        if in_size is not None:
            check_n_weights(self.n_weights, in_size, self.out_size)
        return collections.OrderedDict(W=(self.n_weights,))

    def _default_initializer(self, name, in_size):
        return initializers.Normal(scale=1 / math.sqrt(in_size))

    def _options(self):
        return collections.OrderedDict([('n_weights', self.n_weights), ('seed', self.seed)])

    def index_map(self) -> tp.Tuple[tp.Any, tp.Any]:
        """``(bucket, sign)``: where each virtual weight comes from, on this link's device.

        New arrays, made from the map the link keeps
        (:func:`~chainer_sharedlinear.functions.hashed_index` gives the same);
        ``bucket`` is of ``numpy.intp``, ``sign`` in ``W``'s dtype.
        """
        bucket, negative = _bucket_and_sign(self.signed_index(), self.n_weights)
        return bucket.astype(numpy.intp), (1 - 2 * negative).astype(self.W.dtype)

    def signed_index(self):
        """Each virtual weight's place in ``[W, -W]``, ``(out_size, in_size)``: on its device.

        ``signed_hashed_index`` of the
        layer, computed once per device and kept, unless ``keep_index_map`` is
        ``False``; never saved.
        """
        index = self._kept_index()
        if index is None:
            index = self._signed_index_rows(slice(None))
            self._index_map = ((self.device, self.in_size), index) if self.keep_index_map else None
        return index

    def _kept_index(self):
        """The map kept for this device and ``in_size``, or ``None``."""
        if self.in_size is None:
            raise ValueError('{} has no index map yet: in_size is only known after the first '
                             'forward pass'.format(self))
        if self._index_map is not None and self._index_map[0] == (self.device, self.in_size):
            return self._index_map[1]
        return None

    def _signed_index_rows(self, rows: slice):
        """``signed_index()[rows]``: of the kept map, else hashed for those rows alone and not
        kept, so that a fit or a dense weight made a slice at a time needs no whole map."""
        index = self._kept_index()
        if index is not None:
            return index[rows]
        return signed_hashed_index(self.out_size, self.in_size, self.n_weights, self.seed,
                                   self.xp, rows=rows)

    def __getstate__(self):
        # The index map is recomputed where it is needed: neither pickled nor deep-copied.
        state = super().__getstate__()
        state['_index_map'] = None
        return state

    def dense_weight(self):
        """The virtual weight ``ξ · W[h]``, ``(out_size, in_size)``."""
        # A slice of rows at a time: the gather's intp copy of the index is of the slice only.
        dense = self.xp.empty((self.out_size, self.in_size), self.W.dtype)
        for rows, part in self._dense_weight_slices():
            dense[rows] = part
        return dense

    def _dense_weight_rows(self, rows):
        # W[h] and its signs from the map as it is: no table [W, -W], no whole map.
        bucket, negative = _bucket_and_sign(self._signed_index_rows(rows), self.n_weights)
        weight = self.W.array[bucket]
        weight[negative] *= -1
        return weight

    def _apply(self, x, n_batch_axes):
        return apply_hashed_linear(x, self.W, self.signed_index(), self.seed, self.b,
                                   n_batch_axes)

    @classmethod
    def from_linear(cls, linear: 'chainer.links.Linear', *, n_weights: int,
                    seed: int = 0) -> 'HashedLinear':
        """Makes the ``HashedLinear`` closest to a dense :class:`chainer.links.Linear`.

        Each stored weight is the mean of the dense weights hashed into its
        bucket, each times its sign: of all hashed layers with this
        ``n_weights`` and ``seed``, the one whose virtual weight is nearest the
        dense weight in the Frobenius norm. A bucket no weight is hashed into
        gets 0. The bias is copied; dtypes and device stay as they were.

        Args:
            linear (~chainer.links.Linear): An initialised dense layer.
            n_weights (int): The number of stored weights.
            seed (int): The seed of the hash.

        Returns:
            HashedLinear: A new link, with ``in_size`` and ``out_size`` of ``linear``.

        .. admonition:: Example

            >>> import numpy as np
            >>> hashed = HashedLinear(10, 10, n_weights=5)
            >>> back = HashedLinear.from_linear(hashed.to_linear(), n_weights=5)
            >>> np.array_equal(back.W.array, hashed.W.array)  # a hashed weight comes back
            True
        """
        hashed = cls._like_linear(linear, n_weights=n_weights, seed=seed)
        xp, n = hashed.xp, hashed.n_weights
        sums = xp.zeros(n)
        counts = xp.zeros(n, numpy.intp)
        # A slice of rows at a time, in float64: no float64 copy of the weight, nor whole map.
        for rows in row_slices(hashed.out_size):
            bucket, negative = _bucket_and_sign(hashed._signed_index_rows(rows).ravel(), n)
            signed = linear.W.array[rows].ravel().astype('d')
            signed[negative] *= -1
            sums += xp.bincount(bucket, weights=signed, minlength=n)
            counts += xp.bincount(bucket, minlength=n)
            del bucket, negative, signed
        sums /= xp.maximum(counts, 1)
        hashed.W.array[...] = sums
        return hashed


def _bucket_and_sign(index, n_weights: int):
    """``(bucket, negative)`` of places in ``[W, -W]``: new arrays, ``index`` is left as it is
    (it may be a view of a kept map)."""
    negative = index >= n_weights
    return index - n_weights * negative, negative
