"""Learned weight sharing: a codebook of ``n_clusters`` weights and a fixed index into it.

Han, Mao and Dally's trained quantization (Deep Compression, ICLR 2016), as
TensorFlow Model Optimization's ``cluster_weights`` does it: the weights of a
trained layer are clustered by k-means, each is replaced by its cluster's
centroid, and training goes on with the centroids (the codebook) as the
parameters, the gradient of each the sum of its weights' gradients.
"""

import collections
import math
import typing as tp

import chainer
import numpy
from chainer import initializers

from chainer_sharedlinear import _checks
from chainer_sharedlinear.functions.clustered_linear import (
    ClusteredLinearFunction,
    index_bits,
    index_dtype,
    pack_index,
    packed_size,
    unpack_index,
)
from chainer_sharedlinear.functions.tied_linear import apply_tied_linear
from chainer_sharedlinear.links.virtual_linear import VirtualLinear, read_saved, row_slices

#: How :func:`cluster` places the first centroids (Han et al. compared the three).
INITS = ('linear', 'density', 'random')


def cluster(values, n_clusters: int, *, init: str = 'linear', seed: int = 0,
            max_iter: int = 300) -> tp.Tuple[numpy.ndarray, numpy.ndarray]:
    """k-means of a set of numbers: the centroids, and the cluster of each number.

    One-dimensional k-means keeps each cluster an interval of the sorted
    numbers, so that an iteration of Lloyd's algorithm costs a binary search
    per centroid and prefix sums; it runs until no number changes cluster (or
    ``max_iter`` iterations). The result is a function of the numbers and the
    arguments alone.

    Args:
        values: The numbers, any shape (NumPy or CuPy; computed with NumPy).
        n_clusters (int): The number of clusters, from 1 to 2**16.
        init (str): Where the centroids start: ``'linear'``, evenly spaced
            from the smallest number to the largest (the best of the three in
            Han et al.), ``'density'``, at evenly spaced quantiles, or
            ``'random'``, at numbers drawn from ``values`` with ``seed``.
        seed (int): The seed of ``'random'``.
        max_iter (int): The most iterations.

    Returns:
        ``(centroids, labels)``: ``(n_clusters,)`` float64, ascending, and
        the cluster of each number in ``values``' shape, in the smallest
        unsigned type that holds them. A cluster that no number is nearest
        moves to the number farthest from its centroid, so that every value
        is used (unless there are fewer distinct numbers than clusters).

    .. admonition:: Example

        >>> centroids, labels = cluster(numpy.array([0., 0.1, 0.9, 1.0, 5.0]), 3)
        >>> centroids, labels
        (array([0.05, 0.95, 5.  ]), array([0, 0, 1, 1, 2], dtype=uint8))
    """
    n_clusters = _checks.n_clusters(n_clusters)
    if init not in INITS:
        raise ValueError('init must be one of {}, got {!r}'.format(', '.join(INITS), init))
    host = numpy.asarray(chainer.backend.CpuDevice().send(values))
    if host.dtype.kind != 'f':
        host = host.astype(numpy.float64)
    flat = host.ravel()
    if flat.size == 0:
        raise ValueError('cannot cluster an empty array')
    # Sorted in their own dtype, which float64 holds exactly: the numbers a float64 copy
    # would hold, in their bytes; what is summed is summed in float64 (_PrefixSums), and
    # the labels come from the centroids, so that no argsort is needed.
    ordered = numpy.sort(flat)
    prefix = _PrefixSums(ordered)
    if init == 'linear':
        centroids = numpy.linspace(float(ordered[0]), float(ordered[-1]), n_clusters)
    elif init == 'density':
        # NumPy's quantile interpolates in the dtype it is given: float64, as it always was.
        centroids = numpy.quantile(ordered.astype(numpy.float64),
                                   (numpy.arange(n_clusters) + 0.5) / n_clusters,
                                   overwrite_input=True)
    else:
        picks = numpy.random.RandomState(_checks.seed(seed)).choice(
            flat.size, size=n_clusters, replace=flat.size < n_clusters)
        centroids = numpy.sort(flat[picks].astype(numpy.float64))
    cuts = None
    for _ in range(max_iter):
        new_cuts = numpy.searchsorted(ordered, _midpoints(centroids, ordered.dtype))
        counts = numpy.diff(numpy.concatenate([[0], new_cuts, [flat.size]]))
        empty = counts == 0
        if empty.any():
            # An empty cluster would waste its value: it moves to the numbers
            # farthest from their centroids, as scikit-learn's k-means does, while
            # there are numbers that are not their centroid.
            farthest = _farthest(ordered, centroids, counts, int(empty.sum()))
            if farthest.size:
                centroids = numpy.sort(numpy.concatenate(
                    [centroids[~empty], farthest, centroids[empty][farthest.size:]]))
                cuts = None
                continue
        if cuts is not None and numpy.array_equal(new_cuts, cuts):
            break
        cuts = new_cuts
        sums = numpy.diff(prefix(numpy.concatenate([[0], cuts, [flat.size]])))
        # Means of consecutive intervals ascend; an empty cluster's kept centroid may not.
        centroids = numpy.sort(numpy.where(counts > 0, sums / numpy.maximum(counts, 1),
                                           centroids))
    # A number's cluster is the count of midpoints at or below it, a slice at a time.
    midpoints = _midpoints(centroids, ordered.dtype)
    labels = numpy.empty(host.shape, index_dtype(n_clusters))
    flat_labels = labels.reshape(-1)
    for part in row_slices(flat.size):
        flat_labels[part] = numpy.searchsorted(midpoints, flat[part], side='right')
    return centroids, labels


def _midpoints(centroids: numpy.ndarray, dtype: numpy.dtype) -> numpy.ndarray:
    """The midpoints of consecutive centroids, each rounded up to ``dtype``.

    A number of ``dtype`` is below a midpoint exactly when it is below the midpoint
    rounded up (the least number of ``dtype`` at or above it), so that numbers of
    ``dtype`` are compared with them as they are, with no float64 copy.
    """
    midpoints = (centroids[1:] + centroids[:-1]) / 2
    rounded = midpoints.astype(dtype)
    below = rounded < midpoints
    rounded[below] = numpy.nextafter(rounded[below], numpy.array(numpy.inf, dtype))
    return rounded


#: _PrefixSums keeps one sum in this many, and takes sums on for this many positions at once.
_PREFIX_STRIDE, _PREFIX_BATCH = 32, 1024


class _PrefixSums:
    """``prefix(positions)``: ``numpy.cumsum([0.0, *ordered])[positions]``, bit for bit.

    Only one sum in ``_PREFIX_STRIDE`` is kept (a sixteenth of ``ordered``'s bytes
    for float32) instead of all of them in float64 (twice its bytes): a sum
    between two kept ones is taken on from the one before it, with the same
    additions in the same order as the running sum over all the numbers.
    """

    def __init__(self, ordered: numpy.ndarray) -> None:
        self.ordered = ordered
        kept, total = [numpy.zeros(1)], 0.0
        stride = _PREFIX_STRIDE
        for strides in row_slices(-(-ordered.size // stride)):
            part = ordered[strides.start * stride:strides.stop * stride]
            running = numpy.empty(part.size + 1)
            running[0], running[1:] = total, part
            numpy.cumsum(running, out=running)
            kept.append(running[stride::stride].copy())  # not a view, which keeps all of it
            total = running[-1]
        self.kept = numpy.concatenate(kept)

    def __call__(self, positions: numpy.ndarray) -> numpy.ndarray:
        return numpy.concatenate([self._at(positions[start:start + _PREFIX_BATCH])
                                  for start in range(0, len(positions), _PREFIX_BATCH)])

    def _at(self, positions: numpy.ndarray) -> numpy.ndarray:
        stride, ordered = _PREFIX_STRIDE, self.ordered
        base, offset = numpy.divmod(positions, stride)
        # One column per position: each addition is one row, for all the positions at once.
        running = numpy.empty((stride + 1, len(positions)))
        running[0] = self.kept[base]
        running[1:] = ordered[numpy.minimum(numpy.arange(stride)[:, None] + base * stride,
                                            ordered.size - 1)]
        for row in range(1, stride + 1):
            running[row] += running[row - 1]
        return running[offset, numpy.arange(len(positions))]


def _farthest(ordered: numpy.ndarray, centroids: numpy.ndarray, counts: numpy.ndarray,
              n_wanted: int) -> numpy.ndarray:
    """The numbers farthest from their centroids, at most ``n_wanted``, none at its centroid.

    ``ordered`` is cut into the clusters of ``counts``. Among equal distances the
    earlier numbers are taken, in the order of ``ordered``. A slice at a time: each
    slice's farthest are candidates, of which the farthest are taken.
    """
    ends = numpy.cumsum(counts)
    distances, positions = [], []
    for part in row_slices(ordered.size):
        position = numpy.arange(part.start, part.stop)
        distance = numpy.abs(ordered[part] - centroids[numpy.searchsorted(ends, position,
                                                                          side='right')])
        taken = numpy.argsort(-distance, kind='stable')[:n_wanted]
        taken = taken[distance[taken] > 0]
        distances.append(distance[taken])
        positions.append(position[taken])
    distance, position = numpy.concatenate(distances), numpy.concatenate(positions)
    taken = numpy.lexsort((position, -distance))[:n_wanted]
    return ordered[numpy.sort(position[taken])]


def unpack_saved_index(packed, shape: tp.Tuple[int, int], n_clusters: int, layer,
                       what: str = 'an index', codebook: str = 'codebook') -> numpy.ndarray:
    """The index of ``shape`` that a file holds packed, checked against its codebook (NumPy).

    Raises:
        ValueError: ``packed`` is not the size of ``shape``'s entries at the bits of
            ``n_clusters`` values, or an entry is not below ``n_clusters``; the message
            names ``what`` was refused, by ``layer``, and its ``codebook``.
    """
    bits = index_bits(n_clusters)
    count = shape[0] * shape[1]
    if packed.size != packed_size(count, bits):
        raise ValueError('cannot load {} of {} bytes into {}: {} x {} entries of {} bits take {}'
                         .format(what, packed.size, layer, shape[0], shape[1], bits,
                                 packed_size(count, bits)))
    index = unpack_index(packed, bits, count, index_dtype(n_clusters))
    if index.size and int(index.max()) >= n_clusters:
        raise ValueError('cannot load {} with entries up to {} into {}, whose {} has {} values'
                         .format(what, int(index.max()), layer, codebook, n_clusters))
    return index.reshape(shape)


class ClusteredLinear(VirtualLinear):
    """Linear layer whose weights share ``n_clusters`` values: ``V[i, j] = W[index[i, j]]``.

    ``W``, of shape ``(n_clusters,)``, is the codebook and the layer's only
    weight parameter; ``index``, of shape ``(out_size, in_size)``, says which
    value each virtual weight takes, and stays fixed. The function is
    :func:`~chainer_sharedlinear.tied_linear` with that index: ``V`` is
    gathered for each call, and the gradient of each value of the codebook
    is the sum of its weights' gradients. :meth:`from_linear` clusters a
    trained dense weight by k-means (``cluster`` in this module).

    What it stores:

    - in memory, the index in the smallest unsigned type (1 byte a weight up to
      256 clusters, 2 bytes up to 2**16) and the codebook; while training, the
      gathered ``V`` and its gradient as well, as a dense layer's weight and
      gradient;
    - in inference (test mode without a graph), the dense ``V`` and a copy of the index
      and the codebook, kept between calls so that a call costs a dense layer's time
      (:attr:`keep_decoded_weight`, ``True`` by default);
    - in a saved file, the codebook and the index at
      ``ceil(log2(n_clusters))`` bits a weight (4 bits for 16 clusters), with the
      integers ``n_clusters``, ``in_size`` and ``out_size``; loading a file
      into a layer that differs in any of them is a ``ValueError``.

    A layer built without a trained weight (not by :meth:`from_linear`) starts
    as the clustering of a weight drawn as ``L.Linear`` draws one (variance
    ``1 / in_size``), from ``seed``: its index is that clustering's, its
    codebook the centroids. Given ``initialW``, it clusters nothing: the
    codebook is ``initialW``'s and each weight takes one of its values drawn
    uniformly from ``seed``: the start of a layer whose index is set next
    (by :meth:`from_linear`, or by loading a file), or a random sharing to
    train from scratch.

    Args:
        in_size (int or None): The size of the inputs; ``None`` defers it to
            the first forward pass. If only one size is given, it is ``out_size``.
        out_size (int): The size of the outputs.
        n_clusters (int): The number of shared values, from 1 to 2**16
            (keyword only).
        seed (int): The seed of the initial weight (and of ``init='random'``).
        nobias (bool): If ``True``, there is no bias.
        initialW (:ref:`initializer <initializer>`): Initializer of the codebook.
        initial_bias (:ref:`initializer <initializer>`): Initializer of the
            bias, zero by default.

    Attributes:
        W (~chainer.Parameter): The codebook, ``(n_clusters,)``.
        index: The cluster of every virtual weight, ``(out_size, in_size)``,
            on the link's device; ``None`` until ``in_size`` is known. Not a
            parameter: ChainerMN's multi-node optimizer does not broadcast it,
            :func:`~chainer_sharedlinear.bcast_model` does.
        b (~chainer.Parameter): The bias, ``(out_size,)``, or ``None``.
        n_clusters (int): The number of shared values.

    .. admonition:: Example

        >>> import chainer.links as L
        >>> import numpy as np
        >>> from chainer_sharedlinear import ClusteredLinear
        >>> dense = L.Linear(1000, 900)
        >>> layer = ClusteredLinear.from_linear(dense, n_clusters=16)
        >>> layer.W.shape, layer.index.shape, layer.index.dtype
        ((16,), (900, 1000), dtype('uint8'))
        >>> layer.stored_bytes()  # 16 float32 values, 900,000 indices of 4 bits, the bias
        453664
    """

    weight_names = ('W',)
    # W's shape does not tell the sizes, and the index is saved packed.
    saved_options = ('n_clusters', 'in_size', 'out_size')
    keeps_decoded_weight_by_default = True

    def __init__(
            self,
            in_size: tp.Optional[int],
            out_size: tp.Optional[int] = None,
            *,
            n_clusters: int,
            seed: int = 0,
            nobias: bool = False,
            initialW=None,
            initial_bias=None,
    ) -> None:
        super().__init__(in_size, out_size, nobias=nobias, initial_bias=initial_bias)
        self.n_clusters = _checks.n_clusters(n_clusters)
        self.seed = _checks.seed(seed)
        self.index = None
        self._initial_centroids = None
        self._add_weights(W=initialW)

    def _weight_shapes(self, in_size):
        return collections.OrderedDict(W=(self.n_clusters,))

    def _in_size_of_weights(self):
        return None if self.index is None else self.index.shape[1]

    def _initialize_params(self, in_size):
        if self.index is not None:
            return super()._initialize_params(in_size)
        in_size = _checks.positive_int('in_size', in_size)
        random = numpy.random.RandomState(self.seed)
        shape = (self.out_size, in_size)
        if 'W' in self._given_initializers:
            # No drawn weight to cluster: the codebook is given, usually by from_linear or
            # apply_plan, which set the index next, and k-means would cost more than both.
            index = random.randint(self.n_clusters, size=shape,
                                   dtype=index_dtype(self.n_clusters))
        else:
            drawn = random.normal(scale=1 / math.sqrt(in_size), size=shape)
            self._initial_centroids, index = cluster(drawn, self.n_clusters)
        try:
            super()._initialize_params(in_size)
        finally:
            self._initial_centroids = None
        self.index = self.xp.asarray(index)

    def _default_initializer(self, name, in_size):
        return initializers.Constant(self._initial_centroids)

    def _options(self):
        return collections.OrderedDict([('n_clusters', self.n_clusters), ('seed', self.seed)])

    def stored_bytes(self) -> int:
        """The bytes of a saved layer: the codebook, the index at its bit width, the bias."""
        if self.index is None:
            raise ValueError('{} has no index yet: it is {}'.format(self, _checks.NOT_INITIALISED))
        n_bytes = self.W.size * self.W.dtype.itemsize
        n_bytes += packed_size(self.index.size, index_bits(self.n_clusters))
        if self.b is not None:
            n_bytes += self.b.size * self.b.dtype.itemsize
        return n_bytes

    def dense_weight(self):
        """The virtual weight ``W[index]``, ``(out_size, in_size)``."""
        return self._dense_weight_rows(slice(None))

    def _dense_weight_rows(self, rows):
        return self.W.array[self.index[rows]]

    def _dense_weight_state(self):
        return super()._dense_weight_state() + (self.index,)

    def _apply(self, x, n_batch_axes):
        return apply_tied_linear(x, self.W, self.index, None, self.b, n_batch_axes,
                                 node=ClusteredLinearFunction(self.index, self.n_clusters))

    def device_resident_accept(self, visitor):
        super().device_resident_accept(visitor)
        if self.index is not None:
            self.index = visitor.visit_array(self.index)

    def copyparams(self, link, copy_persistent=True):
        """Copies the parameters of ``link``, and its index with the persistent values."""
        super().copyparams(link, copy_persistent)
        if copy_persistent and link.index is not None:
            self.index = self.xp.array(chainer.backend.CpuDevice().send(link.index)
                                       if self.xp is numpy else link.index)

    def serialize(self, serializer) -> None:
        """Saves and loads the index packed to its bit width, with the layer's checks."""
        if not isinstance(serializer, chainer.serializer.Deserializer):
            super().serialize(serializer)
            if self.index is not None:
                serializer('index', pack_index(self.index, index_bits(self.n_clusters)))
            return
        packed = read_saved(serializer, 'index')
        index = None
        if packed is not None:
            # Checked and unpacked before anything is loaded, so that a refused file
            # leaves the layer as it was.
            self._check_saved(serializer)
            sizes = [read_saved(serializer, name) for name in ('out_size', 'in_size')]
            if any(size is None for size in sizes):
                raise ValueError('cannot load the index of {}: the file does not say its '
                                 'in_size and out_size'.format(self))
            shape = tuple(int(size) for size in sizes)
            index = unpack_saved_index(packed, shape, self.n_clusters, self)
        super().serialize(serializer)
        if index is not None:
            self.index = self.xp.asarray(index)

    @classmethod
    def from_linear(cls, linear: 'chainer.links.Linear', *, n_clusters: int,
                    init: str = 'linear', seed: int = 0) -> 'ClusteredLinear':
        """Makes the ``ClusteredLinear`` of a dense layer's weights clustered by k-means.

        Each weight is replaced by the centroid of its cluster (``cluster``):
        the layer with ``n_clusters`` shared values whose weights are nearest the
        dense ones in the Frobenius norm that Lloyd's algorithm finds from
        ``init``. The bias is copied; dtypes and device stay as they were.

        Args:
            linear (~chainer.links.Linear): An initialised dense layer.
            n_clusters (int): The number of shared values.
            init (str): Where k-means starts: ``'linear'``, ``'density'`` or ``'random'``.
            seed (int): The seed of ``init='random'``, and the layer's seed.

        Returns:
            ClusteredLinear: A new link, with ``in_size`` and ``out_size`` of ``linear``.

        .. admonition:: Example

            >>> import chainer.links as L
            >>> import numpy as np
            >>> dense = L.Linear(3, 2, initialW=np.array([[1., 1., 5.], [5., 1., 1.]]))
            >>> layer = ClusteredLinear.from_linear(dense, n_clusters=2)
            >>> layer.W.array, layer.index
            (array([1., 5.], dtype=float32), array([[0, 0, 1],
                   [1, 0, 0]], dtype=uint8))
        """
        layer = cls._like_linear(linear, n_clusters=n_clusters, seed=seed)
        centroids, index = cluster(linear.W.array, layer.n_clusters, init=init, seed=seed)
        layer.W.array[...] = layer.xp.asarray(centroids)
        layer.index = layer.xp.asarray(index)
        return layer
