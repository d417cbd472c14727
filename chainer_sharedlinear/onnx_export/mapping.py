"""The converters of this package, by the class name of the node each converts."""

from chainer_sharedlinear.onnx_export.clustered import (
    convert_clustered_linear,
    convert_tied_weight,
)
from chainer_sharedlinear.onnx_export.hashed import convert_hashed_linear
from chainer_sharedlinear.onnx_export.kronecker import convert_kronecker_linear
from chainer_sharedlinear.onnx_export.monarch import convert_monarch_linear
from chainer_sharedlinear.onnx_export.normalization import convert_layer_normalization
from chainer_sharedlinear.onnx_export.reshape import convert_reshape
from chainer_sharedlinear.onnx_export.shared import convert_shared_linear
from chainer_sharedlinear.onnx_export.split import convert_split_axis
from chainer_sharedlinear.onnx_export.tied import convert_tied_linear

# Keyed by FunctionNode class name, as onnx_chainer looks them up; the package
# documents the dict as chainer_sharedlinear.onnx_export.converters.
converters = {
    'SharedLinearFunction': convert_shared_linear,
    'TiedLinearFunction': convert_tied_linear,
    'HashedLinearFunction': convert_hashed_linear,
    'ClusteredLinearFunction': convert_clustered_linear,
    'TiedWeight': convert_tied_weight,
    'KroneckerLinearFunction': convert_kronecker_linear,
    'MonarchLinearFunction': convert_monarch_linear,
    'Reshape': convert_reshape,
    'LayerNormalization': convert_layer_normalization,
    'SplitAxis': convert_split_axis,
}
