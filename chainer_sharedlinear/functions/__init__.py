"""Functions: the family's linear functions, and the hash of :func:`hashed_linear`.

As with :func:`chainer.functions.linear`, whose node stays in
``chainer.functions.connection.linear``, the nodes these functions apply are
importable from their own modules and not exported here:
``SharedLinearFunction``, ``SharedLinearGradData`` and ``SharedLinearGradWeight``
from ``chainer_sharedlinear.functions.shared_linear``; ``TiedLinearFunction``,
``TiedWeight`` and ``TiedWeightGrad`` from ``chainer_sharedlinear.functions.tied_linear``;
``KroneckerLinearFunction`` from ``chainer_sharedlinear.functions.kronecker_linear``;
``fold`` and ``unfold`` from ``chainer_sharedlinear.functions.fold``.
"""

from chainer_sharedlinear.functions.hashed_linear import hashed_index, hashed_linear  # NOQA
from chainer_sharedlinear.functions.kronecker_linear import kronecker_linear  # NOQA
from chainer_sharedlinear.functions.low_rank_linear import low_rank_linear  # NOQA
from chainer_sharedlinear.functions.monarch_linear import monarch_linear  # NOQA
from chainer_sharedlinear.functions.shared_linear import shared_linear  # NOQA
from chainer_sharedlinear.functions.tied_linear import tied_linear  # NOQA

__all__ = ['hashed_index', 'hashed_linear', 'kronecker_linear', 'low_rank_linear',
           'monarch_linear', 'shared_linear', 'tied_linear']
