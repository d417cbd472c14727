"""The bytes a layer or a model stores (:func:`stored_bytes`), and those of its dense layers."""

import collections
import typing as tp

import chainer

from chainer_sharedlinear import _checks
from chainer_sharedlinear.links.virtual_linear import VirtualLinear


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
