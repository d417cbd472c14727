"""Shared-weight fully connected layers for Chainer.

``SharedLinear`` is a drop-in for ``chainer.links.Linear`` whose weight ``W``
of shape ``(out_size, in_size / n_shared)`` is reused across the
``n_shared`` blocks of the input. Importing this package changes nothing in
Chainer itself: :func:`register` adds ``L.SharedLinear`` and
``F.shared_linear``, and :func:`share_linears` converts the ``L.Linear``
links of an existing model. ONNX export is in
:mod:`chainer_sharedlinear.onnx_export` (the ``onnx`` extra), imported only
when asked for.
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
    shared_linear,
    tied_linear,
)
from chainer_sharedlinear.links import HashedLinear, KroneckerLinear, SharedLinear  # NOQA
from chainer_sharedlinear.registration import register  # NOQA

# The one place the version is written: pyproject.toml reads it from here when building.
__version__ = '0.1.0'

__all__ = [
    'ConversionReport', 'HashedLinear', 'KroneckerLinear', 'SharedLinear',
    'TiledLinearFunction', 'convert_linears', 'hashed_linear', 'kronecker_linear', 'register',
    'share_linears', 'shared_linear', 'tied_linear', 'unshare_linears',
]
