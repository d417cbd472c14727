"""experiments/transformer.py: a small Transformer classifier, compressed with no fine-tuning."""

import json
import os

import chainer
import chainer.links as L
import numpy as np
import pytest

from chainer_sharedlinear import compress_linears, stored_bytes
from chainer_sharedlinear.compress.calibration import gather_statistics
from tests.examples_tests import import_script

utils = import_script('examples', 'mnist3_utils')
recipe = import_script('examples', 'compress_trained')
transformer = import_script('experiments', 'transformer')

pytestmark = pytest.mark.usefixtures('dataset_root')

BLOCK_LINEARS = [('query', 64, 64), ('key', 64, 64), ('value', 64, 64),
                 ('attention_out', 64, 64), ('mlp_in', 64, 128), ('mlp_out', 128, 64)]


def images(n, seed=0):
    return np.random.RandomState(seed).rand(n, 784).astype(np.float32)


def test_the_model_has_the_layers_described():
    model = transformer.PatchTransformer()
    linears = {path: (link.W.shape[1], link.W.shape[0]) for path, link in model.namedlinks()
               if isinstance(link, L.Linear)}
    expected = {'/embed': (16, 64), '/head': (64, 10)}
    expected.update({'/blocks/{}/{}'.format(block, name): (in_size, out_size)
                     for block in range(2) for name, in_size, out_size in BLOCK_LINEARS})
    assert linears == expected and len(linears) == 14
    norms = [path for path, link in model.namedlinks()
             if isinstance(link, L.LayerNormalization)]
    assert norms == ['/blocks/0/attention_norm', '/blocks/0/mlp_norm', '/blocks/1/attention_norm',
                     '/blocks/1/mlp_norm', '/final_norm']
    assert isinstance(model.position, chainer.Parameter) and model.position.shape == (49, 64)
    assert model.blocks[0].n_heads == 4
    assert model(images(3)).shape == (3, 10)
    assert model(images(2).reshape(2, 28, 28)).shape == (2, 10)


class CallRecorder(chainer.LinkHook):
    def __init__(self):
        self.calls = []

    def forward_preprocess(self, args):
        self.calls.append((args.link, args.kwargs.get('n_batch_axes', 1),
                           args.args[0].shape))


def test_every_linear_but_the_head_is_called_on_tokens_with_two_batch_axes():
    model = transformer.PatchTransformer()
    with CallRecorder() as recorder:
        model(images(3))
    paths = {id(link): path for path, link in model.namedlinks()}
    calls = [(paths[id(link)], n_batch_axes, shape) for link, n_batch_axes, shape
             in recorder.calls if isinstance(link, L.Linear)]
    assert len(calls) == 14 and len({path for path, _, _ in calls}) == 14
    assert calls[0] == ('/embed', 2, (3, 49, 16))
    assert calls[-1] == ('/head', 1, (3, 64))
    for path, n_batch_axes, shape in calls[1:-1]:
        assert n_batch_axes == 2 and shape[:2] == (3, 49), path


def test_the_tokens_are_the_patches_row_by_row():
    model = transformer.PatchTransformer()
    image = np.arange(784, dtype=np.float32).reshape(1, 28, 28)
    patches = model.patches(image.reshape(1, 784)).array
    assert patches.shape == (1, 49, 16)
    np.testing.assert_array_equal(patches[0, 1], image[0, 0:4, 4:8].ravel())
    np.testing.assert_array_equal(patches[0, 7], image[0, 4:8, 0:4].ravel())
    np.testing.assert_array_equal(patches[0, 48], image[0, 24:28, 24:28].ravel())


def test_the_model_is_a_function_of_the_token_positions():
    """Swapping two patches changes the output: the position embeddings tell them apart."""
    model = transformer.PatchTransformer()
    x = images(1).reshape(1, 7, 4, 7, 4)
    swapped = x.copy()
    swapped[:, 0, :, 0], swapped[:, 6, :, 6] = x[:, 6, :, 6], x[:, 0, :, 0]
    with chainer.using_config('train', False):
        first, second = (model(v.reshape(1, 784)).array for v in (x, swapped))
    assert not np.allclose(first, second)


def test_compression_without_calibration_replaces_its_linears_and_it_still_runs():
    np.random.seed(0)
    model = transformer.PatchTransformer()
    x = images(4)
    dense_bytes = stored_bytes(model)
    report = compress_linears(model, 1 / 8)
    assert len(report.layers) + len(report.skipped) == 14
    assert len(report.layers) >= 12  # the 64 x 64 and 64 x 128 layers at least
    remaining = [path for path, link in model.namedlinks() if type(link) is L.Linear]
    assert sorted(remaining) == sorted(report.skipped)
    assert stored_bytes(model) < dense_bytes / 4
    with chainer.using_config('train', False):
        assert model(x).shape == (4, 10)


TINY = ['--dataset', 'mnist-5k', '--train-size', '200', '--val-size', '100', '--epoch', '1',
        '--batchsize', '50']


def read_records(out):
    with open(os.path.join(str(out), 'records.json')) as f:
        return json.load(f)


def test_a_tiny_run_trains_compresses_and_records(tmp_path, capsys):
    out = tmp_path / 'tiny'
    assert transformer.main(TINY + ['--budgets', '1/8', '1/32', '--out', str(out)]) == 0
    stdout = capsys.readouterr().out
    dense, eighth, thirty_second = read_records(out)
    settings = dict(dataset='mnist-5k', data_dir=None, train_size=200, val_size=100,
                    batchsize=50, epochs=1, lr=1e-3)
    for record in (dense, eighth, thirty_second):
        assert {name: record[name] for name in settings} == settings and record['seed'] == 0
    assert dense['variant'] == 'dense' and dense['model'] == str(out / 'dense-seed0.npz')
    assert 0 <= dense['accuracy'] <= 1 and dense['curve'] == [dense['accuracy']]
    assert dense['seconds_per_epoch'] > 0 and dense['cpu_seconds_per_epoch'] > 0
    assert dense['model_bytes'] == stored_bytes(transformer.PatchTransformer())
    assert (out / 'dense-seed0.npz').is_file()
    dense_linears = {path: stored_bytes(link) for path, link
                     in transformer.PatchTransformer().namedlinks() if type(link) is L.Linear}
    assert sum(dense_linears.values()) == 272680
    for record, budget in ((eighth, '1/8'), (thirty_second, '1/32')):
        assert (record['variant'], record['budget'], record['pattern'],
                record['calibration']) == ('compressed', budget, 'auto', 0)
        assert 0 <= record['accuracy'] <= 1
        assert record['dense_accuracy'] == dense['accuracy']
        assert record['dense_model_bytes'] == dense['model_bytes']
        assert record['ratio'] == record['model_bytes'] / dense['model_bytes'] < 1
        assert record['compress_seconds'] > 0
        # The layers compressed, and those left dense (/embed at 1/32).
        kept = sum(layer['stored_bytes'] for layer in record['layers']) + sum(
            dense_linears[path] for path in record['skipped'])
        assert record['linears_ratio'] == pytest.approx(kept / sum(dense_linears.values()))
        assert record['linears_ratio'] < record['ratio'] < 1
        assert len(record['layers']) + len(record['skipped']) == 14
        for layer in record['layers']:
            assert {'path', 'pattern', 'knobs', 'stored_bytes', 'dense_bytes', 'error'} <= set(
                layer) and layer['stored_bytes'] < layer['dense_bytes']
    assert thirty_second['model_bytes'] < eighth['model_bytes']
    assert '| dense | | | 1 | 1 | 1 | {:.4f} |'.format(dense['accuracy']) in stdout
    assert '| 1/8 | auto | 0 | 1 | {:.4f} | {:.4f} | {:.4f} | {:.2f} |'.format(
        eighth['linears_ratio'], eighth['ratio'], eighth['accuracy'],
        100 * (eighth['accuracy'] - dense['accuracy'])) in stdout
    assert stdout.index('| 1/8 |') < stdout.index('| 1/32 |')


def test_a_rerun_loads_the_dense_model_and_measures_only_what_is_new(tmp_path, capsys,
                                                                       monkeypatch):
    out = str(tmp_path / 'tiny')
    assert transformer.main(TINY + ['--budgets', '1/8', '--out', out]) == 0
    first = read_records(out)
    saved = os.stat(os.path.join(out, 'dense-seed0.npz')).st_mtime_ns

    def no_training(*args):
        raise AssertionError('the dense model was trained again')

    compressed = []
    monkeypatch.setattr(transformer, 'train', no_training)
    monkeypatch.setattr(transformer, 'compress_linears', lambda model, budget, **options: (
        compressed.append(budget) or compress_linears(model, budget, **options)))
    assert transformer.main(TINY + ['--budgets', '1/8', '1/16', '--out', out]) == 0
    assert compressed == [1 / 16]
    records = read_records(out)
    assert records[:2] == first and len(records) == 3
    assert records[2]['budget'] == '1/16' and records[2]['dense_accuracy'] == first[0]['accuracy']
    assert os.stat(os.path.join(out, 'dense-seed0.npz')).st_mtime_ns == saved
    # The model loaded is the one trained: it has the accuracy recorded.
    args = transformer.parse_args(TINY + ['--out', out])
    _, val_set = utils.load_datasets(args)
    model = L.Classifier(transformer.PatchTransformer())
    chainer.serializers.load_npz(os.path.join(out, 'dense-seed0.npz'), model)
    assert recipe.evaluate(model, val_set, args) == first[0]['accuracy']


def test_the_same_seed_gives_the_same_records(tmp_path, capsys):
    def run(name):
        out = str(tmp_path / name)
        assert transformer.main(TINY + ['--budgets', '1/8', '--out', out]) == 0
        return [{k: v for k, v in r.items() if 'seconds' not in k and k != 'model'}
                for r in read_records(out)]
    assert run('a') == run('b')


def test_a_rerun_of_other_training_settings_is_refused(tmp_path, capsys):
    out = str(tmp_path / 'tiny')
    assert transformer.main(TINY + ['--budgets', '1/8', '--out', out]) == 0
    capsys.readouterr()
    argv = TINY[:7] + ['2'] + TINY[8:] + ['--budgets', '1/8', '--out', out]
    assert transformer.main(argv) == 2
    error = capsys.readouterr().err
    assert len(error.splitlines()) == 1
    assert 'holds the records and dense models of other training settings' in error
    assert 'epochs 1' in error and 'epochs 2' in error
    assert len(read_records(out)) == 2


def test_a_dense_model_without_its_record_is_refused(tmp_path, capsys):
    out = tmp_path / 'tiny'
    out.mkdir()
    (out / 'dense-seed0.npz').write_bytes(b'not ours')
    assert transformer.main(TINY + ['--budgets', '1/8', '--out', str(out)]) == 2
    assert 'dense-seed0.npz has no record in' in capsys.readouterr().err
    assert (out / 'dense-seed0.npz').read_bytes() == b'not ours'


def test_a_recorded_dense_model_that_is_missing_is_refused(tmp_path, capsys):
    out = tmp_path / 'tiny'
    assert transformer.main(TINY + ['--budgets', '1/8', '--out', str(out)]) == 0
    (out / 'dense-seed0.npz').unlink()
    capsys.readouterr()
    assert transformer.main(TINY + ['--budgets', '1/16', '--out', str(out)]) == 2
    assert 'records a dense model of seed 0, but {} is missing'.format(
        out / 'dense-seed0.npz') in capsys.readouterr().err
    assert len(read_records(out)) == 2


def test_the_table_of_a_folder_or_a_file_of_records(tmp_path, capsys):
    def record(seed, accuracy, dense_accuracy, budget='1/8'):
        return dict(variant='compressed', seed=seed, budget=budget, pattern='auto',
                    calibration=0, accuracy=accuracy, dense_accuracy=dense_accuracy,
                    linears_ratio=0.125, ratio=0.175, compress_seconds=2.0)

    records = [dict(variant='dense', seed=0, accuracy=0.88, seconds_per_epoch=60.0),
               dict(variant='dense', seed=1, accuracy=0.86, seconds_per_epoch=80.0),
               record(0, 0.85, 0.88, '1/32'), record(0, 0.87, 0.88), record(1, 0.83, 0.86)]
    path = tmp_path / 'records.json'
    path.write_text(json.dumps(records))
    for out in (tmp_path, path):
        assert transformer.main(['--table', '--out', str(out)]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[2] == '| dense | | | 2 | 1 | 1 | 0.8700 ± 0.0141 | | 70.0 s/epoch |'
        assert lines[3] == ('| 1/8 | auto | 0 | 2 | 0.1250 | 0.1750 | 0.8500 ± 0.0283 | '
                            '-2.00 ± 1.41 | 2.0 |')
        assert lines[4] == '| 1/32 | auto | 0 | 1 | 0.1250 | 0.1750 | 0.8500 | -3.00 | 2.0 |'
    assert transformer.main(['--table', '--out', str(tmp_path / 'none')]) == 2
    assert 'holds no records: nothing to print' in capsys.readouterr().err


def test_calibration_is_refused_in_one_line_where_compress_linears_takes_none(
        tmp_path, capsys, monkeypatch):
    def without_calibration(model, budget, *, pattern='auto'):
        raise AssertionError('not to be called')

    monkeypatch.setattr(transformer, 'compress_linears', without_calibration)
    out = tmp_path / 'tiny'
    assert transformer.main(TINY + ['--calibration', '10', '--out', str(out)]) == 2
    error = capsys.readouterr().err
    assert len(error.splitlines()) == 1 and error.endswith(
        'error: --calibration 10: this chainer_sharedlinear.compress_linears takes no '
        'calibration yet; run without --calibration\n')
    assert not out.exists()  # refused before anything was trained


def test_calibration_gives_compress_linears_training_images_drawn_with_the_seed(
        tmp_path, capsys, monkeypatch):
    given = []

    def with_calibration(model, budget, *, calibration=None, **options):
        given.append(calibration)
        return compress_linears(model, budget, **options)

    monkeypatch.setattr(transformer, 'compress_linears', with_calibration)
    out = str(tmp_path / 'tiny')
    assert transformer.main(TINY + ['--budgets', '1/8', '--seeds', '0', '1', '--out', out]) == 0
    assert given == [None, None]
    assert transformer.main(TINY + ['--budgets', '1/8', '--seeds', '0', '1', '--calibration',
                                    '30', '--out', out]) == 0
    args = transformer.parse_args(TINY)
    train_set, _ = utils.load_datasets(args)
    for seed, calibration in zip((0, 1), given[2:]):
        picks = np.random.RandomState(seed).permutation(200)[:30]
        expected = np.stack([train_set[i][0] for i in picks])
        assert calibration.dtype == np.float32 and calibration.shape == (30, 784)
        np.testing.assert_array_equal(calibration, expected)
    assert [(r['seed'], r['calibration']) for r in read_records(out)
            if r['variant'] == 'compressed'] == [(0, 0), (1, 0), (0, 30), (1, 30)]
    assert transformer.main(TINY + ['--calibration', '201', '--out', out]) == 2
    assert '--calibration 201 is more than the 200 training images' in capsys.readouterr().err


def test_the_calibration_statistics_reach_every_linear_of_the_model():
    """What compress_linears(calibration=...) gathers first: every token of every layer."""
    statistics = gather_statistics(transformer.PatchTransformer(), images(5))
    assert len(statistics) == 14
    assert statistics['/embed'].n_samples == statistics['/blocks/1/mlp_out'].n_samples == 5 * 49
    assert statistics['/head'].n_samples == 5
    assert statistics['/blocks/0/mlp_out'].in_size == 128


def test_sequential_is_passed_through_and_is_part_of_the_record_s_key(
        tmp_path, capsys, monkeypatch):
    given = []

    def recording(model, budget, *, calibration=None, sequential=False, **options):
        given.append(sequential)
        return compress_linears(model, budget, calibration=calibration, sequential=sequential,
                                **options)

    monkeypatch.setattr(transformer, 'compress_linears', recording)
    out = str(tmp_path / 'tiny')
    run = TINY + ['--budgets', '1/8', '--calibration', '30', '--out', out]
    assert transformer.main(run) == 0
    assert transformer.main(run + ['--sequential']) == 0
    assert transformer.main(run + ['--sequential']) == 0  # measured already: skipped
    assert given == [False, True]
    assert [(r['calibration'], r['sequential']) for r in read_records(out)
            if r['variant'] == 'compressed'] == [(30, False), (30, True)]
    capsys.readouterr()
    assert transformer.main(['--table', '--out', out]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(' | ')[1] for line in lines[3:]] == ['auto', 'auto, sequential']
    assert transformer.main(TINY + ['--sequential', '--out', out]) == 2
    assert '--sequential fits each layer on calibration data: give --calibration N too' in (
        capsys.readouterr().err)


def test_a_record_made_before_sequential_counts_as_one_without_it(tmp_path):
    records = transformer.Records(str(tmp_path), {})
    records.add(seed=0, variant='compressed', calibration=30)
    assert records.find(seed=0, calibration=30, sequential=False) is not None
    assert records.find(seed=0, calibration=30, sequential=True) is None
