"""Swapping the ``L.Linear`` links of a model for the family's links, and back, in place.

:func:`convert_linears` is the one entry point: it takes any conversion of an
``L.Linear`` (``SharedLinear.from_linear``, ``HashedLinear.from_linear``,
``KroneckerLinear.from_linear``, ``MonarchLinear.from_linear`` or a function
of your own) and applies it throughout a model. :func:`share_linears` is its
shorthand for ``SharedLinear``, and :func:`unshare_linears` converts every
layer of the family back to ``L.Linear``.
"""

import collections
import collections.abc
import dataclasses
import typing as tp

import chainer
import chainer.links as L

from chainer_sharedlinear import _checks, links
from chainer_sharedlinear.links.shared_linear import SharedLinear
from chainer_sharedlinear.links.virtual_linear import VirtualLinear, carry_hook

Include = tp.Union[None, str, tp.Iterable[str], tp.Callable[[str, chainer.Link], bool]]

_SETUP_AGAIN = (
    'Call optimizer.setup(model) again before training: the new parameters have no update '
    'rule yet, so an optimizer set up before leaves them unchanged.')

_INCLUDE_TYPES = 'include must be None, a path, a collection of paths or a callable'

@dataclasses.dataclass(frozen=True)
class ConversionReport:
    """What :func:`convert_linears`, :func:`share_linears` or :func:`unshare_linears` did.

    Links are named by their paths in the model, as
    :meth:`chainer.Link.namedlinks` gives them: ``'/l1'``, ``'/encoder/0'``.

    Attributes:
        changed (tuple of str): The paths whose link was replaced, in the model's order.
        skipped (dict): The paths of the links of the kind converted that were
            left as they were, each with the reason.
        params_before (int): Parameter elements in the model before.
        params_after (int): Parameter elements in the model after.
        tied (tuple): The paths at which one link object is
            reachable, for each such link (weight tying). A tied link is one
            layer: it is converted at all of its paths, or at none.
        hooks (dict): The names of the link hooks carried over to each new link,
            by its first path.
        dropped_hooks (dict): The link hooks that the new link did not take,
            by its first path, each ``{name: reason}``.
    """

    changed: tp.Tuple[str, ...]
    skipped: tp.Dict[str, str]
    params_before: int
    params_after: int
    tied: tp.Tuple[tp.Tuple[str, ...], ...] = ()
    hooks: tp.Dict[str, tp.Tuple[str, ...]] = dataclasses.field(default_factory=dict)
    dropped_hooks: tp.Dict[str, tp.Dict[str, str]] = dataclasses.field(default_factory=dict)

    @property
    def needs_optimizer_setup(self) -> bool:
        """bool: ``True`` if any link changed: an optimizer must be set up on the model again."""
        return bool(self.changed)

    def __str__(self) -> str:
        lines = ['{} changed, {} skipped; parameters {:,} -> {:,}'.format(
            len(self.changed), len(self.skipped), self.params_before, self.params_after)]
        lines += ['  changed {}'.format(path) for path in self.changed]
        lines += ['  skipped {}: {}'.format(path, why) for path, why in self.skipped.items()]
        lines += ['  tied: {} are one link'.format(', '.join(paths)) for paths in self.tied]
        lines += ['  hooks carried over to {}: {}'.format(path, ', '.join(names))
                  for path, names in self.hooks.items()]
        lines += ['  hook {} dropped from {}: {}'.format(name, path, why)
                  for path, dropped in self.dropped_hooks.items()
                  for name, why in dropped.items()]
        lines.append(_SETUP_AGAIN if self.changed else 'Nothing was converted.')
        return '\n'.join(lines)


def convert_linears(model: chainer.Link, convert: tp.Callable[[L.Linear], chainer.Link], *,
                    include: Include = None) -> ConversionReport:
    """Replaces the ``L.Linear`` links of a model by ``convert(link)``, in place.

    Walks ``model`` (a :class:`~chainer.Chain`, :class:`~chainer.ChainList`
    or :class:`~chainer.Sequential`, nested to any depth) and replaces every
    selected ``L.Linear`` by what ``convert`` returns for it, under the same
    name. ``convert`` raises ``ValueError`` for a layer it cannot convert
    (an ``in_size`` that does not fit the pattern, say): that layer is
    skipped, and the report says why. Also skipped: a layer not initialised
    yet (a lazy ``L.Linear(out_size)`` before its first forward pass), and a
    subclass of ``L.Linear``, whose forward may differ.

    The conversion is atomic: every new link is made before the model is
    touched, so an error leaves the model as it was. A link reachable at
    several paths (tied weights) is one layer and becomes one new link at all
    of them. The link hooks of a replaced link are added to the new one, with
    the state they keep on the link (``SpectralNormalization``'s vector
    ``W_u``), so that the new link computes what the old one did; a hook the
    new link refuses (spectral normalisation of a hashed layer, say), or whose
    state it cannot take, is dropped and the report says why.

    An optimizer set up on the model before does not update the new
    parameters: call ``optimizer.setup(model)`` again (which also restarts
    its state, such as Adam's moments).

    Args:
        model (~chainer.Link): The model; changed in place.
        convert: A function from an initialised ``L.Linear`` to its
            replacement, such as ``lambda linear: HashedLinear.from_linear(
            linear, n_weights=linear.W.size // 8)``.
        include: Which ``L.Linear`` links to convert. ``None``: all. A path or
            a collection of paths (``'/l1'``; the leading ``/`` may be left
            out): those, which must exist and be convertible, else
            ``ValueError`` and the model is left as it was. A callable
            ``include(path, link) -> bool``: those it accepts at one of their
            paths at least.

    Returns:
        ConversionReport: What changed, what was skipped and why, the tied
        links, the hooks, and the parameter counts.

    .. admonition:: Example

        >>> import chainer
        >>> import chainer.functions as F
        >>> import chainer.links as L
        >>> from chainer_sharedlinear import SharedLinear
        >>> model = chainer.Sequential(L.Linear(6, 4), F.relu, L.Linear(4, 2))
        >>> report = convert_linears(model, lambda linear: SharedLinear.from_linear(linear, 2))
        >>> report.changed  # the paths count the links of a Sequential, not its functions
        ('/0', '/1')
        >>> model[0]
        SharedLinear(in_size=6, out_size=4, n_shared=2, nobias=False)
    """
    return _replace_links(model, include, 'convert_linears', L.Linear, _why_not_linear, convert)


def share_linears(model: chainer.Link, n_shared: int, *,
                  include: Include = None) -> ConversionReport:
    """Replaces the ``L.Linear`` links of a model by ``SharedLinear``, in place.

    :func:`convert_linears` with :meth:`SharedLinear.from_linear(link,
    n_shared) <chainer_sharedlinear.SharedLinear.from_linear>`: every selected
    ``L.Linear`` whose ``in_size`` ``n_shared`` divides becomes the closest
    shared layer. An ``n_shared`` that fits no layer is not an error: the
    report says nothing changed.

    Args:
        model (~chainer.Link): The model; changed in place.
        n_shared (int): The number of input blocks that will share each weight.
        include: Which ``L.Linear`` links to convert, as in :func:`convert_linears`.

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
          skipped /0: in_size=784 is not divisible by n_shared=10: ...
        Call optimizer.setup(model) again before training: ...
        >>> model[2]
        SharedLinear(in_size=1000, out_size=1000, n_shared=10, nobias=False)
    """
    n_shared = _checks.positive_int('n_shared', n_shared)
    return _replace_links(model, include, 'share_linears', L.Linear, _why_not_linear,
                          lambda link: SharedLinear.from_linear(link, n_shared))


def unshare_linears(model: chainer.Link, *, include: Include = None) -> ConversionReport:
    """Replaces the family's links in a model by ``L.Linear``, in place.

    The model-level ``to_linear()``: each selected ``SharedLinear``,
    ``HashedLinear``, ``KroneckerLinear`` or ``MonarchLinear`` becomes the ``L.Linear`` with its
    dense weight, which computes the same outputs, so that the model runs
    where this package is not installed. ``include``, tied links, hooks and
    the report are as in :func:`convert_linears`; a layer not initialised yet
    is skipped.

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
        if type(link) not in family():
            return 'a subclass of {} ({}), whose forward may differ'.format(
                next(base.__name__ for base in type(link).__mro__ if base in family()),
                type(link).__name__)
        if not link._is_initialized:
            return _checks.NOT_INITIALISED
        return None

    return _replace_links(
        model, include, 'unshare_linears', VirtualLinear, why_not,
        lambda link: link.to_linear())


def _why_not_linear(link) -> tp.Optional[str]:
    if type(link) is not L.Linear:
        return 'a subclass of L.Linear ({}), whose forward may differ'.format(
            type(link).__name__)
    if link.W.array is None:
        return _checks.NOT_INITIALISED
    return None


def family() -> tp.Tuple[type, ...]:
    """The layers of the family: the links of :mod:`chainer_sharedlinear.links` with a
    virtual weight, whose ``to_linear()`` is exact (``DistillationClassifier`` is no layer)."""
    return tuple(cls for cls in (getattr(links, name) for name in links.__all__)
                 if isinstance(cls, type) and issubclass(cls, VirtualLinear))


class _Candidate:
    """One link object of the kind converted, with all the paths it is reachable at."""

    def __init__(self, link: chainer.Link, path: str) -> None:
        self.link = link
        self.paths = [path]
        self.replacement: tp.Optional[chainer.Link] = None
        self.skipped: tp.Optional[str] = None
        self.hooks: tp.List[str] = []
        self.dropped_hooks: tp.Dict[str, str] = collections.OrderedDict()


def _replace_links(model, include, caller, kind, why_not, convert) -> ConversionReport:
    if not isinstance(model, chainer.Link):
        raise TypeError('{} expects a chainer.Link (a Chain, ChainList or Sequential), '
                        'got {}'.format(caller, type(model).__name__))
    if isinstance(model, kind):
        raise ValueError(
            '{} replaces the links inside a model, and the model is itself a {}; use {} on '
            'it instead, which returns a new link'.format(
                caller, type(model).__name__,
                'SharedLinear.from_linear' if kind is L.Linear else
                '{}.to_linear'.format(type(model).__name__)))

    links = dict(model.namedlinks())
    candidates = _candidates(links, kind)
    named = _named_links(include, links, candidates, kind)

    # Everything is made before anything is changed, so that an error leaves
    # the model as it was.
    for candidate in candidates.values():
        if not _selected(include, named, candidate):
            candidate.skipped = 'excluded by include'
            continue
        candidate.skipped = why_not(candidate.link)
        if candidate.skipped is None:
            try:
                candidate.replacement = convert(candidate.link)
            except ValueError as e:
                candidate.skipped = str(e)
        if candidate.skipped is not None:
            if id(candidate.link) in named:
                raise ValueError('include names {}, which cannot be converted: {}'.format(
                    candidate.paths[0], candidate.skipped))
            continue
        if not isinstance(candidate.replacement, chainer.Link):
            raise TypeError('{}: the conversion of {} returned {!r}, not a chainer.Link'.format(
                caller, candidate.paths[0], candidate.replacement))
        _carry_hooks(candidate)

    params_before = _count_params(model)
    for candidate in candidates.values():
        if candidate.replacement is not None:
            for path in candidate.paths:
                parent_path, _, name = path.rpartition('/')
                _replace_child(links[parent_path or '/'], name, candidate.link,
                               candidate.replacement)

    position = {path: i for i, path in enumerate(links)}
    ordered = sorted(((path, candidate) for candidate in candidates.values()
                      for path in candidate.paths), key=lambda item: position[item[0]])
    return ConversionReport(
        changed=tuple(path for path, c in ordered if c.replacement is not None),
        skipped={path: c.skipped for path, c in ordered if c.replacement is None},
        params_before=params_before,
        params_after=_count_params(model),
        tied=tuple(tuple(c.paths) for c in candidates.values() if len(c.paths) > 1),
        hooks={c.paths[0]: tuple(c.hooks) for c in candidates.values() if c.hooks},
        dropped_hooks={c.paths[0]: dict(c.dropped_hooks)
                       for c in candidates.values() if c.dropped_hooks})


def _candidates(links, kind) -> 'collections.OrderedDict[int, _Candidate]':
    """The links of ``kind`` among ``links`` (path to link), by id, each with all its paths."""
    candidates: 'collections.OrderedDict[int, _Candidate]' = collections.OrderedDict()
    for path, link in links.items():
        if isinstance(link, kind):
            if id(link) in candidates:
                candidates[id(link)].paths.append(path)
            else:
                candidates[id(link)] = _Candidate(link, path)
    return candidates


def _named_links(include, links, candidates, kind) -> tp.Set[int]:
    """The ids of the links that ``include`` names by path; every name is checked."""
    if include is None or callable(include):
        return set()
    if isinstance(include, str):
        names = [include]
    elif isinstance(include, collections.abc.Iterable):
        names = list(include)
    else:
        raise TypeError('{}, got {!r}'.format(_INCLUDE_TYPES, include))
    names_of_family = [cls.__name__ for cls in family()]
    kind_name = 'L.Linear' if kind is L.Linear else '{} or {}'.format(
        ', '.join(names_of_family[:-1]), names_of_family[-1])
    known = ', '.join(path for c in candidates.values() for path in c.paths) or 'none'
    named = set()
    for name in names:
        if not isinstance(name, str):
            raise TypeError('{}; it holds {!r}'.format(_INCLUDE_TYPES, name))
        path = name if name.startswith('/') else '/' + name
        if path not in links:
            raise ValueError('include names {!r}, but the model has no link at {}; its {} '
                             'links are: {}'.format(name, path, kind_name, known))
        link = links[path]
        if not isinstance(link, kind):
            raise ValueError('include names {}, which is a {}, not a {}'.format(
                path, type(link).__name__, kind_name))
        named.add(id(link))
    return named


def _selected(include, named, candidate) -> bool:
    if include is None:
        return True
    if callable(include):
        return any(include(path, candidate.link) for path in candidate.paths)
    return id(candidate.link) in named


def _carry_hooks(candidate) -> None:
    for name, hook in candidate.link.local_link_hooks.items():
        if name in candidate.replacement.local_link_hooks:  # to_linear carried it
            candidate.hooks.append(name)
            continue
        try:
            carry_hook(candidate.link, candidate.replacement, name, hook)
        except Exception as e:  # a hook may refuse a link in any way it likes
            candidate.dropped_hooks[name] = '{}: {}'.format(type(e).__name__, e)
        else:
            candidate.hooks.append(name)


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
