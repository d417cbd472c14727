"""ONNX export of what a Transformer needs from Chainer beyond onnx_chainer: layer norm, heads."""

import warnings

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
import pytest

from chainer_sharedlinear.onnx_export import export
from tests.encoder_block import EncoderBlock, gelu
from tests.helpers import onnx_session, onnxruntime_or_skip, run_onnx, standard_normal

# LayerNormalization is ONNX's own from opset 17, composed below it; Split takes its
# sizes as an input from 13.
OPSETS = [7, 9, 11, 13, 17]


@pytest.fixture
def ort():
    return onnxruntime_or_skip()


def _export(model, x, opset_version, **kwargs):
    with warnings.catch_warnings():
        # onnx_chainer warns about the opsets past 11, which it did not test.
        warnings.simplefilter('ignore', UserWarning)
        return export(model, x, opset_version=opset_version, **kwargs)


def _outputs(model, x):
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        return model(x).array


def _randomized(link, seed):
    """``link`` with every parameter drawn from a normal distribution: no 1 or 0 hides a slip."""
    rng = np.random.default_rng(seed)
    for param in link.params():
        param.array[...] = rng.standard_normal(param.shape).astype(param.dtype)
    return link


@pytest.mark.parametrize('opset_version', OPSETS)
def test_layer_normalization_matches_chainer_at_two_batch_sizes(ort, opset_version):
    model = _randomized(L.LayerNormalization(16, eps=1e-2), 0)
    onnx_model = _export(model, standard_normal((4, 16), 1), opset_version)
    ops = {node.op_type for node in onnx_model.graph.node}
    assert ('LayerNormalization' in ops) == (opset_version >= 17)
    session = onnx_session(onnx_model)
    for batch in (4, 9):
        # Offset rows: the mean is taken away before the variance, as in Chainer.
        x = standard_normal((batch, 16), 2) * 3 + 5
        y, = session.run(None, {session.get_inputs()[0].name: x})
        np.testing.assert_allclose(y, _outputs(model, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('opset_version', [11, 13])
@pytest.mark.parametrize('indices_or_sections', [3, [4, 10]])
def test_split_axis_matches_chainer(ort, opset_version, indices_or_sections):
    def weigh_the_parts(x):
        parts = F.split_axis(x, indices_or_sections, axis=1)
        return F.concat([part * (k + 1) for k, part in enumerate(parts)], axis=1)

    model = chainer.Sequential(weigh_the_parts)
    x = standard_normal((2, 12), 0)
    y, = run_onnx(_export(model, x, opset_version), x)
    np.testing.assert_allclose(y, _outputs(model, x), rtol=1e-6)


def _encoder(activation, seed=0):
    return _randomized(EncoderBlock(width=16, n_heads=2, activation=activation), seed)


@pytest.mark.parametrize('opset_version', OPSETS)
@pytest.mark.parametrize('activation', [F.relu, gelu], ids=['relu', 'gelu'])
def test_an_encoder_block_exported_at_one_batch_size_runs_at_others(
        ort, opset_version, activation):
    model = _encoder(activation)
    onnx_model = _export(model, standard_normal((3, 5, 16), 1), opset_version,
                         input_shapes=[('batch', 'sequence', 16)])
    session = onnx_session(onnx_model)
    for shape in [(3, 5, 16), (1, 5, 16), (8, 5, 16), (2, 9, 16), (1, 1, 16)]:
        x = standard_normal(shape, 2)
        y, = session.run(None, {session.get_inputs()[0].name: x})
        assert y.shape == shape
        np.testing.assert_allclose(y, _outputs(model, x), rtol=1e-4, atol=1e-4)


def test_an_encoder_block_takes_any_batch_size_by_default(ort):
    model = _encoder(F.relu)
    session = onnx_session(_export(model, standard_normal((3, 5, 16), 1), None))
    assert session.get_inputs()[0].shape == ['batch', 5, 16]
    for batch in (1, 6):
        x = standard_normal((batch, 5, 16), 2)
        y, = session.run(None, {session.get_inputs()[0].name: x})
        np.testing.assert_allclose(y, _outputs(model, x), rtol=1e-4, atol=1e-4)


def test_splitting_into_heads_keeps_the_leading_axes_of_the_input(ort):
    # (batch, sequence, width) to (batch, sequence, heads, head): ONNX's 0 copies an axis.
    def heads(x):
        return F.reshape(x, (x.shape[0], x.shape[1], 2, 8)) * 2

    model = chainer.Sequential(heads)
    onnx_model = _export(model, standard_normal((3, 5, 16), 0), None,
                         input_shapes=[('batch', 'sequence', 16)])
    x = standard_normal((4, 7, 16), 1)
    y, = run_onnx(onnx_model, x)
    np.testing.assert_array_equal(y, _outputs(model, x))
