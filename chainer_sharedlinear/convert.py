"""Swapping ``L.Linear`` for ``SharedLinear`` throughout a model, and back, in place."""

import dataclasses
import typing as tp

import chainer
import chainer.links as L

from chainer_sharedlinear.links.shared_linear import SharedLinear, check_n_shared

Include = tp.Union[None, str, tp.Iterable[str], tp.Callable[[str, chainer.Link], bool]]

_SETUP_AGAIN = (
    'Call optimizer.setup(model) again before training: the new parameters have no update '
    'rule yet, so an optimizer set up before leaves them unchanged.')


@dataclasses.dataclass(frozen=True)
class ConversionReport:
    """What :func:`share_linears` or :func:`unshare_linears` did to a model.

    Links are named by their paths in the model, as
    :meth:`chainer.Link.namedlinks` gives them: ``'/l1'``, ``'/encoder/0'``.

    Attributes:
        changed (tuple of str): The links replaced, in the model's order.
        skipped (dict): The links of the kind converted that were left as they
            were, each with the reason.
        params_before (int): Parameter elements in the model before.
        params_after (int): Parameter elements in the model after.
    """

    changed: tp.Tuple[str, ...]
    skipped: tp.Dict[str, str]
    params_before: int
    params_after: int

    @property
    def needs_optimizer_setup(self) -> bool:
        """bool: ``True`` if any link changed: an optimizer must be set up on the model again."""
        return bool(self.changed)

    def __str__(self) -> str:
        lines = ['{} changed, {} skipped; parameters {:,} -> {:,}'.format(
            len(self.changed), len(self.skipped), self.params_before, self.params_after)]
        lines += ['  changed {}'.format(path) for path in self.changed]
        lines += ['  skipped {}: {}'.format(path, why) for path, why in self.skipped.items()]
        if self.changed:
            lines.append(_SETUP_AGAIN)
        else:
            lines.append('Nothing was converted.')
        return '\n'.join(lines)


def share_linears(model: chainer.Link, n_shared: int, *,
                  include: Include = None) -> ConversionReport:
    """Replaces the ``L.Linear`` links of a model by ``SharedLinear``, in place.

    Walks ``model`` (a :class:`~chainer.Chain`, :class:`~chainer.ChainList`
    or :class:`~chainer.Sequential`, nested to any depth) and replaces every
    selected ``L.Linear`` by :meth:`SharedLinear.from_linear(link, n_shared)
    <chainer_sharedlinear.SharedLinear.from_linear>`, under the same name.
    A link that cannot be converted is skipped, and the report says why: its
    ``in_size`` is not a multiple of ``n_shared``, it is not initialised yet
    (a lazy ``L.Linear(out_size)`` before its first forward pass), it is a
    subclass of ``L.Linear`` (whose forward may differ), or ``include`` left it
    out. An ``n_shared`` that fits no layer is not an error: the report says
    nothing changed.

    An optimizer set up on the model before does not update the new
    parameters: call ``optimizer.setup(model)`` again (which also restarts its
    state, such as Adam's moments).

    Args:
        model (~chainer.Link): The model; changed in place.
        n_shared (int): The number of input blocks that will share each weight.
        include: Which ``L.Linear`` links to convert. ``None``: all. A path or
            a collection of paths (``'/l1'``; the leading ``/`` may be left
            out): those, which must exist and be convertible, else
            ``ValueError`` and the model is left as it was. A callable
            ``include(path, link) -> bool``: those it accepts.

    Returns:
        ConversionReport: What changed, what was skipped and why, and the
        parameter counts.

    .. admonition:: Example

        >>> import chainer
        >>> import chainer.functions as F
        >>> import chainer.links as L
        >>> model = chainer.Sequential(
        ...     L.Linear(784, 1000), F.relu, L.Linear(1000, 1000), F.relu, L.Linear(1000, 10))
        >>> report = share_linears(model, n_shared=10)
        >>> print(report)  # doctest: +ELLIPSIS
        2 changed, 1 skipped; parameters 1,796,010 -> 887,010
          changed /1
          changed /2
          skipped /0: in_size=784 is not divisible by n_shared=10
        Call optimizer.setup(model) again before training: ...
        >>> model[2]
        SharedLinear(in_size=1000, out_size=1000, n_shared=10, nobias=False)
    """
    n_shared = check_n_shared(n_shared)

    def why_not(link):
        if type(link) is not L.Linear:
            return 'a subclass of L.Linear ({}), whose forward may differ'.format(
                type(link).__name__)
        if link.W.array is None:
            return ('not initialised yet: in_size is only known after the first forward '
                    'pass; run one, or build the layer with in_size')
        in_size = link.W.shape[1]
        if in_size % n_shared:
            return 'in_size={} is not divisible by n_shared={}'.format(in_size, n_shared)
        return None

    return _replace_links(
        model, include, 'share_linears', L.Linear, why_not,
        lambda link: SharedLinear.from_linear(link, n_shared))


def unshare_linears(model: chainer.Link, *, include: Include = None) -> ConversionReport:
    """Replaces the ``SharedLinear`` links of a model by ``L.Linear``, in place.

    The model-level :meth:`SharedLinear.to_linear
    <chainer_sharedlinear.SharedLinear.to_linear>`: each selected
    ``SharedLinear`` becomes the ``L.Linear`` with the tiled weight, which
    computes the same outputs, so that the model runs where this package is
    not installed. ``include`` and the report are as in :func:`share_linears`;
    a ``SharedLinear`` not initialised yet is skipped.

    .. admonition:: Example

        >>> import chainer
        >>> from chainer_sharedlinear import SharedLinear
        >>> model = chainer.Sequential(SharedLinear(8, 2, n_shared=4))
        >>> print(unshare_linears(model).changed)
        ('/0',)
        >>> print(model[0])
        Linear(in_size=8, out_size=2, nobias=False)
    """
    def why_not(link):
        if type(link) is not SharedLinear:
            return 'a subclass of SharedLinear ({}), whose forward may differ'.format(
                type(link).__name__)
        if link.W.array is None:
            return ('not initialised yet: in_size is only known after the first forward '
                    'pass; run one, or build the layer with in_size')
        return None

    return _replace_links(
        model, include, 'unshare_linears', SharedLinear, why_not, SharedLinear.to_linear)


def _replace_links(model, include, caller, kind, why_not, convert) -> ConversionReport:
    if not isinstance(model, chainer.Link):
        raise TypeError('{} expects a chainer.Link (a Chain, ChainList or Sequential), '
                        'got {}'.format(caller, type(model).__name__))
    if isinstance(model, kind):
        raise ValueError(
            '{} replaces the links inside a model, and the model is itself a {}; '
            'use SharedLinear.{} on it instead, which returns a new link'.format(
                caller, kind.__name__,
                'from_linear' if kind is L.Linear else 'to_linear'))

    links = dict(model.namedlinks())
    candidates = [(path, link) for path, link in links.items() if isinstance(link, kind)]
    selected = _select(include, links, candidates, kind, why_not)

    params_before = _count_params(model)
    changed = []
    skipped = {}
    replacements = {}  # id of the old link -> its replacement, for links reached twice
    for path, link in candidates:
        if path not in selected:
            skipped[path] = 'excluded by include'
            continue
        reason = why_not(link)
        if reason is not None:
            skipped[path] = reason
            continue
        if id(link) not in replacements:
            replacements[id(link)] = convert(link)
        parent_path, _, name = path.rpartition('/')
        _replace_child(links[parent_path or '/'], name, link, replacements[id(link)])
        changed.append(path)
    return ConversionReport(tuple(changed), skipped, params_before, _count_params(model))


def _select(include, links, candidates, kind, why_not) -> tp.Set[str]:
    if include is None:
        return {path for path, _ in candidates}
    if callable(include):
        return {path for path, link in candidates if include(path, link)}

    names = [include] if isinstance(include, str) else list(include)
    kind_name = 'L.Linear' if kind is L.Linear else kind.__name__
    known = ', '.join(path for path, _ in candidates) or 'none'
    selected = set()
    # A link asked for by name must be converted: any that cannot is an error,
    # raised before the model is touched.
    for name in names:
        if not isinstance(name, str):
            raise TypeError('include must be None, a path, a collection of paths or a '
                            'callable; it holds {!r}'.format(name))
        path = name if name.startswith('/') else '/' + name
        if path not in links:
            raise ValueError('include names {!r}, but the model has no link at {}; its {} '
                             'links are: {}'.format(name, path, kind_name, known))
        link = links[path]
        if not isinstance(link, kind):
            raise ValueError('include names {}, which is a {}, not a {}'.format(
                path, type(link).__name__, kind_name))
        reason = why_not(link)
        if reason is not None:
            raise ValueError('include names {}, which cannot be converted: {}'.format(
                path, reason))
        selected.add(path)
    return selected


def _replace_child(parent: chainer.Link, name: str, old: chainer.Link,
                   new: chainer.Link) -> None:
    if isinstance(parent, chainer.ChainList):
        # The child keeps its index, hence its path and the keys it is saved under.
        chainer.ChainList.__setitem__(parent, int(name), new)
        if isinstance(parent, chainer.Sequential):
            # A Sequential also runs its layers (links and functions) from a list of its
            # own. Its item assignment is not used: it re-inserts the child, and
            # Chainer 7.8.1's Sequential.insert can put it at another index.
            layers = parent._layers
            layers[:] = [new if layer is old else layer for layer in layers]
    elif isinstance(parent, chainer.Chain):
        delattr(parent, name)
        with parent.init_scope():
            setattr(parent, name, new)
    else:  # only Chain and ChainList have child links in Chainer
        raise TypeError('cannot replace the child {} of a {}'.format(
            name, type(parent).__name__))


def _count_params(model: chainer.Link) -> int:
    unique = {id(param): param for param in model.params()}
    return sum(param.size for param in unique.values() if param.array is not None)
