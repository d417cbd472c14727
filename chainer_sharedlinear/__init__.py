"""Shared-weight fully connected layers for Chainer.

Drop-ins for ``chainer.links.Linear`` whose ``(out_size, in_size)`` weight is
made of fewer stored numbers: :class:`SharedLinear` reuses one weight across
the blocks of the input, :class:`HashedLinear` draws every weight from buckets
by a hash (HashedNets), :class:`KroneckerLinear` is a sum of Kronecker
products (PHM layers included), :class:`MonarchLinear` is a product of two
block-diagonal matrices and permutations (Monarch), and :func:`tied_linear`
takes any map of your own. Importing this package changes nothing in Chainer itself:
:func:`register` adds the links to ``chainer.links`` and the functions to
``chainer.functions``, and :func:`convert_linears` (or its shorthand
:func:`share_linears`) converts the ``L.Linear`` links of an existing model.
ONNX export is in :mod:`chainer_sharedlinear.onnx_export` (the ``onnx``
extra), imported only when asked for.
"""

from chainer_sharedlinear.convert import (  # NOQA
    ConversionReport,
    convert_linears,
    share_linears,
    unshare_linears,
)
from chainer_sharedlinear.functions import (  # NOQA
    TiledLinearFunction,
    hashed_linear,
    kronecker_linear,
    monarch_linear,
    shared_linear,
    tied_linear,
)
from chainer_sharedlinear.links import (  # NOQA
    HashedLinear,
    KroneckerLinear,
    MonarchLinear,
    SharedLinear,
)
from chainer_sharedlinear.registration import register  # NOQA

# The one place the version is written: pyproject.toml reads it from here when building.
__version__ = '0.1.0'

__all__ = [
    'ConversionReport', 'HashedLinear', 'KroneckerLinear', 'MonarchLinear', 'SharedLinear',
    'TiledLinearFunction', 'convert_linears', 'hashed_linear', 'kronecker_linear',
    'monarch_linear', 'register', 'share_linears', 'shared_linear', 'tied_linear',
    'unshare_linears',
]
