"""The dense weight that a layer keeps for inference (``keep_decoded_weight``): never stale.

In test mode without a graph a layer that keeps its dense weight must give what
it computes without it, after anything that changes what the weight is made
of: an optimizer's step, a loaded file, ``copyparams``, ``to_device``, a
parameter or an index written by hand. Every layer of the family is tested with
the weight kept; the clustered and hashed layers keep it by default.
"""

import copy
import pickle
import sys

import chainer
import numpy as np
import pytest
from chainer import optimizers, serializers
from chainer.utils.type_check import InvalidType

from chainer_sharedlinear import ClusteredLinear, ClusteredLowRankLinear, HashedLinear
from chainer_sharedlinear.functions.tied_linear import TiedWeight
from tests.helpers import outputs, set_non_default, standard_normal
from tests.links_tests.test_family_contract import FAMILY, IN_SIZE, OUT_SIZE

X = standard_normal((5, IN_SIZE), 1)


def kept(entry, seed=3):
    layer = set_non_default(entry.eager(), seed)
    layer.keep_decoded_weight = True
    return layer


def uncached_outputs(layer, x=X):
    """``layer(x)`` in test mode, computed as the pattern computes it, the kept weight left."""
    twin = copy.deepcopy(layer)  # a deep copy keeps no dense weight
    twin.keep_decoded_weight = False
    return outputs(twin, x, train=False)


def assert_as_uncached(layer, x=X, atol=1e-6):
    cached = outputs(layer, x, train=False)
    assert layer.decoded_weight_bytes() > 0
    np.testing.assert_allclose(cached, uncached_outputs(layer, x), rtol=1e-5, atol=atol)


GATHERING = (ClusteredLinear, HashedLinear, ClusteredLowRankLinear)


def test_the_layers_that_gather_keep_it_by_default_and_the_others_do_not():
    assert {entry.name: entry.eager().keep_decoded_weight for entry in FAMILY} == {
        entry.name: entry.cls in GATHERING for entry in FAMILY}


@pytest.mark.parametrize('entry', [e for e in FAMILY if e.cls in GATHERING])
def test_a_gathering_layer_gathers_no_weight_at_a_second_call_in_test_mode(entry, monkeypatch):
    layer = set_non_default(entry.eager())
    expected = uncached_outputs(layer)
    gathers = []
    monkeypatch.setattr(TiedWeight, 'forward', lambda node, inputs: gathers.append(1) or
                        TiedWeight.__dict__['forward'](node, inputs))
    tied_linear_module = sys.modules['chainer_sharedlinear.functions.tied_linear']
    real_gather = tied_linear_module.gather
    monkeypatch.setattr(tied_linear_module, 'gather',
                        lambda *args: gathers.append(1) or real_gather(*args))
    for _ in range(3):
        if entry.cls is ClusteredLowRankLinear:  # F.linear's products, here dense_product's
            np.testing.assert_allclose(outputs(layer, X, train=False), expected, rtol=1e-6)
        else:  # bit for bit: the same product of the same gathered weight
            np.testing.assert_array_equal(outputs(layer, X, train=False), expected)
    assert gathers == []


@pytest.mark.parametrize('entry', FAMILY)
def test_it_computes_what_the_layer_computes(entry):
    layer = kept(entry)
    assert_as_uncached(layer)
    assert_as_uncached(layer, standard_normal((2, 3, IN_SIZE), 2)[:, 0])
    x = standard_normal((2, 4, IN_SIZE), 4)
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        y = layer(x, n_batch_axes=2)
    assert y.shape == (2, 4, OUT_SIZE)
    np.testing.assert_allclose(y.array, uncached_outputs(layer, x.reshape(8, IN_SIZE))
                               .reshape(2, 4, OUT_SIZE), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('entry', FAMILY)
def test_an_optimizer_step_is_seen(entry):
    layer = kept(entry)
    outputs(layer, X, train=False)
    optimizer = optimizers.SGD(lr=0.5)
    optimizer.setup(layer)
    loss = chainer.functions.sum(layer(X) ** 2)
    layer.cleargrads()
    loss.backward()
    optimizer.update()
    assert_as_uncached(layer)


@pytest.mark.parametrize('entry', FAMILY)
def test_a_loaded_file_is_seen(entry, tmp_path):
    layer = kept(entry)
    outputs(layer, X, train=False)
    path = str(tmp_path / 'other.npz')
    serializers.save_npz(path, set_non_default(entry.eager(), seed=8))
    serializers.load_npz(path, layer)
    assert_as_uncached(layer)


@pytest.mark.parametrize('entry', FAMILY)
def test_copyparams_is_seen(entry):
    layer = kept(entry)
    outputs(layer, X, train=False)
    layer.copyparams(set_non_default(entry.eager(), seed=9))
    assert_as_uncached(layer)


@pytest.mark.parametrize('entry', FAMILY)
def test_to_device_lets_it_go(entry):
    layer = kept(entry)
    outputs(layer, X, train=False)
    layer.to_device('@numpy')
    assert layer.decoded_weight_bytes() == 0
    assert_as_uncached(layer)


@pytest.mark.parametrize('entry', FAMILY)
def test_a_parameter_written_in_place_is_seen(entry):
    layer = kept(entry)
    outputs(layer, X, train=False)
    for param in layer.params():
        param.array *= 2
    assert_as_uncached(layer)


def test_an_index_written_in_place_is_seen():
    layer = set_non_default(ClusteredLinear(IN_SIZE, OUT_SIZE, n_clusters=4))
    outputs(layer, X, train=False)
    layer.index[0] = (layer.index[0] + 1) % 4
    assert_as_uncached(layer)


def test_a_nan_in_the_weights_is_kept_once():
    layer = HashedLinear(IN_SIZE, OUT_SIZE, n_weights=5)
    layer.W.array[0] = np.nan
    outputs(layer, X, train=False)
    weight = layer.decoded_weight()
    assert layer.decoded_weight() is weight


@pytest.mark.parametrize('entry', FAMILY)
def test_a_call_with_a_graph_or_in_train_mode_lets_it_go(entry):
    layer = kept(entry)
    outputs(layer, X, train=False)
    outputs(layer, X, train=True)
    assert layer.decoded_weight_bytes() == 0
    outputs(layer, X, train=False)
    with chainer.using_config('train', False):
        layer(X)
    assert layer.decoded_weight_bytes() == 0


def test_what_it_holds_is_the_dense_weight_and_a_copy_of_the_stored_arrays():
    layer = ClusteredLinear(1000, 900, n_clusters=16)
    layer.keep_decoded_weight = False
    outputs(layer, standard_normal((1, 1000)), train=False)
    assert layer.decoded_weight_bytes() == 0
    layer.keep_decoded_weight = True
    outputs(layer, standard_normal((1, 1000)), train=False)
    assert layer.decoded_weight_bytes() == 900 * 1000 * 4 + 16 * 4 + 900 * 1000


@pytest.mark.parametrize('rank, kept', [(10, 'factors'), (600, 'dense')])
def test_a_clustered_low_rank_layer_keeps_the_smaller_of_its_factors_and_its_weight(rank, kept):
    layer = ClusteredLowRankLinear(1000, 900, rank=rank, n_clusters=8)
    # Sums of 1000 float32 products in two orders.
    assert_as_uncached(layer, standard_normal((3, 1000)), atol=1e-5)
    shapes = [array.shape for array in layer.decoded_weight()]
    assert shapes == ([(900, rank), (rank, 1000)] if kept == 'factors' else [(900, 1000)])
    layer.keep_decoded_weight = False
    assert layer.decoded_weight_bytes() == 0


@pytest.mark.parametrize('entry', FAMILY)
def test_neither_a_pickle_nor_a_deep_copy_carries_it(entry):
    layer = kept(entry)
    outputs(layer, X, train=False)
    assert pickle.loads(pickle.dumps(layer)).decoded_weight_bytes() == 0
    assert copy.deepcopy(layer).decoded_weight_bytes() == 0


@pytest.mark.parametrize('entry', FAMILY)
def test_an_input_of_the_wrong_width_is_refused_as_without_it(entry):
    layer = kept(entry)
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        with pytest.raises(InvalidType, match=entry.wrong_width):
            layer(standard_normal((2, 12)))
