"""The patterns of :func:`compress_linears`: each one's link, the settings that fit a budget,
and their bytes.

Every pattern is one entry of ``_PATTERNS``: its link, the settings that fit a
budget, the bytes of a setting, and the link's options for a setting. Adding a
pattern is adding an entry here.
"""

import collections
import dataclasses
import math
import typing as tp

import chainer
import chainer.links as L
import numpy
from chainer import backend

from chainer_sharedlinear import _checks
from chainer_sharedlinear.compress.weight_fit import _kronecker_errors
from chainer_sharedlinear.convert import family
from chainer_sharedlinear.functions.clustered_linear import index_bits, packed_size
from chainer_sharedlinear.functions.kronecker_linear import factor_pairs
from chainer_sharedlinear.functions.monarch_linear import block_sizes

Knobs = tp.Dict[str, tp.Any]


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


#: The bit widths of a ``clustered_lowrank`` layer's indices that :func:`knobs_at_budget` tries.
CLUSTERED_LOW_RANK_BITS = tuple(range(2, 9))


def _clustered_low_rank_weight_bytes(in_size, out_size, itemsize, knobs):
    # ClusteredLowRankLinear.stored_bytes: two codebooks, two packed indices.
    bits = index_bits(knobs['n_clusters'])
    return (2 * knobs['n_clusters'] * itemsize + packed_size(out_size * knobs['rank'], bits)
            + packed_size(knobs['rank'] * in_size, bits))


def _clustered_low_rank_settings(in_size, out_size, itemsize, weight_bytes):
    settings = []
    for bits in CLUSTERED_LOW_RANK_BITS:
        knobs = {'rank': 0, 'n_clusters': 2 ** bits}
        left = weight_bytes - 2 * knobs['n_clusters'] * itemsize
        knobs['rank'] = min(max(0, left * 8 // ((in_size + out_size) * bits)),
                            in_size, out_size)
        while knobs['rank'] and _clustered_low_rank_weight_bytes(
                in_size, out_size, itemsize, knobs) > weight_bytes:
            knobs['rank'] -= 1  # the packing rounds each index up to a byte
        if knobs['rank']:
            settings.append(knobs)
    if not settings:
        raise ValueError('rank 1 at {} bits takes {} bytes'.format(
            CLUSTERED_LOW_RANK_BITS[0], _clustered_low_rank_weight_bytes(
                in_size, out_size, itemsize,
                {'rank': 1, 'n_clusters': 2 ** CLUSTERED_LOW_RANK_BITS[0]})))
    return settings


#: The bit widths of the ``clustered_lowrank`` candidates of the whole-model allocation:
#: those that win on the layers' outputs once rounded with error feedback (docs/compress.md).
CLUSTERED_LOW_RANK_GRID_BITS = (4, 5, 6)

#: The ratio of neighbouring ranks in :func:`rank_grid`.
RANK_STEP = 2 ** (1 / 8)


def rank_grid(most: int) -> tp.List[int]:
    """The ranks from 1 to ``most`` that the whole-model allocation tries: about ``RANK_STEP``
    apart, every rank where they would be closer.

    .. admonition:: Example

        >>> rank_grid(30)
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 19, 20, 22, 24, 26, 29, 30]
    """
    ranks, rank = [], 1.0
    while round(rank) < most:
        ranks.append(round(rank))
        rank = max(rank * RANK_STEP, round(rank) + 1)
    return ranks + [most]


def _clustered_low_rank_grid(in_size, out_size, itemsize):
    return [{'rank': rank, 'n_clusters': 2 ** bits} for bits in CLUSTERED_LOW_RANK_GRID_BITS
            for rank in rank_grid(min(in_size, out_size))]


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


def _dense_multiply_adds(in_size, out_size, knobs):
    return in_size * out_size  # the layer gathers the dense weight, then one product


def _shared_multiply_adds(in_size, out_size, knobs):
    return out_size * (in_size // knobs['n_shared'])  # the input folded first


def _kronecker_multiply_adds(in_size, out_size, knobs):
    # KroneckerLinear: X (batch·n1, n2) times the stacked B, then A side by side.
    (n1, n2), (m1, m2) = knobs['in_factors'], knobs['out_factors']
    return knobs['n_terms'] * m2 * (n1 * n2 + m1 * n1)


def _phm_multiply_adds(in_size, out_size, knobs):
    return _kronecker_multiply_adds(in_size, out_size, _phm_options(
        dict(knobs, in_size=in_size, out_size=out_size)))


def _low_rank_multiply_adds(in_size, out_size, knobs):
    return knobs['rank'] * (in_size + out_size)


def _monarch_multiply_adds(in_size, out_size, knobs):
    p, q, s = block_sizes(in_size, out_size, knobs['n_blocks'])
    return knobs['n_blocks'] * q * (p + s)  # each stored weight once


def _clustered_low_rank_order(knobs):
    # docs/clustered-low-rank-linear.md: on the outputs 4 bits win, 3 and 5 close behind.
    return abs(index_bits(knobs['n_clusters']) - 4)


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
    #: ``(in_size, out_size, knobs)`` to the multiply-adds of one input's forward pass
    #: (the dense layer's: ``in_size · out_size``), the bias not counted.
    multiply_adds: tp.Callable[[int, int, Knobs], int] = _dense_multiply_adds
    #: The knobs (with ``in_size`` and ``out_size`` added) as options of ``from_linear``.
    options: tp.Callable[[Knobs], Knobs] = _from_knobs
    #: ``(in_size, out_size, knobs)`` to the Kronecker setting of the same layer, for a
    #: pattern whose nearest layer is a truncated decomposition: its error then comes
    #: from singular values (:func:`_kronecker_errors`) without building it.
    as_kronecker: tp.Optional[tp.Callable[[Knobs], Knobs]] = None
    #: A sort key of the settings of equal standing, the best first; else the most bytes first.
    order: tp.Optional[tp.Callable[[Knobs], tp.Any]] = None
    #: ``(in_size, out_size, itemsize)`` to the settings the whole-model allocation tries,
    #: where those of ``settings`` at the budgets of ``LADDER`` are too coarse: a pattern of
    #: several knobs, whose best setting near a budget is not the one of most bytes.
    grid: tp.Optional[tp.Callable[[int, int, int], tp.List[Knobs]]] = None


def _one_knob(name, per_element):
    # The bytes of a pattern that stores ``knob`` numbers of ``per_element`` elements each.
    return lambda in_size, out_size, itemsize, knobs: (
        knobs[name] * per_element(in_size, out_size) * itemsize)


_PATTERNS: 'collections.OrderedDict[str, _Pattern]' = collections.OrderedDict([
    ('shared', _Pattern('SharedLinear', _shared_settings, _shared_weight_bytes,
                        _shared_multiply_adds)),
    ('hashed', _Pattern('HashedLinear', _hashed_settings, _one_knob('n_weights', lambda i, o: 1))),
    ('kronecker', _Pattern('KroneckerLinear', _kronecker_settings, _kronecker_weight_bytes,
                           _kronecker_multiply_adds, _kronecker_options,
                           as_kronecker=_kronecker_options)),
    ('phm', _Pattern('KroneckerLinear', _phm_settings, _phm_weight_bytes, _phm_multiply_adds,
                     _phm_options, as_kronecker=_phm_options)),
    ('lowrank', _Pattern('LowRankLinear', _low_rank_settings,
                         _one_knob('rank', lambda i, o: i + o), _low_rank_multiply_adds,
                         as_kronecker=_low_rank_as_kronecker)),
    ('clustered', _Pattern('ClusteredLinear', _clustered_settings, _clustered_weight_bytes)),
    ('monarch', _Pattern('MonarchLinear', _monarch_settings, _monarch_weight_bytes,
                         _monarch_multiply_adds)),
    ('clustered_lowrank', _Pattern('ClusteredLowRankLinear', _clustered_low_rank_settings,
                                   _clustered_low_rank_weight_bytes, _low_rank_multiply_adds,
                                   order=_clustered_low_rank_order,
                                   grid=_clustered_low_rank_grid)),
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


def knobs_at_budget(pattern: str, in_size: int, out_size: int, budget, *,
                    dtype='float32', nobias: bool = False, weight=None,
                    allow_more_multiply_adds: bool = False) -> Knobs:
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
    - ``clustered_lowrank``: ``{'rank': r, 'n_clusters': 2**bits}``, for each
      bit width from 2 to 8 the highest rank that fits; 4 bits first, then
      3 and 5, and so on (the bits that win on the outputs,
      docs/clustered-low-rank-linear.md).

    No setting costs more multiply-adds an input than the dense layer's
    ``in_size · out_size`` unless ``allow_more_multiply_adds``: a Kronecker
    layer of many terms may store little and compute much (at 1/8 of a
    1000 -> 1000 layer, 29 terms of ``(25×40)⊗(10×100)`` would cost 3.6
    million against the dense 1.0 million).

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
        allow_more_multiply_adds (bool): Whether a setting may cost more
            multiply-adds than the dense layer.

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
        >>> knobs_at_budget('phm', 1000, 1000, 1/8, allow_more_multiply_adds=True)
        {'n': 10}
        >>> knobs_at_budget('phm', 1000, 1000, 1/8)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: phm cannot store a 1000 -> 1000 layer in 1/8 of its 4004000 bytes with at \
most its 1,000,000 multiply-adds: each setting that fits costs more (...)
        >>> knobs_at_budget('clustered_lowrank', 1000, 1000, 1/32)
        {'rank': 120, 'n_clusters': 16}
        >>> knobs = knobs_at_budget('kronecker', 1000, 1000, 1/8)
        >>> multiply_adds('kronecker', 1000, 1000, knobs) <= 1000 * 1000
        True
        >>> knobs_at_budget('shared', 7, 10, 1/8)
        Traceback (most recent call last):
        ...
        ValueError: shared cannot store a 7 -> 10 layer in 1/8 of its 320 bytes (40 bytes, \
0 for the weights after the bias): n_shared must divide in_size=7 (1, 7), and the largest, 7, \
still stores 40 bytes of weights
    """
    settings, _ = _settings(pattern, in_size, out_size, budget, dtype, nobias, weight,
                            allow_more_multiply_adds)
    return _from_knobs(settings[0])


def multiply_adds(pattern: str, in_size: int, out_size: int, knobs: Knobs) -> int:
    """The multiply-adds of one input through the layer of ``pattern`` and ``knobs``.

    The products of the layer's forward pass as its function computes them,
    the bias not counted; the dense layer's are ``in_size · out_size``, which
    ``hashed`` and ``clustered`` also cost (they gather the dense weight).

    .. admonition:: Example

        >>> multiply_adds('lowrank', 1000, 1000, {'rank': 10})
        20000
        >>> multiply_adds('kronecker', 1000, 1000, {'in_factors': (25, 40),
        ...               'out_factors': (10, 100), 'n_terms': 29})
        3625000
    """
    return int(_pattern(pattern).multiply_adds(in_size, out_size, knobs))


def _settings(pattern, in_size, out_size, budget, dtype, nobias, weight,
              allow_more_multiply_adds=False
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
    if not allow_more_multiply_adds:
        cheap = [knobs for knobs in settings
                 if entry.multiply_adds(in_size, out_size, knobs) <= in_size * out_size]
        if not cheap:
            raise ValueError(
                '{} cannot store a {} -> {} layer in {} of its {} bytes with at most its {:,} '
                'multiply-adds: each setting that fits costs more (allow_more_multiply_adds '
                'allows it)'.format(pattern, in_size, out_size, fraction, dense,
                                    in_size * out_size))
        settings = cheap
    # Most bytes first; among equals, the first the pattern gave (the squarest factors).
    settings.sort(key=lambda knobs: (
        entry.order(knobs) if entry.order else 0,
        -entry.weight_bytes(in_size, out_size, itemsize, knobs)))
    if weight is None or entry.as_kronecker is None:
        return settings, None
    weight = backend.CpuDevice().send(getattr(weight, 'array', weight))
    if weight.shape != (out_size, in_size):
        raise ValueError('weight has shape {}, but the layer is {} -> {}: expected {}'.format(
            weight.shape, in_size, out_size, (out_size, in_size)))
    errors = _kronecker_errors(weight, [entry.as_kronecker(knobs) for knobs in settings])
    order = sorted(range(len(settings)), key=lambda i: errors[i])
    return [settings[i] for i in order], [errors[i] for i in order]


#: The fractions of a layer's dense bytes at which the whole-model allocation tries each
#: pattern's settings (one that has no ``grid``): ``2**(-k/2)`` from 1 down to 1/1024.
LADDER = tuple(2 ** (-k / 2) for k in range(21))


def _allocation_settings(pattern, in_size, out_size, dtype, nobias, most_bytes,
                         allow_more_multiply_adds=False) -> tp.List[Knobs]:
    """The settings of ``pattern`` that the whole-model allocation scores for a layer.

    Those of the pattern's ``grid``, or else of :func:`knobs_at_budget` at each
    budget of ``LADDER``; each once, and none whose weights and bias store more
    than ``most_bytes`` (the whole model's budget) or, unless
    ``allow_more_multiply_adds``, cost more multiply-adds than the dense layer.
    """
    entry = _pattern(pattern)
    itemsize = numpy.dtype(dtype).itemsize
    bias_bytes = 0 if nobias else out_size * itemsize
    if entry.grid is None:
        settings = []
        for step in LADDER:
            try:
                found, _ = _settings(pattern, in_size, out_size, step, dtype, nobias, None,
                                     allow_more_multiply_adds)
            except ValueError:
                continue
            settings += [knobs for knobs in found if knobs not in settings]
    else:
        settings = [dict(knobs, in_size=in_size, out_size=out_size)
                    for knobs in entry.grid(in_size, out_size, itemsize)]
        if not allow_more_multiply_adds:
            settings = [knobs for knobs in settings
                        if entry.multiply_adds(in_size, out_size, knobs) <= in_size * out_size]
    return [knobs for knobs in settings
            if bias_bytes + entry.weight_bytes(in_size, out_size, itemsize, knobs) <= most_bytes]


def _from_linear(pattern: str, linear: L.Linear, knobs: Knobs) -> chainer.Link:
    entry = _PATTERNS[pattern]
    # L.Linear's in_size stays None after a lazy initialisation; W knows it.
    out_size, in_size = linear.W.shape
    options = entry.options(dict(knobs, in_size=in_size, out_size=out_size))
    return _family_class(entry.link).from_linear(linear, **options)


def _family_class(name) -> tp.Optional[type]:
    """The layer of the family called ``name``, or ``None``."""
    return next((cls for cls in family() if cls.__name__ == name), None)


def _family_names() -> str:
    return ', '.join(cls.__name__ for cls in family())
