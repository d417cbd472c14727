"""Links: the shared-weight linear layer."""

from chainer_sharedlinear.links.shared_linear import SharedLinear  # NOQA

__all__ = ['SharedLinear']
