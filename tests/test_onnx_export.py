"""ONNX export through onnx_chainer, checked by running the result in onnxruntime."""

import sys
import warnings

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
import pytest

from chainer_sharedlinear import (
    HashedLinear,
    KroneckerLinear,
    SharedLinear,
    share_linears,
    shared_linear,
)
from chainer_sharedlinear.onnx_export import converters, export

_NEEDS = ('needs the "onnx" extra (onnx==1.14.1, onnxruntime): '
          'pip install ".[onnx]", as scripts/test.sh does')


@pytest.fixture
def ort():
    pytest.importorskip('onnx', reason=_NEEDS)
    return pytest.importorskip('onnxruntime', reason=_NEEDS)


def _run(ort, onnx_model, *inputs):
    options = ort.SessionOptions()
    options.log_severity_level = 3  # not the warning about initializers listed as inputs
    session = ort.InferenceSession(
        onnx_model.SerializeToString(), options, providers=['CPUExecutionProvider'])
    names = [i.name for i in session.get_inputs()][:len(inputs)]
    return session.run(None, dict(zip(names, inputs)))


def _standard_normal(shape, seed, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _shared_layers(model):
    return [link for link in model.links() if isinstance(link, SharedLinear)]


def _assert_no_tiled_weight(onnx_model, model):
    dense_shapes = {(link.out_size, link.in_size) for link in _shared_layers(model)
                    if link.n_shared > 1}
    for tensor in onnx_model.graph.initializer:
        assert tuple(tensor.dims) not in dense_shapes, tensor.name
    assert 'Tile' not in {node.op_type for node in onnx_model.graph.node}


class TwoLayers(chainer.Chain):

    def __init__(self, n_shared, nobias):
        super().__init__()
        with self.init_scope():
            self.l1 = SharedLinear(24, 12, n_shared=n_shared, nobias=nobias,
                                   initial_bias=_standard_normal(12, 0))
            self.l2 = SharedLinear(12, 5, n_shared=n_shared, nobias=nobias)

    def forward(self, x):
        return self.l2(F.relu(self.l1(x)))


@pytest.mark.parametrize('opset_version', [7, 9, 11, 13])
@pytest.mark.parametrize('n_shared', [1, 2, 3])
@pytest.mark.parametrize('nobias', [False, True])
def test_export_matches_chainer(ort, opset_version, n_shared, nobias):
    np.random.seed(0)
    model = TwoLayers(n_shared, nobias)
    x = _standard_normal((4, 24), 1)
    expected = model(x).array
    with warnings.catch_warnings():
        # onnx_chainer warns about opsets it did not test (13, for ReduceSum's new form).
        warnings.simplefilter('ignore', UserWarning)
        onnx_model = export(model, x, opset_version=opset_version)

    y, = _run(ort, onnx_model, x)
    assert y.dtype == np.float32 and y.shape == (4, 5)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)

    _assert_no_tiled_weight(onnx_model, model)
    weights = {tensor.name: tuple(tensor.dims) for tensor in onnx_model.graph.initializer}
    assert weights['param_l1_W'] == (12, 24 // n_shared)
    assert weights['param_l2_W'] == (5, 12 // n_shared)
    ops = [node.op_type for node in onnx_model.graph.node if node.op_type != 'Constant']
    fold = ['Reshape', 'ReduceSum'] if n_shared > 1 else []
    assert ops == fold + ['Gemm', 'Relu'] + fold + ['Gemm']


def test_export_with_several_batch_axes(ort):
    class Model(chainer.Chain):
        def __init__(self):
            super().__init__()
            with self.init_scope():
                self.l = SharedLinear(12, 5, n_shared=4)

        def forward(self, x):
            return self.l(x, n_batch_axes=2)

    model = Model()
    x = _standard_normal((2, 3, 12), 0)
    onnx_model = export(model, x)
    y, = _run(ort, onnx_model, x)
    assert y.shape == (2, 3, 5)
    np.testing.assert_allclose(y, model(x).array, rtol=1e-5, atol=1e-6)
    _assert_no_tiled_weight(onnx_model, model)


def test_export_of_a_converted_dense_model(ort):
    np.random.seed(0)
    model = chainer.Sequential(L.Linear(24, 16), F.relu, L.Linear(16, 10), F.relu,
                               L.Linear(10, 3))
    share_linears(model, 4)  # the last layer (10 inputs) stays dense
    x = _standard_normal((6, 24), 1)
    onnx_model = export(model, x)
    y, = _run(ort, onnx_model, x)
    np.testing.assert_allclose(y, model(x).array, rtol=1e-5, atol=1e-6)
    _assert_no_tiled_weight(onnx_model, model)


def test_the_exported_graph_takes_another_batch_size(ort):
    model = TwoLayers(3, False)
    onnx_model = export(model, _standard_normal((2, 24), 0), input_shapes=[('batch', 24)])
    x = _standard_normal((7, 24), 1)
    y, = _run(ort, onnx_model, x)
    np.testing.assert_allclose(y, model(x).array, rtol=1e-5, atol=1e-6)


def test_input_wider_than_the_weight(ort):
    # Chainer multiplies a float64 input by a float32 weight in float64.
    model = chainer.Sequential(SharedLinear(12, 5, n_shared=3, nobias=True))
    x = _standard_normal((2, 12), 0, np.float64)
    expected = model(x).array
    assert expected.dtype == np.float64
    y, = _run(ort, export(model, x), x)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, expected, rtol=1e-12)


@pytest.mark.parametrize('bias', [False, True])
def test_weight_wider_than_the_input(ort, bias):
    # Chainer adds the float16 blocks in float32, multiplies by the float32 weight,
    # rounds the product to float16, then adds a float16 bias.
    class Model(chainer.Chain):
        def __init__(self):
            super().__init__()
            with self.init_scope():
                self.W = chainer.Parameter(_standard_normal((5, 4), 0))
                self.b = chainer.Parameter(_standard_normal(5, 1, np.float16)) if bias else None

        def forward(self, x):
            return shared_linear(x, self.W, self.b)

    model = Model()
    x = _standard_normal((3, 12), 2, np.float16)
    expected = model(x).array
    onnx_model = export(model, x)
    assert [node.op_type for node in onnx_model.graph.node if node.op_type != 'Constant'] == (
        ['Reshape', 'Cast', 'ReduceSum', 'Gemm', 'Cast'] + (['Add'] if bias else []))
    y, = _run(ort, onnx_model, x)
    assert y.dtype == np.float16
    # Both sum in float32, in other orders, and round to float16 (11 significant
    # bits): one unit in the last place at most.
    np.testing.assert_allclose(y, expected, rtol=2 ** -10, atol=0)


def test_onnx_chainer_export_with_the_converters_argument(ort):
    import onnx_chainer
    model = TwoLayers(2, False)
    x = _standard_normal((2, 24), 0)
    with pytest.raises(ValueError, match='SharedLinearFunction is not supported'):
        onnx_chainer.export(model, x)
    with pytest.warns(FutureWarning, match='external_converters is experimental'):
        onnx_model = onnx_chainer.export(model, x, external_converters=converters)
    y, = _run(ort, onnx_model, x)
    np.testing.assert_allclose(y, model(x).array, rtol=1e-5, atol=1e-6)


def test_export_does_not_warn_about_external_converters(ort):
    with warnings.catch_warnings():
        warnings.simplefilter('error', FutureWarning)
        export(TwoLayers(2, False), _standard_normal((2, 24), 0))


def test_export_takes_your_own_converter_first(ort):
    calls = []

    def mine(params):
        calls.append(params.func)
        return converters['SharedLinearFunction'](params)

    export(TwoLayers(2, False), _standard_normal((2, 24), 0),
           external_converters={'SharedLinearFunction': mine})
    assert len(calls) == 2


def test_missing_onnx_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, 'onnx.mapping', None)  # as with onnx >= 1.16
    with pytest.raises(ImportError, match=r'exporting to ONNX needs onnx==1.14.1 and '
                                          r'onnxruntime, the "onnx" extra'):
        export(TwoLayers(2, False), _standard_normal((2, 24), 0))


# --- The family: HashedLinear, KroneckerLinear and tied_linear (issue 9) ------------------


class _Two(chainer.Chain):
    """Two layers of the family with a ReLU between them, as the model to export."""

    def __init__(self, l1, l2):
        super().__init__()
        with self.init_scope():
            self.l1 = l1
            self.l2 = l2

    def forward(self, x):
        return self.l2(F.relu(self.l1(x)))


def _export_quietly(model, x, opset_version=None):
    with warnings.catch_warnings():
        # onnx_chainer warns about opsets it did not test (13).
        warnings.simplefilter('ignore', UserWarning)
        kwargs = {} if opset_version is None else {'opset_version': opset_version}
        return export(model, x, **kwargs)


def _export_and_compare(ort, model, x, opset_version, atol):
    """Exports ``model`` and checks that onnxruntime gives Chainer's float32 output."""
    expected = model(x).array
    onnx_model = _export_quietly(model, x, opset_version)
    y, = _run(ort, onnx_model, x)
    assert y.dtype == np.float32 and y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=atol)
    return onnx_model


def _tensors(onnx_model):
    """Every array the file holds: its initializers and the values of its Constant nodes."""
    from onnx import numpy_helper
    arrays = {tensor.name: numpy_helper.to_array(tensor)
              for tensor in onnx_model.graph.initializer}
    for node in onnx_model.graph.node:
        if node.op_type == 'Constant':
            value, = [a.t for a in node.attribute if a.name == 'value']
            arrays[node.output[0]] = numpy_helper.to_array(value)
    return arrays


def _trained(layer, seed):
    rng = np.random.default_rng(seed)
    for param in layer.params():
        param.array[...] = rng.standard_normal(param.shape)
    return layer


@pytest.mark.parametrize('opset_version', [7, 9, 11, 13])
@pytest.mark.parametrize('nobias', [False, True])
def test_export_of_hashed_layers_matches_chainer(ort, opset_version, nobias):
    model = _Two(_trained(HashedLinear(24, 12, n_weights=40, seed=3, nobias=nobias), 0),
                 _trained(HashedLinear(12, 5, n_weights=9, seed=4, nobias=nobias), 1))
    onnx_model = _export_and_compare(ort, model, _standard_normal((4, 24), 2), opset_version,
                                     atol=1e-6)

    # The file holds W and the index map, as 32-bit integers with the signs folded in:
    # index k + n_weights for a sign of -1, into [W, -W].
    arrays = _tensors(onnx_model)
    assert arrays['param_l1_W'].shape == (40,) and arrays['param_l2_W'].shape == (9,)
    maps = [a for a in arrays.values() if a.dtype == np.int32 and a.ndim == 2]
    assert sorted(a.shape for a in maps) == [(5, 12), (12, 24)]
    for layer in (model.l1, model.l2):
        bucket, sign = layer.index_map()
        folded, = [a for a in maps if a.shape == (layer.out_size, layer.in_size)]
        np.testing.assert_array_equal(folded, bucket + layer.n_weights * (sign < 0))
    ops = {node.op_type for node in onnx_model.graph.node}
    assert {'Gather', 'Concat', 'Neg'} <= ops


@pytest.mark.parametrize('opset_version', [7, 9, 11, 13])
@pytest.mark.parametrize('n_terms', [1, 3])
@pytest.mark.parametrize('nobias', [False, True])
def test_export_of_kronecker_layers_matches_chainer(ort, opset_version, n_terms, nobias):
    model = _Two(_trained(KroneckerLinear(24, 12, in_factors=(4, 6), out_factors=(3, 4),
                                          n_terms=n_terms, nobias=nobias), 0),
                 _trained(KroneckerLinear(12, 6, n_terms=n_terms, nobias=nobias), 1))
    onnx_model = _export_and_compare(ort, model, _standard_normal((4, 24), 2), opset_version,
                                     atol=1e-5)

    # A and B as they are; no (out_size, in_size) weight in the file, nor a Kronecker
    # product at run time.
    arrays = _tensors(onnx_model)
    assert arrays['param_l1_A'].shape == (n_terms, 3, 4)
    assert arrays['param_l1_B'].shape == (n_terms, 4, 6)
    assert arrays['param_l2_A'].shape == (n_terms, 2, 3)
    for name, array in arrays.items():
        assert array.shape not in {(12, 24), (24, 12), (6, 12), (12, 6)}, name
    assert max(a.size for a in arrays.values()) == n_terms * 4 * 6
    assert 'MatMul' in {node.op_type for node in onnx_model.graph.node}


def test_export_of_kronecker_layers_takes_another_batch_size(ort):
    model = _Two(KroneckerLinear(24, 12, n_terms=2), KroneckerLinear(12, 6))
    onnx_model = export(model, _standard_normal((2, 24), 0), input_shapes=[('batch', 24)])
    x = _standard_normal((7, 24), 1)
    y, = _run(ort, onnx_model, x)
    np.testing.assert_allclose(y, model(x).array, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('n_terms', [1, 3])
@pytest.mark.parametrize('bias', [False, True])
def test_kronecker_factors_wider_than_the_input(ort, n_terms, bias):
    # Chainer multiplies a float16 input by float32 factors in float32, rounds the
    # product to float16, then adds a float16 bias.
    from chainer_sharedlinear import kronecker_linear

    class Model(chainer.Chain):
        def __init__(self):
            super().__init__()
            with self.init_scope():
                self.A = chainer.Parameter(_standard_normal((n_terms, 3, 4), 0))
                self.B = chainer.Parameter(_standard_normal((n_terms, 2, 3), 1))
                self.b = chainer.Parameter(_standard_normal(6, 2, np.float16)) if bias else None

        def forward(self, x):
            return kronecker_linear(x, self.A, self.B, self.b)

    model = Model()
    x = _standard_normal((5, 12), 3, np.float16)
    expected = model(x).array
    assert expected.dtype == np.float16
    y, = _run(ort, export(model, x), x)
    assert y.dtype == np.float16
    # Both compute in float32, in other orders, and round to float16; the bias is
    # then added in float16: a unit in the last place, or two.
    np.testing.assert_allclose(y, expected, rtol=2 ** -9, atol=2 ** -14)


@pytest.mark.parametrize('opset_version', [7, 9, 11, 13])
def test_export_of_a_tied_linear_model_matches_chainer(ort, opset_version):
    from chainer_sharedlinear import tied_linear

    out_size, in_size = 5, 8
    i, j = np.ogrid[:out_size, :in_size]
    index = j - i + out_size - 1  # Toeplitz: one stored weight per diagonal
    sign = np.where((i + j) % 3 == 0, -1, 1)

    class Toeplitz(chainer.Chain):
        def __init__(self):
            super().__init__()
            with self.init_scope():
                self.W = chainer.Parameter(_standard_normal(out_size + in_size - 1, 0))
                self.b = chainer.Parameter(_standard_normal(out_size, 1))

        def forward(self, x):
            return tied_linear(x, self.W, index, sign, self.b)

    onnx_model = _export_and_compare(ort, Toeplitz(), _standard_normal((3, in_size), 2),
                                     opset_version, atol=1e-6)
    folded, = [a for a in _tensors(onnx_model).values() if a.dtype == np.int32]
    np.testing.assert_array_equal(folded, index + (out_size + in_size - 1) * (sign < 0))


def test_export_of_a_tied_linear_model_without_signs(ort):
    from chainer_sharedlinear import tied_linear

    index = np.array([[0, 1, 2, 1], [2, 2, 0, 0]])

    class Model(chainer.Chain):
        def __init__(self):
            super().__init__()
            with self.init_scope():
                self.W = chainer.Parameter(_standard_normal((3,), 0))

        def forward(self, x):
            return tied_linear(x, self.W, index)

    model = Model()
    x = _standard_normal((3, 4), 1)
    onnx_model = export(model, x)
    y, = _run(ort, onnx_model, x)
    np.testing.assert_allclose(y, model(x).array, rtol=1e-5, atol=1e-6)
    assert 'Neg' not in {node.op_type for node in onnx_model.graph.node}
    folded, = [a for a in _tensors(onnx_model).values() if a.dtype == np.int32]
    np.testing.assert_array_equal(folded, index)
