"""save_compressed, read_plan and load_compressed: the file, the stream, a damaged file or plan."""

import io
import json
import os
import tracemalloc

import chainer
import numpy as np
import pytest

from chainer_sharedlinear import (
    LowRankLinear,
    apply_plan,
    compress_linears,
    load_compressed,
    pattern_names,
    read_plan,
    save_compressed,
)
from chainer_sharedlinear import compress as compress_module
from chainer_sharedlinear.convert import family
from tests.compress_tests.test_compress import MLP, X, trained_like


def compressed(pattern='auto', **kwargs):
    model = trained_like()
    return model, compress_linears(model, 1 / 2, pattern=pattern, **kwargs, allocation='layer')


def state(model):
    """Each link by path, and a copy of each parameter's array (``None`` if not initialised)."""
    links = dict(model.namedlinks())
    arrays = {path: None if param.array is None else param.array.copy()
              for path, param in model.namedparams()}
    return links, arrays


def assert_unchanged(model, before):
    links, arrays = state(model)
    assert links.keys() == before[0].keys()
    assert all(links[path] is before[0][path] for path in links)
    assert arrays.keys() == before[1].keys()
    for path, array in arrays.items():
        if before[1][path] is None:
            assert array is None, path
        else:
            np.testing.assert_array_equal(array, before[1][path], err_msg=path)


def saved_arrays(model, plan):
    stream = io.BytesIO()
    save_compressed(stream, model, plan)
    stream.seek(0)
    with np.load(stream) as saved:
        return {key: saved[key] for key in saved.files}


def npz(arrays):
    stream = io.BytesIO()
    np.savez_compressed(stream, **arrays)
    return stream.getvalue()


# --- 6: the file is the path named, and nothing is overwritten without asking --------------

def test_save_compressed_writes_the_path_it_is_given(tmp_path):
    model, report = compressed()
    path = tmp_path / 'model.bin'
    save_compressed(str(path), model, report.plan)
    assert os.listdir(str(tmp_path)) == ['model.bin']
    fresh = MLP(lazy=True)
    load_compressed(str(path), fresh)
    np.testing.assert_array_equal(fresh(X).array, model(X).array)


def test_save_compressed_takes_a_path_object(tmp_path):
    model, report = compressed()
    save_compressed(tmp_path / 'model.npz', model, report.plan)
    fresh = MLP(lazy=True)
    load_compressed(tmp_path / 'model.npz', fresh)
    assert read_plan(tmp_path / 'model.npz') == json.loads(json.dumps(report.plan))
    np.testing.assert_array_equal(fresh(X).array, model(X).array)


def test_an_existing_file_is_replaced_only_with_overwrite(tmp_path):
    model, report = compressed()
    path = tmp_path / 'model.npz'
    path.write_bytes(b'a file the user saved')
    with pytest.raises(FileExistsError) as e:
        save_compressed(str(path), model, report.plan)
    assert str(path) in str(e.value) and 'overwrite=True' in str(e.value)
    assert path.read_bytes() == b'a file the user saved'
    assert os.listdir(str(tmp_path)) == ['model.npz']

    save_compressed(str(path), model, report.plan, overwrite=True)
    fresh = MLP(lazy=True)
    load_compressed(str(path), fresh)
    np.testing.assert_array_equal(fresh(X).array, model(X).array)


class Interrupted(Exception):
    pass


def failing_savez(file, **arrays):
    file.write(b'PK\x03\x04 the first bytes of a zip file')
    raise Interrupted('the disk is full')


@pytest.mark.parametrize('existing', [False, True])
def test_a_failed_save_leaves_no_part_of_a_file(tmp_path, monkeypatch, existing):
    model, report = compressed()
    path = tmp_path / 'model.npz'
    if existing:
        path.write_bytes(b'the last good save')
    monkeypatch.setattr(np, 'savez_compressed', failing_savez)
    with pytest.raises(Interrupted):
        save_compressed(str(path), model, report.plan, overwrite=True)
    assert os.listdir(str(tmp_path)) == (['model.npz'] if existing else [])
    if existing:
        assert path.read_bytes() == b'the last good save'


# --- 7: a stream, and a file that does not load --------------------------------------------

def test_a_stream_saves_and_loads(tmp_path):
    model, report = compressed()
    stream = io.BytesIO()
    save_compressed(stream, model, report.plan)
    stream.seek(0)
    assert read_plan(stream) == json.loads(json.dumps(report.plan))
    assert stream.tell() == 0  # read_plan leaves the stream where it was
    fresh = MLP(lazy=True)
    load_compressed(stream, fresh)
    np.testing.assert_array_equal(fresh(X).array, model(X).array)

    # An open file, as well.
    path = tmp_path / 'model.npz'
    with open(str(path), 'wb') as f:
        save_compressed(f, model, report.plan)
    with open(str(path), 'rb') as f:
        again = MLP(lazy=True)
        load_compressed(f, again)
    np.testing.assert_array_equal(again(X).array, model(X).array)


def without(key):
    return lambda arrays: npz({k: v for k, v in arrays.items() if k != key})


def replaced(key, value):
    return lambda arrays: npz(dict(arrays, **{key: value}))


DAMAGES = {
    'truncated': lambda arrays: npz(arrays)[:-200],
    'not an npz file': lambda arrays: b'\x80\x04 nothing like an npz file',
    'one array': lambda arrays: (lambda s: (np.save(s, np.zeros(3)), s.getvalue())[1])(
        io.BytesIO()),
    'no planned weight': without('layers/0/W'),
    'no dense bias': without('layers/1/b'),
    'no dense weight': without('layers/1/W'),
    'a dense weight of another shape': replaced('layers/1/W', np.zeros((6, 21), np.float32)),
    'a planned weight of another shape': replaced('layers/0/W', np.zeros((20, 6), np.float32)),
    'another n_shared': replaced('layers/0/n_shared', np.array(2)),
    'a plan that is not JSON': replaced(compress_module.PLAN_KEY, np.array('{"format": ')),
}


# Chainer's lazy L.Linear takes a W of any shape (docs/compress.md): that damage needs sizes.
@pytest.mark.parametrize('damage, lazy', [
    (damage, lazy) for damage in sorted(DAMAGES) for lazy in (False, True)
    if not (lazy and damage == 'a dense weight of another shape')])
def test_a_damaged_file_leaves_the_model_as_it_was(tmp_path, damage, lazy):
    # Only the first layer is compressed: the second stays an L.Linear, lazy in a lazy model.
    model, report = compressed('shared', include='/layers/0')
    path = tmp_path / 'damaged.npz'
    path.write_bytes(DAMAGES[damage](saved_arrays(model, report.plan)))
    fresh = MLP(lazy=lazy)
    before = state(fresh)
    with pytest.raises(ValueError):
        load_compressed(str(path), fresh)
    assert_unchanged(fresh, before)
    # And the same model then loads a whole file.
    whole = tmp_path / 'whole.npz'
    save_compressed(str(whole), model, report.plan)
    load_compressed(str(whole), fresh)
    np.testing.assert_array_equal(fresh(X).array, model(X).array)


def test_a_damaged_file_names_what_is_wrong(tmp_path):
    model, report = compressed('shared', include='/layers/0')
    arrays = saved_arrays(model, report.plan)
    for damage, message in [
            ('no dense bias', 'has no layers/1/b, which the model needs'),
            ('a dense weight of another shape',
             r'layers/1/W has shape \(6, 21\) in the file, and \(6, 20\) in the model'),
            ('another n_shared', 'cannot load a SharedLinear saved with n_shared=2'),
            ('truncated', 'not a whole npz file of save_compressed'),
            ('a plan that is not JSON', 'is not JSON')]:
        with pytest.raises(ValueError, match=message):
            load_compressed(io.BytesIO(DAMAGES[damage](arrays)), MLP())


def test_a_load_that_fails_after_the_checks_puts_the_links_back(tmp_path, monkeypatch):
    model, report = compressed()
    path = tmp_path / 'model.npz'
    save_compressed(str(path), model, report.plan)
    fresh = MLP(lazy=True)
    before = state(fresh)

    def failing_load(self, obj):
        raise Interrupted('the device ran out of memory')

    monkeypatch.setattr(chainer.serializers.NpzDeserializer, 'load', failing_load)
    with pytest.raises(Interrupted):
        load_compressed(str(path), fresh)
    assert_unchanged(fresh, before)


# --- 10: a damaged or edited plan -------------------------------------------------------------

def edited(pattern, edit):
    model, report = compressed(pattern)
    plan = json.loads(json.dumps(report.plan))
    edit(plan['layers'][0])
    return model, plan


def setting(key, value):
    def edit(entry):
        entry[key] = value
    return edit


def option(key, value):
    def edit(entry):
        entry['options'][key] = value
    return edit


def deleting(key, *, in_options=False):
    def edit(entry):
        del (entry['options'] if in_options else entry)[key]
    return edit


LAYER = r"layer \['/layers/0'\] of the plan: "
DAMAGED_PLANS = [
    ('shared', deleting('bias_dtype'), 'layer 0 of the plan lacks bias_dtype'),
    ('shared', deleting('dtype'), 'layer 0 of the plan lacks dtype'),
    ('shared', setting('options', [['n_shared', 2]]), LAYER + 'options must be a dict'),
    ('shared', setting('dtype', 'int8'),
     LAYER + r"dtype must be a floating dtype \(float16, float32, float64\), got 'int8'"),
    ('shared', setting('dtype', 'float33'), LAYER + "dtype must be a floating dtype.*'float33'"),
    ('shared', setting('bias_dtype', 'int32'), LAYER + 'bias_dtype must be a floating dtype'),
    ('shared', setting('bias_dtype', None), LAYER + 'bias_dtype must be a floating dtype'),
    ('shared', setting('in_size', 0), LAYER + 'in_size must be at least 1, got 0'),
    ('shared', setting('out_size', '20'), LAYER + "out_size must be a positive integer, got '20'"),
    ('shared', setting('in_size', 24.0), LAYER + 'in_size must be a positive integer, got 24.0'),
    ('shared', setting('nobias', 'no'), LAYER + "nobias must be true or false, got 'no'"),
    ('shared', setting('paths', '/layers/0'),
     "layer 0 of the plan: paths must be a non-empty list of str"),
    ('shared', setting('paths', []), "layer 0 of the plan: paths must be a non-empty list"),
    ('shared', setting('paths', [0]), "layer 0 of the plan: paths must be a non-empty list"),
    ('shared', option('n_share', 2),
     LAYER + "options has 'n_share', which SharedLinear does not take: its options are "
     'n_shared$'),
    ('shared', deleting('n_shared', in_options=True),
     LAYER + 'options lacks n_shared, which SharedLinear needs'),
    ('shared', option('n_shared', 0), LAYER + 'n_shared must be at least 1, got 0'),
    ('shared', option('n_shared', 5), LAYER + 'in_size=24 is not divisible by n_shared=5'),
    ('kronecker', option('in_factors', [5, 5]),
     LAYER + r'in_factors=\(5, 5\) do not multiply to 24'),
    ('kronecker', option('n_terms', '2'), LAYER + "n_terms must be a positive integer, got '2'"),
    ('hashed', option('n_weights', 481), LAYER + 'n_weights=481 is more than'),
    ('lowrank', option('rank', 21), LAYER + r'rank=21 is more than min\(in_size, out_size\)'),
    ('monarch', option('n_blocks', 10 ** 6), LAYER + 'n_blocks=1000000 is more than'),
]
# Layers that would store more than the dense layer they replace: refused where they would
# replace it (apply_plan, load_compressed), before anything is allocated.
TOO_LARGE = [
    ('kronecker', option('n_terms', 10 ** 4),
     LAYER[:-2] + r' is KroneckerLinear\(in_factors=\[.*n_terms=10000, in_size=24, '
     r'out_size=20\), which would store [0-9,]+ weights, more than the 480 of the dense '
     '24 -> 20 layer it replaces'),
    ('kronecker', option('n_terms', 10 ** 9), LAYER[:-2] + ' is .*, which would store '
     '[0-9,]+ weights, more than the 480 of the dense 24 -> 20 layer'),
    ('clustered', option('n_clusters', 2 ** 16),
     LAYER[:-2] + ' is ClusteredLinear.*which would store 65,536 weights, more than the 480'),
]


def cases(plans):
    return pytest.mark.parametrize('pattern, edit, message', plans, ids=[
        '{}-{}'.format(i, plan[0]) for i, plan in enumerate(plans)])


def refused_on_load(pattern, model, plan, message):
    """A file whose plan was edited so is refused by load_compressed, before any change."""
    arrays = saved_arrays(model, json.loads(json.dumps(compress_linears(
        trained_like(), 1 / 2, pattern=pattern, allocation='layer').plan)))
    arrays[compress_module.PLAN_KEY] = np.array(json.dumps(plan))
    fresh = MLP(lazy=True)
    before = state(fresh)
    with pytest.raises(ValueError, match=message):
        load_compressed(io.BytesIO(npz(arrays)), fresh)
    assert_unchanged(fresh, before)


def refused_by_apply_plan(pattern, edit, message):
    """``edited(pattern, edit)``, whose plan apply_plan refuses before any change."""
    if pattern not in pattern_names():
        pytest.skip('{} is not in this version'.format(pattern))
    model, plan = edited(pattern, edit)
    fresh = MLP(lazy=True)
    before = state(fresh)
    with pytest.raises(ValueError, match=message):
        apply_plan(fresh, plan)
    assert_unchanged(fresh, before)
    return model, plan


@cases(DAMAGED_PLANS)
def test_a_damaged_plan_is_refused_and_nothing_changes(tmp_path, pattern, edit, message):
    model, plan = refused_by_apply_plan(pattern, edit, message)
    # save_compressed refuses it too, and writes nothing.
    with pytest.raises(ValueError, match=message):
        save_compressed(str(tmp_path / 'model.npz'), model, plan)
    assert os.listdir(str(tmp_path)) == []
    refused_on_load(pattern, model, plan, message)


@cases(TOO_LARGE)
def test_a_layer_larger_than_the_dense_one_is_refused_where_it_would_replace_it(
        pattern, edit, message):
    model, plan = refused_by_apply_plan(pattern, edit, message)
    refused_on_load(pattern, model, plan, message)


def test_a_layer_the_model_has_already_may_be_larger_than_a_dense_one(tmp_path):
    # A low-rank layer of full rank stores (24 + 20) * 20 weights, more than 24 * 20: the
    # model's own code builds it, so the plan builds nothing there.
    model = trained_like()
    with model.init_scope():
        model.layers[0] = LowRankLinear(24, 20, rank=20)
    report = compress_linears(model, 1 / 2, pattern='shared', allocation='layer')
    plan = json.loads(json.dumps(report.plan))
    entry = {'paths': ['/layers/0'], 'link': 'LowRankLinear', 'pattern': None, 'knobs': {},
             'options': {'rank': 20}, 'in_size': 24, 'out_size': 20, 'nobias': False,
             'dtype': 'float32', 'bias_dtype': 'float32'}
    plan['layers'] = [entry] + [e for e in plan['layers'] if e['paths'] != ['/layers/0']]
    path = tmp_path / 'model.npz'
    save_compressed(str(path), model, plan)
    fresh = MLP()
    with fresh.init_scope():
        fresh.layers[0] = LowRankLinear(24, 20, rank=20)
    load_compressed(str(path), fresh)
    np.testing.assert_array_equal(fresh(X).array, model(X).array)
    # Where the model has an L.Linear, it would replace it: refused.
    with pytest.raises(ValueError, match='which would store 880 weights, more than the 480'):
        apply_plan(MLP(), plan)


def test_absurd_knobs_are_refused_before_anything_is_allocated():
    model, plan = edited('kronecker', option('n_terms', 10 ** 9))
    fresh = MLP(lazy=True)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match='which would store'):
            apply_plan(fresh, plan)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 ** 20


@pytest.mark.parametrize('cls', family(), ids=lambda cls: cls.__name__)
def test_every_layer_of_the_family_refuses_an_option_it_does_not_take(cls):
    entry = {'paths': ['/layers/0'], 'link': cls.__name__, 'options': {'initialW': 0},
             'in_size': 24, 'out_size': 20, 'nobias': True, 'dtype': 'float32'}
    plan = {'format': compress_module.PLAN_FORMAT, 'layers': [entry]}
    with pytest.raises(ValueError, match="options has 'initialW', which {} does not take: its "
                       'options are '.format(cls.__name__)):
        apply_plan(MLP(), plan)
