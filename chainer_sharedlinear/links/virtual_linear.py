"""The base of the family's links: a linear layer whose dense weight is virtual.

``SharedLinear``, ``HashedLinear`` and ``KroneckerLinear`` each compute
``y = x · Vᵀ + b`` with an ``(out_size, in_size)`` weight ``V`` that is never
stored: it is a function of parameters that hold fewer numbers. What they do
alike lives here, once: the sizes as :class:`chainer.links.Linear` takes them,
lazy initialisation, the bias, saving and loading with checks, conversion to
``L.Linear``, and the link hooks that reparametrise a weight.
"""

import collections
import copy
import typing as tp

import chainer
import numpy
from chainer import backend, initializers, link, variable

from chainer_sharedlinear import _checks
from chainer_sharedlinear.functions import shapes
from chainer_sharedlinear.functions.tied_linear import dense_product


def weight_hook_types() -> tp.Tuple[type, ...]:
    """The link hooks that replace a weight parameter by a function of it for each call.

    On a layer of the family they see one stored parameter, not the layer's
    weight. (Imported here, not at the top: importing this package leaves
    Chainer's namespace as it was, ``chainer.link_hooks`` included.)
    """
    from chainer import link_hooks
    return link_hooks.SpectralNormalization, link_hooks.WeightStandardization


#: A fit or a dense weight computed a slice at a time takes this many slices of the
#: weight's rows: its temporaries, float64 copies included, stay a fraction of the weight.
N_SLICES = 16


def row_slices(n_rows: int, n_slices: int = N_SLICES) -> tp.Iterator[slice]:
    """Consecutive slices, about ``n_rows / n_slices`` long, that cover ``range(n_rows)``.

    >>> [(rows.start, rows.stop) for rows in row_slices(10, 4)]
    [(0, 3), (3, 6), (6, 9), (9, 10)]
    """
    step = max(1, -(-n_rows // n_slices))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def carry_hook(old: chainer.Link, new: chainer.Link, name: str, hook: chainer.LinkHook) -> None:
    """Adds ``hook`` to ``new`` under ``name``, with the state it keeps on ``old``.

    A link hook may keep state on its link, registered when it is added: a
    persistent value (``SpectralNormalization``'s vector ``W_u``) or a
    parameter (its ``gamma``). Each one the hook registers on ``new`` is set
    to ``old``'s, so that ``new`` computes what ``old`` did.

    Raises:
        ValueError: ``new`` refuses the hook, or ``old`` has no such state or
            one of another shape; ``new`` is then left without the hook or its state.
    """
    before = set(new._persistent) | set(new._params)
    new.add_hook(hook, name)
    added = sorted((set(new._persistent) | set(new._params)) - before)
    try:
        for key in added:
            _copy_state(old, new, key, hook)
    except ValueError:
        new.delete_hook(name)
        for key in added:
            if hasattr(new, key):
                delattr(new, key)
        raise


def _copy_state(old, new, key, hook) -> None:
    source, target = getattr(old, key, None), getattr(new, key)
    source, target_array = (getattr(value, 'array', value) for value in (source, target))
    if source is None:
        raise ValueError('the state {} of {} is not on the old link, so it cannot be carried '
                         'over'.format(key, type(hook).__name__))
    if not hasattr(target_array, 'shape'):  # a plain value, such as a count
        setattr(new, key, copy.deepcopy(source))
        return
    if tuple(source.shape) != tuple(target_array.shape):
        raise ValueError('the state {} of {} has shape {} on the old link and {} on the new one, '
                         'so it cannot be carried over'.format(
                             key, type(hook).__name__, tuple(source.shape),
                             tuple(target_array.shape)))
    backend.copyto(target_array, source)


class VirtualLinear(link.Link):
    """A linear layer ``y = x · Vᵀ + b`` whose ``(out_size, in_size)`` weight is virtual.

    A pattern (a subclass) sets :attr:`weight_names` and
    :attr:`saved_options`, calls :meth:`_add_weights` at the end of its
    ``__init__``, and defines the methods marked *pattern* below: the shapes
    of its weights, their default initializers, its options, its function and
    its dense weight. Everything else is done here.

    Attributes:
        out_size (int): The size of the outputs.
        b (~chainer.Parameter): The bias, ``(out_size,)``, or ``None``.
    """

    #: The parameters that make up the virtual weight, in order (not ``b``).
    weight_names: tp.Tuple[str, ...] = ()
    #: The integers saved with the parameters and checked on loading: the
    #: options (or sizes) that the shapes of the weights do not tell.
    saved_options: tp.Tuple[str, ...] = ()
    #: :attr:`keep_decoded_weight` of a layer of this pattern unless set on the layer: ``True``
    #: for the patterns that gather their whole dense weight on every call.
    keeps_decoded_weight_by_default: bool = False

    def __init__(self, in_size, out_size, *, nobias: bool, initial_bias) -> None:
        super().__init__()
        if out_size is None:
            in_size, out_size = None, in_size
        self.out_size = _checks.positive_int('out_size', out_size)
        self._in_size = None if in_size is None else _checks.positive_int('in_size', in_size)
        self._given_initializers: tp.FrozenSet[str] = frozenset()
        with self.init_scope():
            if nobias:
                self.b = None
            else:
                self.b = variable.Parameter(
                    initializers._get_initializer(0 if initial_bias is None else initial_bias),
                    self.out_size)

    def _add_weights(self, **given) -> None:
        """Adds the weight parameters, initialised now if ``in_size`` is known.

        Args:
            given: An initializer (or ``None`` for the default) by parameter name.
        """
        with self.init_scope():
            for name in self.weight_names:
                initializer = given.get(name)
                # The default may depend on in_size, so it is chosen at initialisation.
                setattr(self, name, variable.Parameter(
                    initializers.NaN() if initializer is None
                    else initializers._get_initializer(initializer)))
        self._given_initializers = frozenset(
            name for name, initializer in given.items() if initializer is not None)
        if self._in_size is not None:
            in_size, self._in_size = self._in_size, None
            self._initialize_params(in_size)

    # --- the pattern: what each subclass defines -------------------------------------------

    def _weight_shapes(self, in_size: tp.Optional[int]
                       ) -> 'collections.OrderedDict[str, tp.Tuple[tp.Optional[int], ...]]':
        """*Pattern.* The shape of each weight parameter for ``in_size`` inputs.

        With ``in_size=None`` (not known yet), the shapes as far as they are
        known, ``None`` for each size that depends on ``in_size``.

        Raises:
            ValueError: The pattern cannot take ``in_size`` inputs; the message says why.
        """
        raise NotImplementedError

    def _in_size_of_weights(self) -> tp.Optional[int]:
        """*Pattern.* ``in_size`` as the initialised weights imply it, if they do."""
        return None

    def _default_initializer(self, name: str, in_size: int):
        """*Pattern.* The initializer of weight ``name`` when none was given."""
        raise NotImplementedError

    def _options(self) -> 'collections.OrderedDict[str, tp.Any]':
        """*Pattern.* The options of the pattern, as the constructor takes them."""
        return collections.OrderedDict()

    def dense_weight(self):
        """*Pattern.* The virtual weight as an ``(out_size, in_size)`` array."""
        raise NotImplementedError

    def _dense_weight_rows(self, rows: slice):
        """*Pattern, optional.* ``dense_weight()[rows]``, made without the rest."""
        raise NotImplementedError

    def _apply(self, x, n_batch_axes: int):
        """*Pattern.* The layer's function applied to ``x``."""
        raise NotImplementedError

    def _dense_weight_state(self) -> tp.Tuple[tp.Any, ...]:
        """*Pattern, if it keeps more.* The arrays that the dense weight is a function of,
        with :meth:`_options` and ``in_size``: the weight parameters' arrays, and any other
        array the pattern keeps (a fixed index)."""
        return tuple(getattr(self, name).array for name in self.weight_names)

    def _check_weight_hook(self, hook: chainer.LinkHook) -> None:
        """*Pattern.* Raises unless ``hook``, of :func:`weight_hook_types`, is right here."""
        raise ValueError(
            '{} is not supported on {}: it reparametrises one stored parameter, not the '
            "layer's (out_size, in_size) weight, so it would not do what it does on "
            'L.Linear (spectral normalisation would not make the largest singular value of '
            "the layer's weight 1). Apply it to the L.Linear that to_linear() returns "
            'instead.'.format(type(hook).__name__, type(self).__name__))

    # --- what every layer of the family does alike -----------------------------------------

    @property
    def in_size(self) -> tp.Optional[int]:
        """The size of the inputs, or ``None`` until it is known.

        Taken from the weights whenever they imply it, however they were set
        (lazy initialisation, ``copyparams``, ``W.initialize``, loading).
        """
        from_weights = self._in_size_of_weights()
        return self._in_size if from_weights is None else from_weights

    @property
    def _is_initialized(self) -> bool:
        # in_size known and every weight parameter with its array.
        return self.in_size is not None and all(
            getattr(self, name).array is not None for name in self.weight_names)

    def _initialize_params(self, in_size: int) -> None:
        # Everything is checked before anything is set: a refused lazy
        # initialisation leaves the link as it was.
        in_size = _checks.positive_int('in_size', in_size)
        shapes = self._weight_shapes(in_size)
        for name, shape in shapes.items():
            param = getattr(self, name)
            if param.array is not None:
                what, actual = name, tuple(param.shape)
            else:
                what = 'initial' + name
                actual = getattr(getattr(param.initializer, 'fill_value', None), 'shape', shape)
            if tuple(actual) != shape:
                raise ValueError('{} has shape {}, but the {} of {} has shape {}{}'.format(
                    what, tuple(actual), name, self._describe(in_size), shape,
                    self._shape_hint(name)))
        self._in_size = in_size
        for name, shape in shapes.items():
            param = getattr(self, name)
            if param.array is None:
                if name not in self._given_initializers:
                    param.initializer = self._default_initializer(name, in_size)
                param.initialize(shape)

    @property
    def printable_specs(self):
        yield 'in_size', self.in_size
        yield 'out_size', self.out_size
        yield from self._options().items()
        yield 'nobias', self.b is None

    def _shape_hint(self, name: str) -> str:
        return '; for a dense (out_size, in_size) weight use {}.from_linear'.format(
            type(self).__name__)

    def _describe(self, in_size=None) -> str:
        specs = dict(self.printable_specs)
        if in_size is not None:
            specs['in_size'] = in_size
        return '{}({})'.format(type(self).__name__, ', '.join(
            '{}={}'.format(key, value) for key, value in specs.items()))

    def forward(self, x, n_batch_axes: int = 1):
        """Applies the layer.

        Args:
            x (~chainer.Variable or :ref:`ndarray`): A batch of inputs; the
                axes after the first ``n_batch_axes`` hold ``in_size`` features.
            n_batch_axes (int): The number of batch axes.

        Returns:
            ~chainer.Variable: The output, ``(*batch_shape, out_size)``.
        """
        if not self._is_initialized:
            self._initialize_params(_checks.in_size_of(x.shape, n_batch_axes))
        if (chainer.config.train or chainer.config.enable_backprop
                or not self.keep_decoded_weight or self._has_weight_hook()):
            # Dropped outside inference, so that training does not hold it as well.
            self._decoded = None
            return self._apply(x, n_batch_axes)
        matrix, batch_shape = shapes.as_matrix(chainer.as_array(x), n_batch_axes)
        matrix = chainer.as_array(matrix)
        b = None if self.b is None else self.b.array
        if (matrix.ndim != 2 or matrix.dtype.kind != 'f' or matrix.shape[1] != self.in_size
                or (b is not None and b.dtype != matrix.dtype)):
            return self._apply(x, n_batch_axes)  # whose type check says what is wrong
        y = self._apply_decoded(matrix, self.decoded_weight(), b)
        return shapes.with_batch_axes(variable.Variable(y, requires_grad=False), batch_shape)

    # --- the decoded weight kept for inference ---------------------------------------------

    @property
    def keep_decoded_weight(self) -> bool:
        """Whether calls in test mode without a graph keep the decoded weight and reuse it.

        In ``chainer.using_config('train', False)`` and
        ``chainer.no_backprop_mode()`` together, a layer that keeps its decoded weight
        computes with the arrays it decoded at its first such call
        (:meth:`decoded_weight`): its dense weight, ``out_size · in_size`` numbers, so
        that a call takes a dense layer's time (a pattern may keep smaller arrays
        instead: ``ClusteredLowRankLinear`` keeps its two gathered factors where they
        hold fewer numbers than the dense weight). It also keeps a copy of what the
        weight is made from: its stored parameters, and its index if it has one.
        Any other call computes as the pattern does and lets the kept arrays go. The
        outputs are those of the pattern's own computation, up to the order of the
        sums (bit for bit for a layer that gathers its weight).

        Before each use, what the weight is made from is checked against the copy, byte
        for byte: an optimizer's update, a loaded file, ``copyparams``, ``to_device`` or
        a parameter set by hand makes it again, never a stale result. The check reads
        the stored parameters and the index (a fraction of the dense weight).

        ``True`` by default for :class:`~chainer_sharedlinear.ClusteredLinear`,
        :class:`~chainer_sharedlinear.HashedLinear` and
        :class:`~chainer_sharedlinear.ClusteredLowRankLinear`, which would otherwise
        gather their weight on every call (several dense products' time at batch 1);
        ``False`` for the patterns that compute from their factors. Set it on a layer
        to choose: ``False`` keeps to the memory of the layer's stored parameters, at
        the cost of the gather on every call; ``True`` on a ``KroneckerLinear`` whose
        terms cost more multiply-adds than the dense product makes it run at the
        dense layer's time. Setting it to ``False`` lets the kept arrays go.

        .. admonition:: Example

            >>> import chainer
            >>> import numpy as np
            >>> from chainer_sharedlinear import HashedLinear
            >>> layer = HashedLinear(1000, 900, n_weights=900 * 1000 // 8)
            >>> layer.keep_decoded_weight
            True
            >>> x = np.ones((1, 1000), np.float32)
            >>> with chainer.using_config('train', False), chainer.no_backprop_mode():
            ...     y = layer(x)
            >>> layer.decoded_weight_bytes()  # the dense weight and a copy of W
            4050000
            >>> layer.keep_decoded_weight = False  # the memory back, a gather per call
            >>> layer.decoded_weight_bytes()
            0
        """
        return self.__dict__.get('_keep_decoded_weight', self.keeps_decoded_weight_by_default)

    @keep_decoded_weight.setter
    def keep_decoded_weight(self, value: bool) -> None:
        self._keep_decoded_weight = bool(value)
        if not value:
            self._decoded = None

    def decoded_weight(self) -> tp.Tuple[tp.Any, ...]:
        """The arrays that inference keeps, made again if anything they come from changed.

        What :attr:`keep_decoded_weight` uses: ``(dense_weight(),)``, or the pattern's
        own (see :attr:`keep_decoded_weight`). The arrays are the layer's, not to be
        written to.
        """
        state = self._dense_weight_state()
        key = (self.device, self.in_size, tuple(self._options().items()))
        kept = self.__dict__.get('_decoded')
        if (kept is None or kept[0] != key or len(kept[1]) != len(state)
                or not all(map(_same_bytes, state, kept[1]))):
            self._decoded = None  # the old arrays go before the new ones are made
            kept = key, tuple(self.xp.array(array, copy=True) for array in state), \
                self._decode()
            self._decoded = kept
        return kept[2]

    def decoded_weight_bytes(self) -> int:
        """The bytes that the kept decoded weight and its copy of the state take now, or 0."""
        kept = self.__dict__.get('_decoded')
        if kept is None:
            return 0
        return sum(array.nbytes for array in kept[1] + kept[2])

    def _decode(self) -> tp.Tuple[tp.Any, ...]:
        """*Pattern, optional.* The arrays that :meth:`_apply_decoded` computes with."""
        return self.dense_weight(),

    def _apply_decoded(self, x, decoded: tp.Tuple[tp.Any, ...], b):
        """*Pattern, optional.* ``x · Vᵀ + b`` of the arrays ``x`` and ``b`` with
        :meth:`_decode`'s arrays."""
        return dense_product(x, decoded[0], b)

    def _has_weight_hook(self) -> bool:
        # A hook that reparametrises a weight changes it on every call.
        return any(isinstance(hook, weight_hook_types())
                   for hook in self.local_link_hooks.values())

    def device_resident_accept(self, visitor):
        super().device_resident_accept(visitor)
        self._decoded = None

    def __getstate__(self):
        # The kept dense weight is made again where it is needed: neither pickled nor
        # deep-copied.
        state = self.__dict__.copy()
        state['_decoded'] = None
        return state

    def _dense_weight_slices(self) -> tp.Iterator[tp.Tuple[slice, tp.Any]]:
        """``(rows, dense_weight()[rows])`` for consecutive slices of rows (:func:`row_slices`).

        Each slice is made alone where the pattern can (:meth:`_dense_weight_rows`),
        so that the whole dense weight never is; else the dense weight is made once.
        """
        by_rows = type(self)._dense_weight_rows is not VirtualLinear._dense_weight_rows
        whole = None if by_rows else self.dense_weight()
        for rows in row_slices(self.out_size):
            yield rows, self._dense_weight_rows(rows) if by_rows else whole[rows]

    def to_linear(self) -> 'chainer.links.Linear':
        """Makes the dense :class:`chainer.links.Linear` that computes the same function.

        Its weight is :meth:`dense_weight`, ``(out_size, in_size)``, and its
        bias a copy of ``b``, on this link's device: a model can be trained
        with this layer and served by plain Chainer. The hooks that
        reparametrise the weight (``SpectralNormalization``,
        ``WeightStandardization``) are carried over as copies, with their
        state, so that it computes what this layer computes, in training and
        in test mode; other link hooks stay with this layer
        (:func:`~chainer_sharedlinear.unshare_linears` moves them). The
        outputs agree up to rounding (the sums are taken in another order),
        not bit for bit.

        Returns:
            ~chainer.links.Linear: A new link; this one is left as it was.
        """
        if not self._is_initialized:
            raise ValueError('cannot convert {}: it is {}'.format(self, _checks.NOT_INITIALISED))
        weight = self.dense_weight()
        dense = chainer.links.Linear(
            self.in_size, self.out_size, nobias=self.b is None,
            initialW=initializers.Zero(weight.dtype),
            initial_bias=None if self.b is None else initializers.Zero(self.b.dtype))
        dense.to_device(self.device)
        dense.W.array[...] = weight
        if self.b is not None:
            dense.b.array[...] = self.b.array
        for name, hook in self.local_link_hooks.items():
            if isinstance(hook, weight_hook_types()):
                carry_hook(self, dense, name, copy.copy(hook))
        return dense

    @classmethod
    def _like_linear(cls, linear: 'chainer.links.Linear', **options) -> 'VirtualLinear':
        """A layer of this kind with ``linear``'s sizes, dtypes, device and bias, weights zero.

        The start of every ``from_linear``, which then sets the weights. ``options``
        are the keyword arguments of the layer's pattern (``n_shared=…``).
        """
        if not isinstance(linear, chainer.links.Linear):
            raise TypeError('from_linear expects a chainer.links.Linear, got {}'.format(
                type(linear).__name__))
        if linear.W.array is None:
            raise ValueError(
                'cannot convert {}: its weight is not initialised yet (in_size is only known '
                'after the first forward pass); run one, or build it with in_size'.format(linear))
        out_size, in_size = linear.W.shape
        zero = initializers.Zero(linear.W.dtype)
        options.update({'initial' + name: zero for name in cls.weight_names})
        layer = cls(in_size, out_size, nobias=linear.b is None,
                    initial_bias=None if linear.b is None else initializers.Zero(linear.b.dtype),
                    **options)
        layer.to_device(linear.device)
        if linear.b is not None:
            layer.b.array[...] = linear.b.array
        return layer

    def add_hook(self, hook: chainer.LinkHook, name: tp.Optional[str] = None) -> 'VirtualLinear':
        """Registers a link hook; one that reparametrises a weight is checked first.

        ``SpectralNormalization`` and ``WeightStandardization`` replace a
        weight parameter by a function of it. On this layer that parameter is
        not the ``(out_size, in_size)`` weight, so each layer says whether the
        hook is right for it (see its documentation) and raises
        ``ValueError`` where it is not.
        """
        if isinstance(hook, weight_hook_types()):
            self._check_weight_hook(hook)
        return super().add_hook(hook, name)

    def __repr__(self) -> str:
        # chainer.Link shows its specs in str() only; the pattern matters in a repr too.
        return str(self)

    # --- saving and loading ----------------------------------------------------------------

    def serialize(self, serializer) -> None:
        """Saves the layer's integers with its parameters; checks them first on loading.

        A file saved with other integers (``n_shared``, ``n_weights``, ``seed``,
        the sizes) or parameters of other shapes raises ``ValueError`` before
        anything is loaded, as does a saved bias for a layer without one.
        """
        if isinstance(serializer, chainer.serializer.Deserializer):
            saved_in_size = self._check_saved(serializer)
            super().serialize(serializer)
            if self._in_size is None and saved_in_size is not None:
                self._in_size = saved_in_size
            return
        for name, value in self._saved_values().items():
            if value is not None:
                serializer(name, numpy.asarray(value))
        super().serialize(serializer)

    def _saved_values(self) -> tp.Dict[str, tp.Optional[int]]:
        return {name: getattr(self, name) for name in self.saved_options}

    def _check_saved(self, deserializer) -> tp.Optional[int]:
        # Chainer copies a loaded array into a parameter with broadcasting, so a
        # parameter saved with another shape can load without error; and a saved
        # bias is ignored by a layer without one. Returns the saved in_size, if any.
        saved = {}
        for name, value in self._saved_values().items():
            saved[name] = read_saved(deserializer, name)
            if saved[name] is not None and value is not None and int(saved[name]) != value:
                raise ValueError('cannot load a {} saved with {}={} into {}'.format(
                    type(self).__name__, name, int(saved[name]), self))
        saved_in_size = None if saved.get('in_size') is None else int(saved['in_size'])
        in_size = self.in_size if self.in_size is not None else saved_in_size
        expected = self._weight_shapes(in_size)
        for name, shape in list(expected.items()) + [('b', (self.out_size,))]:
            array = read_saved(deserializer, name)
            if name == 'b' and self.b is None:
                if array is not None:
                    raise ValueError('cannot load a bias b into {}, which has none (nobias=True)'
                                     .format(self))
                continue
            if array is None:
                continue
            fits = array.ndim == len(shape) and all(
                want is None or want == got for want, got in zip(shape, array.shape))
            if not fits:
                raise ValueError('cannot load {} of shape {} into {}, whose {} has shape {}'
                                 .format(name, tuple(array.shape), self, name,
                                         _format_shape(shape)))
        return saved_in_size


def _same_bytes(array, kept) -> bool:
    """Whether ``array`` holds the bytes of ``kept`` (same module, dtype and shape): NaNs
    compare equal, and the comparison reads words, not elements."""
    if (type(array) is not type(kept) or array.dtype != kept.dtype
            or array.shape != kept.shape):
        return False
    xp = backend.get_array_module(array)
    array, kept = (xp.ascontiguousarray(a).reshape(-1).view(numpy.uint8) for a in (array, kept))
    word = numpy.uint64 if array.size % 8 == 0 else numpy.uint8
    return bool((array.view(word) == kept.view(word)).all())


def read_saved(deserializer, name):
    """The array saved under ``name``, or ``None`` if the file has none."""
    try:
        return deserializer(name, None)
    except KeyError:  # not saved (by an older version, or by something else)
        return None


def _format_shape(shape) -> str:
    return '({})'.format(', '.join('?' if n is None else str(n) for n in shape)
                         + (',' if len(shape) == 1 else ''))
