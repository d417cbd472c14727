"""Compressing the ``L.Linear`` layers of a trained model to a budget of bytes, and rebuilding it.

:func:`compress_linears` replaces each selected ``L.Linear`` by a layer of the
family that stores at most a fraction ``budget`` of its bytes, with the knobs
of its pattern chosen by :func:`knobs_at_budget` and the layer the closest to
the trained weight (:meth:`from_linear`); ``pattern='auto'`` takes, per layer,
the pattern whose layer is closest. Bytes are counted by :func:`stored_bytes`.
The report's plan is plain data: :func:`apply_plan` builds the same layers on
a fresh model, which ``chainer.serializers.load_npz`` then fills, and
:func:`save_compressed` and :func:`load_compressed` keep the plan in the file.

Every pattern is one entry of ``_PATTERNS``: its link, the settings that fit a
budget, the bytes of a setting, and the link's options for a setting.
"""

import collections
import dataclasses
import fractions
import json
import math
import types
import typing as tp
import warnings

import chainer
import chainer.links as L
import numpy
from chainer import backend, initializers

from chainer_sharedlinear import _checks
from chainer_sharedlinear.convert import ConversionReport, Include, _replace_links, family
from chainer_sharedlinear.functions.clustered_linear import index_bits
from chainer_sharedlinear.functions.kronecker_linear import factor_pairs
from chainer_sharedlinear.functions.monarch_linear import block_sizes
from chainer_sharedlinear.links.kronecker_linear import Rearrangement
from chainer_sharedlinear.links.virtual_linear import VirtualLinear, weight_hook_types

Knobs = tp.Dict[str, tp.Any]

#: The name and version of the plans this module writes and reads.
PLAN_FORMAT = 'chainer_sharedlinear.compress_linears/1'

#: The key under which :func:`save_compressed` keeps the plan in a file: no
#: child link has a ``.`` in its name, so no parameter is saved under it.
PLAN_KEY = 'chainer_sharedlinear.plan'


# --- the patterns ------------------------------------------------------------------------

def _shared_settings(in_size, out_size, itemsize, weight_bytes):
    settings = [{'n_shared': n_shared} for n_shared, k in factor_pairs(in_size)
                if out_size * k * itemsize <= weight_bytes]
    if not settings:
        raise ValueError(
            'n_shared must divide in_size={} ({}), and the largest, {}, still stores {} '
            'bytes of weights'.format(in_size, ', '.join(str(a) for a, _ in factor_pairs(in_size)),
                                      in_size, out_size * itemsize))
    return settings[:1]  # the smallest n_shared that fits stores the most


def _hashed_settings(in_size, out_size, itemsize, weight_bytes):
    n_weights = min(weight_bytes // itemsize, in_size * out_size)
    if n_weights < 1:
        raise ValueError('one stored weight takes {} bytes'.format(itemsize))
    return [{'n_weights': n_weights}]


def _kronecker_pairs(in_size, out_size):
    # A is the smaller factor on both sides (n1 <= n2, m1 <= m2), as in the
    # layer's default factors: this keeps about a quarter of the pairs, and
    # leaves out those in which A and B have the two orientations (the low-rank
    # pair (1, in_size), (out_size, 1) is the lowrank pattern).
    # The squarest first: among settings of equal bytes, the first is taken.
    for n1, n2 in reversed(factor_pairs(in_size)):
        for m1, m2 in reversed(factor_pairs(out_size)):
            if n1 <= n2 and m1 <= m2:
                yield (n1, n2), (m1, m2)


def _kronecker_settings(in_size, out_size, itemsize, weight_bytes):
    settings = []
    for (n1, n2), (m1, m2) in _kronecker_pairs(in_size, out_size):
        per_term = (m1 * n1 + m2 * n2) * itemsize
        n_terms = min(weight_bytes // per_term, m1 * n1, m2 * n2)
        if n_terms >= 1:
            settings.append({'in_factors': (n1, n2), 'out_factors': (m1, m2),
                             'n_terms': n_terms})
    if not settings:
        raise ValueError('one term of the smallest factors of in_size={} and out_size={} '
                         'takes {} bytes'.format(in_size, out_size, min(
                             (m1 * n1 + m2 * n2) * itemsize
                             for (n1, n2), (m1, m2) in _kronecker_pairs(in_size, out_size))))
    return settings


def _kronecker_options(knobs):
    return {'in_factors': tuple(knobs['in_factors']), 'out_factors': tuple(knobs['out_factors']),
            'n_terms': knobs['n_terms']}


def _kronecker_weight_bytes(in_size, out_size, itemsize, knobs):
    (n1, n2), (m1, m2) = knobs['in_factors'], knobs['out_factors']
    return knobs['n_terms'] * (m1 * n1 + m2 * n2) * itemsize


def _phm_options(knobs):
    n = knobs['n']
    return {'in_factors': (n, knobs['in_size'] // n), 'out_factors': (n, knobs['out_size'] // n),
            'n_terms': n}


def _phm_settings(in_size, out_size, itemsize, weight_bytes):
    common = [n for n, _ in factor_pairs(in_size) if out_size % n == 0]
    settings = [{'n': n} for n in common
                if n <= min(n * n, in_size * out_size // (n * n))  # at most full rank
                and _phm_weight_bytes(in_size, out_size, itemsize, {'n': n}) <= weight_bytes]
    if not settings:
        raise ValueError('n must divide in_size={} and out_size={} ({}), and n terms of n x n '
                         'factors take at least {} bytes'.format(
                             in_size, out_size, ', '.join(map(str, common)),
                             min(_phm_weight_bytes(in_size, out_size, itemsize, {'n': n})
                                 for n in common)))
    return settings


def _phm_weight_bytes(in_size, out_size, itemsize, knobs):
    n = knobs['n']
    return (n ** 3 + in_size * out_size // n) * itemsize


def _low_rank_settings(in_size, out_size, itemsize, weight_bytes):
    rank = min(weight_bytes // ((in_size + out_size) * itemsize), in_size, out_size)
    if rank < 1:
        raise ValueError('rank 1 takes {} bytes'.format((in_size + out_size) * itemsize))
    return [{'rank': rank}]


def _low_rank_as_kronecker(knobs):
    # (out_size, 1) ⊗ (1, in_size) is an outer product: its rearrangement is the weight.
    return {'in_factors': (1, knobs['in_size']), 'out_factors': (knobs['out_size'], 1),
            'n_terms': knobs['rank']}


def _clustered_weight_bytes(in_size, out_size, itemsize, knobs):
    n_clusters = knobs['n_clusters']
    return n_clusters * itemsize + math.ceil(in_size * out_size * index_bits(n_clusters) / 8)


def _clustered_settings(in_size, out_size, itemsize, weight_bytes):
    most = 0
    for bits in range(1, index_bits(_checks.MAX_CLUSTERS) + 1):
        index_bytes = math.ceil(in_size * out_size * bits / 8)
        most = max(most, min(2 ** bits, (weight_bytes - index_bytes) // itemsize,
                             in_size * out_size))
    if most < 1:
        raise ValueError('the index alone takes {} bytes at 1 bit a weight'.format(
            math.ceil(in_size * out_size / 8)))
    return [{'n_clusters': most}]


def _monarch_weight_bytes(in_size, out_size, itemsize, knobs):
    p, q, s = block_sizes(in_size, out_size, knobs['n_blocks'])
    return knobs['n_blocks'] * q * (p + s) * itemsize


def _monarch_settings(in_size, out_size, itemsize, weight_bytes):
    # The bytes do not fall steadily with the blocks (the padding of sizes that
    # n_blocks does not divide comes and goes), so every block count is tried.
    fitting = [{'n_blocks': n_blocks} for n_blocks in range(1, min(in_size, out_size) + 1)
               if _monarch_weight_bytes(in_size, out_size, itemsize,
                                        {'n_blocks': n_blocks}) <= weight_bytes]
    if fitting:
        # The most bytes; among equals, the fewest blocks (max takes the first).
        return [max(fitting, key=lambda knobs: _monarch_weight_bytes(
            in_size, out_size, itemsize, knobs))]
    most = min(in_size, out_size)
    raise ValueError('n_blocks is at most min(in_size, out_size) = {}, which still stores {} '
                     'bytes of weights'.format(most, _monarch_weight_bytes(
                         in_size, out_size, itemsize, {'n_blocks': most})))


def _shared_weight_bytes(in_size, out_size, itemsize, knobs):
    return out_size * (in_size // knobs['n_shared']) * itemsize


def _from_knobs(knobs):
    return {key: value for key, value in knobs.items() if key not in ('in_size', 'out_size')}


@dataclasses.dataclass(frozen=True)
class _Pattern:
    """One pattern of :func:`compress_linears`: its link, its knobs, and their bytes."""

    #: The class's name in :mod:`chainer_sharedlinear.links`.
    link: str
    #: ``(in_size, out_size, itemsize, weight_bytes)`` to the settings whose weights fit
    #: in ``weight_bytes``, each the largest of its kind; ``ValueError`` saying why if none.
    settings: tp.Callable[[int, int, int, int], tp.List[Knobs]]
    #: ``(in_size, out_size, itemsize, knobs)`` to the bytes of the weights (not the bias).
    weight_bytes: tp.Callable[[int, int, int, Knobs], int]
    #: The knobs (with ``in_size`` and ``out_size`` added) as options of ``from_linear``.
    options: tp.Callable[[Knobs], Knobs] = _from_knobs
    #: ``(in_size, out_size, knobs)`` to the Kronecker setting of the same layer, for a
    #: pattern whose nearest layer is a truncated decomposition: its error then comes
    #: from singular values (:func:`_kronecker_errors`) without building it.
    as_kronecker: tp.Optional[tp.Callable[[Knobs], Knobs]] = None


def _one_knob(name, per_element):
    # The bytes of a pattern that stores ``knob`` numbers of ``per_element`` elements each.
    return lambda in_size, out_size, itemsize, knobs: (
        knobs[name] * per_element(in_size, out_size) * itemsize)


_PATTERNS: 'collections.OrderedDict[str, _Pattern]' = collections.OrderedDict([
    ('shared', _Pattern('SharedLinear', _shared_settings, _shared_weight_bytes)),
    ('hashed', _Pattern('HashedLinear', _hashed_settings, _one_knob('n_weights', lambda i, o: 1))),
    ('kronecker', _Pattern('KroneckerLinear', _kronecker_settings, _kronecker_weight_bytes,
                           _kronecker_options, as_kronecker=_kronecker_options)),
    ('phm', _Pattern('KroneckerLinear', _phm_settings, _phm_weight_bytes, _phm_options,
                     as_kronecker=_phm_options)),
    ('lowrank', _Pattern('LowRankLinear', _low_rank_settings,
                         _one_knob('rank', lambda i, o: i + o),
                         as_kronecker=_low_rank_as_kronecker)),
    ('clustered', _Pattern('ClusteredLinear', _clustered_settings, _clustered_weight_bytes)),
    ('monarch', _Pattern('MonarchLinear', _monarch_settings, _monarch_weight_bytes)),
])


def pattern_names() -> tp.Tuple[str, ...]:
    """The names of the patterns that :func:`compress_linears` takes, in its order.

    A pattern whose link this version of the package lacks is left out.
    """
    return tuple(name for name, pattern in _PATTERNS.items() if _family_class(pattern.link))


def _pattern(name) -> _Pattern:
    if name not in pattern_names():
        raise ValueError('unknown pattern {!r}: expected one of {}'.format(
            name, ', '.join(pattern_names())))
    return _PATTERNS[name]


# --- bytes and knobs ---------------------------------------------------------------------

def stored_bytes(link: chainer.Link) -> int:
    """The bytes a layer or a model stores: its parameters, each once, an index at its bits.

    What a saved file holds, and what the parameters take on a device: each
    parameter's elements times their size (a float32 is 4 bytes), each
    parameter once however many links share it, the bias included; a
    ``ClusteredLinear``'s index at ``⌈log2 n_clusters⌉`` bits a weight. For a
    model (a :class:`~chainer.Chain`, :class:`~chainer.ChainList` or
    :class:`~chainer.Sequential`) it is the sum over its links, each layer of
    the family counted as a layer alone is. The few integers a layer saves
    with its parameters (``n_shared``, ``seed``, the sizes) are not counted,
    nor ``HashedLinear``'s map, which is computed and never saved, nor the
    persistent values of other links (a ``BatchNormalization``'s averages).

    Args:
        link (~chainer.Link): An initialised layer (``L.Linear``, a layer of the
            family, any link) or a model of them.

    Raises:
        ValueError: A parameter is not initialised yet (a lazy layer before
            its first forward pass); the message names it.

    .. admonition:: Example

        >>> import chainer
        >>> import chainer.links as L
        >>> from chainer_sharedlinear import SharedLinear
        >>> stored_bytes(L.Linear(1000, 10))  # 10,000 weights and 10 biases of 4 bytes
        40040
        >>> stored_bytes(SharedLinear(1000, 10, n_shared=8))
        5040
        >>> model = chainer.Sequential(L.Linear(1000, 10), SharedLinear(1000, 10, n_shared=8))
        >>> stored_bytes(model)
        45080
    """
    if not isinstance(link, chainer.Link):
        raise TypeError('stored_bytes expects a chainer.Link (a layer or a model), got {}'.format(
            type(link).__name__))
    total = 0
    for path, part in _parts(link):
        counted = _part_bytes(part)
        if counted is None:
            raise ValueError('cannot count the bytes of {}: {} is {}'.format(
                link if path == '/' else '{} of {}'.format(path, type(link).__name__),
                'it' if path == '/' else path, _checks.NOT_INITIALISED))
        total += counted
    return total


def _counts_itself(link) -> bool:
    # A layer of the family, or a layer that stores more than its parameters (an index).
    return isinstance(link, VirtualLinear) or callable(getattr(link, 'stored_bytes', None))


def _parts(link: chainer.Link) -> tp.Iterator[tp.Tuple[str, tp.Any]]:
    """Each part of ``link`` whose bytes count, once, with its path: the layers that
    count themselves (:func:`_counts_itself`), then every other parameter."""
    layers = collections.OrderedDict()
    for path, sub in link.namedlinks():
        if _counts_itself(sub) and id(sub) not in layers:
            layers[id(sub)] = path, sub
    counted = {id(param) for _, layer in layers.values() for param in layer.params()}
    yield from layers.values()
    for path, param in link.namedparams():
        if id(param) not in counted:
            counted.add(id(param))
            yield path, param


def _part_bytes(part) -> tp.Optional[int]:
    """The bytes of a part of :func:`_parts`; ``None`` if it is not initialised yet."""
    if isinstance(part, chainer.Variable):
        return None if part.array is None else part.size * part.dtype.itemsize
    if callable(getattr(part, 'stored_bytes', None)):  # a layer that stores an index
        try:
            return int(part.stored_bytes())
        except ValueError:  # no index yet
            return None
    params = {id(param): param for param in part.params()}.values()
    if any(param.array is None for param in params):
        return None
    return sum(param.size * param.dtype.itemsize for param in params)


def _dense_bytes(layer) -> tp.Optional[int]:
    """The bytes of the ``L.Linear`` a layer of the family stands for; ``None`` if lazy."""
    if not layer._is_initialized:
        return None
    weight = getattr(layer, layer.weight_names[0])
    return (layer.in_size * layer.out_size * weight.dtype.itemsize
            + (0 if layer.b is None else layer.b.size * layer.b.dtype.itemsize))


def knobs_at_budget(pattern: str, in_size: int, out_size: int, budget, *,
                    dtype='float32', nobias: bool = False, weight=None) -> Knobs:
    """The knobs of ``pattern`` for a layer that stores at most ``budget`` of the dense bytes.

    The dense layer ``L.Linear(in_size, out_size)`` stores
    ``(in_size·out_size + out_size)·itemsize`` bytes (no ``out_size`` term
    with ``nobias``); the layer of ``pattern`` keeps the same bias, and its
    weights take what is left of ``⌊budget · dense bytes⌋``, as
    :func:`stored_bytes` counts them. Of the settings that fit, this is the
    one that stores the most, as close to the budget as the sizes allow
    without going over:

    - ``shared``: ``{'n_shared': n}``, the smallest ``n`` dividing ``in_size``
      that fits. A prime ``in_size`` leaves ``n = in_size`` (a weight of one
      column), far below the budget.
    - ``hashed``: ``{'n_weights': n}``, as many as fit.
    - ``kronecker``: ``{'in_factors': (n1, n2), 'out_factors': (m1, m2),
      'n_terms': r}``, with ``n1 <= n2`` and ``m1 <= m2``, and for each pair
      of factors the most terms that fit (at most ``min(m1·n1, m2·n2)``, the
      rank at which the layer is exact).
    - ``phm``: ``{'n': n}``, ``n`` dividing both sizes: ``n`` terms of
      ``n × n`` factors ``A``.
    - ``lowrank``: ``{'rank': r}``, as high as fits (at most ``min(in_size, out_size)``).
    - ``clustered``: ``{'n_clusters': k}``, as many as fit with the index at
      ``⌈log2 k⌉`` bits a weight.
    - ``monarch``: ``{'n_blocks': b}``, the block count whose layer stores
      the most of those that fit (the fewest blocks among equals); the bytes
      do not fall steadily with ``b``, since the blocks are padded where ``b``
      does not divide the sizes.

    ``weight`` (the trained ``(out_size, in_size)`` weight) chooses among
    settings of the same kind: the Kronecker factors and PHM's ``n`` whose
    layer is closest to it in the Frobenius norm, from the singular values
    of its rearrangement for each pair of factors (which give the error of
    every number of terms at once). The other patterns have one setting.

    Args:
        pattern (str): A name of :func:`pattern_names`.
        in_size (int): The size of the inputs.
        out_size (int): The size of the outputs.
        budget (float): The fraction of the dense bytes, in ``(0, 1]``: ``1/8``,
            ``0.25``, or a :class:`fractions.Fraction`.
        dtype: The dtype of the weights (its size counts).
        nobias (bool): Whether the layer has no bias.
        weight (:ref:`ndarray`): The trained weight, or ``None``.

    Returns:
        dict: The knobs, as in the list above.

    Raises:
        ValueError: No setting of ``pattern`` fits: the message says why. At
            1/8, ``shared`` does not fit ``in_size=7`` (``n_shared=7`` stores
            1/7 of the weights), nor ``kronecker`` a layer of two prime sizes.

    .. admonition:: Example

        >>> knobs_at_budget('shared', 784, 1000, 1/8, nobias=True)
        {'n_shared': 8}
        >>> knobs_at_budget('hashed', 784, 1000, 1/8)  # the bias takes 1000 of 98,125 numbers
        {'n_weights': 97125}
        >>> knobs_at_budget('phm', 1000, 1000, 1/8)
        {'n': 10}
        >>> knobs_at_budget('shared', 7, 10, 1/8)
        Traceback (most recent call last):
        ...
        ValueError: shared cannot store a 7 -> 10 layer in 1/8 of its 320 bytes (40 bytes, \
0 for the weights after the bias): n_shared must divide in_size=7 (1, 7), and the largest, 7, \
still stores 40 bytes of weights
    """
    settings, _ = _settings(pattern, in_size, out_size, budget, dtype, nobias, weight)
    return _from_knobs(settings[0])


def _settings(pattern, in_size, out_size, budget, dtype, nobias, weight
              ) -> tp.Tuple[tp.List[Knobs], tp.Optional[tp.List[float]]]:
    """The settings of ``pattern`` that fit, the best first (see :func:`knobs_at_budget`).

    With ``weight``, also the error of each setting's nearest layer where the
    pattern's singular values tell it (else ``None``).
    """
    entry = _pattern(pattern)
    in_size = _checks.positive_int('in_size', in_size)
    out_size = _checks.positive_int('out_size', out_size)
    fraction = _checks.budget(budget)
    itemsize = numpy.dtype(dtype).itemsize
    bias_bytes = 0 if nobias else out_size * itemsize
    dense = in_size * out_size * itemsize + bias_bytes
    allowed = math.floor(fraction * dense)
    try:
        settings = entry.settings(in_size, out_size, itemsize, allowed - bias_bytes)
    except ValueError as e:
        raise ValueError('{} cannot store a {} -> {} layer in {} of its {} bytes ({} bytes, {} '
                         'for the weights after the bias): {}'.format(
                             pattern, in_size, out_size, fraction, dense, allowed,
                             max(0, allowed - bias_bytes), e)) from None
    settings = [dict(knobs, in_size=in_size, out_size=out_size) for knobs in settings]
    # Most bytes first; among equals, the first the pattern gave (the squarest factors).
    settings.sort(key=lambda knobs: -entry.weight_bytes(in_size, out_size, itemsize, knobs))
    if weight is None or entry.as_kronecker is None:
        return settings, None
    weight = backend.CpuDevice().send(getattr(weight, 'array', weight))
    if weight.shape != (out_size, in_size):
        raise ValueError('weight has shape {}, but the layer is {} -> {}: expected {}'.format(
            weight.shape, in_size, out_size, (out_size, in_size)))
    errors = _kronecker_errors(weight, [entry.as_kronecker(knobs) for knobs in settings])
    order = sorted(range(len(settings)), key=lambda i: errors[i])
    return [settings[i] for i in order], [errors[i] for i in order]


def _kronecker_errors(weight, options: tp.Sequence[Knobs]) -> tp.List[float]:
    """The relative Frobenius error of the nearest layer of each Kronecker setting.

    Van Loan and Pitsianis' rearrangement (see ``KroneckerLinear.from_linear``):
    the error of ``r`` terms is the norm of the singular values after the
    ``r``-th. Their squares are the eigenvalues of the rearrangement's Gram
    matrix, the smaller of its two: one symmetric eigenvalue problem per pair
    of factors, which is several times faster than its singular values and as
    accurate for the sum of their squares.
    """
    eigenvalues: tp.Dict[tp.Any, numpy.ndarray] = {}
    total = 0.0
    errors = []
    for knobs in options:
        factors = tuple(knobs['in_factors']), tuple(knobs['out_factors'])
        if factors not in eigenvalues:
            gram = Rearrangement(weight, *factors).gram()
            total = float(numpy.trace(gram))  # the squared norm of the weight, for every pair
            eigenvalues[factors] = numpy.linalg.eigvalsh(gram)  # ascending
            del gram
        values = eigenvalues[factors]
        tail = max(0.0, float(values[:len(values) - knobs['n_terms']].sum()))
        errors.append(math.sqrt(tail / total) if total else 0.0)
    return errors


# --- the report --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CompressedLayer:
    """A layer of the family in the model after :func:`compress_linears`: a row of its report.

    One that this call compressed, or one the model had already
    (``pattern`` ``None``: from an earlier call or written by hand, the
    pattern it was made with is not known).

    Attributes:
        path (str): The layer's path in the model (its first, for a tied layer).
        pattern (str): The pattern's name, the name of the function given, or
            ``None`` for a layer already of the family.
        knobs (dict): The pattern's knobs (for a function, and for a layer
            already of the family, the layer's options).
        stored_bytes (int): What the layer stores (:func:`stored_bytes`).
        dense_bytes (int): What the ``L.Linear`` it stands for stores.
        error (float): The relative Frobenius error of the new layer's
            ``dense_weight()`` against the trained weight, ``‖V - W‖ / ‖W‖``,
            where ``W`` is the weight the ``L.Linear`` computed with in test
            mode (through ``weight_hooks``); NaN for a layer already of the
            family, whose trained weight is not known.
        errors (dict): With ``pattern='auto'``, the error of each pattern tried.
        refused (dict): With ``pattern='auto'``, each pattern that did not fit, and why.
        weight_hooks (tuple of str): The link hooks that made the weight fitted
            (``SpectralNormalization``, ``WeightStandardization``), applied as in
            test mode; :attr:`CompressionReport.conversion` says whether the
            new layer took them again or dropped them.
        link (str): The layer's class (``'SharedLinear'``).
    """

    path: str
    pattern: tp.Optional[str]
    knobs: Knobs
    stored_bytes: int
    dense_bytes: int
    error: float
    errors: tp.Dict[str, float] = dataclasses.field(default_factory=dict)
    refused: tp.Dict[str, str] = dataclasses.field(default_factory=dict)
    weight_hooks: tp.Tuple[str, ...] = ()
    link: str = ''

    @property
    def ratio(self) -> float:
        """float: ``stored_bytes / dense_bytes``."""
        return self.stored_bytes / self.dense_bytes

    def __str__(self) -> str:
        knobs = ', '.join('{}={}'.format(key, value) for key, value in self.knobs.items())
        bytes_ = '{:,} of {:,} bytes ({:.4f})'.format(
            self.stored_bytes, self.dense_bytes, self.ratio)
        if self.pattern is None:
            return '{}: {} {}, already of the family (its pattern unknown), {}'.format(
                self.path, self.link, knobs, bytes_)
        hooks = ''.join(', fitted to the weight {} makes'.format(name)
                        for name in self.weight_hooks)
        return '{}: {} {}, {}, error {:.4f}{}'.format(
            self.path, self.pattern, knobs, bytes_, self.error, hooks)


@dataclasses.dataclass(frozen=True)
class CompressionReport:
    """What :func:`compress_linears` did, and the bytes of the whole model after it.

    Attributes:
        budget (fractions.Fraction): The fraction of the dense bytes asked for.
        layers (tuple of CompressedLayer): The layers this call compressed, in
            the model's order.
        skipped (dict): The ``L.Linear`` links left as they were, by path, each
            with the reason (those ``include`` left out among them).
        plan (dict): What :func:`apply_plan` needs to build the model's layers
            of the family on a fresh model, those of ``already`` included:
            plain data, which :func:`json.dumps` takes.
        conversion (ConversionReport): The conversion's own report: tied
            links, the hooks carried over and those dropped, parameter counts.
        already (tuple of CompressedLayer): The layers of the family the model
            had before this call (``pattern`` ``None``), in its order.
        stored_bytes (int): The bytes the whole model stores now
            (:func:`stored_bytes` of it): the compressed layers, the
            ``L.Linear`` links left dense, the layers already of the family,
            and every other parameter.
        dense_bytes (int): The same with each layer of the family counted as
            the ``L.Linear`` it stands for: the model before any compression.
        uncounted (tuple of str): The paths of the parts not initialised yet
            (a lazy layer before its first forward pass), which neither total counts.
    """

    budget: fractions.Fraction
    layers: tp.Tuple[CompressedLayer, ...]
    skipped: tp.Dict[str, str]
    plan: tp.Dict[str, tp.Any]
    conversion: ConversionReport
    already: tp.Tuple[CompressedLayer, ...] = ()
    stored_bytes: int = 0
    dense_bytes: int = 0
    uncounted: tp.Tuple[str, ...] = ()

    @property
    def ratio(self) -> float:
        """float: ``stored_bytes / dense_bytes``: the whole model's, skipped layers included."""
        return self.stored_bytes / self.dense_bytes if self.dense_bytes else 1.0

    def __str__(self) -> str:
        if self.layers:
            lines = ['{} compressed, {} skipped, at a budget of {} of the dense bytes'.format(
                len(self.layers), len(self.skipped), self.budget)]
        else:
            lines = ['NOTHING WAS COMPRESSED at a budget of {} of the dense bytes: {} '
                     'skipped (why below)'.format(self.budget, len(self.skipped) or 'no L.Linear')]
        lines += ['  {}'.format(row) for row in self.already + self.layers]
        lines += ['  skipped {}: {}'.format(path, why) for path, why in self.skipped.items()]
        lines += ['  hook {} of {}: dropped, {}'.format(name, path, why)
                  for path, dropped in self.conversion.dropped_hooks.items()
                  for name, why in dropped.items()]
        lines += ['  hooks carried over to {}: {}'.format(path, ', '.join(names))
                  for path, names in self.conversion.hooks.items()]
        lines.append('  whole model: {:,} of {:,} bytes ({:.4f}, 1/{:.1f}), every layer '
                     'counted'.format(
                         self.stored_bytes, self.dense_bytes, self.ratio,
                         1 / self.ratio if self.ratio else math.inf))
        if self.uncounted:
            lines.append('  not counted (not initialised yet): {}'.format(
                ', '.join(self.uncounted)))
        return '\n'.join(lines)


# --- compressing -------------------------------------------------------------------------

Convert = tp.Callable[[L.Linear, fractions.Fraction, str], chainer.Link]


def compress_linears(model: chainer.Link, budget, *,
                     pattern: tp.Union[str, Convert] = 'auto', include: Include = None,
                     patterns: tp.Optional[tp.Iterable[str]] = None) -> CompressionReport:
    """Compresses the ``L.Linear`` links of a trained model to ``budget`` of their bytes, in place.

    Each selected ``L.Linear`` becomes the layer of ``pattern`` that stores at
    most ``budget`` of its bytes (:func:`stored_bytes`, the bias included),
    with the knobs of :func:`knobs_at_budget` and the weights closest to the
    trained ones (the pattern's ``from_linear``). A layer that no setting of
    the pattern fits is skipped, and the report says why; if no layer is
    compressed, a warning says so too. The walk, the atomic replacement,
    ``include``, tied links and hooks are
    :func:`~chainer_sharedlinear.convert_linears`'.

    The weight fitted is the one the layer computes with in test mode: a
    layer with ``SpectralNormalization`` or ``WeightStandardization`` is
    fitted to the normalised weight, which the new layer then stores; a new
    layer that cannot take the hook again drops it (the report says so). The
    report also lists the layers of the family the model had already, and
    its plan describes them too, so that a model compressed in several calls
    (each its ``include`` and budget) saves and loads with the last plan.

    Args:
        model (~chainer.Link): A model whose ``L.Linear`` links are
            initialised; changed in place.
        budget (float): The fraction of each layer's dense bytes it may store,
            in ``(0, 1]``: ``1/8`` keeps an eighth.
        pattern: A name of :func:`pattern_names` (``'shared'``,
            ``'hashed'``, ``'kronecker'``, ``'phm'``, ``'lowrank'``,
            ``'clustered'``, ``'monarch'``); ``'auto'``, which takes for each layer the
            pattern of ``patterns`` whose layer is closest to the trained weight
            (the least relative Frobenius error of its ``dense_weight()``;
            ties go to the earlier pattern); or a function ``convert(linear,
            budget, path)`` returning a layer of the family (a
            ``ValueError`` from it skips the layer, with its message); its
            ``linear`` is an ``L.Linear`` with the weight to fit, without hooks.
        include: Which ``L.Linear`` links to compress, as in
            :func:`~chainer_sharedlinear.convert_linears`.
        patterns (list of str): The patterns ``'auto'`` chooses from; all
            of :func:`pattern_names` by default.

    Returns:
        CompressionReport: Per layer its pattern, knobs, bytes and error; the
        layers already of the family; the whole model's bytes; what was
        skipped and why; and the plan.

    Raises:
        ValueError: A selected ``L.Linear`` is not initialised yet (a lazy
            ``L.Linear(None, n)``): run one forward pass first; or its weight
            holds NaN or infinite values, which no layer can be fitted to.
            Nothing is changed.
        TypeError: ``convert`` returned a link that is not of the family.

    .. admonition:: Example

        >>> import chainer
        >>> import chainer.links as L
        >>> import numpy as np
        >>> tiled = np.tile(np.arange(12.).reshape(4, 3), 8)  # 8 copies of one (4, 3) block
        >>> model = chainer.Sequential(L.Linear(24, 4, nobias=True, initialW=tiled),
        ...                            L.Linear(7, 3))
        >>> report = compress_linears(model, 1/8)
        >>> print(report)  # doctest: +ELLIPSIS
        1 compressed, 1 skipped, at a budget of 1/8 of the dense bytes
          /0: shared n_shared=8, 48 of 384 bytes (0.1250), error 0.0000
          skipped /1: no pattern fits: shared cannot store a 7 -> 3 layer in 1/8 of its 96 bytes...
          whole model: 144 of 480 bytes (0.3000, 1/3.3), every layer counted
        >>> model[0]
        SharedLinear(in_size=24, out_size=4, n_shared=8, nobias=True)
        >>> report.layers[0].errors['hashed'] > 0
        True
    """
    fraction = _checks.budget(budget)
    if pattern == 'auto':
        names = pattern_names() if patterns is None else tuple(patterns)
        if not names:
            raise ValueError("patterns is empty: pattern='auto' needs at least one pattern")
        for name in names:
            _pattern(name)
    elif patterns is not None:
        raise ValueError("patterns is for pattern='auto'; pattern={!r} is one already".format(
            pattern))
    elif not callable(pattern):
        _pattern(pattern)

    first_paths = {}
    for path, link in model.namedlinks() if isinstance(model, chainer.Link) else ():
        first_paths.setdefault(id(link), path)
    rows: tp.Dict[int, CompressedLayer] = {}

    def why_not(linear):
        if type(linear) is not L.Linear:
            return 'a subclass of L.Linear ({}), whose forward may differ'.format(
                type(linear).__name__)
        if linear.W.array is None:
            raise ValueError(
                'compress_linears: {} is {} ({}); run one forward pass of the model first'.format(
                    first_paths[id(linear)], 'a lazy L.Linear(None, {})'.format(linear.out_size),
                    'its in_size is only known after it'))
        _check_finite(_weight_used(linear), first_paths[id(linear)])
        return None

    def convert(linear):
        path = first_paths[id(linear)]
        hooks = _weight_hooks(linear)
        fitted = _with_weight(linear, _weight_used(linear)) if hooks else linear
        if callable(pattern):
            layer = pattern(fitted, fraction, path)
            _check_family(layer, path)
            name = getattr(pattern, '__name__', type(pattern).__name__)
            row = _row(path, name, dict(layer._options()), layer, fitted)
        elif pattern == 'auto':
            row, layer = _auto(fitted, fraction, names, path)
        else:
            knobs = knobs_at_budget(pattern, fitted.W.shape[1], fitted.out_size, fraction,
                                    dtype=fitted.W.dtype, nobias=fitted.b is None,
                                    weight=fitted.W.array)
            layer = _from_linear(pattern, fitted, knobs)
            row = _row(path, pattern, knobs, layer, fitted)
        rows[id(layer)] = dataclasses.replace(row, weight_hooks=tuple(hooks))
        return layer

    conversion = _replace_links(model, include, 'compress_linears', L.Linear, why_not, convert)
    layers, already, entries = [], [], []
    for paths, layer in _family_layers(model):
        row = rows.get(id(layer))
        if row is None:
            options = _plain(dict(layer._options()))
            row = CompressedLayer(path=paths[0], pattern=None, knobs=options,
                                  stored_bytes=stored_bytes(layer),
                                  dense_bytes=_dense_bytes(layer), error=math.nan,
                                  link=type(layer).__name__)
            already.append(row)
        else:
            layers.append(row)
        entries.append(_plan_entry(layer, row.pattern, paths, row.knobs))
    plan = {'format': PLAN_FORMAT, 'budget': str(fraction), 'layers': entries}
    stored, dense, uncounted = _model_bytes(model)
    report = CompressionReport(budget=fraction, layers=tuple(layers),
                               skipped=dict(conversion.skipped), plan=plan,
                               conversion=conversion, already=tuple(already),
                               stored_bytes=stored, dense_bytes=dense, uncounted=uncounted)
    if not layers:
        warnings.warn('compress_linears compressed nothing at a budget of {}: {}'.format(
            fraction, '; '.join('{} skipped: {}'.format(path, why)
                                for path, why in conversion.skipped.items())
            or 'the model has no L.Linear'), stacklevel=2)
    return report


def _family_layers(model: chainer.Link
                   ) -> tp.List[tp.Tuple[tp.Tuple[str, ...], VirtualLinear]]:
    """The initialised layers of the family in ``model``, each with all its paths, in order.

    Of the family's own classes only: a subclass is the model's own code,
    which no plan rebuilds.
    """
    found: 'collections.OrderedDict[int, tp.Tuple[tp.List[str], VirtualLinear]]' = (
        collections.OrderedDict())
    for path, link in model.namedlinks():
        if type(link) in family() and link._is_initialized:
            found.setdefault(id(link), ([], link))[0].append(path)
    return [(tuple(paths), link) for paths, link in found.values()]


def _model_bytes(model) -> tp.Tuple[int, int, tp.Tuple[str, ...]]:
    """``(stored, dense, uncounted)``: the bytes of ``model`` (:func:`stored_bytes`), the
    same with each layer of the family as its ``L.Linear``, and the parts not initialised."""
    stored = dense = 0
    uncounted = []
    for path, part in _parts(model):
        counted = _part_bytes(part)
        if counted is None:
            uncounted.append(path)
            continue
        stored += counted
        dense += _dense_bytes(part) if isinstance(part, VirtualLinear) else counted
    return stored, dense, tuple(uncounted)


def _weight_hooks(linear) -> tp.List[str]:
    return [name for name, hook in linear.local_link_hooks.items()
            if isinstance(hook, weight_hook_types())]


def _weight_used(linear):
    """The weight ``linear`` computes with in test mode: ``W`` through its weight hooks.

    Each hook replaces ``W`` for the call as ``Link.__call__`` has it do
    (``SpectralNormalization`` by one power iteration from its vector, which
    test mode does not update), and puts it back after.
    """
    hooks = [linear.local_link_hooks[name] for name in _weight_hooks(linear)]
    if not hooks:
        return linear.W.array
    call = types.SimpleNamespace(link=linear, args=(None,), kwargs={})
    done = []
    try:
        with chainer.using_config('train', False), chainer.no_backprop_mode():
            for hook in hooks:
                hook.forward_preprocess(call)
                done.append(hook)
            return linear.W.array
    finally:
        for hook in reversed(done):  # each puts back the weight it was given
            hook.forward_postprocess(call)


def _with_weight(linear, weight) -> L.Linear:
    """An ``L.Linear`` without hooks that has ``weight`` and ``linear``'s bias (not copied)."""
    stand_in = L.Linear(linear.out_size, nobias=linear.b is None)  # lazy: nothing drawn
    stand_in.to_device(linear.device)
    stand_in.W.array = weight
    if linear.b is not None:
        stand_in.b.array = linear.b.array
    return stand_in


def _check_finite(weight, path) -> None:
    xp = backend.get_array_module(weight)
    n_finite = int(xp.count_nonzero(xp.isfinite(weight)))
    if n_finite < weight.size:
        n_nan = int(xp.count_nonzero(xp.isnan(weight)))
        raise ValueError(
            'compress_linears: the weight of {} is not finite: {} of its {:,} entries are NaN '
            'or infinite ({} NaN, {} infinite), and no layer can be fitted to it. The model '
            'is broken (a training that diverged?); restore a finite weight, or leave the '
            'layer out with include'.format(path, weight.size - n_finite, weight.size, n_nan,
                                            weight.size - n_finite - n_nan))


def _from_linear(pattern: str, linear: L.Linear, knobs: Knobs) -> chainer.Link:
    entry = _PATTERNS[pattern]
    # L.Linear's in_size stays None after a lazy initialisation; W knows it.
    out_size, in_size = linear.W.shape
    options = entry.options(dict(knobs, in_size=in_size, out_size=out_size))
    return _family_class(entry.link).from_linear(linear, **options)


def _relative_error(layer, weight) -> float:
    """``‖V − W‖ / ‖W‖`` of the layer's dense weight ``V``, in float64 a slice of rows at a
    time, so that no float64 copy of either is made, nor ``V`` whole where the layer
    makes it a slice at a time."""
    cpu = backend.CpuDevice()
    weight = cpu.send(weight)
    squares = differences = 0.0
    for rows, dense in layer._dense_weight_slices():
        target = weight[rows].astype(numpy.float64)
        difference = cpu.send(dense) - target
        squares += float(numpy.vdot(target, target))
        differences += float(numpy.vdot(difference, difference))
    norm, difference = math.sqrt(squares), math.sqrt(differences)
    return difference / norm if norm else (0.0 if difference == 0 else math.inf)


def _row(path, pattern, knobs, layer, linear, **auto) -> CompressedLayer:
    return CompressedLayer(path=path, pattern=pattern, knobs=knobs,
                           stored_bytes=stored_bytes(layer), dense_bytes=stored_bytes(linear),
                           error=_relative_error(layer, linear.W.array),
                           link=type(layer).__name__, **auto)


def _auto(linear, fraction, names, path):
    # A pattern whose error its singular values tell is built only if it is taken, and
    # of the layers built only the best so far is kept.
    out_size, in_size = linear.W.shape
    errors, refused = {}, {}
    best = None
    for name in names:
        try:
            settings, predicted = _settings(name, in_size, out_size, fraction, linear.W.dtype,
                                            linear.b is None, linear.W.array)
        except ValueError as e:
            refused[name] = str(e)
            continue
        knobs = _from_knobs(settings[0])
        layer = None
        if predicted is None:
            layer = _from_linear(name, linear, knobs)
            errors[name] = _relative_error(layer, linear.W.array)
        else:
            errors[name] = predicted[0]
        if best is None or errors[name] < errors[best[0]]:  # the first of equals
            best = name, knobs, layer
        del layer
    if best is None:
        raise ValueError('no pattern fits: ' + '; '.join(refused.values()))
    name, knobs, layer = best
    if layer is None:
        layer = _from_linear(name, linear, knobs)
    row = _row(path, name, knobs, layer, linear, refused=refused)
    errors[name] = row.error  # measured on the layer taken, as for every row
    return dataclasses.replace(row, errors=errors), layer


# --- the plan ----------------------------------------------------------------------------

def _family_class(name) -> tp.Optional[type]:
    """The layer of the family called ``name``, or ``None``."""
    return next((cls for cls in family() if cls.__name__ == name), None)


def _family_names() -> str:
    return ', '.join(cls.__name__ for cls in family())


def _check_family(layer, path) -> None:
    if _family_class(type(layer).__name__) is not type(layer):
        raise TypeError('compress_linears: the conversion of {} returned {!r}, not a layer of '
                        'the family ({}), which a plan could not rebuild'.format(
                            path, layer, _family_names()))


def _plan_entry(layer, pattern, paths, knobs) -> tp.Dict[str, tp.Any]:
    return {
        'paths': list(paths), 'link': type(layer).__name__, 'pattern': pattern,
        'knobs': _plain(knobs), 'options': _plain(dict(layer._options())),
        'in_size': layer.in_size, 'out_size': layer.out_size, 'nobias': layer.b is None,
        'dtype': getattr(layer, layer.weight_names[0]).dtype.name,
        'bias_dtype': None if layer.b is None else layer.b.dtype.name,
    }


def _plain(value):
    """``value`` as JSON takes it: tuples as lists, NumPy integers as ``int``."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, numpy.generic):
        return value.item()
    return value


_ENTRY_KEYS = ('paths', 'link', 'options', 'in_size', 'out_size', 'nobias', 'dtype')


def _check_plan(plan) -> tp.List[tp.Dict[str, tp.Any]]:
    if not isinstance(plan, dict) or plan.get('format') != PLAN_FORMAT:
        raise ValueError('not a plan of compress_linears: expected a dict with '
                         "'format': {!r} (a CompressionReport's plan), got {!r}".format(
                             PLAN_FORMAT, plan if not isinstance(plan, dict)
                             else plan.get('format')))
    entries = plan.get('layers')
    if not isinstance(entries, list):
        raise ValueError("the plan's 'layers' must be a list, got {!r}".format(entries))
    for i, entry in enumerate(entries):
        missing = [key for key in _ENTRY_KEYS if not isinstance(entry, dict) or key not in entry]
        if missing:
            raise ValueError('layer {} of the plan lacks {}'.format(i, ', '.join(missing)))
        if _family_class(entry['link']) is None:
            raise ValueError('layer {} of the plan is a {}, which is not a layer of the family '
                             '({})'.format(entry['paths'], entry['link'], _family_names()))
    return entries


def _planned_layer(entry, initialize: bool) -> chainer.Link:
    cls = _family_class(entry['link'])
    options = {key: tuple(value) if isinstance(value, list) else value
               for key, value in entry['options'].items()}
    with chainer.using_config('dtype', numpy.dtype(entry['dtype'])):
        if initialize:  # as the constructor draws them
            return cls(entry['in_size'], entry['out_size'], nobias=entry['nobias'], **options)
        zero = initializers.Zero(numpy.dtype(entry['dtype']))
        options.update({'initial' + name: zero for name in cls.weight_names})
        bias = None if entry['nobias'] else initializers.Zero(numpy.dtype(entry['bias_dtype']))
        return cls(entry['in_size'], entry['out_size'], nobias=entry['nobias'],
                   initial_bias=bias, **options)


def _is_planned(link, entry) -> bool:
    # A lazy layer of the model's own code takes its in_size from the file.
    return (type(link).__name__ == entry['link'] and link.in_size in (None, entry['in_size'])
            and link.out_size == entry['out_size'] and (link.b is None) == entry['nobias']
            and _plain(dict(link._options())) == entry['options'])


def apply_plan(model: chainer.Link, plan: tp.Dict[str, tp.Any], *,
               initialize: bool = False) -> ConversionReport:
    """Builds the layers of a plan on a model, in place, so that ``load_npz`` then fills them.

    ``model`` is a fresh copy of the model that was compressed: built by the
    same code, trained or not, lazy (``L.Linear(None, n)``) or not, since the
    plan knows the sizes. Each ``L.Linear`` named by the plan becomes the layer
    it describes, of the same dtype and device, with zero weights; a layer
    that already is the planned one is left as it is. Then
    ``chainer.serializers.load_npz(file, model)`` loads the compressed file.

    Args:
        model (~chainer.Link): The model; changed in place.
        plan (dict): A :class:`CompressionReport`'s ``plan``, or the same read
            back from JSON.
        initialize (bool): If ``True``, the new layers' weights are drawn as
            their constructors draw them, to train the planned layers from
            scratch, instead of zero.

    Returns:
        ConversionReport: What changed.

    Raises:
        ValueError: The plan does not fit the model: a path it names is not
            there, or holds a link of other sizes, another bias, or another
            layer than the plan's. Nothing is changed.
    """
    entries = _check_plan(plan)
    if not isinstance(model, chainer.Link):
        raise TypeError('apply_plan expects a chainer.Link (a Chain, ChainList or Sequential), '
                        'got {}'.format(type(model).__name__))
    found = dict(model.namedlinks())
    paths_of = collections.defaultdict(list)
    for path, link in found.items():
        paths_of[id(link)].append(path)
    planned, include = {}, []
    for entry in entries:
        for path in entry['paths']:
            link = found.get(path)
            if link is None:
                raise ValueError('the plan compresses {}, but the model has no link there; its '
                                 'links are: {}'.format(path, ', '.join(found) or 'none'))
            what = 'the plan has a {}(in_size={}, out_size={}, nobias={}) at {}'.format(
                entry['link'], entry['in_size'], entry['out_size'], entry['nobias'], path)
            if _is_planned(link, entry):
                continue
            if type(link) is not L.Linear:
                raise ValueError('{}, but the model has {} there, which is neither that nor an '
                                 'L.Linear'.format(what, link))
            in_size = None if link.W.array is None else link.W.shape[1]
            if (link.out_size != entry['out_size'] or in_size not in (None, entry['in_size'])
                    or (link.b is None) != entry['nobias']):
                raise ValueError('{}, but the model has L.Linear(in_size={}, out_size={}, '
                                 'nobias={}) there'.format(what, in_size, link.out_size,
                                                           link.b is None))
            if sorted(paths_of[id(link)]) != sorted(entry['paths']):
                raise ValueError('the plan has one layer at {}, but the model has that link at '
                                 '{}'.format(', '.join(entry['paths']),
                                             ', '.join(paths_of[id(link)])))
            planned[id(link)] = entry
            include.append(path)
    return _replace_links(model, include, 'apply_plan', L.Linear, lambda link: None,
                          lambda link: _planned_layer(planned[id(link)], initialize).to_device(
                              link.device))


def _check_plan_covers(model: chainer.Link, plan) -> None:
    """``ValueError`` unless ``plan`` has an entry for each layer of the family in ``model``.

    A plan that leaves one out cannot rebuild the model from its file.
    """
    planned = {path for entry in _check_plan(plan) for path in entry['paths']}
    missing = ['{} ({})'.format(paths[0], layer) for paths, layer in _family_layers(model)
               if not set(paths) <= planned]
    if missing:
        raise ValueError(
            'the plan does not describe every layer of the family in the model: {} {} not in '
            'it, so load_compressed could not rebuild the model from the file. Pass the plan '
            'of the last compress_linears call on this model, which describes them all'.format(
                ', '.join(missing), 'is' if len(missing) == 1 else 'are'))


def save_compressed(file, model: chainer.Link, plan: tp.Dict[str, tp.Any]) -> None:
    """Saves a compressed model as ``chainer.serializers.save_npz`` does, with its plan.

    The plan is kept in the file as JSON under ``'chainer_sharedlinear.plan'``, which
    ``load_npz`` ignores: the file loads as any other into a model the plan
    was applied to, and :func:`load_compressed` rebuilds the layers from it.

    Args:
        file (str or file-like): Where to save.
        model (~chainer.Link): The compressed model.
        plan (dict): Its :class:`CompressionReport`'s ``plan``.
    """
    _check_plan_covers(model, plan)
    _check_plan(plan)
    serializer = chainer.serializers.DictionarySerializer()
    serializer.save(model)
    serializer.target[PLAN_KEY] = numpy.array(json.dumps(plan))
    numpy.savez_compressed(file, **serializer.target)


def read_plan(file) -> tp.Dict[str, tp.Any]:
    """The plan that :func:`save_compressed` kept in a file."""
    with numpy.load(file) as saved:
        if PLAN_KEY not in saved.files:
            raise ValueError('{} holds no plan: it was not saved by save_compressed. Apply the '
                             "plan of the compression to the model, then load it with "
                             'chainer.serializers.load_npz'.format(file))
        return json.loads(str(saved[PLAN_KEY]))


def load_compressed(file, model: chainer.Link) -> ConversionReport:
    """Loads a file of :func:`save_compressed` into a fresh model: the plan, then the parameters.

    :func:`apply_plan` with the plan kept in the file, then
    ``chainer.serializers.load_npz``. A model the plan does not fit is a
    ``ValueError`` before anything is changed.

    Args:
        file (str): The file.
        model (~chainer.Link): A fresh copy of the model that was compressed,
            lazy or not, or one the plan was applied to already.

    Returns:
        ConversionReport: What :func:`apply_plan` changed.
    """
    report = apply_plan(model, read_plan(file))
    chainer.serializers.load_npz(file, model)
    return report
