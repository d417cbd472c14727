"""The shared-weight linear link, a drop-in for :class:`chainer.links.Linear`."""

import math
import numbers
import typing as tp

import chainer
import numpy
from chainer import initializers, link, utils, variable

from chainer_sharedlinear.functions.shared_linear import shared_linear


def check_n_shared(n_shared) -> int:
    """Returns ``n_shared`` as an ``int`` or raises ``ValueError`` if it is not one >= 1."""
    if isinstance(n_shared, bool) or not isinstance(n_shared, numbers.Integral):
        raise ValueError(
            'n_shared must be a positive integer, got {!r}'.format(n_shared))
    if n_shared < 1:
        raise ValueError('n_shared must be at least 1, got {}'.format(n_shared))
    return int(n_shared)


def check_in_size(in_size, n_shared: int) -> int:
    """Returns ``in_size`` or raises ``ValueError`` unless ``n_shared`` divides it."""
    if isinstance(in_size, bool) or not isinstance(in_size, numbers.Integral) or in_size < 1:
        raise ValueError('in_size must be a positive integer, got {!r}'.format(in_size))
    if in_size % n_shared:
        raise ValueError(
            'in_size={} is not divisible by n_shared={}: the input must split into '
            'n_shared equal blocks (in_size = n_shared * k)'.format(in_size, n_shared))
    return int(in_size)


class SharedLinear(link.Link):
    """Linear layer whose weight is shared across ``n_shared`` blocks of the input.

    It computes what :class:`chainer.links.Linear` would with the weight
    ``[W W ... W]`` (``n_shared`` copies side by side), at about
    ``1/n_shared`` of the arithmetic: see
    :func:`~chainer_sharedlinear.shared_linear`. ``W`` has shape
    ``(out_size, in_size // n_shared)``.

    Args:
        in_size (int or None): The full size of the input vectors, as given
            to ``L.Linear``; ``n_shared`` must divide it. ``None`` defers it
            (and the parameters) to the first forward pass. If only one size
            is given, it is ``out_size``.
        out_size (int): The size of the output vectors.
        n_shared (int): The number of input blocks that share the weight
            (keyword only). 1 is ``L.Linear``.
        nobias (bool): If ``True``, there is no bias.
        initialW (:ref:`initializer <initializer>`): Initializer of ``W``. The
            default draws from a normal distribution of variance
            ``1 / in_size``, the scale ``L.Linear`` uses: each output still sums
            ``in_size`` products. An array must have the shape of ``W``.
        initial_bias (:ref:`initializer <initializer>`): Initializer of the
            bias, zero by default.

    Attributes:
        W (~chainer.Parameter): The shared weight, ``(out_size, in_size // n_shared)``.
        b (~chainer.Parameter): The bias, ``(out_size,)``, or ``None``.
        n_shared (int): The number of blocks.

    .. admonition:: Example

        >>> import numpy as np
        >>> from chainer_sharedlinear import SharedLinear
        >>> layer = SharedLinear(1000, 900, n_shared=10)
        >>> layer.W.shape
        (900, 100)
        >>> layer(np.zeros((2, 1000), np.float32)).shape
        (2, 900)
        >>> lazy = SharedLinear(900, n_shared=10)  # in_size from the first input
        >>> lazy(np.zeros((2, 1000), np.float32)).shape
        (2, 900)
        >>> lazy
        SharedLinear(in_size=1000, out_size=900, n_shared=10, nobias=False)
    """

    def __init__(
            self,
            in_size: tp.Optional[int],
            out_size: tp.Optional[int] = None,
            *,
            n_shared: int,
            nobias: bool = False,
            initialW=None,
            initial_bias=None,
    ) -> None:
        super().__init__()
        if out_size is None:
            in_size, out_size = None, in_size
        self.n_shared = check_n_shared(n_shared)
        if in_size is not None:
            check_in_size(in_size, self.n_shared)
        self.in_size = in_size
        self.out_size = out_size

        with self.init_scope():
            if initialW is None:
                # LeCunNormal's fan-in is W.shape[1] = in_size / n_shared;
                # shrinking the scale by sqrt(n_shared) makes it in_size.
                W_initializer = initializers.LeCunNormal(scale=1 / math.sqrt(self.n_shared))
            else:
                W_initializer = initializers._get_initializer(initialW)
            self.W = variable.Parameter(W_initializer)
            if nobias:
                self.b = None
            else:
                if initial_bias is None:
                    initial_bias = 0
                bias_initializer = initializers._get_initializer(initial_bias)
                self.b = variable.Parameter(bias_initializer, out_size)
        if in_size is not None:
            self._initialize_params(in_size)

    @property
    def weight_shape(self) -> tp.Optional[tp.Tuple[int, int]]:
        """tuple or None: The shape ``W`` has or will have: ``(out_size, in_size // n_shared)``."""
        if self.in_size is None:
            return None
        return self.out_size, self.in_size // self.n_shared

    def _initialize_params(self, in_size: int) -> None:
        # Everything is checked before anything is set: a refused lazy
        # initialisation leaves the link as it was.
        in_size = check_in_size(in_size, self.n_shared)
        shape = (self.out_size, in_size // self.n_shared)
        fill_value = getattr(self.W.initializer, 'fill_value', None)
        if getattr(fill_value, 'ndim', 0) and fill_value.shape != shape:
            raise ValueError(
                'initialW has shape {}, but the shared weight of a SharedLinear with '
                'in_size={}, out_size={}, n_shared={} has shape {}; for a dense '
                '(out_size, in_size) weight use SharedLinear.from_linear'.format(
                    fill_value.shape, in_size, self.out_size, self.n_shared, shape))
        self.in_size = in_size
        self.W.initialize(shape)

    @classmethod
    def from_params(cls, W, b=None, nobias=False, *, n_shared: int) -> 'SharedLinear':
        """Makes a ``SharedLinear`` from a shared weight ``W`` (``(out_size, k)``) and ``b``."""
        out_size, k = W.shape
        if b is not None and not nobias and out_size != b.size:
            raise ValueError(
                'b has {} elements but W has {} rows (out_size)'.format(b.size, out_size))
        return cls(
            k * check_n_shared(n_shared), out_size, n_shared=n_shared, nobias=nobias,
            initialW=variable.as_array(W),
            initial_bias=None if b is None else variable.as_array(b))

    @classmethod
    def from_linear(cls, linear: 'chainer.links.Linear', n_shared: int) -> 'SharedLinear':
        """Makes the ``SharedLinear`` closest to a dense :class:`chainer.links.Linear`.

        The dense weight ``(out_size, in_size)`` is cut into ``n_shared``
        column blocks and ``W`` is their mean: of all shared weights, the one
        whose tiling is nearest the dense weight in the Frobenius norm. A dense
        weight that already is a tiling ``[W W ... W]`` gives back ``W``
        exactly. The bias is copied. The parameters keep the dtypes and the
        device of ``linear``'s, and ``linear`` is left as it was.

        Args:
            linear (~chainer.links.Linear): An initialised dense layer.
            n_shared (int): The number of blocks; it must divide ``in_size``.

        Returns:
            SharedLinear: A new link, with ``in_size`` and ``out_size`` of ``linear``.

        .. admonition:: Example

            >>> import chainer.links as L
            >>> import numpy as np
            >>> dense = L.Linear(4, 2, initialW=np.array([[1, 2, 3, 4], [0, 0, 2, 2]]))
            >>> SharedLinear.from_linear(dense, n_shared=2).W.array
            array([[2., 3.],
                   [1., 1.]], dtype=float32)
        """
        if not isinstance(linear, chainer.links.Linear):
            raise TypeError(
                'from_linear expects a chainer.links.Linear, got {}'.format(type(linear).__name__))
        n_shared = check_n_shared(n_shared)
        if linear.W.array is None:
            raise ValueError(
                'cannot convert {}: its weight is not initialised yet (in_size is only known '
                'after the first forward pass); run one, or build it with in_size'.format(linear))
        out_size, in_size = linear.W.shape
        check_in_size(in_size, n_shared)
        shared = cls(
            in_size, out_size, n_shared=n_shared, nobias=linear.b is None,
            initialW=initializers.Zero(linear.W.dtype),
            initial_bias=None if linear.b is None else initializers.Zero(linear.b.dtype))
        shared.to_device(linear.device)
        # The mean taken as the first block plus the mean of the differences
        # to it, in float64: the plain mean does not give back W from a tiling
        # (n * w / n rounds), while this does, since the differences are all 0.
        blocks = linear.W.array.reshape(out_size, n_shared, in_size // n_shared)
        blocks = blocks.astype(numpy.promote_types(blocks.dtype, numpy.float64))
        first = blocks[:, 0]
        shared.W.array[...] = first + (blocks - first[:, None]).mean(axis=1)
        if linear.b is not None:
            shared.b.array[...] = linear.b.array
        return shared

    def to_linear(self) -> 'chainer.links.Linear':
        """Makes the dense :class:`chainer.links.Linear` that computes the same function.

        Its weight is ``W`` tiled ``n_shared`` times, ``(out_size, in_size)``,
        and its bias a copy of ``b``, with the dtypes and device of this
        link's parameters: a model can be trained with ``SharedLinear`` and
        served by plain Chainer. The outputs agree up to rounding (the sums
        are taken in another order), not bit for bit.

        Returns:
            ~chainer.links.Linear: A new link; this one is left as it was.

        .. admonition:: Example

            >>> import numpy as np
            >>> layer = SharedLinear(4, 1, n_shared=2, initialW=np.array([[1, 2]]))
            >>> layer.to_linear().W.array
            array([[1., 2., 1., 2.]], dtype=float32)
        """
        if self.W.array is None:
            raise ValueError(
                'cannot convert {}: its weight is not initialised yet (in_size is only known '
                'after the first forward pass); run one, or build it with in_size'.format(self))
        dense = chainer.links.Linear(
            self.in_size, self.out_size, nobias=self.b is None,
            initialW=initializers.Zero(self.W.dtype),
            initial_bias=None if self.b is None else initializers.Zero(self.b.dtype))
        dense.to_device(self.device)
        dense.W.array[...] = self.xp.tile(self.W.array, (1, self.n_shared))
        if self.b is not None:
            dense.b.array[...] = self.b.array
        return dense

    @property
    def printable_specs(self):
        yield 'in_size', self.in_size
        yield 'out_size', self.out_size
        yield 'n_shared', self.n_shared
        yield 'nobias', self.b is None

    def __repr__(self) -> str:
        # chainer.Link shows its specs in str() only; n_shared matters in a repr too.
        return str(self)

    def serialize(self, serializer) -> None:
        if isinstance(serializer, chainer.serializer.Deserializer):
            self._check_saved(serializer)
        else:
            serializer('n_shared', numpy.asarray(self.n_shared))
        super().serialize(serializer)
        if self.in_size is None and self.W.array is not None:
            self.in_size = self.n_shared * self.W.shape[1]

    def _check_saved(self, deserializer) -> None:
        # Chainer copies a loaded array into the parameter with broadcasting,
        # so a weight saved with another n_shared could load without error.
        try:
            saved_n_shared = deserializer('n_shared', None)
        except KeyError:  # saved by something else than SharedLinear
            saved_n_shared = None
        if saved_n_shared is not None and int(saved_n_shared) != self.n_shared:
            raise ValueError(
                'cannot load a SharedLinear saved with n_shared={} into {}'
                .format(int(saved_n_shared), self))
        saved_W = deserializer('W', None)
        if saved_W is None:
            return
        expected = self.weight_shape or (self.out_size, saved_W.shape[-1])
        if saved_W.ndim != 2 or tuple(saved_W.shape) != expected:
            raise ValueError(
                'cannot load a weight W of shape {} into {}, whose W has shape {}'
                .format(tuple(saved_W.shape), self,
                        self.weight_shape or '({}, in_size // n_shared)'.format(self.out_size)))

    def forward(self, x, n_batch_axes: int = 1):
        """Applies the layer.

        Args:
            x (~chainer.Variable or :ref:`ndarray`): A batch of inputs; the
                axes after the first ``n_batch_axes`` hold ``in_size`` features.
            n_batch_axes (int): The number of batch axes.

        Returns:
            ~chainer.Variable: The output, ``(*batch_shape, out_size)``.
        """
        if self.W.array is None:
            self._initialize_params(utils.size_of_shape(x.shape[n_batch_axes:]))
        return shared_linear(x, self.W, self.b, n_batch_axes, n_shared=self.n_shared)
