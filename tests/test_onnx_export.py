"""ONNX export through onnx_chainer, checked by running the result in onnxruntime."""

import sys
import warnings

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
import pytest

from chainer_sharedlinear import (
    ClusteredLinear,
    ClusteredLowRankLinear,
    HashedLinear,
    KroneckerLinear,
    LowRankLinear,
    MonarchLinear,
    SharedLinear,
    share_linears,
    shared_linear,
)
from chainer_sharedlinear.onnx_export import converters, export
from tests.helpers import onnx_session, onnxruntime_or_skip, run_onnx


@pytest.fixture
def ort():
    return onnxruntime_or_skip()


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

    y, = run_onnx(onnx_model, x)
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
    y, = run_onnx(onnx_model, x)
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
    y, = run_onnx(onnx_model, x)
    np.testing.assert_allclose(y, model(x).array, rtol=1e-5, atol=1e-6)
    _assert_no_tiled_weight(onnx_model, model)


def test_the_exported_graph_takes_another_batch_size(ort):
    model = TwoLayers(3, False)
    onnx_model = export(model, _standard_normal((2, 24), 0), input_shapes=[('batch', 24)])
    x = _standard_normal((7, 24), 1)
    y, = run_onnx(onnx_model, x)
    np.testing.assert_allclose(y, model(x).array, rtol=1e-5, atol=1e-6)


def test_input_wider_than_the_weight(ort):
    # Chainer multiplies a float64 input by a float32 weight in float64.
    model = chainer.Sequential(SharedLinear(12, 5, n_shared=3, nobias=True))
    x = _standard_normal((2, 12), 0, np.float64)
    expected = model(x).array
    assert expected.dtype == np.float64
    y, = run_onnx(export(model, x), x)
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
    y, = run_onnx(onnx_model, x)
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
    y, = run_onnx(onnx_model, x)
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
    y, = run_onnx(onnx_model, x)
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


@pytest.mark.parametrize('opset_version', [11, 13, 18])
@pytest.mark.parametrize('nobias', [False, True])
def test_export_of_hashed_layers_matches_chainer(ort, opset_version, nobias):
    model = _Two(_trained(HashedLinear(24, 12, n_weights=40, seed=3, nobias=nobias), 0),
                 _trained(HashedLinear(12, 5, n_weights=9, seed=4, nobias=nobias), 1))
    onnx_model = _export_and_compare(ort, model, _standard_normal((4, 24), 2), opset_version,
                                     atol=1e-6)

    # The file holds W, and the graph computes the map: no array of the layer's shape.
    arrays = _tensors(onnx_model)
    assert arrays['param_l1_W'].shape == (40,) and arrays['param_l2_W'].shape == (9,)
    for name, array in arrays.items():
        assert array.size < 5 * 12, name
    ops = {node.op_type for node in onnx_model.graph.node}
    assert {'Range', 'Gather', 'Concat', 'Neg'} <= ops
    # From opset 18 the hash is computed in uint32 with BitwiseXor, no longer in uint64.
    assert ('BitwiseXor' in ops) == (opset_version >= 18)


@pytest.mark.parametrize('opset_version', [7, 9])
def test_export_of_hashed_layers_below_opset_11_stores_the_map_and_says_so(ort, opset_version):
    model = _Two(_trained(HashedLinear(24, 12, n_weights=40, seed=3), 0),
                 _trained(HashedLinear(12, 20, n_weights=200, seed=4), 1))
    x = _standard_normal((4, 24), 2)
    with pytest.warns(UserWarning, match=r'opset_version {} has no Range \(opset 11\).*12 x 24 '
                                         r'index map is stored.*288 bytes where W takes 160'
                      .format(opset_version)):
        onnx_model = export(model, x, opset_version=opset_version)
    y, = run_onnx(onnx_model, x)
    np.testing.assert_allclose(y, model(x).array, rtol=1e-5, atol=1e-6)
    # Each map in the smallest integer type that holds it: into [W, -W], the signs folded in.
    maps = {a.shape: a for a in _tensors(onnx_model).values() if a.ndim == 2}
    assert maps[(12, 24)].dtype == np.uint8 and maps[(20, 12)].dtype == np.uint16
    for layer in (model.l1, model.l2):
        np.testing.assert_array_equal(maps[(layer.out_size, layer.in_size)],
                                      layer.signed_index())


def test_a_hashed_layer_can_ship_its_map_instead(ort):
    model = _Two(_trained(HashedLinear(24, 12, n_weights=40, seed=3), 0),
                 _trained(HashedLinear(12, 20, n_weights=200, seed=4), 1))
    x = _standard_normal((4, 24), 2)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        onnx_model = export(model, x, hash_in_graph=False)
    y, = run_onnx(onnx_model, x)
    np.testing.assert_allclose(y, model(x).array, rtol=1e-5, atol=1e-6)
    maps = {a.shape: a for a in _tensors(onnx_model).values() if a.ndim == 2}
    assert maps[(12, 24)].dtype == np.uint8 and maps[(20, 12)].dtype == np.uint16
    assert 'Range' not in {node.op_type for node in onnx_model.graph.node}


def _hash_session(ort, build, out_type, bitwise=False):
    """onnxruntime's session of the graph that ``build(nodes, 'z')`` makes of the hash's nodes.

    ``_HashNodes`` at opset 11 on uint64 values, or with ``bitwise``
    ``_BitwiseHashNodes`` at opset 18 on uint32 values.
    """
    import onnx

    from chainer_sharedlinear.onnx_export.hash_graph import _BitwiseHashNodes, _HashNodes
    nodes = (_BitwiseHashNodes if bitwise else _HashNodes)(onnx, 'h_')
    z = onnx.helper.make_tensor_value_info(
        'z', onnx.TensorProto.UINT32 if bitwise else onnx.TensorProto.UINT64, ['n', 1])
    out = build(nodes, 'z')
    graph = onnx.helper.make_graph(
        nodes.nodes, 'hash', [z] if 'z' in {i for n in nodes.nodes for i in n.input} else [],
        [onnx.helper.make_tensor_value_info(out, out_type, ['rows', 'columns'])])
    model = onnx.helper.make_model(graph, opset_imports=[
        onnx.helper.make_opsetid('', 18 if bitwise else 11)])
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=['CPUExecutionProvider'])


@pytest.mark.parametrize('bitwise', [False, True], ids=['opset11-uint64', 'opset18-uint32'])
def test_the_in_graph_mixer_is_lowbias32_on_every_uint32(ort, bitwise):
    import onnx

    from chainer_sharedlinear.functions.hashed_linear import mix32
    dtype = np.uint32 if bitwise else np.uint64
    session = _hash_session(ort, lambda nodes, z: nodes.mix(z),
                            onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), bitwise)
    rng = np.random.default_rng(0)
    # Every product of the mixer passes 2**32 for these; the extremes too.
    z = np.concatenate([[0, 1, 2 ** 16 - 1, 2 ** 16, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1],
                        rng.integers(0, 2 ** 32, 100000)]).astype(np.uint32)
    got, = session.run(None, {'z': z.astype(dtype)[:, None]})
    np.testing.assert_array_equal(got[:, 0], mix32(z))


def test_the_in_graph_xor_is_exact_on_every_pair_of_bytes_and_past_31_bits(ort):
    import onnx
    key = 0xdeadbeef
    session = _hash_session(ort, lambda nodes, z: nodes.xor(z, nodes.const(key)),
                            onnx.TensorProto.UINT64)
    z = np.concatenate([np.arange(2 ** 16), np.arange(2 ** 32 - 2 ** 16, 2 ** 32)])
    got, = session.run(None, {'z': z.astype(np.uint64)[:, None]})
    np.testing.assert_array_equal(got[:, 0], z ^ key)


@pytest.mark.parametrize('bitwise', [False, True], ids=['opset11-uint64', 'opset18-uint32'])
@pytest.mark.parametrize('out_size, in_size, n_weights, seed', [
    (3, 70000, 2 ** 17 + 3, 2 ** 32 - 1),  # columns past 16 bits, the largest seed
    (50, 300, 14999, 123),
    (1, 1, 1, 0),
])
def test_the_in_graph_hash_is_signed_hashed_index(ort, out_size, in_size, n_weights, seed,
                                                  bitwise):
    import onnx

    from chainer_sharedlinear.functions.hashed_linear import hashed_index, signed_hashed_index
    session = _hash_session(
        ort, lambda nodes, z: nodes.signed_index(out_size, in_size, n_weights, seed),
        onnx.TensorProto.INT32 if bitwise else onnx.TensorProto.INT64, bitwise)
    got, = session.run(None, {})
    expected = signed_hashed_index(out_size, in_size, n_weights, seed)
    np.testing.assert_array_equal(got, expected)
    bucket, sign = hashed_index(out_size, in_size, n_weights, seed)
    np.testing.assert_array_equal(got, bucket + n_weights * (sign < 0))


def _npz_bytes(model):
    import io
    f = io.BytesIO()
    chainer.serializers.save_npz(f, model)
    return len(f.getvalue())


def _file_bound(model):
    return 1.1 * _npz_bytes(model) + 16 * 1024


class _Toeplitz(chainer.Chain):
    """A ``tied_linear`` layer whose index, its own data, is saved with it."""

    def __init__(self, n_weights, out_size, in_size, signed):
        super().__init__()
        rng = np.random.default_rng(0)
        with self.init_scope():
            self.W = chainer.Parameter(rng.standard_normal(n_weights).astype(np.float32))
        self.add_persistent('index', rng.integers(0, n_weights, (out_size, in_size))
                            .astype(np.uint16))
        self.add_persistent('sign', np.where(rng.random((out_size, in_size)) < 0.5, -1, 1)
                            .astype(np.int8) if signed else None)

    def forward(self, x):
        from chainer_sharedlinear import tied_linear
        sign = None if self.sign is None else self.sign.astype(np.float32)
        return tied_linear(x, self.W, self.index, sign)


@pytest.mark.parametrize('layer', [
    lambda: L.Linear(1000, 900),
    lambda: HashedLinear(1000, 900, n_weights=1000 * 900 // 64),
    lambda: HashedLinear(1000, 900, n_weights=1000 * 900 // 8, seed=5),
    lambda: HashedLinear(50, 40, n_weights=20, nobias=True),
    lambda: SharedLinear(1000, 900, n_shared=10),
    lambda: KroneckerLinear(1000, 900),
    lambda: KroneckerLinear(1000, 900, n_terms=4),
    lambda: _Toeplitz(30000, 300, 200, signed=False),
    lambda: _Toeplitz(100, 300, 200, signed=True),
    lambda: LowRankLinear(1000, 900, rank=56),
    lambda: ClusteredLinear(1000, 900, n_clusters=16),
    lambda: ClusteredLinear(1000, 900, n_clusters=300),
    lambda: ClusteredLinear(37, 11, n_clusters=2, nobias=True),
    lambda: ClusteredLowRankLinear(1000, 900, rank=100, n_clusters=16),
    lambda: ClusteredLowRankLinear(1000, 900, rank=60, n_clusters=300),
], ids=['Linear', 'Hashed/64', 'Hashed/8', 'Hashed-small', 'Shared10', 'Kronecker',
        'Kronecker4', 'tied-uint16', 'tied-uint8-signed', 'LowRank56', 'Clustered16',
        'Clustered300', 'Clustered2', 'ClusteredLowRank16', 'ClusteredLowRank300'])
def test_the_onnx_file_of_a_layer_is_about_the_size_of_its_npz(ort, layer):
    layer = layer()
    model = layer if isinstance(layer, _Toeplitz) else chainer.Sequential(layer)
    in_size = 200 if isinstance(layer, _Toeplitz) else layer.in_size
    onnx_model = export(model, _standard_normal((8, in_size), 0))
    assert len(onnx_model.SerializeToString()) <= _file_bound(model)


def test_a_hashed_mlp_file_is_about_the_size_of_its_npz_and_a_graph_per_layer(ort):
    # The bound of one layer, with one graph of the hash for each layer.
    model = chainer.Sequential(HashedLinear(784, 1000, n_weights=784 * 1000 // 32), F.relu,
                               HashedLinear(1000, 1000, n_weights=1000 * 1000 // 32), F.relu,
                               HashedLinear(1000, 10, n_weights=1000 * 10 // 32))
    onnx_model = export(model, _standard_normal((8, 784), 0))
    assert len(onnx_model.SerializeToString()) <= _file_bound(model) + 2 * 16 * 1024


def test_the_batch_axis_is_dynamic_by_default(ort):
    model = _Two(_trained(HashedLinear(24, 12, n_weights=40, seed=3), 0),
                 _trained(KroneckerLinear(12, 6), 1))
    onnx_model = export(model, _standard_normal((2, 24), 0))
    dims = onnx_model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ['batch', 24]
    options = ort.SessionOptions()
    session = ort.InferenceSession(onnx_model.SerializeToString(), options,
                                   providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name
    for batch in (1, 7):  # two batch sizes through one session, neither the sample's
        x = _standard_normal((batch, 24), batch)
        y, = session.run(None, {name: x})
        np.testing.assert_allclose(y, model(x).array, rtol=1e-5, atol=1e-6)


def test_the_batch_size_is_fixed_when_you_give_the_shapes(ort):
    model = chainer.Sequential(HashedLinear(24, 12, n_weights=40))
    onnx_model = export(model, _standard_normal((2, 24), 0), input_shapes=[(2, 24)])
    dims = onnx_model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 24]


def test_parameters_are_not_graph_inputs_and_nothing_warns(ort, tmp_path, capfd):
    model = _Two(_trained(HashedLinear(24, 12, n_weights=40, seed=3), 0),
                 _trained(SharedLinear(12, 6, n_shared=2), 1))
    path = str(tmp_path / 'model.onnx')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        onnx_model = export(model, _standard_normal((2, 24), 0), path)
    assert [value.name for value in onnx_model.graph.input] == ['Input_0']
    with open(path, 'rb') as f:
        assert f.read() == onnx_model.SerializeToString()
    capfd.readouterr()
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    session.run(None, {'Input_0': _standard_normal((3, 24), 1)})
    assert 'appears in graph inputs' not in capfd.readouterr().err


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
    y, = run_onnx(onnx_model, x)
    np.testing.assert_allclose(y, model(x).array, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('n_terms', [1, 3])
def test_a_kronecker_graph_transposes_its_factors_only(ort, n_terms):
    # A's terms interleaved as in Chainer's node: no array of the batch's size is moved.
    model = chainer.Sequential(_trained(KroneckerLinear(24, 12, n_terms=n_terms), 0))
    onnx_model = _export_and_compare(ort, model, _standard_normal((5, 24), 1), None,
                                     atol=1e-5)
    graph = onnx_model.graph
    from_the_input = {i.name for i in graph.input}
    for node in graph.node:  # in topological order
        if from_the_input & set(node.input):
            from_the_input.update(node.output)
            assert node.op_type in {'Reshape', 'MatMul', 'Add', 'Identity'}, node


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
    y, = run_onnx(export(model, x), x)
    assert y.dtype == np.float16
    # Both compute in float32, in other orders, and round to float16; the bias is
    # then added in float16: a unit in the last place, or two.
    np.testing.assert_allclose(y, expected, rtol=2 ** -9, atol=2 ** -14)


@pytest.mark.parametrize('layer, options', [
    (lambda: ClusteredLinear(30, 20, n_clusters=16), {}),
    (lambda: HashedLinear(30, 20, n_weights=60), {'opset_version': 18}),
    (lambda: HashedLinear(30, 20, n_weights=60), {'hash_in_graph': False}),
], ids=['clustered', 'hashed', 'hashed-map-stored'])
def test_a_gathered_weight_s_bias_is_in_its_gemm_as_l_linear_s(ort, layer, options):
    # As onnx_chainer exports L.Linear, so that onnxruntime fuses the activation that
    # follows into the Gemm for these layers too.
    model = _Two(_trained(layer(), 0), L.Linear(20, 4))
    x = _standard_normal((3, 30), 1)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        onnx_model = export(model, x, **options)
    y, = run_onnx(onnx_model, x)
    np.testing.assert_allclose(y, model(x).array, rtol=1e-5, atol=1e-6)
    gemms = [node for node in onnx_model.graph.node if node.op_type == 'Gemm']
    assert len(gemms) == 2 and all(len(node.input) == 3 for node in gemms)
    biases = {gemm.input[2] for gemm in gemms}
    assert not [node for node in onnx_model.graph.node
                if node.op_type == 'Add' and biases & set(node.input)]


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
    # The index is the user's: a constant, in the smallest type that holds it.
    folded, = [a for a in _tensors(onnx_model).values() if a.ndim == 2]
    assert folded.dtype == np.uint8
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
    y, = run_onnx(onnx_model, x)
    np.testing.assert_allclose(y, model(x).array, rtol=1e-5, atol=1e-6)
    assert 'Neg' not in {node.op_type for node in onnx_model.graph.node}
    folded, = [a for a in _tensors(onnx_model).values() if a.ndim == 2]
    assert folded.dtype == np.uint8
    np.testing.assert_array_equal(folded, index)


# --- LowRankLinear and ClusteredLinear ---------------------------------------------------


@pytest.mark.parametrize('opset_version', [7, 9, 11, 13])
@pytest.mark.parametrize('layer', [
    lambda: LowRankLinear(30, 20, rank=4),
    lambda: LowRankLinear(30, 20, rank=4, nobias=True),
    lambda: ClusteredLinear(30, 20, n_clusters=16),
    lambda: ClusteredLinear(37, 11, n_clusters=5, nobias=True),  # 5 bits: entries span bytes
    lambda: ClusteredLinear(30, 20, n_clusters=300),  # 9 bits
    lambda: ClusteredLinear(3, 2, n_clusters=1),
    lambda: ClusteredLowRankLinear(30, 20, rank=4, n_clusters=16),
    lambda: ClusteredLowRankLinear(37, 11, rank=3, n_clusters=5, nobias=True),
    lambda: ClusteredLowRankLinear(30, 20, rank=4, n_clusters=300),
], ids=['LowRank', 'LowRank-nobias', 'Clustered16', 'Clustered5', 'Clustered300',
        'Clustered1', 'ClusteredLowRank16', 'ClusteredLowRank5', 'ClusteredLowRank300'])
def test_export_of_low_rank_and_clustered_layers_matches_chainer(ort, layer, opset_version):
    layer = _trained(layer(), seed=4)
    _export_and_compare(ort, chainer.Sequential(layer),
                        _standard_normal((5, layer.in_size), 1), opset_version, atol=1e-5)


def test_a_clustered_file_holds_the_index_at_its_bit_width(ort):
    layer = ClusteredLinear.from_linear(_trained(L.Linear(100, 80), seed=2), n_clusters=16)
    onnx_model = _export_and_compare(ort, chainer.Sequential(layer),
                                     _standard_normal((3, 100), 0), 11, atol=1e-5)
    biggest = max(_tensors(onnx_model).values(), key=lambda array: array.nbytes)
    assert biggest.dtype == np.uint8 and biggest.nbytes == 100 * 80 // 2  # 4 bits an entry


@pytest.mark.parametrize('opset_version', [7, 9, 11])
@pytest.mark.parametrize('n_clusters', [2, 3, 4, 5, 16, 40, 100, 129, 300, 5000, 65536])
def test_the_clustered_index_decodes_at_every_bit_width(ort, opset_version, n_clusters):
    # 23 x 7 entries: the last group of bytes is cut short at every width but 1 bit.
    from chainer_sharedlinear.functions.clustered_linear import index_bits
    layer = ClusteredLinear(23, 7, n_clusters=n_clusters)
    rng = np.random.default_rng(n_clusters)
    layer.W.array[...] = rng.standard_normal(n_clusters).astype(np.float32)
    layer.index[...] = rng.integers(0, n_clusters, (7, 23))
    layer.index[0, :2] = [0, n_clusters - 1]
    x = _standard_normal((3, 23), 0)
    onnx_model = _export_and_compare(ort, chainer.Sequential(layer), x, opset_version, atol=1e-5)
    stored = [a for a in _tensors(onnx_model).values() if a.dtype == np.uint8]
    assert sum(a.nbytes for a in stored) <= -(-7 * 23 * index_bits(n_clusters) // 8) + 16


# --- Batch axes at run time, Monarch's padding, what export says (issue 30) ----------------


class _CalledWithBatchAxes(chainer.Chain):
    """``layer(x, n_batch_axes=n)``, for a link of the family or ``L.Linear``."""

    def __init__(self, layer, n_batch_axes):
        super().__init__()
        with self.init_scope():
            self.layer = layer
        self.n_batch_axes = n_batch_axes

    def forward(self, x):
        return self.layer(x, n_batch_axes=self.n_batch_axes)


class _TiedWithBatchAxes(chainer.Chain):
    """``tied_linear`` with a signed index map, called with ``n_batch_axes``."""

    def __init__(self, in_size, out_size, n_batch_axes):
        super().__init__()
        rng = np.random.default_rng(5)
        with self.init_scope():
            self.W = chainer.Parameter(rng.standard_normal(7).astype(np.float32))
            self.b = chainer.Parameter(rng.standard_normal(out_size).astype(np.float32))
        self.index = rng.integers(0, 7, (out_size, in_size))
        self.sign = np.where(rng.random((out_size, in_size)) < 0.5, -1, 1).astype(np.float32)
        self.n_batch_axes = n_batch_axes

    def forward(self, x):
        from chainer_sharedlinear import tied_linear
        return tied_linear(x, self.W, self.index, self.sign, self.b,
                           n_batch_axes=self.n_batch_axes)


_LAYERS_OF_12_TO_6 = {
    'Linear': lambda: L.Linear(12, 6),
    'Shared': lambda: SharedLinear(12, 6, n_shared=3),
    'Hashed': lambda: HashedLinear(12, 6, n_weights=20, seed=2),
    'Kronecker': lambda: KroneckerLinear(12, 6, n_terms=2),
    'Monarch': lambda: MonarchLinear(12, 6, n_blocks=3),
    'Monarch-padded': lambda: MonarchLinear(12, 7, n_blocks=5),
    'LowRank': lambda: LowRankLinear(12, 6, rank=2),
    'Clustered': lambda: ClusteredLinear(12, 6, n_clusters=4),
    'ClusteredLowRank': lambda: ClusteredLowRankLinear(12, 6, rank=2, n_clusters=4),
    'tied': None,
}


def _model_of(name, n_batch_axes):
    if name == 'tied':
        return _TiedWithBatchAxes(12, 6, n_batch_axes)
    return _CalledWithBatchAxes(_trained(_LAYERS_OF_12_TO_6[name](), 3), n_batch_axes)


@pytest.mark.parametrize('n_batch_axes, sample_shape', [
    (1, (2, 12)),
    (1, (2, 3, 4)),        # a feature map: its axes after the first flattened
    (1, (2, 2, 3, 2)),
    (2, (2, 3, 12)),       # a Transformer's (batch, sequence, features)
    (2, (2, 3, 4, 3)),
], ids=['2d', '3d-flattened', '4d-flattened', '3d-two-batch-axes', '4d-two-batch-axes'])
@pytest.mark.parametrize('name', list(_LAYERS_OF_12_TO_6))
def test_the_graph_exported_at_one_batch_size_runs_at_others(ort, name, n_batch_axes,
                                                              sample_shape):
    model = _model_of(name, n_batch_axes)
    onnx_model = _export_quietly(model, _standard_normal(sample_shape, 0))
    session = onnx_session(onnx_model)
    for batch in (1, 5):
        x = _standard_normal((batch,) + sample_shape[1:], batch)
        y, = session.run(None, {session.get_inputs()[0].name: x})
        expected = model(x).array
        assert y.shape == expected.shape
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', list(_LAYERS_OF_12_TO_6))
def test_a_second_batch_axis_declared_dynamic_takes_any_size(ort, name):
    # The restored batch axes are read from the input at run time, not only the first.
    model = _model_of(name, 2)
    onnx_model = export(model, _standard_normal((2, 3, 12), 0),
                        input_shapes=[('batch', 'sequence', 12)])
    session = onnx_session(onnx_model)
    for shape in ((5, 7, 12), (1, 1, 12)):
        x = _standard_normal(shape, 1)
        y, = session.run(None, {session.get_inputs()[0].name: x})
        np.testing.assert_allclose(y, model(x).array, rtol=1e-5, atol=1e-5)


def test_an_empty_batch_runs_too(ort):
    model = _model_of('Shared', 2)
    session = onnx_session(export(model, _standard_normal((2, 3, 12), 0)))
    y, = session.run(None, {session.get_inputs()[0].name: np.zeros((0, 3, 12), np.float32)})
    assert y.shape == (0, 3, 6)


def test_a_reshape_that_is_no_flatten_is_onnx_chainer_s(ort):
    # (2, 12) to (6, 4) is written as the node was given it, as onnx_chainer writes it.
    model = chainer.Sequential(lambda x: F.reshape(x, (6, 4)), SharedLinear(4, 2, n_shared=2))
    x = _standard_normal((2, 12), 0)
    onnx_model = export(model, x, input_shapes=[(2, 12)])
    y, = run_onnx(onnx_model, x)
    np.testing.assert_allclose(y, model(x).array, rtol=1e-5, atol=1e-6)
    shape, = [a for a in _tensors(onnx_model).values() if a.dtype == np.int64 and a.size == 2]
    np.testing.assert_array_equal(shape, [6, 4])


@pytest.mark.parametrize('opset_version', [7, 9, 11, 13])
@pytest.mark.parametrize('in_size, out_size, n_blocks', [
    (13, 7, 3), (12, 12, 4), (23, 17, 4), (10, 31, 3),
])
def test_export_of_monarch_layers_pads_the_short_blocks(ort, opset_version, in_size, out_size,
                                                        n_blocks):
    layer = _trained(MonarchLinear(in_size, out_size, n_blocks=n_blocks), 6)
    onnx_model = _export_and_compare(ort, chainer.Sequential(layer),
                                     _standard_normal((4, in_size), 2), opset_version,
                                     atol=1e-5)
    ops = {node.op_type for node in onnx_model.graph.node}
    assert ('Pad' in ops) == (in_size % n_blocks != 0)
    assert 'Gather' not in ops


@pytest.mark.parametrize('in_size, out_size, n_blocks', [
    (50001, 10, 10), (50000, 10, 10), (10, 50001, 10), (1001, 900, 16), (13, 7, 3), (12, 6, 3),
], ids=['large-in', 'large-in-divides', 'large-out', 'mid', 'small', 'small-divides'])
def test_the_onnx_file_of_a_monarch_layer_holds_its_parameters_and_nothing_as_large(
        ort, in_size, out_size, n_blocks):
    model = chainer.Sequential(_trained(MonarchLinear(in_size, out_size, n_blocks=n_blocks), 0))
    onnx_model = export(model, _standard_normal((2, in_size), 1))
    assert len(onnx_model.SerializeToString()) <= _file_bound(model)
    parameters = {'param_0_R', 'param_0_L', 'param_0_b'}
    arrays = _tensors(onnx_model)
    assert parameters <= set(arrays)
    for name, array in arrays.items():
        assert name in parameters or array.size <= 6, (name, array.shape)


@pytest.mark.filterwarnings('ignore:external_converters is experimental:FutureWarning')
@pytest.mark.parametrize('through_onnx_chainer', [False, True])
def test_the_warning_of_a_stored_hash_names_the_line_that_exported(ort, through_onnx_chainer):
    import onnx_chainer
    model = chainer.Sequential(HashedLinear(24, 12, n_weights=40, seed=3))
    x = _standard_normal((4, 24), 2)
    with pytest.warns(UserWarning, match='has no Range') as record:
        if through_onnx_chainer:
            onnx_chainer.export(model, x, opset_version=9, external_converters=converters)
        else:
            export(model, x, opset_version=9)
    filenames = [w.filename for w in record if 'has no Range' in str(w.message)]
    assert filenames == [__file__]


def test_export_of_a_classifier_says_to_export_its_predictor(ort):
    from chainer_sharedlinear import DistillationClassifier
    predictor = chainer.Sequential(SharedLinear(24, 10, n_shared=2))
    for model in (L.Classifier(predictor), DistillationClassifier(predictor, predictor)):
        with pytest.raises(TypeError, match=r'computes a loss from inputs and labels.*'
                                            r'export\(model\.predictor, x\)'):
            export(model, _standard_normal((2, 24), 0))
    # What the message says works.
    model = L.Classifier(predictor)
    x = _standard_normal((2, 24), 0)
    y, = run_onnx(export(model.predictor, x), x)
    np.testing.assert_allclose(y, predictor(x).array, rtol=1e-5, atol=1e-6)
