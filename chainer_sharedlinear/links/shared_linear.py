"""The shared-weight linear link, a drop-in for :class:`chainer.links.Linear`."""

import collections
import math
import typing as tp

import chainer
import numpy
from chainer import initializers, variable

from chainer_sharedlinear import _checks
from chainer_sharedlinear.functions.shared_linear import shared_linear
from chainer_sharedlinear.links.virtual_linear import (
    VirtualLinear,
    row_slices,
    weight_hook_types,
)


class SharedLinear(VirtualLinear):
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
            ``in_size`` products, and for zero-mean inputs the outputs have
            ``L.Linear``'s variance. Inputs whose features have a mean ``m``
            and a variance ``s²`` (the outputs of a ReLU, say) give outputs of
            mean square ``s² + n_shared·m²``, where ``L.Linear`` gives
            ``s² + m²``: the blocks' means add up through the shared weight
            (see the documentation's "Initial scale"). An array must have the
            shape of ``W``.
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

    weight_names = ('W',)
    saved_options = ('n_shared',)

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
        super().__init__(in_size, out_size, nobias=nobias, initial_bias=initial_bias)
        self.n_shared = _checks.positive_int('n_shared', n_shared)
        self._add_weights(W=initialW)

    def _weight_shapes(self, in_size):
        if in_size is None:
            return collections.OrderedDict(W=(self.out_size, None))
        in_size = _checks.shared_in_size(in_size, self.n_shared)
        return collections.OrderedDict(W=(self.out_size, in_size // self.n_shared))

    def _in_size_of_weights(self):
        return None if self.W.array is None else self.n_shared * self.W.shape[1]

    def _default_initializer(self, name, in_size):
        # LeCunNormal's fan-in is W.shape[1] = in_size / n_shared; shrinking
        # the scale by sqrt(n_shared) makes it in_size, as in L.Linear.
        return initializers.LeCunNormal(scale=1 / math.sqrt(self.n_shared))

    def _options(self):
        return collections.OrderedDict(n_shared=self.n_shared)

    def dense_weight(self):
        """The tiled weight ``[W W ... W]``, ``(out_size, in_size)``."""
        return self._dense_weight_rows(slice(None))

    def _dense_weight_rows(self, rows):
        return self.xp.tile(self.W.array[rows], (1, self.n_shared))

    @classmethod
    def from_params(cls, W, b=None, nobias=False, *, n_shared: int) -> 'SharedLinear':
        """Makes a ``SharedLinear`` from a shared weight ``W`` (``(out_size, k)``) and ``b``.

        The parameters are copies of the arrays given, in their dtypes (a nested
        list takes Chainer's default dtype).

        Raises:
            ValueError: ``W`` is not a float matrix, or ``b`` has not ``out_size``
                elements.
        """
        W = _float_array('W', W)
        if W.ndim != 2:
            raise ValueError('W must be a matrix, (out_size, in_size / n_shared), got shape {}'
                             .format(W.shape))
        out_size, k = W.shape
        if b is not None:
            b = _float_array('b', b)
            if not nobias and b.size != out_size:
                raise ValueError(
                    'b has {} elements but W has {} rows (out_size)'.format(b.size, out_size))
        return cls(
            k * _checks.positive_int('n_shared', n_shared), out_size, n_shared=n_shared,
            nobias=nobias, initialW=initializers.Constant(W, dtype=W.dtype),
            initial_bias=None if b is None else initializers.Constant(b, dtype=b.dtype))

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
        shared = cls._like_linear(linear, n_shared=n_shared)
        out_size, in_size = linear.W.shape
        # The mean taken as the first block plus the mean of the differences
        # to it, in float64: the plain mean does not give back W from a tiling
        # (n * w / n rounds), while this does, since the differences are all 0.
        # A slice of rows at a time: the float64 copy is of the slice only.
        weight = linear.W.array.reshape(out_size, n_shared, in_size // n_shared)
        wide = numpy.promote_types(weight.dtype, numpy.float64)
        for rows in row_slices(out_size):
            blocks = weight[rows].astype(wide)
            first = blocks[:, 0].copy()
            blocks -= first[:, None]
            shared.W.array[rows] = first + blocks.mean(axis=1)
            del blocks
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
        return super().to_linear()

    def _check_weight_hook(self, hook):
        spectral_normalization, weight_standardization = weight_hook_types()
        if isinstance(hook, weight_standardization):
            # Each row of the tiled weight has the mean and the spread of the row
            # of W it repeats: standardising W standardises the layer's weight.
            return
        if hook.weight_name != 'W' or hook.use_gamma:
            raise ValueError(
                'SpectralNormalization on SharedLinear normalises the tiled weight, and only '
                "with weight_name='W' and use_gamma=False: its gamma would start at the "
                'largest singular value of W, 1/sqrt(n_shared) of the layer\'s (got '
                'weight_name={!r}, use_gamma={})'.format(hook.weight_name, hook.use_gamma))

    def _spectrally_normalized(self) -> bool:
        # SpectralNormalization swaps W for the Variable W / sigma(W) during a call.
        if isinstance(self.W, chainer.Parameter):
            return False
        spectral_normalization = weight_hook_types()[0]
        return any(isinstance(hook, spectral_normalization) and hook.weight_name == 'W'
                   for hook in self.local_link_hooks.values())

    def _apply(self, x, n_batch_axes):
        W = self.W
        if self.n_shared > 1 and self._spectrally_normalized():
            # The tiled weight's singular values are sqrt(n_shared) times W's
            # (tile(W) tile(W)^T = n_shared W W^T), so W / sigma(W) tiled would
            # have a spectral norm of sqrt(n_shared) instead of 1.
            W = W * (1 / math.sqrt(self.n_shared))
        return shared_linear(x, W, self.b, n_batch_axes, n_shared=self.n_shared)


def _float_array(name: str, value):
    # A nested list is an array of Chainer's default dtype; anything else must be a float array.
    if isinstance(value, (list, tuple)):
        value = numpy.asarray(value, dtype=chainer.get_dtype())
    value = variable.as_array(value) if isinstance(value, chainer.Variable) else value
    dtype = getattr(value, 'dtype', None)
    if dtype is None or dtype.kind != 'f':
        raise ValueError('{} must be an array of floats, got {}'.format(
            name, repr(value) if dtype is None else 'dtype {}'.format(dtype)))
    return value
