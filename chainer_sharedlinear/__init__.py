"""Shared-weight fully connected layers for Chainer.

``SharedLinear`` is a drop-in for ``chainer.links.Linear`` whose weight ``W``
of shape ``(out_size, in_size / n_shared)`` is reused across the
``n_shared`` blocks of the input. Importing this package changes nothing in
Chainer itself.
"""

from chainer_sharedlinear.functions import TiledLinearFunction, shared_linear  # NOQA
from chainer_sharedlinear.links import SharedLinear  # NOQA

__version__ = '0.1.0'

__all__ = ['SharedLinear', 'TiledLinearFunction', 'shared_linear']
