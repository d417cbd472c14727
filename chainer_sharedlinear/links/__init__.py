"""Links: the family of shared-weight linear layers."""

from chainer_sharedlinear.links.clustered_linear import ClusteredLinear  # NOQA
from chainer_sharedlinear.links.clustered_low_rank_linear import ClusteredLowRankLinear  # NOQA
from chainer_sharedlinear.links.distillation_classifier import DistillationClassifier  # NOQA
from chainer_sharedlinear.links.hashed_linear import HashedLinear  # NOQA
from chainer_sharedlinear.links.kronecker_linear import KroneckerLinear  # NOQA
from chainer_sharedlinear.links.low_rank_linear import LowRankLinear  # NOQA
from chainer_sharedlinear.links.monarch_linear import MonarchLinear  # NOQA
from chainer_sharedlinear.links.shared_linear import SharedLinear  # NOQA

__all__ = ['ClusteredLinear', 'ClusteredLowRankLinear', 'DistillationClassifier', 'HashedLinear',
           'KroneckerLinear', 'LowRankLinear', 'MonarchLinear', 'SharedLinear']
