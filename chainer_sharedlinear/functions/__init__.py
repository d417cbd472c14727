"""Functions: the shared-weight linear function and the 2016 tiled oracle."""

from chainer_sharedlinear.functions.fold import fold, unfold  # NOQA
from chainer_sharedlinear.functions.shared_linear import (  # NOQA
    SharedLinearFunction,
    SharedLinearGradData,
    SharedLinearGradWeight,
    shared_linear,
)
from chainer_sharedlinear.functions.tiled_linear import TiledLinearFunction  # NOQA

__all__ = [
    'SharedLinearFunction', 'SharedLinearGradData', 'SharedLinearGradWeight',
    'TiledLinearFunction', 'fold', 'shared_linear', 'unfold',
]
