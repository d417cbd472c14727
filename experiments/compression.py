"""Layers of each sharing pattern at a parameter budget, and the networks of the frontier.

A *compression* ``c`` asks a layer to store about ``1 / c`` of the parameters of
the dense ``L.Linear(in_size, out_size)`` it replaces. Each pattern gets as
close as its sizes allow (see :func:`compressed_linear`); what it stores is
counted, not assumed, by :func:`stored_parameters`.
"""

import math
import typing as tp

import chainer
import chainer.functions as F
import chainer.links as L

from chainer_sharedlinear import HashedLinear, KroneckerLinear, MonarchLinear, SharedLinear
from chainer_sharedlinear.compress import knobs_at_budget
from chainer_sharedlinear.functions.kronecker_linear import factor_pairs

#: The patterns compared: the dense reference, the family, and two baselines at
#: equal storage: a low-rank pair of layers, and a narrower dense network.
PATTERNS = ('dense', 'shared', 'hashed', 'kronecker', 'phm', 'monarch', 'lowrank', 'narrow')

#: The networks: layer sizes, the indices of the layers that are compressed, and
#: whether those layers have a bias. ``width`` networks are grown, not shrunk:
#: see :func:`build_network`.
SETTINGS = {
    # examples/train_mnist3.py, the 2016 experiment: l2 is compressed.
    '2016': {'sizes': (784, 1000, 900, 10), 'compressed': (1,), 'nobias': True},
    # HashedNets' 784-1000-10 network: both layers are compressed.
    'hashednets': {'sizes': (784, 1000, 10), 'compressed': (0, 1), 'nobias': False},
    # The expansion experiment: 784-100-100-10 made `width` times wider, every layer
    # of the family, storing what the narrow dense network stores.
    'expansion': {'sizes': (784, 100, 100, 10), 'compressed': (0, 1, 2), 'nobias': False,
                  'width': True},
}


def _log_distance(a: float, b: float) -> float:
    return abs(math.log(a) - math.log(b))


def closest(candidates, budget: float, stored: tp.Callable[[tp.Any], int]):
    """The candidate whose ``stored(candidate)`` is nearest ``budget`` on a log scale.

    Ties go to the earlier candidate.

    >>> closest([1, 2, 4, 8], 5, lambda n: n)
    4
    """
    return min(candidates, key=lambda candidate: _log_distance(stored(candidate), budget))


def compressed_linear(pattern: str, in_size: int, out_size: int, compression: float, *,
                      nobias: bool = False, seed: int = 0) -> chainer.Link:
    """The layer of ``pattern`` that stores about ``in_size·out_size / compression`` weights.

    - ``dense``: ``L.Linear`` (the compression is ignored).
    - ``shared``: ``SharedLinear`` with the ``n_shared`` dividing ``in_size`` nearest
      ``compression``.
    - ``hashed``: ``HashedLinear`` with ``n_weights = round(in_size·out_size / compression)``,
      the hash seeded with ``seed``.
    - ``kronecker``: ``KroneckerLinear`` with one term, and the factors of ``in_size``
      and ``out_size`` whose ``m1·n1 + m2·n2`` is nearest the budget.
    - ``phm``: ``KroneckerLinear`` with ``n`` terms of ``n × n`` matrices ``A``, the ``n``
      dividing both sizes whose ``n³ + in_size·out_size / n`` is nearest the budget.
    - ``monarch``: ``MonarchLinear`` with the fewest ``n_blocks`` whose weights fit the
      budget (the library's rule, :func:`~chainer_sharedlinear.compress.knobs_at_budget`),
      or ``min(in_size, out_size)`` blocks, the fewest weights, if none fits.
    - ``lowrank``: two ``L.Linear``, ``in_size -> r -> out_size`` (the first without
      a bias), ``r`` of the budget: the factorisation of ``LowRankLinear``.

    ``narrow`` changes the network, not a layer: see :func:`build_network`.
    """
    budget = in_size * out_size / compression
    if pattern == 'dense':
        return L.Linear(in_size, out_size, nobias=nobias)
    if pattern == 'shared':
        n_shared = closest([a for a, _ in factor_pairs(in_size)], compression, lambda n: n)
        return SharedLinear(in_size, out_size, n_shared=n_shared, nobias=nobias)
    if pattern == 'hashed':
        return HashedLinear(in_size, out_size, n_weights=max(1, round(budget)), seed=seed,
                            nobias=nobias)
    if pattern == 'kronecker':
        pairs = [(in_factors, out_factors) for in_factors in factor_pairs(in_size)
                 for out_factors in factor_pairs(out_size)]
        in_factors, out_factors = closest(
            pairs, budget, lambda p: p[1][0] * p[0][0] + p[1][1] * p[0][1])
        return KroneckerLinear(in_size, out_size, in_factors=in_factors,
                               out_factors=out_factors, nobias=nobias)
    if pattern == 'phm':
        common = [n for n, _ in factor_pairs(in_size) if out_size % n == 0]
        n = closest(common, budget, lambda n: n ** 3 + in_size * out_size // n)
        return KroneckerLinear(in_size, out_size, in_factors=(n, in_size // n),
                               out_factors=(n, out_size // n), n_terms=n, nobias=nobias)
    if pattern == 'monarch':
        # knobs_at_budget counts the bias in the budget: this fraction leaves the weights
        # `budget`, as every other pattern here.
        bias = 0 if nobias else out_size
        fraction = min(1.0, (budget + bias) / (in_size * out_size + bias))
        try:
            n_blocks = knobs_at_budget('monarch', in_size, out_size, fraction,
                                       nobias=nobias)['n_blocks']
        except ValueError:  # none fits: the most blocks store the least
            n_blocks = min(in_size, out_size)
        return MonarchLinear(in_size, out_size, n_blocks=n_blocks, nobias=nobias)
    if pattern == 'lowrank':
        # LowRankLinear's factorisation and storage; the records of docs/frontier-fashion.json
        # were trained with this pair, which stays so that they are what this code builds.
        rank = max(1, round(budget / (in_size + out_size)))
        return chainer.Sequential(L.Linear(in_size, rank, nobias=True),
                                  L.Linear(rank, out_size, nobias=nobias))
    raise ValueError('unknown pattern {!r}: expected one of {}'.format(
        pattern, ', '.join(PATTERNS)))


def stored_parameters(link: chainer.Link) -> int:
    """The number of parameter elements a link stores, each shared one once."""
    unique = {id(param): param for param in link.params()}
    return sum(param.size for param in unique.values())


class MLP(chainer.Chain):
    """A multi-layer perceptron with ReLU between its layers, held in ``layers``."""

    def __init__(self, layers: tp.Sequence[chainer.Link]) -> None:
        super().__init__()
        with self.init_scope():
            self.layers = chainer.ChainList(*layers)

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


def build_network(setting: str, pattern: str, compression: float, seed: int = 0,
                  width: int = 1) -> tp.Tuple[MLP, tp.List[chainer.Link]]:
    """The network of ``setting`` with its compressed layers in ``pattern``.

    ``narrow`` keeps every layer dense and divides the hidden layer that the
    compressed layers feed (the paper's "NN" baseline) by ``compression``.

    In a ``width`` setting (``expansion``) the hidden layers have ``width``
    times their units and every layer is of ``pattern``, its weights given
    what the dense layer of the narrow network stores (weight and bias) less
    the wide layer's bias, over ``compression``: at ``compression=1`` the
    wide network stores as much as the narrow dense one. ``shared`` tiles
    the layers between hidden layers only, and hashes the input and output
    layers (tiling them folds pixels, or units before the output: see
    docs/frontier.md). ``dense`` is the wide dense network.

    Returns:
        ``(network, compressed)``: the network, and its compressed layers (for
        ``narrow``, the dense layers that take the place of those).
    """
    spec = SETTINGS[setting]
    if spec.get('width'):
        return _wide_network(spec, pattern, compression, seed, width)
    if width != 1:
        raise ValueError('setting {!r} has no width: expected width=1, got {}'.format(
            setting, width))
    sizes = list(spec['sizes'])
    compressed = spec['compressed']
    if pattern == 'narrow':
        # The hidden width that the compressed layers write (and the next reads).
        hidden = compressed[0] + 1
        sizes[hidden] = max(1, round(sizes[hidden] / compression))
    layers = []
    for i, (in_size, out_size) in enumerate(zip(sizes[:-1], sizes[1:])):
        nobias = spec['nobias'] and i in compressed
        if i in compressed and pattern != 'narrow':
            layers.append(compressed_linear(pattern, in_size, out_size, compression,
                                            nobias=nobias, seed=seed))
        else:
            layers.append(L.Linear(in_size, out_size, nobias=nobias))
    return MLP(layers), [layers[i] for i in compressed]


#: The patterns a ``width`` setting grows its network with.
WIDE_PATTERNS = ('dense', 'shared', 'hashed', 'kronecker', 'monarch', 'lowrank')


def _wide_network(spec, pattern, compression, seed, width):
    if pattern not in WIDE_PATTERNS:
        raise ValueError('a network of growing width is made of {}, not {!r}'.format(
            ', '.join(WIDE_PATTERNS), pattern))
    narrow = spec['sizes']
    sizes = [narrow[0]] + [n * width for n in narrow[1:-1]] + [narrow[-1]]
    layers = []
    for i in range(len(sizes) - 1):
        in_size, out_size = sizes[i], sizes[i + 1]
        if pattern == 'dense':
            layers.append(L.Linear(in_size, out_size))
            continue
        weights = (narrow[i] * narrow[i + 1] + narrow[i + 1]) / compression - out_size
        if weights < 1:
            raise ValueError('at width {} and compression {}, the bias of layer {} ({} -> {}) '
                             'takes all that the layer may store'.format(
                                 width, compression, i, in_size, out_size))
        between_hidden = 0 < i < len(sizes) - 2
        layer_pattern = 'hashed' if pattern == 'shared' and not between_hidden else pattern
        layers.append(compressed_linear(layer_pattern, in_size, out_size,
                                        in_size * out_size / weights, seed=seed))
    return MLP(layers), layers


def describe(link: chainer.Link) -> str:
    """A layer in one line, with its sizes; a low-rank pair as its two layers.

    >>> describe(compressed_linear('lowrank', 1000, 900, 8))
    'Linear(in_size=1000, out_size=59, nobias=True) -> Linear(in_size=59, out_size=900, \
nobias=False)'
    """
    if isinstance(link, chainer.Sequential):
        return ' -> '.join(describe(child) for child in link)
    return str(link)
