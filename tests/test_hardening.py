"""Regression tests of the second hardening pass (the library's items)."""

import chainer
import chainer.links as L
import numpy as np
import pytest
from chainer import link_hooks, serializers

from chainer_sharedlinear import (
    HashedLinear,
    KroneckerLinear,
    SharedLinear,
    convert_linears,
    share_linears,
    unshare_linears,
)
from chainer_sharedlinear.functions.kronecker_linear import factor_pairs, most_square_factors


def _rng_array(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _outputs(model, x, train):
    with chainer.using_config('train', train), chainer.no_backprop_mode():
        return model(x).array.copy()


def _warm_up(model, x, steps=3):
    # Power iterations in train mode move the hook's vector u away from its start.
    for _ in range(steps):
        _outputs(model, x, train=True)


# --- A hook carried over keeps its state (W_u), in both directions -----------------------


@pytest.mark.parametrize('n_shared', [1, 4])
def test_spectral_normalization_state_is_carried_by_share_and_unshare(n_shared):
    np.random.seed(0)
    model = chainer.Sequential(L.Linear(8, 6))
    model[0].add_hook(link_hooks.SpectralNormalization())
    x = _rng_array((5, 8))
    _warm_up(model, x)
    if n_shared > 1:  # make the dense weight a tiling, so the shared layer is the same one
        W = model[0].W.array
        W[...] = np.tile(W[:, :8 // n_shared], (1, n_shared))
        _warm_up(model, x)
    before = _outputs(model, x, train=False)
    u = model[0].W_u.copy()

    report = share_linears(model, n_shared)
    assert report.hooks == {'/0': ('SpectralNormalization',)}
    np.testing.assert_array_equal(model[0].W_u, u)
    np.testing.assert_allclose(_outputs(model, x, train=False), before, rtol=1e-5, atol=1e-6)

    back = unshare_linears(model)
    assert back.hooks == {'/0': ('SpectralNormalization',)}
    assert type(model[0]) is L.Linear
    np.testing.assert_array_equal(model[0].W_u, u)
    np.testing.assert_allclose(_outputs(model, x, train=False), before, rtol=1e-5, atol=1e-6)


def test_a_hook_whose_state_cannot_be_carried_is_dropped_with_the_reason():
    class ShapedState(chainer.LinkHook):
        """Keeps a persistent array of the weight's own shape on the link."""
        name = 'ShapedState'

        def added(self, link):
            link.state = link.xp.ones(link.W.shape, link.W.dtype)
            link.register_persistent('state')

    model = chainer.Sequential(L.Linear(8, 6))
    model[0].add_hook(ShapedState())
    report = share_linears(model, 2)
    reason = report.dropped_hooks['/0']['ShapedState']
    assert reason == ('ValueError: the state state of ShapedState has shape (6, 8) on the old '
                      'link and (6, 4) on the new one, so it cannot be carried over')
    assert not model[0].local_link_hooks
    assert not hasattr(model[0], 'state')


# --- to_linear computes what the layer computed, hooks included --------------------------


@pytest.mark.parametrize('make_hook', [link_hooks.WeightStandardization,
                                       link_hooks.SpectralNormalization])
@pytest.mark.parametrize('train', [False, True])
def test_to_linear_carries_the_weight_hooks_with_their_state(make_hook, train):
    np.random.seed(1)
    layer = SharedLinear(12, 5, n_shared=3)
    layer.add_hook(make_hook())
    x = _rng_array((4, 12), seed=2)
    _warm_up(layer, x)
    dense = layer.to_linear()
    assert list(dense.local_link_hooks) == list(layer.local_link_hooks)
    assert dense.local_link_hooks[make_hook.name] is not layer.local_link_hooks[make_hook.name]
    if make_hook is link_hooks.SpectralNormalization:
        np.testing.assert_array_equal(dense.W_u, layer.W_u)
        assert dense.W_u is not layer.W_u
    np.testing.assert_allclose(_outputs(dense, x, train), _outputs(layer, x, train),
                               rtol=1e-5, atol=1e-6)


def test_to_linear_leaves_the_layer_and_its_hooks_as_they_were():
    layer = SharedLinear(6, 2, n_shared=2)
    hook = link_hooks.SpectralNormalization()
    layer.add_hook(hook)
    u = layer.W_u.copy()
    dense = layer.to_linear()
    _warm_up(dense, _rng_array((3, 6)))
    assert layer.local_link_hooks['SpectralNormalization'] is hook
    np.testing.assert_array_equal(layer.W_u, u)


# --- A lazy KroneckerLinear loads files of other factors than the default ones ----------


def test_a_lazy_kronecker_layer_loads_its_file_again_and_its_own(tmp_path):
    source = KroneckerLinear(12, 4, in_factors=(2, 6), out_factors=(2, 2))
    source_file = str(tmp_path / 'source.npz')
    serializers.save_npz(source_file, source)

    lazy = KroneckerLinear(4, out_factors=(2, 2))
    serializers.load_npz(source_file, lazy)
    assert lazy.in_factors == (2, 6) and lazy.A.shape == (1, 2, 2)
    serializers.load_npz(source_file, lazy)  # the same file again
    np.testing.assert_array_equal(lazy.A.array, source.A.array)

    own_file = str(tmp_path / 'own.npz')
    serializers.save_npz(own_file, lazy)
    serializers.load_npz(own_file, lazy)
    np.testing.assert_array_equal(lazy.B.array, source.B.array)

    copied = KroneckerLinear(4, out_factors=(2, 2))
    copied.copyparams(source)
    serializers.load_npz(source_file, copied)
    assert copied.in_factors == (2, 6)


def test_a_kronecker_file_of_other_factors_is_refused_by_an_initialised_layer(tmp_path):
    path = str(tmp_path / 'source.npz')
    serializers.save_npz(path, KroneckerLinear(12, 4, in_factors=(2, 6), out_factors=(2, 2)))
    layer = KroneckerLinear(12, 4, in_factors=(3, 4), out_factors=(2, 2))
    with pytest.raises(ValueError, match=r'cannot load A of shape \(1, 2, 2\) into '
                       r'KroneckerLinear\(in_size=12, .*in_factors=\(3, 4\).*whose A has '
                       r'shape \(1, 2, 3\)'):
        serializers.load_npz(path, layer)


# --- A refused first call leaves a lazy layer as it was ----------------------------------


LAZY_LAYERS = {
    'shared': lambda: SharedLinear(3, n_shared=1),
    'hashed': lambda: HashedLinear(3, n_weights=5),
    'kronecker': lambda: KroneckerLinear(3),
}


@pytest.mark.parametrize('kind', sorted(LAZY_LAYERS))
@pytest.mark.parametrize('shape, n_batch_axes', [((5,), 1), ((2, 5), 2)])
def test_an_input_without_features_leaves_a_lazy_layer_as_it_was(kind, shape, n_batch_axes):
    layer = LAZY_LAYERS[kind]()
    with pytest.raises(ValueError, match=r'x has shape {}, which leaves no feature axis'.format(
            re_escape(str(shape)))):
        layer(np.zeros(shape, np.float32), n_batch_axes=n_batch_axes)
    assert layer.in_size is None
    assert layer(np.zeros((2, 5), np.float32)).shape == (2, 3)
    assert layer.in_size == 5


def re_escape(text):
    import re
    return re.escape(text)


# --- include of the wrong type names include ---------------------------------------------


@pytest.mark.parametrize('include', [5, True, 1.5])
@pytest.mark.parametrize('convert', ['share', 'convert', 'unshare'])
def test_include_of_the_wrong_type_is_a_clear_error(include, convert):
    model = chainer.Sequential(L.Linear(4, 2))
    calls = {'share': lambda: share_linears(model, 2, include=include),
             'convert': lambda: convert_linears(
                 model, lambda link: SharedLinear.from_linear(link, 2), include=include),
             'unshare': lambda: unshare_linears(model, include=include)}
    with pytest.raises(TypeError, match=r'^include must be None, a path, a collection of '
                       r'paths or a callable, got {!r}$'.format(include)):
        calls[convert]()
    assert type(model[0]) is L.Linear


# --- SharedLinear.from_params names W ----------------------------------------------------


@pytest.mark.parametrize('W, message', [
    (np.ones(4, np.float32), r'W must be a matrix, \(out_size, in_size / n_shared\), got '
                             r'shape \(4,\)'),
    (np.ones((2, 2, 2), np.float32), r'W must be a matrix, \(out_size, in_size / n_shared\), '
                                     r'got shape \(2, 2, 2\)'),
    (np.ones((2, 2), np.int32), r'W must be an array of floats, got dtype int32'),
    ('weights', r"W must be an array of floats, got 'weights'"),
])
def test_from_params_with_a_bad_W_names_it(W, message):
    with pytest.raises(ValueError, match=message):
        SharedLinear.from_params(W, n_shared=2)


def test_from_params_takes_a_variable_or_a_nested_list():
    from_list = SharedLinear.from_params([[1.0, 2.0]], n_shared=2)
    np.testing.assert_array_equal(from_list.W.array, [[1, 2]])
    assert from_list.in_size == 4 and from_list.W.dtype == np.float32
    W = chainer.Variable(np.array([[1.0, 2.0]], np.float64))
    assert SharedLinear.from_params(W, n_shared=3).W.dtype == np.float64


# --- Factors are found in about sqrt(n) steps --------------------------------------------


def test_factor_pairs_of_a_number_too_large_to_scan():
    p, q = 8191, 2 ** 31 - 1  # Mersenne primes
    assert factor_pairs(p * q) == [(1, p * q), (p, q), (q, p), (p * q, 1)]
    assert most_square_factors(p * q) == (p, q)
    assert most_square_factors(2 ** 62) == (2 ** 31, 2 ** 31)
    assert factor_pairs(36) == [(1, 36), (2, 18), (3, 12), (4, 9), (6, 6), (9, 4), (12, 3),
                                (18, 2), (36, 1)]


def test_a_kronecker_layer_of_a_huge_size_builds_lazily_without_a_scan():
    layer = KroneckerLinear(2 ** 26, 2 ** 24, nobias=True)
    assert layer.out_factors == (2 ** 12, 2 ** 12)
