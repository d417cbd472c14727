"""Makes the family's links and functions available in Chainer's namespaces.

Importing :mod:`chainer_sharedlinear` leaves Chainer untouched; code written
in the ``L.``/``F.`` style calls :func:`register` once, explicitly.
"""

import chainer.functions
import chainer.links

from chainer_sharedlinear import functions, links

# (module, name, object): what register() puts where.
_REGISTRY = (
    (chainer.links, 'SharedLinear', links.SharedLinear),
    (chainer.links, 'HashedLinear', links.HashedLinear),
    (chainer.links, 'KroneckerLinear', links.KroneckerLinear),
    (chainer.links, 'LowRankLinear', links.LowRankLinear),
    (chainer.links, 'ClusteredLinear', links.ClusteredLinear),
    (chainer.links, 'ClusteredLowRankLinear', links.ClusteredLowRankLinear),
    (chainer.links, 'MonarchLinear', links.MonarchLinear),
    (chainer.functions, 'shared_linear', functions.shared_linear),
    (chainer.functions, 'hashed_linear', functions.hashed_linear),
    (chainer.functions, 'kronecker_linear', functions.kronecker_linear),
    (chainer.functions, 'low_rank_linear', functions.low_rank_linear),
    (chainer.functions, 'monarch_linear', functions.monarch_linear),
    (chainer.functions, 'tied_linear', functions.tied_linear),
)

_MISSING = object()


def register() -> None:
    """Adds the family's links and functions to ``chainer.links`` and ``chainer.functions``.

    The names are ``L.SharedLinear``, ``L.HashedLinear``, ``L.KroneckerLinear``,
    ``L.LowRankLinear``, ``L.ClusteredLinear``, ``L.ClusteredLowRankLinear``,
    ``L.MonarchLinear``, ``F.shared_linear``, ``F.hashed_linear``,
    ``F.kronecker_linear``, ``F.low_rank_linear``, ``F.monarch_linear`` and
    ``F.tied_linear``. Calling
    it again does nothing. It never replaces another object that already has
    one of the names: that raises ``RuntimeError``, and then no name is added.

    .. admonition:: Example

        >>> import chainer.links as L
        >>> import chainer_sharedlinear
        >>> chainer_sharedlinear.register()
        >>> L.SharedLinear(1000, 900, n_shared=10).W.shape
        (900, 100)
    """
    # Every name is checked before any is set, so a conflict leaves Chainer as it was.
    for module, name, obj in _REGISTRY:
        existing = getattr(module, name, _MISSING)
        if existing is not _MISSING and existing is not obj:
            raise RuntimeError(
                'cannot register {0}.{1}: {0} already has a {1} ({2!r}) that is not '
                "chainer_sharedlinear's {3}.{4}; register() never replaces it. "
                'Use chainer_sharedlinear.{1} directly instead.'.format(
                    module.__name__, name, existing, obj.__module__, obj.__qualname__))
    for module, name, obj in _REGISTRY:
        setattr(module, name, obj)
