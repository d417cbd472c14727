"""convert_linears, share_linears and unshare_linears: whole models, their reports, hooks."""

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
import pytest
from chainer import link_hooks, training

from chainer_sharedlinear import (
    ConversionReport,
    HashedLinear,
    KroneckerLinear,
    SharedLinear,
    convert_linears,
    share_linears,
    unshare_linears,
)
from tests.helpers import outputs, standard_normal, warm_up

# unshare_linears computes a dense product of in_size terms where SharedLinear sums the
# blocks first: the same real number, rounded differently. For float32 inputs and
# weights of order 1 and in_size <= 64, each side is within about in_size * 2**-24
# of the exact value relative to the sum of |terms| (a few units), so 1e-5 relative
# plus 1e-6 absolute (for outputs that cancel to near zero) is tight yet safe; a
# wrong weight is off by order 1.
TO_LINEAR_TOLERANCE = {'rtol': 1e-5, 'atol': 1e-6}


class MLP(chainer.Chain):

    def __init__(self, n_units=(24, 16, 6), n_in=12):
        super().__init__()
        with self.init_scope():
            self.l1 = L.Linear(n_in, n_units[0])
            self.l2 = L.Linear(n_units[0], n_units[1])
            self.l3 = L.Linear(n_units[1], n_units[2])

    def forward(self, x):
        return self.l3(F.relu(self.l2(F.relu(self.l1(x)))))


class Nested(chainer.Chain):
    """A Chain holding a Sequential (with functions between its links) and a ChainList."""

    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.encoder = chainer.Sequential(
                L.Linear(12, 24), F.relu, L.Linear(24, 16, nobias=True), F.tanh)
            self.heads = chainer.ChainList(L.Linear(16, 8), L.Linear(16, 6))
            self.out = L.Linear(14, 6)

    def forward(self, x):
        h = self.encoder(x)
        return self.out(F.concat([head(h) for head in self.heads]))


def _not_divisible(in_size, n_shared):
    return ('in_size={} is not divisible by n_shared={}: the input must split into n_shared '
            'equal blocks (in_size = n_shared * k)'.format(in_size, n_shared))


def _linears(model, kind=L.Linear):
    return {path: link for path, link in model.namedlinks() if type(link) is kind}


def test_share_linears_converts_what_fits_and_reports_the_rest():
    model = MLP(n_units=(24, 16, 6), n_in=12)  # in_sizes 12, 24, 16
    before = {path: link for path, link in _linears(model).items()}
    report = share_linears(model, 3)

    assert isinstance(report, ConversionReport)
    assert report.changed == ('/l1', '/l2')
    assert report.skipped == {'/l3': _not_divisible(16, 3)}
    assert report.params_before == 12 * 24 + 24 + 24 * 16 + 16 + 16 * 6 + 6
    assert report.params_after == 4 * 24 + 24 + 8 * 16 + 16 + 16 * 6 + 6
    assert report.needs_optimizer_setup

    assert type(model.l1) is type(model.l2) is SharedLinear and type(model.l3) is L.Linear
    assert model.l3 is before['/l3']
    assert (model.l1.n_shared, model.l1.W.shape, model.l1.name) == (3, (24, 4), 'l1')
    assert sorted(name for name, _ in model.namedparams()) == [
        '/l1/W', '/l1/b', '/l2/W', '/l2/b', '/l3/W', '/l3/b']
    np.testing.assert_array_equal(model.l2.W.array, SharedLinear.from_linear(
        before['/l2'], 3).W.array)

    text = str(report)
    assert text.splitlines()[0] == '2 changed, 1 skipped; parameters 814 -> 366'
    assert '  skipped /l3: in_size=16 is not divisible by n_shared=3' in text
    assert 'optimizer.setup(model) again' in text


def test_share_linears_keeps_the_function_of_tiled_weights():
    model = MLP()
    for link in _linears(model).values():
        out_size, in_size = link.W.shape
        link.W.array[...] = np.tile(standard_normal((out_size, in_size // 4), 0), (1, 4))
    x = standard_normal((5, 12), 1)
    expected = model(x).array
    assert share_linears(model, 4).changed == ('/l1', '/l2', '/l3')
    np.testing.assert_allclose(model(x).array, expected, **TO_LINEAR_TOLERANCE)


def test_share_linears_walks_nested_sequential_and_chainlist():
    model = Nested()
    x = standard_normal((3, 12), 0)
    model(x)
    report = share_linears(model, 2)
    assert report.changed == ('/encoder/0', '/encoder/1', '/heads/0', '/heads/1', '/out')
    assert report.skipped == {}
    # The Sequential's own list of layers (with the functions) follows.
    assert [type(layer) for layer in model.encoder] == [SharedLinear, type(F.relu),
                                                        SharedLinear, type(F.tanh)]
    assert model.encoder[2].b is None
    assert [link.name for link in model.heads] == ['0', '1']
    assert model(x).shape == (3, 6)
    assert sorted(name for name, _ in model.namedparams()) == [
        '/encoder/0/W', '/encoder/0/b', '/encoder/1/W', '/heads/0/W', '/heads/0/b',
        '/heads/1/W', '/heads/1/b', '/out/W', '/out/b']


def test_sequential_layers_keep_their_order_and_paths():
    # Chainer 7.8.1's Sequential numbers its links out of layer order (here /1 is
    # the last layer); each link must be replaced where it is in both numberings.
    model = chainer.Sequential(
        L.Linear(12, 24), F.relu, L.Linear(24, 16), F.relu, L.Linear(16, 6))
    paths = {path: link.W.shape for path, link in _linears(model).items()}
    x = standard_normal((2, 12), 0)
    assert share_linears(model, 4).changed == ('/0', '/1', '/2')
    assert [layer.W.shape for layer in model[::2]] == [(24, 3), (16, 6), (6, 4)]
    assert {path: (link.out_size, link.in_size) for path, link in
            _linears(model, SharedLinear).items()} == paths
    assert model(x).shape == (2, 6)


def test_a_link_reached_twice_becomes_one_shared_link():
    shared_dense = L.Linear(8, 8)
    model = chainer.Sequential(shared_dense, F.relu, shared_dense)
    report = share_linears(model, 2)
    assert report.changed == ('/0', '/1')
    assert model[0] is model[2] and type(model[0]) is SharedLinear


class Tied(chainer.Chain):
    """One L.Linear reachable at two paths, /p and /q: one layer, with tied weights."""

    def __init__(self):
        super().__init__()
        tied = L.Linear(4, 4)
        with self.init_scope():
            self.p = tied
            self.q = tied
            self.other = L.Linear(4, 4)

    def forward(self, x):
        return self.other(self.q(self.p(x)))


@pytest.mark.parametrize('include', ['/q', ['q'], lambda path, link: path == '/q'])
def test_a_tied_link_is_converted_at_all_of_its_paths(include):
    model = Tied()
    report = share_linears(model, 2, include=include)
    assert model.p is model.q
    assert type(model.p) is SharedLinear
    assert type(model.other) is L.Linear
    assert report.changed == ('/p', '/q')
    assert report.tied == (('/p', '/q'),)
    assert report.skipped == {'/other': 'excluded by include'}
    # One shared layer of 4 * 2 + 4, and the dense one of 4 * 4 + 4.
    assert (report.params_before, report.params_after) == (40, 32)
    assert 'tied: /p, /q are one link' in str(report)


def test_a_tied_link_that_cannot_be_converted_is_skipped_at_all_of_its_paths():
    model = Tied()
    report = share_linears(model, 3, include=lambda path, link: path == '/p')
    assert report.changed == ()
    assert report.skipped == {'/p': _not_divisible(4, 3), '/q': _not_divisible(4, 3),
                              '/other': 'excluded by include'}
    assert model.p is model.q and type(model.p) is L.Linear


def test_a_failed_conversion_leaves_the_model_as_it_was():
    model = MLP()
    before = dict(model.namedlinks())

    def convert(linear):
        if linear.name == 'l3':
            raise RuntimeError('boom')
        return SharedLinear.from_linear(linear, 2)

    with pytest.raises(RuntimeError, match='boom'):
        convert_linears(model, convert)
    assert dict(model.namedlinks()) == before


def test_unshare_linears_takes_a_lazy_layer_whose_weight_was_copied():
    source = SharedLinear(12, 3, n_shared=3)
    model = chainer.Sequential(SharedLinear(24, 4, n_shared=4), SharedLinear(3, n_shared=3))
    model[1].copyparams(source)  # a target network, say: in_size comes from W
    report = unshare_linears(model)
    assert report.changed == ('/0', '/1')
    assert [type(link) for link in model] == [L.Linear, L.Linear]
    np.testing.assert_array_equal(model[1].W.array, source.to_linear().W.array)


def test_link_hooks_are_carried_over():
    np.random.seed(0)
    model = MLP(n_units=(24, 16, 6), n_in=12)
    model.l1.add_hook(link_hooks.SpectralNormalization())
    model.l2.add_hook(link_hooks.SpectralNormalization(use_gamma=True))
    report = share_linears(model, 2)
    assert report.hooks == {'/l1': ('SpectralNormalization',)}
    assert list(model.l1.local_link_hooks) == ['SpectralNormalization']
    assert report.dropped_hooks == {'/l2': {'SpectralNormalization': (
        "ValueError: SpectralNormalization on SharedLinear normalises the tiled weight, and "
        "only with weight_name='W' and use_gamma=False: its gamma would start at the largest "
        "singular value of W, 1/sqrt(n_shared) of the layer's (got weight_name='W', "
        "use_gamma=True)")}}
    assert 'hook SpectralNormalization dropped from /l2: ValueError' in str(report)
    assert not model.l2.local_link_hooks

    back = unshare_linears(model)
    assert back.hooks == {'/l1': ('SpectralNormalization',)}
    assert list(model.l1.local_link_hooks) == ['SpectralNormalization']


@pytest.mark.parametrize('n_shared', [1, 4])
def test_spectral_normalization_state_is_carried_by_share_and_unshare(n_shared):
    np.random.seed(0)
    model = chainer.Sequential(L.Linear(8, 6))
    model[0].add_hook(link_hooks.SpectralNormalization())
    x = standard_normal((5, 8))
    warm_up(model, x)
    if n_shared > 1:  # make the dense weight a tiling, so the shared layer is the same one
        W = model[0].W.array
        W[...] = np.tile(W[:, :8 // n_shared], (1, n_shared))
        warm_up(model, x)
    before = outputs(model, x, train=False)
    u = model[0].W_u.copy()

    report = share_linears(model, n_shared)
    assert report.hooks == {'/0': ('SpectralNormalization',)}
    np.testing.assert_array_equal(model[0].W_u, u)
    np.testing.assert_allclose(outputs(model, x, train=False), before, rtol=1e-5, atol=1e-6)

    back = unshare_linears(model)
    assert back.hooks == {'/0': ('SpectralNormalization',)}
    assert type(model[0]) is L.Linear
    np.testing.assert_array_equal(model[0].W_u, u)
    np.testing.assert_allclose(outputs(model, x, train=False), before, rtol=1e-5, atol=1e-6)


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


@pytest.mark.parametrize('include', [['/l1', 'l3'], ('l1', 'l3'), {'/l1', '/l3'},
                                     lambda path, link: path != '/l2'])
def test_include_selects_by_path_or_predicate(include):
    model = MLP(n_units=(24, 16, 6), n_in=12)
    report = share_linears(model, 2, include=include)
    assert report.changed == ('/l1', '/l3')
    assert report.skipped == {'/l2': 'excluded by include'}
    assert type(model.l2) is L.Linear


def test_include_a_single_path():
    model = MLP()
    assert share_linears(model, 2, include='l2').changed == ('/l2',)


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


def test_a_predicate_does_not_force_layers_that_do_not_fit():
    model = MLP(n_units=(24, 16, 6), n_in=12)
    report = share_linears(model, 3, include=lambda path, link: True)
    assert report.skipped == {'/l3': _not_divisible(16, 3)}


@pytest.mark.parametrize('include, message', [
    ('/l3', r'include names /l3, which cannot be converted: in_size=16 is not divisible '
            r'by n_shared=3'),
    (['l1', 'l9'], r"include names 'l9', but the model has no link at /l9; its L.Linear "
                   r"links are: /l1, /l2, /l3"),
    ('/', r'include names /, which is a MLP, not a L.Linear'),
    ([3], r'include must be None, a path, a collection of paths or a callable; it holds 3'),
])
def test_include_naming_a_layer_that_cannot_be_converted_is_an_error(include, message):
    model = MLP(n_units=(24, 16, 6), n_in=12)
    links = _linears(model)
    with pytest.raises((ValueError, TypeError), match=message):
        share_linears(model, 3, include=include)
    assert _linears(model) == links  # untouched, l1 included


def test_n_shared_that_fits_no_layer_is_a_report_not_an_error():
    model = MLP(n_units=(24, 16, 6), n_in=12)
    report = share_linears(model, 7)
    assert report.changed == ()
    assert not report.needs_optimizer_setup
    assert report.skipped == {
        '/l1': _not_divisible(12, 7),
        '/l2': _not_divisible(24, 7),
        '/l3': _not_divisible(16, 7),
    }
    assert report.params_before == report.params_after
    assert str(report).splitlines()[0] == '0 changed, 3 skipped; parameters 814 -> 814'
    assert str(report).endswith('Nothing was converted.')


def test_lazy_linears_and_subclasses_are_skipped_with_the_reason():
    class ScaledLinear(L.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    model = chainer.ChainList(L.Linear(8), ScaledLinear(8, 8), L.Linear(8, 4))
    report = share_linears(model, 2)
    assert report.changed == ('/2',)
    assert report.skipped['/0'].startswith('not initialised yet: in_size is only known '
                                           'after the first forward pass')
    assert report.skipped['/1'] == ('a subclass of L.Linear (ScaledLinear), whose forward '
                                    'may differ')


def test_bad_model_or_n_shared():
    with pytest.raises(TypeError, match=r'share_linears expects a chainer.Link \(a Chain, '
                                        r'ChainList or Sequential\), got list'):
        share_linears([L.Linear(4, 4)], 2)
    with pytest.raises(TypeError, match=r'unshare_linears expects a chainer.Link'):
        unshare_linears(None)
    with pytest.raises(ValueError, match=r'the model is itself a Linear; use '
                                         r'SharedLinear.from_linear on it instead'):
        share_linears(L.Linear(4, 4), 2)
    with pytest.raises(ValueError, match=r'n_shared must be a positive integer, got 2.0'):
        share_linears(MLP(), 2.0)


def test_share_linears_keeps_dtype_and_device():
    with chainer.using_config('dtype', np.float64):
        model = MLP()
    model.to_device('@numpy')
    share_linears(model, 4)
    for link in model.links(skipself=True):
        assert link.W.dtype == link.b.dtype == np.float64
        assert link.device == model.device


def test_the_old_optimizer_leaves_new_parameters_alone_until_set_up_again():
    model = MLP()
    optimizer = chainer.optimizers.SGD(lr=0.1)
    optimizer.setup(model)
    share_linears(model, 2)
    x = standard_normal((4, 12), 0)

    def step():
        model.cleargrads()
        F.sum(model(x) ** 2).backward()
        optimizer.update()

    W = model.l1.W.array.copy()
    step()
    assert model.l1.W.grad is not None
    np.testing.assert_array_equal(model.l1.W.array, W)  # why the report says setup again

    optimizer.setup(model)
    step()
    assert not np.array_equal(model.l1.W.array, W)


def test_unshare_linears_turns_every_shared_link_back():
    model = Nested()
    x = standard_normal((3, 12), 0)
    model(x)
    share_linears(model, 2)
    model.heads.append(SharedLinear(4, n_shared=2))  # lazy: skipped
    shared = {path: link for path, link in _linears(model, SharedLinear).items()}
    report = unshare_linears(model, include=lambda path, link: path != '/heads/1')

    assert report.changed == ('/encoder/0', '/encoder/1', '/heads/0', '/out')
    assert report.skipped['/heads/1'] == 'excluded by include'
    assert report.skipped['/heads/2'].startswith('not initialised yet')
    for path in report.changed:
        dense = dict(model.namedlinks())[path]
        assert type(dense) is L.Linear
        np.testing.assert_array_equal(dense.W.array, np.tile(shared[path].W.array, (1, 2)))
    with pytest.raises(ValueError, match=r'use SharedLinear.to_linear on it instead'):
        unshare_linears(SharedLinear(4, 2, n_shared=2))


def _classification_data(n_in, n_out, size=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((size, n_in)).astype(np.float32)
    t = (x @ rng.standard_normal((n_in, n_out))).argmax(axis=1).astype(np.int32)
    return chainer.datasets.TupleDataset(x, t)


def _train(model, dataset, out, iterations=8):
    classifier = L.Classifier(model)
    optimizer = chainer.optimizers.Adam(alpha=0.01)
    optimizer.setup(classifier)
    iterator = chainer.iterators.SerialIterator(dataset, 16, shuffle=False)
    updater = training.updaters.StandardUpdater(iterator, optimizer)
    trainer = training.Trainer(updater, (iterations, 'iteration'), out=str(out))
    trainer.run()
    return float(trainer.observation['main/loss'].array)


@pytest.mark.parametrize('build, n_shared, expected_changed', [
    (lambda: MLP(n_units=(24, 16, 6), n_in=12), 4, ('/l1', '/l2', '/l3')),
    (lambda: MLP(n_units=(24, 16, 6), n_in=12), 3, ('/l1', '/l2')),
    (Nested, 2, ('/encoder/0', '/encoder/1', '/heads/0', '/heads/1', '/out')),
    (lambda: chainer.Sequential(L.Linear(12, 24), F.relu, L.Linear(24, 16), F.relu,
                                L.Linear(16, 6)), 4, ('/0', '/1', '/2')),
])
def test_convert_train_save_load_and_serve(tmp_path, build, n_shared, expected_changed):
    dataset = _classification_data(12, 6)
    x = dataset._datasets[0]

    np.random.seed(0)
    model = build()
    model(x[:1])  # initialise everything, as a trained dense model would be
    assert share_linears(model, n_shared).changed == expected_changed
    shared_before = {path: link.W.array.copy()
                     for path, link in _linears(model, SharedLinear).items()}

    loss = _train(model, dataset, tmp_path / 'result')
    assert np.isfinite(loss)
    for path, link in _linears(model, SharedLinear).items():
        assert not np.array_equal(link.W.array, shared_before[path]), path
    expected = model(x).array

    path = tmp_path / 'model.npz'
    chainer.serializers.save_npz(path, model)
    with np.load(path) as saved:
        assert int(saved[expected_changed[0].lstrip('/') + '/n_shared']) == n_shared

    # A fresh model built the same way (other random weights), converted the same way.
    np.random.seed(1)
    fresh = build()
    fresh(x[:1])
    assert share_linears(fresh, n_shared).changed == expected_changed
    assert not np.array_equal(fresh(x).array, expected)
    chainer.serializers.load_npz(path, fresh)
    np.testing.assert_array_equal(fresh(x).array, expected)

    # Served by plain Chainer.
    shared = _linears(fresh, SharedLinear)
    assert unshare_linears(fresh).changed == expected_changed
    assert not _linears(fresh, SharedLinear)
    for path, link in shared.items():
        np.testing.assert_array_equal(
            dict(fresh.namedlinks())[path].W.array, np.tile(link.W.array, (1, n_shared)))
    np.testing.assert_allclose(fresh(x).array, expected, **TO_LINEAR_TOLERANCE)


def test_loading_a_shared_file_into_an_unconverted_model_fails_clearly(tmp_path):
    model = MLP()
    share_linears(model, 4)
    path = tmp_path / 'model.npz'
    chainer.serializers.save_npz(path, model)
    # Chainer's own shape check (by broadcasting) refuses the (24, 3) weight for (24, 12).
    with pytest.raises(ValueError):
        chainer.serializers.load_npz(path, MLP())


def _n_weights_quarter(linear):
    return HashedLinear.from_linear(linear, n_weights=linear.W.size // 4, seed=1)


def test_convert_linears_to_hashed_layers_in_a_nested_model():
    np.random.seed(0)
    model = Nested()
    x = standard_normal((3, 12), 0)
    model(x)
    before = _linears(model)
    report = convert_linears(model, _n_weights_quarter)

    assert report.changed == ('/encoder/0', '/encoder/1', '/heads/0', '/heads/1', '/out')
    assert report.skipped == {}
    hashed = _linears(model, HashedLinear)
    assert sorted(hashed) == sorted(before)
    for path, link in hashed.items():
        dense = before[path]
        assert (link.in_size, link.out_size, link.n_weights, link.seed) == (
            dense.W.shape[1], dense.W.shape[0], dense.W.size // 4, 1)
        np.testing.assert_array_equal(link.W.array, _n_weights_quarter(dense).W.array)
    assert model.encoder[2].b is None
    weights = sum(link.W.size // 4 for link in before.values())
    biases = sum(link.b.size for link in before.values() if link.b is not None)
    assert (report.params_before, report.params_after) == (
        sum(link.W.size for link in before.values()) + biases, weights + biases)
    assert [type(layer) for layer in model.encoder] == [HashedLinear, type(F.relu),
                                                        HashedLinear, type(F.tanh)]
    assert model(x).shape == (3, 6)


def test_a_converter_that_refuses_a_layer_skips_it_with_its_reason():
    model = Nested()  # weights of 288, 384, 128, 96 and 84 numbers
    report = convert_linears(
        model, lambda linear: HashedLinear.from_linear(linear, n_weights=100))
    assert report.changed == ('/encoder/0', '/encoder/1', '/heads/0')
    assert report.skipped == {
        '/heads/1': 'n_weights=100 is more than the 6 x 16 = 96 virtual weights of the '
                    'layer: a hashed layer stores at most one weight per virtual weight',
        '/out': 'n_weights=100 is more than the 6 x 14 = 84 virtual weights of the layer: '
                'a hashed layer stores at most one weight per virtual weight',
    }
    assert type(model.heads[1]) is type(model.out) is L.Linear


def test_convert_linears_to_kronecker_layers_with_factors_that_fit_some():
    model = Nested()
    report = convert_linears(
        model, lambda linear: KroneckerLinear.from_linear(linear, in_factors=(4, 4)))
    assert report.changed == ('/heads/0', '/heads/1')  # the two of 16 inputs
    assert report.skipped['/encoder/0'] == (
        'in_factors=(4, 4) do not multiply to 12; choose one of (1, 12), (2, 6), (3, 4), '
        '(4, 3), (6, 2), (12, 1)')
    assert report.skipped['/out'].startswith('in_factors=(4, 4) do not multiply to 14')
    assert model.heads[0].A.shape == (1, 2, 4) and model.heads[0].B.shape == (1, 4, 4)


def _exact_kronecker(linear):
    # As many terms as the rearranged weight has rank: the sum is the dense weight.
    default = KroneckerLinear.from_linear(linear)  # the most square factors
    (n1, n2), (m1, m2) = default.in_factors, default.out_factors
    return KroneckerLinear.from_linear(linear, n_terms=min(m1 * n1, m2 * n2))


def test_convert_linears_to_full_rank_kronecker_layers_keeps_the_function():
    np.random.seed(0)
    model = Nested()
    x = standard_normal((5, 12), 0)
    expected = model(x).array
    report = convert_linears(model, _exact_kronecker)
    assert report.changed == ('/encoder/0', '/encoder/1', '/heads/0', '/heads/1', '/out')
    assert all(type(link) is KroneckerLinear for link in _linears(model, KroneckerLinear)
               .values()) and not _linears(model)
    # The SVD is taken in float64 and stored in float32: a rounding per factor.
    np.testing.assert_allclose(model(x).array, expected, rtol=1e-5, atol=1e-5)


def _mixed_family_model():
    np.random.seed(0)
    model = Nested()
    model(standard_normal((1, 12), 0))
    convert_linears(model, lambda linear: SharedLinear.from_linear(linear, 2),
                    include=['/encoder/0', '/out'])
    convert_linears(model, _n_weights_quarter, include='/encoder/1')
    convert_linears(model, lambda linear: KroneckerLinear.from_linear(linear, n_terms=2),
                    include=['/heads/0', '/heads/1'])
    for link in model.links(skipself=True):  # trained weights, not the conversions' means
        for param in link.params(include_uninit=False):
            param.array[...] = standard_normal(param.shape, len(param.name)) / 3
    return model


def test_unshare_linears_turns_every_family_link_back():
    model = _mixed_family_model()
    assert [type(model.encoder[0]), type(model.encoder[2]), type(model.heads[0]),
            type(model.heads[1]), type(model.out)] == [
        SharedLinear, HashedLinear, KroneckerLinear, KroneckerLinear, SharedLinear]
    family = dict(model.namedlinks())
    x = standard_normal((4, 12), 1)
    expected = model(x).array

    report = unshare_linears(model)
    assert report.changed == ('/encoder/0', '/encoder/1', '/heads/0', '/heads/1', '/out')
    assert report.skipped == {}
    links = dict(model.namedlinks())
    for path in report.changed:
        assert type(links[path]) is L.Linear
        np.testing.assert_array_equal(links[path].W.array, family[path].dense_weight())
    assert model.encoder[2].b is None
    np.testing.assert_allclose(model(x).array, expected, **TO_LINEAR_TOLERANCE)


def test_unshare_linears_skips_lazy_family_links_and_their_subclasses():
    class ScaledHashed(HashedLinear):
        def forward(self, x):
            return 2 * super().forward(x)

    model = chainer.ChainList(HashedLinear(4, n_weights=3), KroneckerLinear(4),
                              ScaledHashed(4, 4, n_weights=3), KroneckerLinear(8, 4))
    report = unshare_linears(model)
    assert report.changed == ('/3',)
    assert report.skipped['/0'].startswith('not initialised yet')
    assert report.skipped['/1'].startswith('not initialised yet')
    assert report.skipped['/2'] == ('a subclass of HashedLinear (ScaledHashed), whose '
                                    'forward may differ')


@pytest.mark.parametrize('include', ['/q', ['p'], lambda path, link: path == '/q'])
def test_a_tied_link_becomes_one_hashed_link_at_both_paths(include):
    model = Tied()
    x = standard_normal((2, 4), 0)
    report = convert_linears(
        model, lambda linear: HashedLinear.from_linear(linear, n_weights=6), include=include)
    assert model.p is model.q
    assert type(model.p) is HashedLinear and type(model.other) is L.Linear
    assert report.changed == ('/p', '/q')
    assert report.tied == (('/p', '/q'),)
    # One hashed layer of 6 + 4, and the dense one of 4 * 4 + 4.
    assert (report.params_before, report.params_after) == (40, 30)
    assert model(x).shape == (2, 4)
    back = unshare_linears(model)
    assert back.changed == ('/p', '/q') and model.p is model.q and type(model.p) is L.Linear


def test_hooks_that_a_family_link_refuses_are_dropped_with_the_reason():
    model = MLP(n_units=(24, 16, 6), n_in=12)
    model.l1.add_hook(link_hooks.SpectralNormalization())
    model.l2.add_hook(link_hooks.TimerHook())
    report = convert_linears(model, _n_weights_quarter)
    assert report.changed == ('/l1', '/l2', '/l3')
    assert report.hooks == {'/l2': ('TimerHook',)}
    reason = report.dropped_hooks['/l1']['SpectralNormalization']
    assert reason.startswith('ValueError: SpectralNormalization is not supported on '
                             'HashedLinear')
    assert not model.l1.local_link_hooks
    assert list(model.l2.local_link_hooks) == ['TimerHook']
