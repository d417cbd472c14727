"""The MNIST example, examples/train_mnist3.py, end to end."""

import io
import json
import os
import socket
import subprocess
import sys

import chainer.links as L
import numpy as np
import pytest
import train_mnist3

from chainer_sharedlinear import SharedLinear

SCRIPT = os.path.abspath(train_mnist3.__file__)
pytestmark = pytest.mark.usefixtures('dataset_root')

# A run of a few seconds: 200 training images (2 iterations an epoch), 100 to validate.
QUICK = ['--dataset', 'mnist-5k', '--train-size', '200', '--val-size', '100']


def run_script(*args, cwd):
    """Runs the example as a user would; stdin is not a terminal."""
    return subprocess.run([sys.executable, SCRIPT] + list(args), cwd=str(cwd),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=300)


def main(capsys, *args):
    """Runs the example in this process; returns its exit status, stdout and stderr."""
    try:
        status = train_mnist3.main([str(arg) for arg in args])
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


def read_log(folder):
    with open(os.path.join(str(folder), 'log')) as f:
        return json.load(f)


def without_times(log):
    return [{k: v for k, v in entry.items() if k != 'elapsed_time'} for entry in log]


def assert_png(path):
    with open(str(path), 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_end_to_end_then_resume(tmp_path):
    first = run_script(*QUICK, '--epoch', '1', '--out', 'result', cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert 'Traceback' not in first.stderr
    out = tmp_path / 'result'
    assert sorted(os.listdir(out)) == ['accuracy.png', 'log', 'loss.png', 'snapshot_iter_2']
    assert_png(out / 'loss.png')
    assert_png(out / 'accuracy.png')
    log = read_log(out)
    assert [(e['epoch'], e['iteration']) for e in log] == [(0, 0), (1, 2)]
    accuracy = log[-1]['validation/main/accuracy']
    assert 'Final validation accuracy: {:.4f}'.format(accuracy) in first.stdout
    assert 'SharedLinear(1000, 900, n_shared=10, nobias=True)' in first.stdout
    assert '100.00%' in first.stdout  # the progress bar

    second = run_script(*QUICK, '--epoch', '2', '--out', 'result', '--resume', 'result',
                        cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert 'Resuming from result/snapshot_iter_2 (epoch 1, iteration 2)' in second.stdout
    assert sorted(os.listdir(out)) == ['accuracy.png', 'log', 'loss.png', 'snapshot_iter_4']
    resumed = read_log(out)
    # The first run's entries are kept as they were, and one epoch more follows.
    assert resumed[:2] == log
    assert [(e['epoch'], e['iteration']) for e in resumed] == [(0, 0), (1, 2), (2, 4)]


def test_earlier_results_are_not_overwritten_without_asking(tmp_path, capsys):
    out = tmp_path / 'out'
    status, _, _ = main(capsys, *QUICK, '--epoch', '1', '--out', out)
    assert status == 0
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}

    status, _, err = main(capsys, *QUICK, '--epoch', '1', '--out', out, '--seed', '1')
    assert status == 2
    assert err.count('\n') == 1
    assert 'already holds the results of a run' in err and '--overwrite' in err
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before

    (out / 'notes.txt').write_text('mine')
    status, _, _ = main(capsys, *QUICK, '--epoch', '1', '--out', out, '--seed', '1',
                        '--overwrite')
    assert status == 0
    assert read_log(out) != json.loads(before['log'])
    assert (out / 'notes.txt').read_text() == 'mine'  # not a result: left alone


class Terminal(io.StringIO):
    """A standard input that says it is a terminal, with the user's answers in it."""

    def isatty(self):
        return True


def test_in_a_terminal_the_user_is_asked(tmp_path, capsys, monkeypatch):
    out = tmp_path / 'out'
    status, _, _ = main(capsys, *QUICK, '--epoch', '1', '--out', out)
    assert status == 0
    before = read_log(out)

    monkeypatch.setattr(sys, 'stdin', Terminal('n\n'))
    status, stdout, err = main(capsys, *QUICK, '--epoch', '1', '--out', out, '--seed', '1')
    assert status == 2
    assert 'Replace them? [y/N]' in stdout
    assert 'nothing done' in err
    assert read_log(out) == before

    monkeypatch.setattr(sys, 'stdin', Terminal('y\n'))
    status, _, _ = main(capsys, *QUICK, '--epoch', '1', '--out', out, '--seed', '1')
    assert status == 0
    assert read_log(out) != before


def test_compare_prints_a_table_and_plots_both_curves(tmp_path, capsys):
    out = tmp_path / 'cmp'
    status, stdout, err = main(capsys, *QUICK, '--epoch', '1', '--unit', '100',
                               '--out-units', '90', '--compare', '--out', out)
    assert status == 0, err
    assert sorted(os.listdir(out)) == ['compare.png', 'dense', 'shared']
    assert_png(out / 'compare.png')
    rows = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.strip('|').split('|')]
        if cells[0] in ('shared', 'dense'):
            rows[cells[0]] = cells
    assert '| model | l2 | parameters | s/epoch |' in stdout
    # l1 (784 * 100 + 100) and l3 (90 * 10 + 10), and l2: 90 x 10 shared or 90 x 100 dense.
    assert rows['shared'][1:3] == ['`SharedLinear(100, 90, n_shared=10, nobias=True)`', '80,310']
    assert rows['dense'][1:3] == ['`L.Linear(100, 90, nobias=True)`', '88,410']
    for name in ('shared', 'dense'):
        last = read_log(out / name)[-1]
        assert last['epoch'] == 1
        expected = [last[key] for key in ('main/loss', 'main/accuracy',
                                          'validation/main/loss', 'validation/main/accuracy')]
        assert [float(cell) for cell in rows[name][4:]] == pytest.approx(expected, abs=1e-4)
        assert float(rows[name][3]) > 0
        assert (out / name / 'snapshot_iter_2').is_file()
        # Plotting is left out of the timed runs; compare.png has both models.
        assert not any(path.suffix == '.png' for path in (out / name).iterdir())


def test_without_matplotlib_it_trains_without_plots(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import matplotlib fails
    status, _, err = main(capsys, *QUICK, '--epoch', '1', '--out', tmp_path / 'out')
    assert status == 0
    assert 'matplotlib is not installed, so there will be no plots' in err
    assert sorted(os.listdir(tmp_path / 'out')) == ['log', 'snapshot_iter_2']


def test_same_seed_same_results(tmp_path, capsys):
    logs = []
    for name, seed in (('a', 3), ('b', 3), ('c', 4)):
        status, _, err = main(capsys, *QUICK, '--epoch', '2', '--unit', '100', '--out-units',
                              '90', '--seed', seed, '--out', tmp_path / name)
        assert status == 0, err
        logs.append(without_times(read_log(tmp_path / name)))
    assert logs[0] == logs[1]
    assert logs[0] != logs[2]


def test_resuming_another_model_is_refused(tmp_path, capsys):
    status, _, _ = main(capsys, *QUICK, '--epoch', '1', '--dense', '--out', tmp_path / 'dense')
    assert status == 0
    status, _, err = main(capsys, *QUICK, '--epoch', '2', '--resume', tmp_path / 'dense',
                          '--out', tmp_path / 'shared')
    assert status == 2
    assert err.count('\n') == 1
    assert 'cannot resume from {}'.format(tmp_path / 'dense' / 'snapshot_iter_2') in err
    assert not (tmp_path / 'shared' / 'log').exists()


@pytest.mark.parametrize('shared, dense, l2_type, W_shape, n_params', [
    (10, False, SharedLinear, (900, 100), 784 * 1000 + 1000 + 900 * 100 + 900 * 10 + 10),
    (1, False, SharedLinear, (900, 1000), 784 * 1000 + 1000 + 900 * 1000 + 900 * 10 + 10),
    (None, True, L.Linear, (900, 1000), 784 * 1000 + 1000 + 900 * 1000 + 900 * 10 + 10),
])
def test_the_model_of_the_2016_experiment(shared, dense, l2_type, W_shape, n_params):
    argv = ['--dense'] if dense else ['--shared', str(shared)]
    args = train_mnist3.parse_args(argv)
    model = train_mnist3.build_model(args, 784, dense=dense)
    l2 = model.predictor.l2
    assert type(l2) is l2_type
    assert l2.W.shape == W_shape and l2.b is None
    assert model.predictor.l1.W.shape == (1000, 784)
    assert model.predictor.l3.W.shape == (10, 900)
    assert sum(p.size for p in model.params()) == n_params


def corrupted_idx_dir(folder):
    # Four files that look right by name; the training images lack the IDX magic number.
    folder.mkdir()
    for name in ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte',
                 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'):
        (folder / name).write_bytes(b'\x1f\x8c' + bytes(100))
    return folder


@pytest.mark.parametrize('args, message', [
    (['--dataset', 'mnist-6k'], "argument --dataset: invalid choice: 'mnist-6k'"),
    (['--unit', '1000', '--shared', '3'], '--unit 1000 is not divisible by --shared 3'),
    (['--dense', '--shared', '5'], '--dense trains l2 without sharing'),
    (['--dense', '--compare'], 'not allowed with argument'),
    (['--compare', '--resume', 'result'], '--compare starts both runs afresh'),
    (['--epoch', '0'], "argument --epoch/-e: expected a positive integer, got '0'"),
    (['--seed', '-1'], "argument --seed: expected an integer from 0 to 2**32 - 1, got '-1'"),
    (['--out', '{tmp}/file'], '--out {tmp}/file is a file, not a directory'),
    (['--device', '@nonsense'], '--device @nonsense: Device specifiers'),
    (['--dataset', 'mnist', '--data-dir', '{tmp}'],
     'mnist: {tmp} lacks train-images-idx3-ubyte.gz'),
    (['--dataset', 'fashion-mnist', '--data-dir', '{corrupted}'],
     'train-images-idx3-ubyte: not an IDX file: wrong magic number 0x1f8c0000'),
    (['--dataset', 'mnist-5k', '--data-dir', '{tmp}'], 'mnist-5k.npz does not exist'),
    (['--train-size', '4001'], '--train-size 4001 is more than the 4000 images mnist-5k has'),
    (['--resume', '{tmp}/nothing'], '--resume {tmp}/nothing: no such snapshot'),
    (['--resume', '{tmp}'], 'no snapshot_iter_N snapshot in that directory'),
    (['--mirror', 'http://127.0.0.1:1/'], '--mirror is for downloading --dataset mnist'),
    (['--communicator', 'nccl'], "argument --communicator: invalid choice: 'nccl' (choose "
     "from 'naive', 'flat', 'non_cuda_aware', 'pure_nccl')"),
    (['--communicator', 'naive', '--compare'], '--compare times two runs on one process'),
    # Found before MPI is started, so no rank waits for another.
    (['--communicator', 'pure_nccl'], '--communicator pure_nccl needs GPUs (--device 0'),
    (['--communicator', 'flat', '--device', '@numpy'], '--communicator flat needs GPUs'),
])
def test_bad_input_is_one_line_and_status_2(tmp_path, capsys, args, message):
    places = {'tmp': tmp_path / 'empty', 'corrupted': tmp_path / 'corrupted'}
    places['tmp'].mkdir()
    (places['tmp'] / 'file').write_text('mine')
    corrupted_idx_dir(places['corrupted'])
    args = [arg.format(**places) for arg in args]
    if '--out' not in args:
        args += ['--out', str(tmp_path / 'out')]
    status, _, err = main(capsys, *args)
    assert status == 2
    assert err.count('\n') == 1, err
    assert err.startswith(os.path.basename(sys.argv[0]) + ': error: ')
    assert message.format(**places) in err
    assert not (tmp_path / 'out' / 'log').exists()


def test_offline_without_cache_is_a_clear_error(tmp_path, dataset_root):
    # A port on 127.0.0.1 that nothing listens on, as on a machine without a network.
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        mirror = 'http://127.0.0.1:{}/'.format(s.getsockname()[1])
    result = run_script('--dataset', 'mnist', '--mirror', mirror, cwd=tmp_path)
    assert result.returncode == 2
    assert 'Traceback' not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith('train_mnist3.py: error: cannot download train-images-idx3-ubyte.gz:'
                           ' tried {}train-images-idx3-ubyte.gz ('.format(mirror))
    assert '--dataset mnist-5k' in last
    assert not (dataset_root / 'chainer_sharedlinear' / 'mnist' /
                'train-images-idx3-ubyte.gz').exists()


@pytest.mark.slow
def test_20_epochs_of_mnist_5k_reach_093(tmp_path, capsys):
    status, stdout, err = main(capsys, '--dataset', 'mnist-5k', '--epoch', '20',
                               '--shared', '10', '--out', tmp_path)
    assert status == 0, err
    last = read_log(tmp_path)[-1]
    assert last['epoch'] == 20
    assert last['validation/main/accuracy'] >= 0.93
    assert np.isfinite(last['main/loss'])
