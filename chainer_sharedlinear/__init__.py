"""Shared-weight fully connected layers for Chainer.

Drop-ins for ``chainer.links.Linear`` whose ``(out_size, in_size)`` weight is
made of fewer stored numbers: :class:`SharedLinear` reuses one weight across
the blocks of the input, :class:`HashedLinear` draws every weight from buckets
by a hash (HashedNets), :class:`KroneckerLinear` is a sum of Kronecker
products (PHM layers included), :class:`MonarchLinear` a product of two
block-diagonal matrices and permutations (Monarch), :class:`LowRankLinear` a
product of two thin matrices, :class:`ClusteredLinear` a codebook of values
learned by k-means (Deep Compression), :class:`ClusteredLowRankLinear` the two
factors of a low-rank weight each made of such a codebook, and
:func:`tied_linear` takes any map of your own. Importing this package changes
nothing in Chainer itself: :func:`register` adds the links to ``chainer.links``
and the functions to ``chainer.functions``, and :func:`convert_linears` (or its
shorthand :func:`share_linears`) converts the ``L.Linear`` links of an existing
model.
ONNX export is in :mod:`chainer_sharedlinear.onnx_export` (the ``onnx``
extra), imported only when asked for.
"""

from chainer_sharedlinear.compress import (  # NOQA
    CompressedLayer,
    CompressionReport,
    apply_plan,
    compress_linears,
    knobs_at_budget,
    load_compressed,
    multiply_adds,
    pattern_names,
    read_plan,
    save_compressed,
    stored_bytes,
)
from chainer_sharedlinear.convert import (  # NOQA
    ConversionReport,
    convert_linears,
    share_linears,
    unshare_linears,
)
from chainer_sharedlinear.functions import (  # NOQA
    hashed_linear,
    kronecker_linear,
    low_rank_linear,
    monarch_linear,
    shared_linear,
    tied_linear,
)
from chainer_sharedlinear.links import (  # NOQA
    ClusteredLinear,
    ClusteredLowRankLinear,
    DistillationClassifier,
    HashedLinear,
    KroneckerLinear,
    LowRankLinear,
    MonarchLinear,
    SharedLinear,
)
from chainer_sharedlinear.multi_node import bcast_model  # NOQA
from chainer_sharedlinear.registration import register  # NOQA

# The one place the version is written: pyproject.toml reads it from here when building.
__version__ = '0.1.0'

__all__ = [
    'ClusteredLinear', 'ClusteredLowRankLinear', 'CompressedLayer', 'CompressionReport',
    'ConversionReport', 'DistillationClassifier', 'HashedLinear', 'KroneckerLinear',
    'LowRankLinear', 'MonarchLinear', 'SharedLinear', 'apply_plan', 'bcast_model',
    'compress_linears',
    'convert_linears', 'hashed_linear', 'knobs_at_budget', 'kronecker_linear', 'load_compressed',
    'low_rank_linear', 'monarch_linear', 'multiply_adds', 'pattern_names', 'read_plan', 'register',
    'save_compressed', 'share_linears', 'shared_linear', 'stored_bytes', 'tied_linear',
    'unshare_linears',
]
