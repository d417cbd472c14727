"""Functions: the family's linear functions, their nodes, and the 2016 tiled oracle."""

from chainer_sharedlinear.functions.fold import fold, unfold  # NOQA
from chainer_sharedlinear.functions.hashed_linear import hashed_index, hashed_linear  # NOQA
from chainer_sharedlinear.functions.kronecker_linear import (  # NOQA
    KroneckerLinearFunction,
    kronecker_linear,
)
from chainer_sharedlinear.functions.monarch_linear import (  # NOQA
    MonarchLinearFunction,
    monarch_linear,
)
from chainer_sharedlinear.functions.shared_linear import (  # NOQA
    SharedLinearFunction,
    SharedLinearGradData,
    SharedLinearGradWeight,
    shared_linear,
)
from chainer_sharedlinear.functions.tied_linear import (  # NOQA
    TiedLinearFunction,
    TiedWeight,
    TiedWeightGrad,
    tied_linear,
)
from chainer_sharedlinear.functions.tiled_linear import TiledLinearFunction  # NOQA

__all__ = [
    'KroneckerLinearFunction', 'MonarchLinearFunction', 'SharedLinearFunction',
    'SharedLinearGradData', 'SharedLinearGradWeight', 'TiedLinearFunction', 'TiedWeight',
    'TiedWeightGrad', 'TiledLinearFunction', 'fold', 'hashed_index', 'hashed_linear',
    'kronecker_linear', 'monarch_linear', 'shared_linear', 'tied_linear', 'unfold',
]
