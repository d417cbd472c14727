"""Links: the family of shared-weight linear layers."""

from chainer_sharedlinear.links.hashed_linear import HashedLinear  # NOQA
from chainer_sharedlinear.links.kronecker_linear import KroneckerLinear  # NOQA
from chainer_sharedlinear.links.monarch_linear import MonarchLinear  # NOQA
from chainer_sharedlinear.links.shared_linear import SharedLinear  # NOQA

__all__ = ['HashedLinear', 'KroneckerLinear', 'MonarchLinear', 'SharedLinear']
