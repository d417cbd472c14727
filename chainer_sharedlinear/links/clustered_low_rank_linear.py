"""Low rank and learned weight sharing composed: the two factors of ``U · V`` as k-means codebooks.

A :class:`~chainer_sharedlinear.LowRankLinear` stores its factors ``U`` and
``V`` as numbers of 32 bits; here each factor is stored as
:class:`~chainer_sharedlinear.ClusteredLinear` stores its weight, a codebook
of ``n_clusters`` values and a fixed index at ``⌈log2 n_clusters⌉`` bits an
entry. At the same bytes the rank is several times higher: 3 to 8 bits an
entry instead of 32.
"""

import collections
import math
import typing as tp

import chainer
import numpy
from chainer import initializers

from chainer_sharedlinear import _checks
from chainer_sharedlinear.functions.clustered_linear import index_bits, pack_index, packed_size
from chainer_sharedlinear.functions.low_rank_linear import low_rank_linear
from chainer_sharedlinear.functions.tied_linear import TiedWeight, dense_product
from chainer_sharedlinear.links.clustered_linear import cluster, unpack_saved_index
from chainer_sharedlinear.links.low_rank_linear import LowRankLinear, factor_product
from chainer_sharedlinear.links.virtual_linear import VirtualLinear, read_saved


class ClusteredLowRankLinear(VirtualLinear):
    """Linear layer of weight ``U[U_index] · V[V_index]``: low rank, each factor a codebook.

    The factors of a :class:`~chainer_sharedlinear.LowRankLinear` of rank
    ``rank``, ``(out_size, rank)`` and ``(rank, in_size)``, each made of
    ``n_clusters`` shared values as a
    :class:`~chainer_sharedlinear.ClusteredLinear` weight is: the codebooks
    ``U`` and ``V``, of shape ``(n_clusters,)``, are the layer's weight
    parameters, and the indices ``U_index`` and ``V_index``, of the factors'
    shapes, say which value each entry of a factor takes, and stay fixed.
    Each call gathers the two factors (:meth:`factors`, ``rank · (in_size +
    out_size)`` entries) and computes ``(x · V[V_index]ᵀ) · U[U_index]ᵀ + b``
    with :func:`~chainer_sharedlinear.low_rank_linear`: nothing of size
    ``(out_size, in_size)`` is built. The gradient of each value of a codebook
    is the sum of its entries' gradients. :meth:`from_linear` clusters the
    factors of a trained dense weight's truncated singular value decomposition.

    What it stores:

    - in memory, the two indices in the smallest unsigned type (1 byte an
      entry up to 256 clusters, 2 bytes up to 2**16) and the two codebooks;
      while training, the gathered factors and their gradients as well;
    - in a saved file, the codebooks and the indices at
      ``⌈log2 n_clusters⌉`` bits an entry, with the integers ``n_clusters``,
      ``rank``, ``in_size`` and ``out_size``; loading a file into a layer that
      differs in any of them is a ``ValueError`` that leaves the layer as it was.

    A layer built without a trained weight (not by :meth:`from_linear`)
    starts as the clustering of factors drawn as ``LowRankLinear`` draws them
    (variance ``1 / rank`` for ``U`` and ``1 / in_size`` for ``V``), from
    ``seed``: its indices are that clustering's, its codebooks the centroids
    unless ``initialU`` or ``initialV`` says otherwise.

    Args:
        in_size (int or None): The size of the inputs; ``None`` defers it to
            the first forward pass. If only one size is given, it is ``out_size``.
        out_size (int): The size of the outputs.
        rank (int): The rank of the weight, at most ``min(in_size, out_size)``
            (keyword only).
        n_clusters (int): The number of shared values of each factor, from 1 to
            2**16 (keyword only).
        seed (int): The seed of the initial factors (and of ``init='random'``).
        nobias (bool): If ``True``, there is no bias.
        initialU (:ref:`initializer <initializer>`): Initializer of the codebook ``U``.
        initialV (:ref:`initializer <initializer>`): Initializer of the codebook ``V``.
        initial_bias (:ref:`initializer <initializer>`): Initializer of the
            bias, zero by default.

    Attributes:
        U (~chainer.Parameter): The codebook of the factor ``(out_size, rank)``,
            ``(n_clusters,)``.
        V (~chainer.Parameter): The codebook of the factor ``(rank, in_size)``,
            ``(n_clusters,)``.
        U_index: The value of every entry of the first factor, ``(out_size,
            rank)``, on the link's device; ``None`` until ``in_size`` is known.
        V_index: The same for the second factor, ``(rank, in_size)``.
        b (~chainer.Parameter): The bias, ``(out_size,)``, or ``None``.
        rank (int): The rank.
        n_clusters (int): The number of shared values of each factor.

    .. admonition:: Example

        >>> import chainer.links as L
        >>> from chainer_sharedlinear import ClusteredLowRankLinear
        >>> dense = L.Linear(1000, 900)
        >>> layer = ClusteredLowRankLinear.from_linear(dense, rank=100, n_clusters=16)
        >>> layer.U.shape, layer.U_index.shape, layer.V_index.shape, layer.V_index.dtype
        ((16,), (900, 100), (100, 1000), dtype('uint8'))
        >>> layer.stored_bytes()  # 2 x 16 float32 values, 190,000 indices of 4 bits, the bias
        98728
    """

    weight_names = ('U', 'V')
    keeps_decoded_weight_by_default = True
    #: The fixed index of each codebook, in the order of ``weight_names``.
    index_names = ('U_index', 'V_index')
    # The codebooks' shapes tell neither the rank nor the sizes, and the indices are saved packed.
    saved_options = ('n_clusters', 'rank', 'in_size', 'out_size')

    def __init__(
            self,
            in_size: tp.Optional[int],
            out_size: tp.Optional[int] = None,
            *,
            rank: int,
            n_clusters: int,
            seed: int = 0,
            nobias: bool = False,
            initialU=None,
            initialV=None,
            initial_bias=None,
    ) -> None:
        super().__init__(in_size, out_size, nobias=nobias, initial_bias=initial_bias)
        self.rank = _checks.positive_int('rank', rank)
        self.n_clusters = _checks.n_clusters(n_clusters)
        self.seed = _checks.seed(seed)
        self.U_index = None
        self.V_index = None
        self._initial_centroids: tp.Optional[tp.Dict[str, numpy.ndarray]] = None
        self._add_weights(U=initialU, V=initialV)

    def _weight_shapes(self, in_size):
        if in_size is not None:
            _checks.rank(self.rank, in_size, self.out_size)
        return collections.OrderedDict((name, (self.n_clusters,)) for name in self.weight_names)

    def _index_shapes(self, in_size: int) -> 'collections.OrderedDict[str, tp.Tuple[int, int]]':
        return collections.OrderedDict([('U_index', (self.out_size, self.rank)),
                                        ('V_index', (self.rank, in_size))])

    def _in_size_of_weights(self):
        return None if self.V_index is None else self.V_index.shape[1]

    def _initialize_params(self, in_size):
        if self.V_index is not None:
            return super()._initialize_params(in_size)
        in_size = _checks.positive_int('in_size', in_size)
        rng = numpy.random.RandomState(self.seed)
        # LowRankLinear's default factors (LeCunNormal: variance one over the fan-in).
        fan_in = {'U_index': self.rank, 'V_index': in_size}
        drawn = collections.OrderedDict(
            (name, rng.normal(scale=1 / math.sqrt(fan_in[name]), size=shape))
            for name, shape in self._index_shapes(in_size).items())
        clustered = {name: cluster(factor, self.n_clusters) for name, factor in drawn.items()}
        self._initial_centroids = {weight: clustered[name][0] for weight, name in
                                   zip(self.weight_names, self.index_names)}
        try:
            super()._initialize_params(in_size)
        finally:
            self._initial_centroids = None
        for name in self.index_names:
            setattr(self, name, self.xp.asarray(clustered[name][1]))

    def _default_initializer(self, name, in_size):
        return initializers.Constant(self._initial_centroids[name])

    def _options(self):
        return collections.OrderedDict([('rank', self.rank), ('n_clusters', self.n_clusters),
                                        ('seed', self.seed)])

    def _indices(self) -> tp.List[tp.Any]:
        indices = [getattr(self, name) for name in self.index_names]
        if any(index is None for index in indices):
            raise ValueError('{} has no indices yet: it is {}'.format(
                self, _checks.NOT_INITIALISED))
        return indices

    def stored_bytes(self) -> int:
        """The bytes of a saved layer: the two codebooks, the indices at their bits, the bias."""
        bits = index_bits(self.n_clusters)
        n_bytes = sum(packed_size(index.size, bits) for index in self._indices())
        for param in self.params():
            n_bytes += param.size * param.dtype.itemsize
        return n_bytes

    def factors(self) -> tp.Tuple[chainer.Variable, chainer.Variable]:
        """The two factors, ``U[U_index]`` and ``V[V_index]``, gathered from the codebooks.

        ``(out_size, rank)`` and ``(rank, in_size)``, as variables whose
        gradients flow back to the codebooks: the gradient of a codebook value
        is the sum of its entries'.
        """
        return tuple(TiedWeight(index).apply((codebook,))[0] for codebook, index in
                     zip((self.U, self.V), self._indices()))

    def dense_weight(self):
        """The weight ``U[U_index] · V[V_index]``, ``(out_size, in_size)``."""
        U_index, V_index = self._indices()
        return factor_product(self.U.array[U_index], self.V.array[V_index])

    def _dense_weight_state(self):
        return super()._dense_weight_state() + tuple(self._indices())

    def _decode(self):
        # The two gathered factors where they hold fewer numbers than the dense weight (and
        # so take fewer multiply-adds), else the dense weight.
        if self.rank * (self.in_size + self.out_size) < self.in_size * self.out_size:
            return tuple(codebook.array[index] for codebook, index in
                         zip((self.U, self.V), self._indices()))
        return super()._decode()

    def _apply_decoded(self, x, decoded, b):
        if len(decoded) == 1:
            return super()._apply_decoded(x, decoded, b)
        U, V = decoded
        return dense_product(dense_product(x, V), U, b)

    def _apply(self, x, n_batch_axes):
        U, V = self.factors()
        return low_rank_linear(x, U, V, self.b, n_batch_axes)

    def device_resident_accept(self, visitor):
        super().device_resident_accept(visitor)
        for name in self.index_names:
            if getattr(self, name) is not None:
                setattr(self, name, visitor.visit_array(getattr(self, name)))

    def copyparams(self, link, copy_persistent=True):
        """Copies the parameters of ``link``, and its indices with the persistent values."""
        super().copyparams(link, copy_persistent)
        if not copy_persistent:
            return
        for name in self.index_names:
            index = getattr(link, name)
            if index is not None:
                setattr(self, name, self.xp.array(chainer.backend.CpuDevice().send(index)
                                                  if self.xp is numpy else index))

    def serialize(self, serializer) -> None:
        """Saves and loads the indices packed to their bit width, with the layer's checks."""
        if not isinstance(serializer, chainer.serializer.Deserializer):
            super().serialize(serializer)
            for name in self.index_names:
                if getattr(self, name) is not None:
                    serializer(name, pack_index(getattr(self, name), index_bits(self.n_clusters)))
            return
        packed = collections.OrderedDict(
            (name, read_saved(serializer, name)) for name in self.index_names)
        indices = {}
        if any(array is not None for array in packed.values()):
            # Checked and unpacked before anything is loaded, so that a refused file
            # leaves the layer as it was.
            saved_in_size = self._check_saved(serializer)
            missing = [name for name, array in packed.items() if array is None]
            if missing or saved_in_size is None:
                raise ValueError('cannot load the indices of {}: the file does not hold {}'
                                 .format(self, ' and '.join(missing or ['its in_size'])))
            for (name, shape), weight in zip(self._index_shapes(saved_in_size).items(),
                                             self.weight_names):
                indices[name] = unpack_saved_index(packed[name], shape, self.n_clusters, self,
                                                   name, 'codebook ' + weight)
        super().serialize(serializer)
        for name, index in indices.items():
            setattr(self, name, self.xp.asarray(index))

    @classmethod
    def from_linear(cls, linear: 'chainer.links.Linear', *, rank: int, n_clusters: int,
                    init: str = 'linear', seed: int = 0) -> 'ClusteredLowRankLinear':
        """Makes the ``ClusteredLowRankLinear`` of a dense layer: its truncated SVD, clustered.

        The factors are :meth:`LowRankLinear.from_linear
        <chainer_sharedlinear.LowRankLinear.from_linear>`'s, the ``rank``
        leading terms of the singular value decomposition with each singular
        value split evenly between them (so that the two factors have the same
        scale); then each factor is clustered by k-means, as
        :meth:`ClusteredLinear.from_linear
        <chainer_sharedlinear.ClusteredLinear.from_linear>` clusters a weight, into
        ``n_clusters`` values, each entry replaced by its cluster's centroid. The bias is
        copied; dtypes and device stay as they were.

        Args:
            linear (~chainer.links.Linear): An initialised dense layer.
            rank (int): The rank, at most ``min(in_size, out_size)``.
            n_clusters (int): The number of shared values of each factor.
            init (str): Where k-means starts: ``'linear'``, ``'density'`` or ``'random'``.
            seed (int): The seed of ``init='random'``, and the layer's seed.

        Returns:
            ClusteredLowRankLinear: A new link, with ``in_size`` and ``out_size`` of ``linear``.

        .. admonition:: Example

            A weight of rank 1 whose factors take two values each:

            >>> import chainer.links as L
            >>> import numpy as np
            >>> dense = L.Linear(3, 2, initialW=np.outer([1., 2.], [1., -1., 1.]))
            >>> layer = ClusteredLowRankLinear.from_linear(dense, rank=1, n_clusters=2)
            >>> bool(np.allclose(layer.dense_weight(), dense.W.array, atol=1e-6))
            True
            >>> layer.U_index.T, layer.V_index
            (array([[0, 1]], dtype=uint8), array([[1, 0, 1]], dtype=uint8))
        """
        layer = cls._like_linear(linear, rank=rank, n_clusters=n_clusters, seed=seed)
        low_rank = LowRankLinear.from_linear(linear, rank=layer.rank)
        for weight, name in zip(cls.weight_names, cls.index_names):
            centroids, index = cluster(getattr(low_rank, weight).array, layer.n_clusters,
                                       init=init, seed=seed)
            getattr(layer, weight).array[...] = layer.xp.asarray(centroids)
            setattr(layer, name, layer.xp.asarray(index))
        return layer
