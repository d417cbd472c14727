"""experiments/frontier.py and experiments/compression.py: the accuracy-per-parameter frontier."""

import json
import os
import shutil
import subprocess
import sys

import chainer.links as L
import numpy as np
import pytest

from chainer_sharedlinear import HashedLinear, KroneckerLinear, MonarchLinear, SharedLinear
from tests.examples_tests import ROOT, import_script

utils = import_script('examples', 'mnist3_utils')
compression, frontier_results, frontier = import_script(
    'experiments', 'compression', 'frontier_results', 'frontier')

pytestmark = pytest.mark.usefixtures('dataset_root')
DOCS = os.path.join(ROOT, 'docs')


@pytest.mark.parametrize('pattern', ['shared', 'hashed', 'kronecker', 'monarch', 'lowrank'])
@pytest.mark.parametrize('c', [2, 8, 64])
def test_each_pattern_stores_about_its_budget(pattern, c):
    layer = compression.compressed_linear(pattern, 1000, 900, c, nobias=True)
    stored = compression.stored_parameters(layer)
    # The budget is met as closely as the pattern's sizes allow: within 30% here.
    assert stored == pytest.approx(1000 * 900 / c, rel=0.3)
    x = np.ones((2, 1000), np.float32)
    assert layer(x).shape == (2, 900)


def test_the_layers_each_pattern_makes():
    def make(pattern, c):
        return compression.compressed_linear(pattern, 1000, 900, c)

    def make_layer(pattern, in_size, out_size, c):
        return compression.compressed_linear(pattern, in_size, out_size, c)

    assert make('shared', 8).n_shared == 8
    assert make('shared', 64).n_shared == 50  # the divisor of 1000 nearest 64 on a log scale
    assert make('hashed', 8).W.shape == (112500,)
    kron = make('kronecker', 8)
    assert kron.n_terms == 1
    assert kron.A.size + kron.B.size == pytest.approx(112500, rel=0.01)
    phm = make('phm', 10)  # n = 10: 10 terms of 10 x 10 matrices
    assert (phm.n_terms, phm.A.shape[1:], phm.in_factors) == (10, (10, 10), (10, 100))
    assert type(make('dense', 8)) is L.Linear
    # Monarch: the fewest blocks whose weights fit, as compress_linears chooses them.
    monarch = make('monarch', 8)
    assert monarch.n_blocks == 16 and monarch.R.size + monarch.L.size <= 112500
    assert compression.stored_parameters(MonarchLinear(1000, 900, n_blocks=15)) > 112500 + 900
    # 1000 -> 10 cannot store 100 weights: the most blocks, the fewest weights.
    assert make_layer('monarch', 1000, 10, 100).n_blocks == 10
    with pytest.raises(ValueError, match="unknown pattern 'tiled'"):
        make('tiled', 8)


def test_the_networks_compress_the_layers_the_setting_names():
    network, layers = compression.build_network('2016', 'hashed', 8)
    assert [type(layer) for layer in network.layers] == [L.Linear, HashedLinear, L.Linear]
    assert layers == [network.layers[1]] and layers[0].b is None  # l2 has no bias
    network, layers = compression.build_network('hashednets', 'kronecker', 8)
    assert [type(layer) for layer in network.layers] == [KroneckerLinear, KroneckerLinear]
    # narrow: a dense network whose hidden layer is 1/c as wide.
    network, layers = compression.build_network('hashednets', 'narrow', 8)
    assert [(layer.W.shape[1], layer.W.shape[0]) for layer in network.layers] == [
        (784, 125), (125, 10)]
    assert compression.stored_parameters(network) == 784 * 125 + 125 + 125 * 10 + 10
    network, _ = compression.build_network('2016', 'shared', 10)
    assert isinstance(network.layers[1], SharedLinear)
    assert network(np.ones((3, 784), np.float32)).shape == (3, 10)


@pytest.mark.parametrize('width', [2, 16])
@pytest.mark.parametrize('pattern', ['hashed', 'kronecker', 'monarch', 'shared', 'lowrank'])
def test_a_wider_network_stores_what_the_narrow_dense_one_stores(pattern, width):
    dense, _ = compression.build_network('expansion', 'dense', 1)
    network, layers = compression.build_network('expansion', pattern, 1, width=width)
    assert list(network.layers) == layers
    for layer, (in_size, out_size) in zip(layers, [(784, 100 * width),
                                                   (100 * width, 100 * width), (100 * width, 10)]):
        assert layer(np.ones((1, in_size), np.float32)).shape == (1, out_size)
    narrow = compression.stored_parameters(dense)
    assert narrow == 784 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10
    # As near as the pattern's sizes allow: Monarch's blocks least of all.
    assert compression.stored_parameters(network) == pytest.approx(narrow, rel=0.15)
    assert network(np.ones((2, 784), np.float32)).shape == (2, 10)


def test_the_wide_shared_network_tiles_only_the_layer_between_hidden_layers():
    network, _ = compression.build_network('expansion', 'shared', 1, width=4)
    assert [type(layer) for layer in network.layers] == [HashedLinear, SharedLinear,
                                                         HashedLinear]
    assert network.layers[1].n_shared == 16  # 400 x 400 in the 100 x 100 layer's 10,100
    wide_dense, _ = compression.build_network('expansion', 'dense', 1, width=4)
    assert [layer.W.shape for layer in wide_dense.layers] == [(400, 784), (400, 400), (10, 400)]


def test_a_width_is_refused_where_the_setting_has_none_and_a_pattern_it_lacks():
    with pytest.raises(ValueError, match="setting '2016' has no width: expected width=1"):
        compression.build_network('2016', 'hashed', 8, width=2)
    with pytest.raises(ValueError, match="made of dense, shared, .*, not 'narrow'"):
        compression.build_network('expansion', 'narrow', 1, width=2)
    # 784 x 100 stores 78,500: at 1/64, less than the 1,600 biases of width 16.
    with pytest.raises(ValueError, match=r'the bias of layer 0 \(784 -> 1600\) takes all'):
        compression.build_network('expansion', 'hashed', 64, width=16)


def test_the_grid_of_each_setting():
    assert frontier.parse_args([]).setting == ['2016', 'hashednets']  # expansion when named
    args = frontier.parse_args(['--compressions', '4,16', '--widths', '2,8'])
    assert frontier.grid_axis('2016', 'hashed', args) == [(4, 1), (16, 1)]
    assert frontier.grid_axis('expansion', 'hashed', args) == [(1, 2), (1, 8)]
    assert frontier.grid_axis('expansion', 'dense', args) == [(1, 1)]
    assert frontier.grid_axis('expansion', 'phm', args) == []


def test_an_expansion_for_one_epoch(tmp_path, capsys):
    out = tmp_path / 'expansion'
    argv = ['--setting', 'expansion', '--patterns', 'dense,hashed', '--widths', '2',
            '--epoch', '1', '--train-size', '200', '--val-size', '100', '--out', str(out)]
    assert frontier.main(argv) == 0
    stdout = capsys.readouterr().out
    records = read_records(out)
    assert [(r['pattern'], r['compression'], r['width']) for r in records] == [
        ('dense', 1, 1), ('hashed', 1, 2)]
    assert records[1]['params'] == records[0]['params'] == records[1]['dense_params'] == 89610
    hashed = records[1]
    assert '| hashed |  | {:.4f} ± 0.0000 (89,610; '.format(hashed['accuracy']) in stdout
    assert '| expansion | hashed | 1 | 2 | 89,610 | 1.0x | 1 |' in (
        out / 'frontier.md').read_text()
    assert (out / 'expansion.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert not (out / 'frontier.png').exists()  # no point of the frontier's settings
    assert sorted(os.listdir(out / 'runs')) == ['expansion-dense-c1-seed0',
                                                'expansion-hashed-w2-seed0']


def test_the_expansion_table_can_smooth_over_the_last_epochs():
    def record(pattern, width, seed, curve):
        return {'setting': 'expansion', 'pattern': pattern, 'width': width, 'seed': seed,
                'compression': 1, 'curve': curve, 'accuracy': curve[-1], 'params': 89610,
                'cpu_seconds_per_epoch': 2.0}

    records = [record('dense', 1, 0, [0.5, 0.8, 0.9]), record('dense', 1, 1, [0.5, 0.9, 0.7]),
               record('hashed', 4, 0, [0.1, 0.6, 0.6])]
    final = frontier_results.format_expansion_table(records)
    assert '| dense | 0.8000 ± 0.1414 (89,610; 2.0 s) |  |' in final
    smooth = frontier_results.format_expansion_table(records, last=2)
    assert '| dense | 0.8250 ± 0.0354 (89,610; 2.0 s) |  |' in smooth
    assert '| hashed |  | 0.6000 ± 0.0000 (89,610; 2.0 s) |' in smooth
    assert frontier_results.format_expansion_table(records[:0]) == ''


def test_the_expansion_is_drawn_without_its_dense_reference_too(tmp_path):
    pytest.importorskip('matplotlib')
    records = [{'setting': 'expansion', 'pattern': 'hashed', 'width': w, 'seed': 0,
                'compression': 1, 'curve': [0.8], 'accuracy': 0.8, 'params': 89610,
                'cpu_seconds_per_epoch': 2.0} for w in (2, 4)]
    frontier_results.plot_expansion(records, str(tmp_path / 'expansion.png'), 'no dense')
    assert (tmp_path / 'expansion.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def read_records(folder):
    with open(os.path.join(str(folder), 'frontier.json')) as f:
        return json.load(f)


TWO_POINTS = ['--setting', '2016', '--patterns', 'shared,hashed', '--compressions', '8',
              '--epoch', '1', '--train-size', '200', '--val-size', '100']


def test_a_two_point_grid_for_one_epoch(tmp_path, capsys):
    out = tmp_path / 'frontier'
    assert frontier.main(TWO_POINTS + ['--out', str(out)]) == 0
    stdout = capsys.readouterr().out
    records = read_records(out)
    assert [(r['setting'], r['pattern'], r['compression'], r['seed']) for r in records] == [
        ('2016', 'shared', 8, 0), ('2016', 'hashed', 8, 0)]
    for record in records:
        assert record['dataset'] == 'mnist-5k' and record['epochs'] == 1
        assert (record['data_dir'], record['train_size'], record['val_size'],
                record['batchsize']) == (None, 200, 100, 100)
        assert record['params'] == 112500 and record['dense_params'] == 900000
        assert 0 <= record['accuracy'] <= 1 and record['curve'] == [record['accuracy']]
        assert record['seconds_per_epoch'] > 0 and record['cpu_seconds_per_epoch'] > 0
        assert record['network_params'] == 784 * 1000 + 1000 + 112500 + 900 * 10 + 10
    assert records[0]['layers'] == [
        'SharedLinear(in_size=1000, out_size=900, n_shared=8, nobias=True)']
    hashed = records[1]['accuracy']
    assert '| hashed | {:.4f} (112,500) |'.format(hashed) in stdout  # the short table
    assert '| 2016 | hashed | 8 | 1 | 112,500 | 8.0x | 1 |' in (out / 'frontier.md').read_text()
    assert (out / 'frontier.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert sorted(os.listdir(out / 'runs')) == ['2016-hashed-c8-seed0', '2016-shared-c8-seed0']


def test_a_rerun_skips_what_has_finished_and_adds_the_rest(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / 'frontier')
    assert frontier.main(TWO_POINTS + ['--out', out]) == 0
    first = read_records(out)
    trained = []
    real_train = frontier.train
    monkeypatch.setattr(frontier, 'train', lambda network, *args: trained.append(
        network) or real_train(network, *args))
    more = TWO_POINTS[:3] + ['shared,hashed,dense'] + TWO_POINTS[4:]
    assert frontier.main(more + ['--out', out]) == 0
    assert len(trained) == 1  # the dense network alone
    records = read_records(out)
    assert records[:2] == first
    assert [r['pattern'] for r in records] == ['shared', 'hashed', 'dense']


def test_two_compressions_that_give_one_network_train_it_once(tmp_path, capsys):
    out = tmp_path / 'frontier'
    # PHM on 1000 -> 900 can divide by 25 at most: c = 64 and c = 100 both give n = 25.
    argv = ['--setting', '2016', '--patterns', 'phm', '--compressions', '64,100', '--epoch',
            '1', '--train-size', '100', '--val-size', '100', '--out', str(out)]
    assert frontier.main(argv) == 0
    first, second = read_records(out)
    assert second['same_as'] == 64 and 'same_as' not in first
    assert second['accuracy'] == first['accuracy'] and second['layers'] == first['layers']
    assert os.listdir(out / 'runs') == ['2016-phm-c64-seed0']


def test_the_same_seed_gives_the_same_records(tmp_path, capsys):
    def run(name):
        assert frontier.main(TWO_POINTS + ['--out', str(tmp_path / name)]) == 0
        return [{k: v for k, v in r.items() if 'seconds' not in k}
                for r in read_records(tmp_path / name)]
    assert run('a') == run('b')


@pytest.mark.parametrize('argv, message', [
    (['--patterns', 'dense,tiled'], "argument --patterns: 'tiled' is not one of dense"),
    (['--setting', '2017'], "argument --setting: '2017' is not one of 2016, hashednets"),
    (['--compressions', '8,0'], "argument --compressions: expected a positive integer, got '0'"),
    (['--compressions', ','], 'expected a comma-separated list'),
    (['--out', ''], "--out '' is empty"),
    (['--out', '{tmp}/file/frontier'], '{tmp}/file is a file, not a directory'),
    (['--dataset', 'fashion-mnist', '--data-dir', '{tmp}'], 'fashion-mnist: {tmp} lacks'),
])
def test_bad_input_is_one_line_and_status_2(tmp_path, capsys, argv, message):
    (tmp_path / 'file').write_text('mine')
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    if '--out' not in argv:
        argv += ['--out', str(tmp_path / 'out')]
    try:
        status = frontier.main(argv)
    except SystemExit as e:
        status = e.code
    err = capsys.readouterr().err
    assert status == 2
    assert err.count('\n') == 1, err
    assert message.format(tmp=tmp_path) in err


def test_a_folder_of_another_grid_or_not_a_frontier_is_refused(tmp_path, capsys):
    out = tmp_path / 'frontier'
    assert frontier.main(TWO_POINTS + ['--out', str(out)]) == 0
    before = (out / 'frontier.json').read_bytes()
    longer = [arg if arg != '1' else '2' for arg in TWO_POINTS]  # --epoch 2
    assert frontier.main(longer + ['--out', str(out)]) == 2
    assert 'holds runs of mnist-5k for 1 epochs' in capsys.readouterr().err
    assert (out / 'frontier.json').read_bytes() == before

    (out / 'frontier.json').write_text('{"not": "a list"}')
    assert frontier.main(TWO_POINTS + ['--out', str(out)]) == 2
    assert 'cannot continue from it' in capsys.readouterr().err


def test_records_are_saved_atomically(tmp_path):
    records = [{'dataset': 'mnist-5k', 'epochs': 1, 'setting': '2016', 'pattern': 'dense',
                'compression': 1, 'seed': 0}]
    frontier_results.save_records(str(tmp_path), records)
    assert frontier_results.load_records(str(tmp_path)) == records
    assert os.listdir(str(tmp_path)) == ['frontier.json']  # no temporary file left


def test_a_record_is_added_to_what_the_folder_holds_now(tmp_path):
    def record(seed, accuracy):
        return {'dataset': 'mnist-5k', 'data_dir': None, 'train_size': 200, 'val_size': 100,
                'batchsize': 100, 'epochs': 1, 'setting': '2016', 'pattern': 'dense',
                'compression': 1, 'seed': seed, 'accuracy': accuracy}

    folder = str(tmp_path)
    frontier_results.add_record(folder, record(0, 0.5))
    frontier_results.add_record(folder, record(1, 0.6))  # another process's network
    frontier_results.add_record(folder, record(0, 0.7))  # the same network again: kept as was
    assert frontier_results.load_records(folder) == [record(0, 0.5), record(1, 0.6)]


def test_two_processes_can_share_a_folder(tmp_path):
    # One process per setting, at the same time, into one folder: both grids are kept.
    out = str(tmp_path / 'shared')
    common = ['--patterns', 'shared', '--compressions', '8', '--epoch', '1', '--train-size',
              '200', '--val-size', '100', '--out', out]
    script = frontier.__file__
    processes = [subprocess.Popen([sys.executable, script, '--setting', setting] + common,
                                  cwd=str(tmp_path), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  universal_newlines=True)
                 for setting in ('2016', 'hashednets')]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    assert sorted(r['setting'] for r in read_records(out)) == ['2016', 'hashednets']


def test_the_short_table_marks_a_budget_the_pattern_cannot_reach():
    def record(pattern, compression, params, accuracy):
        return {'setting': 'hashednets', 'pattern': pattern, 'compression': compression,
                'seed': 0, 'params': params, 'dense_params': 800000, 'accuracy': accuracy,
                'seconds_per_epoch': 1.0, 'cpu_seconds_per_epoch': 1.0}

    table = frontier_results.format_short_table([
        record('dense', 1, 800000, 0.9),
        record('hashed', 8, 100000, 0.8), record('hashed', 64, 13000, 0.7),
        # PHM's n divides the sizes: at 1/64 it stores what it stores at 1/8.
        record('phm', 8, 102000, 0.85), record('phm', 64, 102000, 0.85)])
    assert '| hashed | 0.8000 (100,000) | 0.7000 (13,000) |' in table
    assert '| phm | 0.8500 (102,000) | 0.8500 (102,000) † |' in table
    assert table.endswith('\n\n' + frontier_results.SHORT_OF_BUDGET)
    assert frontier_results.SHORT_OF_BUDGET.startswith('† more than 1.25 × the budget')


@pytest.mark.parametrize('low, high, expected', [
    (0.3, 0.95, [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94]),
    # A panel whose points lie between 0.88 and 0.90 has no fixed tick but 0.9.
    (0.876, 0.902, [0.88, 0.885, 0.89, 0.895, 0.9]),
    (0.8875, 0.8905, [0.8875, 0.888, 0.8885, 0.889, 0.8895, 0.89, 0.8905]),
    (0.88751, 0.88779, [0.8876, 0.8877]),  # as many as the range holds
])
def test_every_panel_gets_accuracy_labels(low, high, expected):
    assert frontier_results.accuracy_ticks(low, high) == pytest.approx(expected)


@pytest.mark.parametrize('accuracies', [
    {'dense': 1.0, 'shared': 0.0}, {'dense': 0.0, 'shared': 1.0},
    {'dense': 0.5, 'shared': 0.0, 'hashed': 1.0},
    {'dense': 0.5, 'shared': (0.0, 1.0)},  # seeds at both ends: a bar across the axis
])
def test_the_plot_is_drawn_whatever_the_accuracies(tmp_path, accuracies):
    # On a logit axis 0 and 1 lie at infinity; --val-size 1 gives nothing else.
    pytest.importorskip('matplotlib')
    records = []
    for pattern, values in accuracies.items():
        for seed, accuracy in enumerate(values if isinstance(values, tuple) else (values,)):
            c = 1 if pattern == 'dense' else 8
            records.append({'setting': '2016', 'pattern': pattern, 'compression': c,
                            'seed': seed, 'params': 900000 // c, 'dense_params': 900000,
                            'accuracy': accuracy, 'seconds_per_epoch': 1.0})
    path = tmp_path / 'frontier.png'
    frontier_results.plot(records, str(path), 'title')
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


@pytest.mark.parametrize('kind', ['dangling link', 'runs is a link'])
def test_an_out_it_cannot_write_into_is_refused_before_any_training(tmp_path, capsys,
                                                                    monkeypatch, kind):
    # A link to nowhere: no folder can be made there, whoever runs the test (root too).
    out = tmp_path / 'frontier'
    if kind == 'dangling link':
        out.symlink_to(tmp_path / 'nowhere')
        unwritable = out
    else:
        out.mkdir()
        (out / 'runs').symlink_to(tmp_path / 'nowhere')
        unwritable = out / 'runs'
    monkeypatch.setattr(frontier, 'train', lambda *args: pytest.fail('it trained'))
    assert frontier.main(TWO_POINTS + ['--out', str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1, err
    assert '--out {}: cannot write into {} ('.format(out, unwritable) in err
    assert not (tmp_path / 'nowhere').exists()


ONE_POINT = ['--setting', '2016', '--patterns', 'shared', '--compressions', '8', '--epoch', '1',
             '--train-size', '200', '--val-size', '100']


def copy_of_mnist_5k(folder):
    folder.mkdir()
    shutil.copy(os.path.join(utils.BUNDLED_DIR, utils.MNIST_5K_FILE), str(folder))
    return folder


@pytest.mark.parametrize('change, other', [
    (['--train-size', '100'], '100 training and 100 validation images, batch 100'),
    (['--val-size', '50'], '200 training and 50 validation images, batch 100'),
    (['--batchsize', '50'], '200 training and 100 validation images, batch 50'),
    (['--data-dir', '{tmp}/copy'],
     '200 training and 100 validation images, batch 100, read from {tmp}/copy'),
])
def test_a_folder_of_other_training_settings_is_refused(tmp_path, capsys, monkeypatch,
                                                        change, other):
    out = tmp_path / 'frontier'
    assert frontier.main(ONE_POINT + ['--out', str(out)]) == 0
    before = (out / 'frontier.json').read_bytes()
    copy_of_mnist_5k(tmp_path / 'copy')
    capsys.readouterr()
    monkeypatch.setattr(frontier, 'train', lambda *args: pytest.fail('it trained'))
    argv = ONE_POINT + [arg.format(tmp=tmp_path) for arg in change] + ['--out', str(out)]
    assert frontier.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1, err
    assert ('{} holds runs of mnist-5k for 1 epochs, 200 training and 100 validation images, '
            'batch 100, which this run (mnist-5k for 1 epochs, {}) would mix with its own: '
            'choose another --out'.format(out, other.format(tmp=tmp_path))) in err
    assert (out / 'frontier.json').read_bytes() == before


def test_another_name_of_the_datasets_own_folder_is_the_same_data(tmp_path, capsys,
                                                                  monkeypatch):
    out = tmp_path / 'frontier'
    assert frontier.main(ONE_POINT + ['--out', str(out)]) == 0
    (tmp_path / 'link').symlink_to(utils.BUNDLED_DIR)
    monkeypatch.setattr(frontier, 'train', lambda *args: pytest.fail('it trained'))
    for data_dir in (utils.BUNDLED_DIR, tmp_path / 'link'):
        assert frontier.main(ONE_POINT + ['--data-dir', str(data_dir), '--out', str(out)]) == 0
    assert len(read_records(out)) == 1


def test_records_of_before_the_training_was_recorded_are_refused_with_what_to_add(
        tmp_path, capsys, monkeypatch):
    out = tmp_path / 'frontier'
    assert frontier.main(ONE_POINT + ['--out', str(out)]) == 0
    records = read_records(out)
    added = ('data_dir', 'train_size', 'val_size', 'batchsize')
    frontier_results.save_records(str(out), [
        {k: v for k, v in r.items() if k not in added} for r in records])
    capsys.readouterr()
    monkeypatch.setattr(frontier, 'train', lambda *args: pytest.fail('it trained'))
    assert frontier.main(ONE_POINT + ['--out', str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1, err
    assert ('{} holds records of an older frontier.py, which lack data_dir, train_size, '
            'val_size, batchsize: they may be of another training than this run (mnist-5k '
            'for 1 epochs, 200 training and 100 validation images, batch 100); choose another '
            '--out, or, if they are of this training, add '.format(out)) in err
    # Doing what it says continues the grid.
    fields = json.loads(err[err.index(', add ') + 6:err.index(' to each record of ')])
    assert fields == {k: records[0][k] for k in added}
    frontier_results.save_records(str(out), [
        dict({k: v for k, v in r.items() if k not in added}, **fields) for r in records])
    assert frontier.main(ONE_POINT + ['--out', str(out)]) == 0


@pytest.mark.parametrize('name', ['frontier-fashion.json', 'frontier-mnist5k.json'])
def test_the_records_in_the_docs_are_read_and_drawn(tmp_path, name):
    shutil.copy(os.path.join(DOCS, name), str(tmp_path / frontier_results.RESULTS_FILE))
    records = frontier_results.load_records(str(tmp_path))
    assert {r['pattern'] for r in records} >= {'dense', 'hashed', 'narrow', 'lowrank'}
    assert '| dense |' in frontier_results.format_table(records)
    pytest.importorskip('matplotlib')
    frontier_results.plot(records, str(tmp_path / 'frontier.png'), name)
    assert (tmp_path / 'frontier.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_the_figures_of_the_frontier_page_are_what_its_records_give():
    with open(os.path.join(DOCS, 'frontier-fashion.json')) as f:
        records = json.load(f)
    with open(os.path.join(DOCS, 'frontier.md')) as f:
        page = f.read()
    assert frontier_results.format_table(records) in page
    assert sum(r['pattern'] == 'monarch' for r in records) == 36


def test_the_expansion_in_the_docs_is_read_tabled_and_drawn(tmp_path):
    shutil.copy(os.path.join(DOCS, 'expansion-fashion.json'),
                str(tmp_path / frontier_results.RESULTS_FILE))
    records = frontier_results.load_records(str(tmp_path))
    assert {(r['pattern'], r['width']) for r in records} == {('dense', 1)} | {
        (p, w) for p in compression.WIDE_PATTERNS[1:] for w in (2, 4, 8, 16)}
    assert len(records) == 63 and {r['seed'] for r in records} == {0, 1, 2}
    # What docs/frontier.md shows is what the records give.
    with open(os.path.join(DOCS, 'frontier.md')) as f:
        page = f.read()
    for last in (1, frontier_results.EXPANSION_LAST_EPOCHS):
        assert frontier_results.format_expansion_table(records, last) in page
    pytest.importorskip('matplotlib')
    frontier_results.plot_expansion(records, str(tmp_path / 'expansion.png'), 'docs', 3)
    assert (tmp_path / 'expansion.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
