"""ONNX export of models that contain the family's layers, through ``onnx_chainer``.

``onnx_chainer`` (part of Chainer 7.8.1) converts a model by running it and
turning each :class:`chainer.FunctionNode` of the graph into ONNX nodes, with
a converter it looks up by the node's class name. It knows Chainer's own
functions only; its documented way to add one is the ``external_converters``
argument of :func:`onnx_chainer.export`. :data:`converters` is that argument
for this package, and :func:`export` passes it for you.

What the file holds, layer by layer:

- ``SharedLinear``: its fold form, as in Chainer: ``Reshape`` to
  ``(batch, n_shared, k)``, ``ReduceSum`` over the blocks (in float32 for
  float16 inputs), and ``Gemm`` with ``W`` of shape ``(out_size, k)`` and the
  bias. The tiled ``(out_size, in_size)`` weight is never built, in the file
  or at run time.
- ``KroneckerLinear``: ``A`` and ``B`` as they are, and two ``MatMul`` on the
  input reshaped to ``(batch·n1, n2)`` and ``(batch, n_terms·n1, m2)``; no
  ``(out_size, in_size)`` weight either.
- ``HashedLinear``: ``W``, and the nodes that compute each virtual weight's
  place in ``[W, -W]`` from the sizes and the seed (opset 11; see
  :func:`convert_hashed_linear`), then a ``Gather`` from ``[W, -W]`` and
  ``Gemm``: the file is about the size of ``W``.
- ``tied_linear``: ``W`` and the user's index, a constant of its smallest
  integer type with the signs folded in, the same ``Gather``, then ``Gemm``.
- ``MonarchLinear``: ``R`` and ``L``, two batched ``MatMul``, and a ``Pad``
  of the short blocks where ``n_blocks`` does not divide ``in_size``.

Chainer's ``Reshape`` has a converter here too (:func:`convert_reshape`):
the reshapes with which every layer, ``F.linear`` included, flattens an
input of several batch or feature axes and restores them, and those that
split the features of an attention into heads and merge them, keep the
batch axes free, where onnx_chainer's would write the export's batch size.

What a Transformer needs from Chainer besides has converters too:
``LayerNormalization`` (:func:`convert_layer_normalization`), which
onnx_chainer lacks, and ``SplitAxis`` from opset 13
(:func:`convert_split_axis`), where onnx_chainer's writes an invalid node.

Each converter is in the module of its pattern, as ``onnx_chainer`` keeps its
own in ``onnx_chainer.functions``: ``shared``, ``tied`` (with the ``Gather``
and ``Gemm`` that the tied, hashed and clustered layers share), ``hashed``,
``clustered``, ``kronecker``, ``monarch``, ``reshape``, ``normalization``
and ``split``; the hash's graph is
``hash_graph``, the pieces every converter uses ``graph``, the dict of them
``mapping``, and :func:`export` is in ``export``.

This package imports ``onnx`` and ``onnx_chainer`` only when a model is
exported: they come with the ``onnx`` extra (``onnx==1.14.1``; later
releases removed ``onnx.mapping``, which ``onnx_chainer`` imports).
"""

from chainer_sharedlinear.onnx_export import mapping
from chainer_sharedlinear.onnx_export.clustered import (
    convert_clustered_linear,
    convert_tied_weight,
)
from chainer_sharedlinear.onnx_export.export import export
from chainer_sharedlinear.onnx_export.hash_graph import _HashNodes  # noqa: F401 (the tests' import)
from chainer_sharedlinear.onnx_export.hashed import convert_hashed_linear
from chainer_sharedlinear.onnx_export.kronecker import convert_kronecker_linear
from chainer_sharedlinear.onnx_export.monarch import convert_monarch_linear
from chainer_sharedlinear.onnx_export.normalization import convert_layer_normalization
from chainer_sharedlinear.onnx_export.reshape import convert_reshape
from chainer_sharedlinear.onnx_export.shared import convert_shared_linear
from chainer_sharedlinear.onnx_export.split import convert_split_axis
from chainer_sharedlinear.onnx_export.tied import convert_tied_linear

#: The ``external_converters`` for :func:`onnx_chainer.export` that this
#: package needs, keyed by ``FunctionNode`` class name as ``onnx_chainer``
#: looks them up.
converters = mapping.converters

__all__ = [
    'convert_clustered_linear',
    'convert_hashed_linear',
    'convert_kronecker_linear',
    'convert_layer_normalization',
    'convert_monarch_linear',
    'convert_reshape',
    'convert_shared_linear',
    'convert_split_axis',
    'convert_tied_linear',
    'convert_tied_weight',
    'converters',
    'export',
]
