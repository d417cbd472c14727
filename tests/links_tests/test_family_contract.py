"""What every link of the family promises, tested once for all of them.

Each link is an entry of :data:`FAMILY`: how to build it eager and lazy, its
pattern's options (all set to values other than the defaults), the dense NumPy
oracle of its weight, its function, and the few messages that are its own. Every
test here runs for every entry, so a new layer of the family gets the whole
contract by adding one :class:`Entry` to :data:`FAMILY`; what is particular to a
layer stays in its own ``test_<layer>.py``.

The sizes are small (8 inputs, 3 outputs) so that the contract costs little per entry.
"""

import copy
import dataclasses
import pickle
import typing as tp

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
import pytest
from chainer import link_hooks, testing
from chainer.utils.type_check import InvalidType

from chainer_sharedlinear import (
    ClusteredLinear,
    ClusteredLowRankLinear,
    HashedLinear,
    KroneckerLinear,
    LowRankLinear,
    MonarchLinear,
    SharedLinear,
    convert_linears,
    hashed_linear,
    kronecker_linear,
    low_rank_linear,
    monarch_linear,
    register,
    shared_linear,
    tied_linear,
    unshare_linears,
)
from tests.helpers import (
    BACKENDS,
    FLOATS,
    assert_bias_copied,
    assert_params_equal,
    chainer_namespaces_as_they_were,
    dense_linear,
    escaped,
    hashed_weight,
    kron_weight,
    link_tolerances,
    outputs,
    param_arrays,
    reordered_sum_tolerance,
    set_non_default,
    standard_normal,
    tiled,
    warm_up,
)
from tests.monarch_oracle import monarch_weight

IN_SIZE, OUT_SIZE = 8, 3


@dataclasses.dataclass(frozen=True)
class Entry:
    """One link of the family, as the contract needs to know it."""

    #: The class; ``register()`` adds it to ``chainer.links`` under its name.
    cls: type
    #: The pattern's options of an ``(IN_SIZE, OUT_SIZE)`` layer, none of them the default.
    options: tp.Dict[str, tp.Any]
    #: The options of a lazy layer (``in_size`` unknown), none of them the default.
    lazy_options: tp.Dict[str, tp.Any]
    #: The dense ``(out_size, in_size)`` weight of a layer, from its parameters, in float64.
    dense_weight: tp.Callable[[chainer.Link], np.ndarray]
    #: Whether ``dense_weight()`` is :attr:`dense_weight` to the bit (a gather or a tiling).
    dense_weight_exact: bool
    #: The layer's function of ``(x, layer, n_batch_axes)``, as a user calls it.
    function: tp.Callable
    #: The options of ``from_linear`` that give back a layer built with :attr:`options`.
    from_linear_options: tp.Dict[str, tp.Any]
    #: The dtypes in which ``from_linear(to_linear())`` gives back the very parameters.
    from_linear_exact: tp.Tuple[type, ...]
    #: The integers saved with the parameters (never the dense weight or an index map).
    saved_integers: tp.Tuple[str, ...]
    #: Layers that must refuse a file saved by the eager layer, and the message they give.
    incompatible: tp.Tuple[tp.Tuple[tp.Callable[[], chainer.Link], str], ...]
    #: What an initialised layer says of an input of 12 features.
    wrong_width: str
    #: An in_size a lazy layer refuses on its first call, and why; or None.
    refused_in_size: tp.Optional[tp.Tuple[int, str]]
    #: Whether the shapes of the weights tell in_size (a hashed layer's do not).
    weights_tell_in_size: bool = True
    #: Whether ``copyparams`` into a lazy layer tells it in_size (with the persistent values).
    copy_tells_in_size: tp.Optional[bool] = None
    #: The arrays saved besides the parameters and the integers (a packed index).
    saved_arrays: tp.Tuple[str, ...] = ()
    #: The link hooks that reparametrise a weight which the layer takes.
    weight_hooks: tp.Tuple[type, ...] = ()

    @property
    def name(self) -> str:
        return self.cls.__name__

    def eager(self, **kwargs) -> chainer.Link:
        return self.cls(IN_SIZE, OUT_SIZE, **dict(self.options, **kwargs))

    def lazy(self, **kwargs) -> chainer.Link:
        return self.cls(OUT_SIZE, **dict(self.lazy_options, **kwargs))

    def __repr__(self) -> str:  # the id of every test
        return self.name


def _not_divisible(in_size):
    return r'in_size={} is not divisible by n_shared=4'.format(in_size)


FAMILY = [
    Entry(
        cls=SharedLinear,
        options={'n_shared': 4},
        lazy_options={'n_shared': 4},
        dense_weight=lambda layer: tiled(layer.W.array.astype(np.float64), layer.n_shared),
        dense_weight_exact=True,
        function=lambda x, layer, n: shared_linear(x, layer.W, layer.b, n,
                                                   n_shared=layer.n_shared),
        from_linear_options={'n_shared': 4},
        from_linear_exact=tuple(FLOATS),
        saved_integers=('n_shared',),
        incompatible=(
            (lambda: SharedLinear(IN_SIZE, OUT_SIZE, n_shared=2),
             r'cannot load a SharedLinear saved with n_shared=4 into SharedLinear\(in_size=8, '
             r'out_size=3, n_shared=2, nobias=False\)'),
            (lambda: SharedLinear(16, OUT_SIZE, n_shared=4),  # W (3, 4) for (3, 2)
             r'cannot load W of shape \(3, 2\) into SharedLinear\(in_size=16, .*\), whose W '
             r'has shape \(3, 4\)'),
            (lambda: SharedLinear(OUT_SIZE, n_shared=2),  # lazy: the shape fits, n_shared not
             r'cannot load a SharedLinear saved with n_shared=4 into SharedLinear\('
             r'in_size=None'),
        ),
        wrong_width=r'x.shape\[1\] == 4 \* W.shape\[1\]',
        refused_in_size=(10, _not_divisible(10)),
        weight_hooks=(link_hooks.SpectralNormalization, link_hooks.WeightStandardization),
    ),
    Entry(
        cls=HashedLinear,
        options={'n_weights': 5, 'seed': 11},
        lazy_options={'n_weights': 5, 'seed': 11},
        dense_weight=lambda layer: hashed_weight(layer.W.array, layer.out_size, layer.in_size,
                                                 layer.seed),
        dense_weight_exact=True,
        function=lambda x, layer, n: hashed_linear(x, layer.W, layer.b, n,
                                                   out_size=layer.out_size, seed=layer.seed),
        from_linear_options={'n_weights': 5, 'seed': 11},
        # The signed means of float16 or float32 copies, taken in float64, round back.
        from_linear_exact=(np.float16, np.float32),
        saved_integers=('n_weights', 'seed', 'in_size', 'out_size'),
        incompatible=(
            (lambda: HashedLinear(IN_SIZE, OUT_SIZE, n_weights=5, seed=6),
             r'cannot load a HashedLinear saved with seed=11 into'),
            (lambda: HashedLinear(IN_SIZE, OUT_SIZE, n_weights=6, seed=11),
             r'saved with n_weights=5 into'),
            (lambda: HashedLinear(10, OUT_SIZE, n_weights=5, seed=11),
             r'saved with in_size=8 into'),
            (lambda: HashedLinear(IN_SIZE, 4, n_weights=5, seed=11),
             r'saved with out_size=3 into'),
            (lambda: HashedLinear(OUT_SIZE, n_weights=5, seed=6),  # lazy
             r'saved with seed=11 into HashedLinear\(in_size=None'),
        ),
        wrong_width=r'x.shape\[1\] == index.shape\[1\]',
        weights_tell_in_size=False,  # W is (n_weights,) for any in_size
        refused_in_size=(1, r'n_weights=5 is more than the 3 x 1 = 3 virtual weights of the '
                            r'layer'),
    ),
    Entry(
        cls=KroneckerLinear,
        options={'in_factors': (4, 2), 'out_factors': (3, 1), 'n_terms': 2},
        lazy_options={'out_factors': (3, 1), 'n_terms': 2},
        dense_weight=lambda layer: kron_weight(layer.A.array, layer.B.array),
        dense_weight_exact=False,  # n_terms products added up (see test_kronecker_linear)
        function=lambda x, layer, n: kronecker_linear(x, layer.A, layer.B, layer.b, n),
        from_linear_options={'in_factors': (4, 2), 'out_factors': (3, 1), 'n_terms': 2},
        from_linear_exact=(),  # an SVD: the same sum, other factors
        saved_integers=(),
        incompatible=(
            (lambda: KroneckerLinear(IN_SIZE, OUT_SIZE, in_factors=(2, 4), out_factors=(3, 1),
                                     n_terms=2),
             r'cannot load A of shape \(2, 3, 4\) into KroneckerLinear\(in_size=8, out_size=3, '
             r'in_factors=\(2, 4\).*whose A has shape \(2, 3, 2\)'),
            (lambda: KroneckerLinear(IN_SIZE, OUT_SIZE, in_factors=(4, 2), n_terms=2),
             r'cannot load A of shape \(2, 3, 4\) into .*, whose A has shape \(2, 1, 4\)'),
            (lambda: KroneckerLinear(IN_SIZE, OUT_SIZE, in_factors=(4, 2), out_factors=(3, 1)),
             r'cannot load A of shape \(2, 3, 4\) into .*, whose A has shape \(1, 3, 4\)'),
            (lambda: KroneckerLinear(OUT_SIZE, out_factors=(3, 1), n_terms=3),  # lazy
             r'cannot load A of shape \(2, 3, 4\) into .*, whose A has shape \(3, 3, \?\)'),
            (lambda: KroneckerLinear(16, OUT_SIZE, in_factors=(4, 4), out_factors=(3, 1),
                                     n_terms=2),
             r'cannot load B of shape \(2, 1, 2\) into .*, whose B has shape \(2, 1, 4\)'),
        ),
        wrong_width=r'x.shape\[1\] == A.shape\[2\] \* B.shape\[2\]',
        refused_in_size=None,  # any in_size has factors
    ),
    Entry(
        cls=LowRankLinear,
        options={'rank': 2},
        lazy_options={'rank': 2},
        dense_weight=lambda layer: layer.U.array.astype(np.float64).dot(
            layer.V.array.astype(np.float64)),
        dense_weight_exact=False,  # rank products added up
        function=lambda x, layer, n: low_rank_linear(x, layer.U, layer.V, layer.b, n),
        from_linear_options={'rank': 2},
        from_linear_exact=(),  # an SVD: the same product, other factors
        saved_integers=(),
        incompatible=(
            (lambda: LowRankLinear(IN_SIZE, OUT_SIZE, rank=1),
             r'cannot load U of shape \(3, 2\) into LowRankLinear\(in_size=8, out_size=3, '
             r'rank=1, nobias=False\), whose U has shape \(3, 1\)'),
            (lambda: LowRankLinear(10, OUT_SIZE, rank=2),
             r'cannot load V of shape \(2, 8\) into .*, whose V has shape \(2, 10\)'),
            (lambda: LowRankLinear(OUT_SIZE, rank=3),  # lazy
             r'cannot load U of shape \(3, 2\) into .*, whose U has shape \(3, 3\)'),
        ),
        wrong_width=r'x.shape\[1\] == W.shape\[1\]',
        refused_in_size=(1, r'rank=2 is more than min\(in_size, out_size\) = min\(1, 3\)'),
    ),
    Entry(
        cls=ClusteredLinear,
        options={'n_clusters': 5, 'seed': 7},
        lazy_options={'n_clusters': 5, 'seed': 7},
        dense_weight=lambda layer: layer.W.array.astype(np.float64)[layer.index],
        dense_weight_exact=True,
        function=lambda x, layer, n: tied_linear(x, layer.W, layer.index, b=layer.b,
                                                 n_batch_axes=n),
        from_linear_options={'n_clusters': 5, 'seed': 7},
        from_linear_exact=(),  # the same values, in ascending order
        saved_integers=('n_clusters', 'in_size', 'out_size'),
        saved_arrays=('index',),
        incompatible=(
            (lambda: ClusteredLinear(IN_SIZE, OUT_SIZE, n_clusters=4, seed=7),
             r'cannot load a ClusteredLinear saved with n_clusters=5 into'),
            (lambda: ClusteredLinear(10, OUT_SIZE, n_clusters=5, seed=7),
             r'saved with in_size=8 into'),
            (lambda: ClusteredLinear(OUT_SIZE, n_clusters=6),  # lazy
             r'saved with n_clusters=5 into ClusteredLinear\(in_size=None'),
        ),
        wrong_width=r'x.shape\[1\] == index.shape\[1\]',
        weights_tell_in_size=False,  # W is (n_clusters,) for any in_size; the index tells
        copy_tells_in_size=True,
        refused_in_size=None,
    ),
    Entry(
        cls=ClusteredLowRankLinear,
        # 16 values hold every entry of the factors (3 x 2 and 2 x 8): k-means of the factors of
        # to_linear() then loses nothing, and from_linear gives the layer's weight back.
        options={'rank': 2, 'n_clusters': 16, 'seed': 7},
        lazy_options={'rank': 2, 'n_clusters': 16, 'seed': 7},
        dense_weight=lambda layer: layer.U.array.astype(np.float64)[layer.U_index].dot(
            layer.V.array.astype(np.float64)[layer.V_index]),
        dense_weight_exact=False,  # rank products added up
        function=lambda x, layer, n: low_rank_linear(x, layer.U[layer.U_index],
                                                     layer.V[layer.V_index], layer.b, n),
        from_linear_options={'rank': 2, 'n_clusters': 16, 'seed': 7},
        from_linear_exact=(),  # an SVD: the same product, other factors
        saved_integers=('n_clusters', 'rank', 'in_size', 'out_size'),
        saved_arrays=('U_index', 'V_index'),
        incompatible=(
            (lambda: ClusteredLowRankLinear(IN_SIZE, OUT_SIZE, rank=1, n_clusters=16, seed=7),
             r'cannot load a ClusteredLowRankLinear saved with rank=2 into '
             r'ClusteredLowRankLinear\(in_size=8, out_size=3, rank=1'),
            (lambda: ClusteredLowRankLinear(IN_SIZE, OUT_SIZE, rank=2, n_clusters=8, seed=7),
             r'saved with n_clusters=16 into'),
            (lambda: ClusteredLowRankLinear(10, OUT_SIZE, rank=2, n_clusters=16, seed=7),
             r'saved with in_size=8 into'),
            (lambda: ClusteredLowRankLinear(OUT_SIZE, rank=3, n_clusters=16),  # lazy
             r'saved with rank=2 into ClusteredLowRankLinear\(in_size=None'),
        ),
        wrong_width=r'x.shape\[1\] == W.shape\[1\]',
        refused_in_size=(1, r'rank=2 is more than min\(in_size, out_size\) = min\(1, 3\)'),
        weights_tell_in_size=False,  # U and V are (n_clusters,) for any in_size; V_index tells
        copy_tells_in_size=True,
    ),
    Entry(
        cls=MonarchLinear,
        options={'n_blocks': 2},
        lazy_options={'n_blocks': 2},
        dense_weight=lambda layer: monarch_weight(layer.R.array.astype(np.float64),
                                                  layer.L.array.astype(np.float64),
                                                  layer.in_size, layer.out_size),
        dense_weight_exact=False,  # two products
        function=lambda x, layer, n: monarch_linear(x, layer.R, layer.L, layer.b, n,
                                                    out_size=layer.out_size),
        from_linear_options={'n_blocks': 2},
        from_linear_exact=(),  # an SVD of each block, and the cut rows of L set to zero
        saved_integers=('n_blocks', 'in_size', 'out_size'),
        incompatible=(
            (lambda: MonarchLinear(IN_SIZE, OUT_SIZE, n_blocks=3),
             r'cannot load a MonarchLinear saved with n_blocks=2 into MonarchLinear\(in_size=8'),
            (lambda: MonarchLinear(7, OUT_SIZE, n_blocks=2), r'saved with in_size=8 into'),
            (lambda: MonarchLinear(OUT_SIZE, n_blocks=3),  # lazy
             r'saved with n_blocks=2 into MonarchLinear\(in_size=None'),
        ),
        wrong_width=r'R.shape\[2\] == \(x.shape\[1\] \+ R.shape\[0\] - 1\) // R.shape\[0\]',
        refused_in_size=(1, r'n_blocks=2 is more than in_size=1: each block needs at least '
                            r'one input'),
        weights_tell_in_size=False,  # R's blocks of p = ceil(in_size / n_blocks) inputs
    ),
]


def _x(dtype=np.float32, shape=(5, IN_SIZE), seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(dtype)


def _expected(entry, layer, x, n_batch_axes=1):
    b = None if layer.b is None else layer.b.array
    return dense_linear(x, entry.dense_weight(layer), b, n_batch_axes)


# --- Forward and backward against the dense oracle, as Chainer tests its links -------------


@testing.parameterize(*testing.product({
    'entry': FAMILY,
    'dtype': FLOATS,
    'nobias': [True, False],
}))
@testing.inject_backend_tests(None, BACKENDS)
class TestLink(testing.LinkTestCase):

    def setUp(self):
        names = self.entry.cls.weight_names
        self.param_names = names if self.nobias else names + ('b',)
        vars(self).update(link_tolerances(self.dtype))

    def generate_params(self):
        shapes = {name.lstrip('/'): param.shape
                  for name, param in self.entry.eager(nobias=self.nobias).namedparams()}
        rng = np.random.default_rng(0)
        return tuple(rng.uniform(-1, 1, shapes[name]).astype(self.dtype)
                     for name in self.param_names)

    def create_link(self, initializers):
        kwargs = {'initial' + name: init
                  for name, init in zip(self.entry.cls.weight_names, initializers)}
        if not self.nobias:
            kwargs['initial_bias'] = initializers[-1]
        # Like L.Linear, parameters take chainer.config.dtype.
        with chainer.using_config('dtype', self.dtype):
            return self.entry.eager(nobias=self.nobias, **kwargs)

    def generate_inputs(self):
        return _x(self.dtype),

    def forward_expected(self, link, inputs):
        x, = inputs
        return _expected(self.entry, link, x).astype(self.dtype),


@pytest.fixture(params=FAMILY, ids=repr)
def entry(request):
    return request.param


def test_the_layer_computes_its_function(entry):
    layer = set_non_default(entry.eager())
    x = _x()
    np.testing.assert_array_equal(layer(x).array, entry.function(x, layer, 1).array)


@pytest.mark.parametrize('batch_shape, n_batch_axes', [((2, 3), 2), ((2, 1, 2), 3)])
def test_several_batch_axes_are_the_batch_flattened(entry, batch_shape, n_batch_axes):
    layer = set_non_default(entry.eager())
    x = _x(shape=batch_shape + (2, IN_SIZE // 2))
    y = layer(x, n_batch_axes=n_batch_axes)
    assert y.shape == batch_shape + (OUT_SIZE,)
    flat = layer(x.reshape(-1, IN_SIZE)).array
    np.testing.assert_array_equal(y.array, flat.reshape(y.shape))


@pytest.mark.parametrize('batch_shape, n_batch_axes', [((0,), 1), ((0, 3), 2)])
def test_an_empty_batch_gives_an_empty_output_and_gradient(entry, batch_shape, n_batch_axes):
    layer = set_non_default(entry.eager())
    x = chainer.Variable(np.ones(batch_shape + (IN_SIZE,), np.float32))
    y = layer(x, n_batch_axes=n_batch_axes)
    assert y.shape == batch_shape + (OUT_SIZE,)
    layer.cleargrads()
    F.sum(y).backward()
    assert x.grad.shape == x.shape
    for name, param in layer.namedparams():
        np.testing.assert_array_equal(param.grad, np.zeros(param.shape), err_msg=name)


def test_an_input_of_another_width_or_dtype_is_a_type_error(entry):
    layer = entry.eager()
    with pytest.raises(InvalidType, match=entry.wrong_width):
        layer(np.ones((2, 12), np.float32))
    with pytest.raises(InvalidType, match=r'x.dtype.kind == f'):
        layer(np.ones((2, IN_SIZE), np.int64))


# --- Parameters: dtype, initializers ---------------------------------------------------------


@pytest.mark.parametrize('config_dtype, param_dtype', [
    (np.float16, np.float16), (np.float32, np.float32), (np.float64, np.float64),
    (chainer.mixed16, np.float16)])
def test_parameter_dtype_follows_config_like_linear(entry, config_dtype, param_dtype):
    with chainer.using_config('dtype', config_dtype):
        layer = entry.eager()
        lazy = entry.lazy()
        y = lazy(np.ones((1, IN_SIZE), chainer.get_dtype()))
        reference = L.Linear(IN_SIZE, OUT_SIZE)
    assert reference.W.dtype == param_dtype
    for link in (layer, lazy):
        assert {param.dtype for param in link.params()} == {np.dtype(param_dtype)}
    assert y.dtype == param_dtype


def test_the_initializers_given_are_used(entry):
    shapes = {name: param.shape for name, param in entry.eager().namedparams()}
    arrays = {name: standard_normal(shapes['/' + name], seed)
              for seed, name in enumerate(entry.cls.weight_names)}
    layer = entry.eager(initial_bias=1.5,
                        **{'initial' + name: array for name, array in arrays.items()})
    for name, array in arrays.items():
        np.testing.assert_array_equal(getattr(layer, name).array, array)
    np.testing.assert_array_equal(layer.b.array, np.full(OUT_SIZE, 1.5, np.float32))
    ones = entry.eager(**{'initial' + name: chainer.initializers.One()
                          for name in entry.cls.weight_names})
    for name in entry.cls.weight_names:
        np.testing.assert_array_equal(getattr(ones, name).array, np.ones(shapes['/' + name]))
    assert entry.eager(nobias=True).b is None


def test_an_initial_array_of_another_shape_is_refused_and_a_lazy_layer_stays_lazy(entry):
    for name, param in entry.eager().namedparams():
        name = name.lstrip('/')
        if name == 'b':
            continue
        wrong = np.zeros(param.shape + (2,), np.float32)
        message = r'initial{} has shape {}, but the {} of {}\('.format(
            name, escaped(wrong.shape), name, entry.name)
        with pytest.raises(ValueError, match=message + r'.*\) has shape {}'.format(
                escaped(param.shape))):
            entry.eager(**{'initial' + name: wrong})
        lazy = entry.lazy(**{'initial' + name: wrong})
        with pytest.raises(ValueError, match=message):
            lazy(np.ones((1, IN_SIZE), np.float32))
        assert lazy.in_size is None
        assert all(param.array is None for param in lazy.params() if param.name != 'b')


# --- Lazy initialisation --------------------------------------------------------------------


@pytest.mark.parametrize('shape, n_batch_axes', [((2, 2, 4), 1), ((2, 3, 8), 2)])
def test_a_lazy_layer_takes_in_size_from_the_first_input(entry, shape, n_batch_axes):
    layer = entry.lazy()
    assert layer.in_size is None
    assert all(param.array is None for param in layer.params() if param.name != 'b')
    y = layer(np.ones(shape, np.float32), n_batch_axes=n_batch_axes)
    assert y.shape == shape[:n_batch_axes] + (OUT_SIZE,)
    like = entry.cls(IN_SIZE, OUT_SIZE, **entry.lazy_options)
    assert layer.in_size == IN_SIZE
    assert repr(layer) == repr(like)
    assert {n: p.shape for n, p in layer.namedparams()} == {
        n: p.shape for n, p in like.namedparams()}
    # In either order of the sizes, as L.Linear takes them.
    explicit = entry.cls(None, OUT_SIZE, **entry.lazy_options)
    explicit(np.ones((1, IN_SIZE), np.float32))
    assert repr(explicit) == repr(like)


@pytest.mark.parametrize('shape, n_batch_axes', [((5,), 1), ((2, 5), 2)])
def test_an_input_without_features_leaves_a_lazy_layer_as_it_was(entry, shape, n_batch_axes):
    layer = entry.lazy()
    with pytest.raises(ValueError, match=r'x has shape {}, which leaves no feature axis'.format(
            escaped(shape))):
        layer(np.zeros(shape, np.float32), n_batch_axes=n_batch_axes)
    assert layer.in_size is None
    assert layer(np.zeros((2, IN_SIZE), np.float32)).shape == (2, OUT_SIZE)
    assert layer.in_size == IN_SIZE


def test_an_in_size_the_pattern_refuses_leaves_a_lazy_layer_as_it_was(entry):
    if entry.refused_in_size is None:
        pytest.skip('{} takes any in_size'.format(entry.name))
    in_size, message = entry.refused_in_size
    layer = entry.lazy()
    with pytest.raises(ValueError, match=message):
        layer(np.ones((2, in_size), np.float32))
    assert layer.in_size is None
    assert all(param.array is None for param in layer.params() if param.name != 'b')
    assert layer(np.ones((2, IN_SIZE), np.float32)).shape == (2, OUT_SIZE)
    assert layer.in_size == IN_SIZE


def test_a_lazy_layer_with_copied_weights_computes_what_their_layer_computes(entry):
    source = set_non_default(entry.eager())
    copied = entry.lazy()
    copied.copyparams(source)  # the usual target-network pattern
    tells = (entry.weights_tell_in_size if entry.copy_tells_in_size is None
             else entry.copy_tells_in_size)
    assert copied.in_size == (IN_SIZE if tells else None)
    x = _x()
    np.testing.assert_array_equal(copied(x).array, source(x).array)
    assert repr(copied) == repr(source)
    np.testing.assert_array_equal(copied.to_linear().W.array, source.to_linear().W.array)


def test_in_size_follows_the_weights_however_they_are_initialised(entry):
    if not entry.weights_tell_in_size:
        pytest.skip("{}'s weights do not tell in_size".format(entry.name))
    shapes = {name.lstrip('/'): param.shape for name, param in entry.eager().namedparams()}
    initialised = entry.lazy()
    for name in entry.cls.weight_names:
        getattr(initialised, name).initialize(shapes[name])
    assert initialised.in_size == IN_SIZE
    assert initialised.to_linear().W.shape == (OUT_SIZE, IN_SIZE)


# --- Saving and loading ---------------------------------------------------------------------


def test_save_and_load_npz_round_trip_of_every_parameter(entry, tmp_path):
    saved = set_non_default(entry.eager())
    path = str(tmp_path / 'layer.npz')
    chainer.serializers.save_npz(path, saved)
    with np.load(path) as f:
        # The parameters and the integers of the pattern: never a dense weight or a map.
        params = {name.lstrip('/'): param.shape for name, param in saved.namedparams()}
        assert sorted(f.files) == sorted(list(params) + list(entry.saved_integers)
                                         + list(entry.saved_arrays))
        for name, shape in params.items():
            assert f[name].shape == shape
        for name in entry.saved_integers:
            assert f[name].shape == () and int(f[name]) == getattr(saved, name)

    x = _x()
    arrays = param_arrays(saved)
    for loaded in (entry.eager(), entry.lazy()):  # a lazy layer takes in_size from the file
        chainer.serializers.load_npz(path, loaded)
        assert repr(loaded) == repr(saved)
        assert_params_equal(loaded, arrays)
        np.testing.assert_array_equal(loaded(x).array, saved(x).array)


def test_a_lazy_layer_is_saved_and_loaded_as_it_is(entry, tmp_path):
    path = str(tmp_path / 'lazy.npz')
    chainer.serializers.save_npz(path, entry.lazy())
    target = entry.lazy()
    chainer.serializers.load_npz(path, target)
    assert target.in_size is None
    assert target(np.ones((1, IN_SIZE), np.float32)).shape == (1, OUT_SIZE)


def _assert_load_refused(path, target, message):
    before, specs = param_arrays(target), dict(target.printable_specs)
    with pytest.raises(ValueError, match=message):
        chainer.serializers.load_npz(path, target)
    assert dict(target.printable_specs) == specs
    assert_params_equal(target, before)


def test_loading_into_a_layer_of_other_options_is_refused_and_leaves_it_unchanged(
        entry, tmp_path):
    path = str(tmp_path / 'layer.npz')
    chainer.serializers.save_npz(path, set_non_default(entry.eager()))
    for other, message in entry.incompatible:
        _assert_load_refused(path, other(), message)
    _assert_load_refused(path, entry.eager(nobias=True),
                         r'cannot load a bias b into {}\(.*\), which has none \(nobias=True\)'
                         .format(entry.name))


def test_loading_a_weight_that_would_broadcast_is_refused(entry, tmp_path):
    # Chainer copies loaded arrays with broadcasting: ones of shape (1, ..., 1) would fill any
    # parameter of as many axes.
    saved = set_non_default(entry.eager())
    for name in entry.cls.weight_names:
        path = str(tmp_path / '{}.npz'.format(name))
        chainer.serializers.save_npz(path, saved)
        with np.load(path) as f:
            arrays = dict(f)
        arrays[name] = np.ones((1,) * arrays[name].ndim, np.float32)
        np.savez(path, **arrays)
        _assert_load_refused(
            path, entry.eager(),
            r'cannot load {} of shape {} into {}\(.*\), whose {} has shape {}'.format(
                name, escaped(arrays[name].shape), entry.name, name,
                escaped(getattr(saved, name).shape)))


def test_pickle_and_deepcopy_keep_everything(entry):
    layer = set_non_default(entry.eager())
    x = _x()
    expected = layer(x).array
    arrays = param_arrays(layer)
    for clone in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
        assert repr(clone) == repr(layer)
        assert_params_equal(clone, arrays)
        for name, param in clone.namedparams():
            assert param.array is not getattr(layer, name.lstrip('/')).array
        np.testing.assert_array_equal(clone(x).array, expected)
    lazy = pickle.loads(pickle.dumps(entry.lazy()))
    assert lazy.in_size is None
    lazy(np.ones((1, IN_SIZE), np.float32))
    assert repr(lazy) == repr(entry.cls(IN_SIZE, OUT_SIZE, **entry.lazy_options))


# --- to_linear and from_linear --------------------------------------------------------------


@pytest.mark.parametrize('dtype', FLOATS)
@pytest.mark.parametrize('nobias', [False, True])
def test_to_linear_is_the_dense_layer_of_the_same_function(entry, dtype, nobias):
    with chainer.using_config('dtype', dtype):
        layer = set_non_default(entry.eager(nobias=nobias))
    dense = layer.to_linear()
    assert type(dense) is L.Linear
    assert (dense.in_size, dense.out_size) == (IN_SIZE, OUT_SIZE)
    assert dense.W.dtype == dtype
    np.testing.assert_array_equal(dense.W.array, layer.dense_weight())
    if entry.dense_weight_exact:
        np.testing.assert_array_equal(dense.W.array, entry.dense_weight(layer))
    else:
        np.testing.assert_allclose(dense.W.array, entry.dense_weight(layer),
                                   **reordered_sum_tolerance(dtype))
    assert_bias_copied(layer, dense)
    x = _x(dtype, (7, IN_SIZE))
    np.testing.assert_allclose(dense(x).array, layer(x).array, **reordered_sum_tolerance(dtype))


def test_to_linear_refuses_a_lazy_layer(entry):
    with pytest.raises(ValueError, match=r'cannot convert {}\(in_size=None.*not initialised '
                                         r'yet'.format(entry.name)):
        entry.lazy().to_linear()


@pytest.mark.parametrize('dtype', FLOATS)
def test_from_linear_of_to_linear_gives_the_layer_back(entry, dtype):
    with chainer.using_config('dtype', dtype):
        layer = set_non_default(entry.eager())
    dense = layer.to_linear()
    before = param_arrays(dense)
    back = entry.cls.from_linear(dense, **entry.from_linear_options)
    assert type(back) is entry.cls
    assert repr(back) == repr(layer)
    assert {param.dtype for param in back.params()} == {np.dtype(dtype)}
    if dtype in entry.from_linear_exact:
        assert_params_equal(back, param_arrays(layer))
    else:
        np.testing.assert_allclose(back.dense_weight(), layer.dense_weight(),
                                   **reordered_sum_tolerance(dtype))
        np.testing.assert_array_equal(back.b.array, layer.b.array)
    assert back.b.array is not dense.b.array
    assert_params_equal(dense, before)  # the dense layer is left as it was


def test_from_linear_without_bias_and_after_lazy_initialisation(entry):
    dense = L.Linear(OUT_SIZE, nobias=True)
    dense(np.ones((1, IN_SIZE), np.float32))  # Linear keeps in_size None; W tells the size
    layer = entry.cls.from_linear(dense, **entry.from_linear_options)
    assert layer.in_size == IN_SIZE and layer.b is None


def test_from_linear_refuses_what_is_not_an_initialised_linear(entry):
    with pytest.raises(ValueError, match=r'cannot convert Linear\(in_size=None, out_size=3.*'
                                         r'not initialised yet'):
        entry.cls.from_linear(L.Linear(OUT_SIZE), **entry.from_linear_options)
    with pytest.raises(TypeError, match=r'from_linear expects a chainer.links.Linear, '
                                        r'got {}'.format(entry.name)):
        entry.cls.from_linear(entry.eager(), **entry.from_linear_options)


# --- Link hooks -----------------------------------------------------------------------------


@pytest.mark.parametrize('make_hook', [link_hooks.SpectralNormalization,
                                       link_hooks.WeightStandardization])
@pytest.mark.parametrize('train', [False, True])
def test_a_weight_hook_is_refused_or_carried_by_to_linear_with_its_state(
        entry, make_hook, train):
    np.random.seed(1)
    layer = entry.eager()
    hook = make_hook(weight_name=entry.cls.weight_names[0])
    if make_hook not in entry.weight_hooks:
        with pytest.raises(ValueError, match=r'{} is not supported on {}.*Apply it to the '
                                             r'L.Linear that to_linear\(\) returns instead'
                           .format(make_hook.__name__, entry.name)):
            layer.add_hook(hook)
        assert not layer.local_link_hooks
        return
    layer.add_hook(hook)
    x = _x(seed=2)
    warm_up(layer, x)
    dense = layer.to_linear()
    assert list(dense.local_link_hooks) == list(layer.local_link_hooks)
    assert dense.local_link_hooks[make_hook.name] is not hook
    if make_hook is link_hooks.SpectralNormalization:
        np.testing.assert_array_equal(dense.W_u, layer.W_u)
        assert dense.W_u is not layer.W_u
    np.testing.assert_allclose(outputs(dense, x, train), outputs(layer, x, train),
                               rtol=1e-5, atol=1e-6)
    # And the layer and its hook are left as they were.
    assert layer.local_link_hooks[make_hook.name] is hook
    if make_hook is link_hooks.SpectralNormalization:
        u = layer.W_u.copy()
        warm_up(dense, x)
        np.testing.assert_array_equal(layer.W_u, u)


def test_other_link_hooks_are_taken(entry):
    layer = entry.eager()
    layer.add_hook(link_hooks.TimerHook())
    assert list(layer.local_link_hooks) == ['TimerHook']


# --- The package's entry points -------------------------------------------------------------


def test_register_adds_the_link_to_chainer_links(entry):
    with chainer_namespaces_as_they_were():
        assert not hasattr(chainer.links, entry.name)
        register()
        assert getattr(chainer.links, entry.name) is entry.cls


def test_convert_linears_and_unshare_linears_of_a_model_with_the_link(entry):
    np.random.seed(0)
    model = chainer.Sequential(L.Linear(IN_SIZE, IN_SIZE), F.relu, L.Linear(IN_SIZE, OUT_SIZE))
    report = convert_linears(
        model, lambda linear: entry.cls.from_linear(linear, **entry.from_linear_options),
        include='/1')
    assert report.changed == ('/1',)
    assert type(model[0]) is L.Linear and type(model[2]) is entry.cls
    set_non_default(model[2])
    layer = model[2]
    x = _x()
    expected = model(x).array

    back = unshare_linears(model)
    assert back.changed == ('/1',)
    assert type(model[2]) is L.Linear
    np.testing.assert_array_equal(model[2].W.array, layer.dense_weight())
    np.testing.assert_allclose(model(x).array, expected, **reordered_sum_tolerance(np.float32))


# --- Devices: only what can fail, on a GPU ---------------------------------------------------


@pytest.mark.gpu
def test_to_device_gpu_gives_the_cpu_result(entry):
    layer = set_non_default(entry.eager())
    x = _x()
    expected, dense_expected = layer(x).array, layer.to_linear().W.array
    layer.to_device('@cupy:0')
    cpu = chainer.backend.CpuDevice()
    y = layer(layer.device.send(x))
    np.testing.assert_allclose(cpu.send(y.array), expected, rtol=1e-5, atol=1e-6)
    dense = layer.to_linear()
    assert dense.device == layer.device
    np.testing.assert_allclose(cpu.send(dense.W.array), dense_expected, rtol=1e-6, atol=1e-7)
    back = entry.cls.from_linear(dense, **entry.from_linear_options)
    assert back.device == layer.device
    np.testing.assert_allclose(cpu.send(back(layer.device.send(x)).array), expected,
                               rtol=1e-5, atol=1e-5)
    layer.to_device('@numpy')
    np.testing.assert_allclose(layer(x).array, expected, rtol=1e-6, atol=1e-7)
