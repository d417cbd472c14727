"""The MNIST example, examples/train_mnist3.py, end to end."""

import io
import json
import os
import pty
import socket
import subprocess
import sys

import chainer
import chainer.links as L
import numpy as np
import pytest

from chainer_sharedlinear import SharedLinear
from tests.examples_tests import import_script

utils, train_mnist3 = import_script('examples', 'mnist3_utils', 'train_mnist3')

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
    # Not a terminal: a line per epoch, no progress bar, no escape codes.
    assert '\x1b' not in first.stdout and '100.00%' not in first.stdout
    assert [line.split()[0] for line in first.stdout.splitlines()
            if line[:1].isdigit()] == ['0', '1']

    second = run_script(*QUICK, '--epoch', '2', '--out', 'result', '--resume', 'result',
                        cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert 'Resuming from result/snapshot_iter_2 (epoch 1, iteration 2)' in second.stdout
    assert sorted(os.listdir(out)) == ['accuracy.png', 'log', 'loss.png', 'snapshot_iter_4']
    resumed = read_log(out)
    # The first run's entries are kept as they were, and one epoch more follows.
    assert resumed[:2] == log
    assert [(e['epoch'], e['iteration']) for e in resumed] == [(0, 0), (1, 2), (2, 4)]


def run_on_a_terminal(*args, cwd):
    """Runs the example with its output on a pseudo-terminal; returns its status and output."""
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen([sys.executable, SCRIPT] + list(args), cwd=str(cwd),
                                   stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)
        os.close(terminal)
        chunks = []
        while True:
            try:
                chunk = os.read(controller, 1 << 16)
            except OSError:  # EIO: the example has ended and closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        status = process.wait(timeout=300)
    finally:
        os.close(controller)
    return status, b''.join(chunks).decode()


def test_on_a_terminal_the_lines_are_under_a_progress_bar(tmp_path):
    status, output = run_on_a_terminal(*QUICK, '--epoch', '1', '--out', 'result', cwd=tmp_path)
    assert status == 0, output
    assert '100.00%' in output and '\x1b[J' in output  # the bar, erased before each line
    assert 'Final validation accuracy' in output


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
    """A standard input that says it is a terminal, with the user's answer in it."""

    def isatty(self):
        return True


def test_in_a_terminal_too_the_refusal_is_one_line_and_asks_nothing(tmp_path, capsys,
                                                                     monkeypatch):
    out = tmp_path / 'out'
    status, _, _ = main(capsys, *QUICK, '--epoch', '1', '--out', out)
    assert status == 0
    before = read_log(out)
    monkeypatch.setattr(sys, 'stdin', Terminal('y\n'))
    status, stdout, err = main(capsys, *QUICK, '--epoch', '1', '--out', out, '--seed', '1')
    assert status == 2
    assert err.count('\n') == 1, err
    assert 'already holds the results of a run' in err and '--overwrite' in err
    assert sys.stdin.read() == 'y\n'  # nothing was asked
    assert read_log(out) == before


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
    model = train_mnist3.build_model(args, dense=dense)
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
    (['--dense', '--compare'], '--compare trains both: it takes no --dense'),
    (['--compare', '--resume', 'result'], '--compare starts both runs afresh'),
    (['--epoch', '0'], "argument --epoch/-e: expected a positive integer, got '0'"),
    (['--seed', '-1'], "argument --seed: expected an integer from 0 to 2**32 - 1, got '-1'"),
    (['--out', '{tmp}/file'], '--out {tmp}/file is a file, not a directory'),
    (['--device', '@nonsense'], "argument --device/-d: Device specifiers starting with '@'"),
    (['--dataset', 'mnist', '--data-dir', '{tmp}'],
     'mnist: {tmp} lacks train-images-idx3-ubyte.gz'),
    (['--dataset', 'fashion-mnist', '--data-dir', '{corrupted}'],
     'train-images-idx3-ubyte: not an IDX file: wrong magic number 0x1f8c0000'),
    (['--dataset', 'mnist-5k', '--data-dir', '{tmp}'], 'mnist-5k.npz does not exist'),
    (['--train-size', '4001'], '--train-size 4001 is more than the 4000 images mnist-5k has'),
    (['--resume', '{tmp}/nothing'], '--resume {tmp}/nothing: no such snapshot'),
    (['--resume', '{tmp}'], 'no snapshot_iter_N snapshot in that directory'),
    (['--mirror', 'http://127.0.0.1:1/'], '--mirror is for downloading --dataset mnist'),
    # Several processes are train_mnist3_multi.py's.
    (['--communicator', 'naive'], 'unrecognized arguments: --communicator naive'),
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


def test_20_epochs_of_mnist_5k_reach_093(tmp_path, capsys):
    status, stdout, err = main(capsys, '--dataset', 'mnist-5k', '--epoch', '20',
                               '--shared', '10', '--out', tmp_path)
    assert status == 0, err
    last = read_log(tmp_path)[-1]
    assert last['epoch'] == 20
    assert last['validation/main/accuracy'] >= 0.93
    assert np.isfinite(last['main/loss'])


# --- Issue 15, items 1-5: nothing a user saved is lost, bad input is one line ---------------

# A network ten times smaller than the example's, for runs that only check files.
SMALL = QUICK + ['--unit', '100', '--out-units', '90']


def snapshot_files(folder):
    return {path.relative_to(folder).as_posix(): path.read_bytes()
            for path in sorted(folder.rglob('*')) if path.is_file()}


@pytest.mark.parametrize('overwrite', [[], ['--overwrite']])
def test_resuming_from_a_subfolder_of_out_keeps_everything(tmp_path, capsys, overwrite):
    out = tmp_path / 'C'
    status, _, err = main(capsys, *SMALL, '--compare', '--epoch', '1', '--out', out)
    assert status == 0, err
    before = snapshot_files(out)

    status, stdout, err = main(capsys, *SMALL, '--epoch', '2', '--resume', out / 'shared',
                               '--out', out, *overwrite)
    assert status == 0, err
    assert 'Resuming from {} (epoch 1, iteration 2)'.format(
        out / 'shared' / 'snapshot_iter_2') in stdout
    # A single run writes no shared/, dense/ or compare.png: they are left as they were.
    after = snapshot_files(out)
    assert {name: after[name] for name in before} == before
    assert [(e['epoch'], e['iteration']) for e in read_log(out)] == [(0, 0), (1, 2), (2, 4)]


def test_the_refusal_suggests_resume_only_where_it_works(tmp_path, capsys):
    out = tmp_path / 'out'
    status, _, _ = main(capsys, *SMALL, '--epoch', '1', '--out', out)
    assert status == 0
    status, _, err = main(capsys, *SMALL, '--epoch', '2', '--out', out)
    assert status == 2
    suggestion = '--resume {} --out {}'.format(out, out)
    assert suggestion in err
    status, _, err = main(capsys, *SMALL, '--epoch', '2', *suggestion.split())
    assert status == 0, err
    assert read_log(out)[-1]['epoch'] == 2

    # A log and no snapshot: there is nothing to resume from, so no such advice.
    other = tmp_path / 'other'
    other.mkdir()
    (other / 'log').write_text('mine')
    status, _, err = main(capsys, *SMALL, '--epoch', '1', '--out', other)
    assert status == 2
    assert err.count('\n') == 1, err
    assert 'already holds' in err and '--overwrite' in err
    assert '--resume' not in err
    assert (other / 'log').read_text() == 'mine'


def test_an_empty_out_is_refused(tmp_path, capsys, monkeypatch):
    # What an unset $OUT in `--out "$OUT"` gives.
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'log').write_text('mine')
    status, _, err = main(capsys, *SMALL, '--epoch', '1', '--out', '')
    assert status == 2
    assert err.count('\n') == 1, err
    assert "--out '' is empty: expected a directory (--out . for the current one)" in err
    assert sorted(os.listdir(tmp_path)) == ['log']
    assert (tmp_path / 'log').read_text() == 'mine'


def test_overwrite_removes_only_what_this_run_writes(tmp_path, capsys):
    out = tmp_path / 'out'
    status, _, _ = main(capsys, *SMALL, '--compare', '--epoch', '1', '--out', out)
    assert status == 0
    for name in ('notes.txt', 'shared/notes.txt', 'dense/notes.txt'):
        (out / name).write_text('mine')
    # A single run writes into out itself, not into shared/ or dense/.
    status, _, err = main(capsys, *SMALL, '--epoch', '1', '--out', out, '--overwrite')
    assert status == 0, err
    assert (out / 'shared' / 'snapshot_iter_2').is_file()
    assert (out / 'dense' / 'log').is_file()
    # --compare replaces the results in shared/ and dense/, and nothing else there.
    shared_log = read_log(out / 'shared')
    status, _, err = main(capsys, *SMALL, '--compare', '--epoch', '1', '--seed', '1',
                          '--out', out, '--overwrite')
    assert status == 0, err
    assert read_log(out / 'shared') != shared_log
    for name in ('notes.txt', 'shared/notes.txt', 'dense/notes.txt'):
        assert (out / name).read_text() == 'mine', name
    assert (out / 'log').is_file() and (out / 'snapshot_iter_2').is_file()


def not_a_snapshot(tmp_path, kind):
    path = tmp_path / 'not-a-snapshot' / kind
    path.parent.mkdir()
    if kind == 'log':
        path.write_text('[{"epoch": 0}]\n')
    elif kind == 'empty':
        path.write_bytes(b'')
    elif kind == 'array.npy':
        np.save(str(path), np.zeros(3))
    elif kind == 'truncated':
        path.write_bytes(b'PK\x03\x04' + bytes(20))
    else:  # a folder whose latest "snapshot" is text
        path.mkdir()
        (path / 'snapshot_iter_7').write_text('mine')
        return path, path / 'snapshot_iter_7'
    return path, path


@pytest.mark.parametrize('kind', ['log', 'empty', 'array.npy', 'truncated', 'folder'])
def test_resuming_from_a_file_that_is_not_a_snapshot_is_one_line(tmp_path, capsys, kind):
    resume, snapshot = not_a_snapshot(tmp_path, kind)
    out = tmp_path / 'out'
    status, _, _ = main(capsys, *SMALL, '--epoch', '1', '--out', out)
    assert status == 0
    before = snapshot_files(out)
    status, _, err = main(capsys, *SMALL, '--epoch', '2', '--resume', resume, '--out', out,
                          '--overwrite')
    assert status == 2
    assert err.count('\n') == 1, err
    assert 'error: cannot resume from {}: not a snapshot of this example'.format(
        snapshot) in err
    # Nothing is removed before the snapshot is loaded.
    assert snapshot_files(out) == before


@pytest.mark.parametrize('args, message', [
    (['--out', '{tmp}/file/sub'], '--out {tmp}/file/sub: {tmp}/file is a file, not a directory'),
    (['--batchsize', '201'], '--batchsize 201 is more than the 200 training images'),
])
def test_mistakes_found_before_training(tmp_path, capsys, args, message):
    (tmp_path / 'file').write_text('mine')
    args = [arg.format(tmp=tmp_path) for arg in args]
    if '--out' not in args:
        args += ['--out', str(tmp_path / 'out')]
    status, stdout, err = main(capsys, *SMALL, '--epoch', '1', *args)
    assert status == 2
    assert err.count('\n') == 1, err
    assert message.format(tmp=tmp_path) in err
    assert 'main/loss' not in stdout  # no training began
    assert (tmp_path / 'file').read_text() == 'mine'
    assert not (tmp_path / 'out').exists()


# --- Issue 11: a resumed run continues exactly -----------------------------------------------

# 250 training images in minibatches of 100: an epoch is 2.5 iterations, so epochs end
# mid-minibatch (at iterations 3, 5, 8 and 10) and the next epoch's order is drawn there.
EXACT = ['--dataset', 'mnist-5k', '--train-size', '250', '--val-size', '100',
         '--batchsize', '100', '--unit', '100', '--out-units', '90', '--seed', '5']


def snapshot_arrays(path):
    """The trainer's state in a snapshot, less the times: the updater's arrays and the log."""
    with np.load(str(path)) as snapshot:
        arrays = {key: snapshot[key] for key in snapshot.files if key.startswith('updater/')}
        log = json.loads(str(snapshot['extensions/LogReport/_log']))
    return arrays, without_times(log)


def assert_same_training(resumed, straight):
    assert without_times(read_log(resumed)) == without_times(read_log(straight))
    for plot in ('loss.png', 'accuracy.png'):
        assert (resumed / plot).read_bytes() == (straight / plot).read_bytes(), plot
    resumed_arrays, resumed_log = snapshot_arrays(resumed / 'snapshot_iter_10')
    straight_arrays, straight_log = snapshot_arrays(straight / 'snapshot_iter_10')
    assert resumed_log == straight_log
    assert sorted(resumed_arrays) == sorted(straight_arrays)
    for key, array in straight_arrays.items():
        assert resumed_arrays[key].dtype == array.dtype, key
        assert resumed_arrays[key].tobytes() == array.tobytes(), key


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory):
    """Four epochs that never stopped: iterations 1 to 10."""
    out = tmp_path_factory.mktemp('straight')
    assert train_mnist3.main(EXACT + ['--epoch', '4', '--out', str(out), '--overwrite']) == 0
    assert [(e['epoch'], e['iteration']) for e in read_log(out)] == [
        (0, 0), (1, 3), (2, 5), (3, 8), (4, 10)]
    return out


@pytest.mark.parametrize('stop, snapshot', [
    (['--epoch', '2'], 'snapshot_iter_5'),                           # at an epoch's end
    (['--epoch', '1', '--snapshot-every', '2'], 'snapshot_iter_2'),  # in the first epoch
    (['--epoch', '2', '--snapshot-every', '4'], 'snapshot_iter_4'),  # in the second
    (['--epoch', '3', '--snapshot-every', '7'], 'snapshot_iter_7'),  # 2 iterations into it
])
def test_a_resumed_run_equals_one_that_never_stopped(tmp_path, capsys, straight_run, stop,
                                                    snapshot):
    out = tmp_path / 'resumed'
    status, _, err = main(capsys, *EXACT, *stop, '--out', out)
    assert status == 0, err
    assert sorted(name for name in os.listdir(out) if name.startswith('snapshot')) == [snapshot]
    status, stdout, err = main(capsys, *EXACT, '--epoch', '4', '--resume', out, '--out', out)
    assert status == 0, err
    assert 'Resuming from {}'.format(out / snapshot) in stdout
    assert_same_training(out, straight_run)


def test_snapshot_every_n_iterations(tmp_path, capsys):
    status, _, err = main(capsys, *EXACT, '--epoch', '2', '--snapshot-every', '2',
                          '--out', tmp_path)
    assert status == 0, err
    # Iterations 2 and 4 (of 5); the latest is kept.
    assert sorted(os.listdir(tmp_path)) == ['accuracy.png', 'log', 'loss.png',
                                            'snapshot_iter_4']


def test_an_interrupted_run_resumes_exactly_as_it_says(tmp_path, capsys, monkeypatch,
                                                       straight_run):
    # Ctrl-C during iteration 8, two iterations after the snapshot of iteration 6.
    update = chainer.training.updaters.StandardUpdater.update

    def interrupted_update(updater):
        if updater.iteration == 7:
            raise KeyboardInterrupt
        update(updater)

    out = tmp_path / 'out'
    monkeypatch.setattr(chainer.training.updaters.StandardUpdater, 'update', interrupted_update)
    status, _, err = main(capsys, *EXACT, '--epoch', '4', '--snapshot-every', '3', '--out', out)
    assert status == 130
    hint = '--resume {0} --out {0} continues from {0}/snapshot_iter_6'.format(out)
    assert err.endswith('interrupted; {}\n'.format(hint))
    monkeypatch.undo()
    status, _, err = main(capsys, *EXACT, '--epoch', '4', *hint.split()[:4])
    assert status == 0, err
    assert_same_training(out, straight_run)


# --- Issue 19, item 4: a user's file that looks like a snapshot is not removed ----------------

@pytest.mark.parametrize('path', ['fresh', 'overwrite', 'resume'])
def test_a_file_named_like_a_snapshot_is_left_alone(tmp_path, capsys, path):
    # Chainer's snapshot extension removes every file that starts with snapshot_iter_.
    out = tmp_path / 'out'
    out.mkdir()
    backup = out / 'snapshot_iter_4.bak'
    if path != 'fresh':
        status, _, err = main(capsys, *SMALL, '--epoch', '1', '--out', out)
        assert status == 0, err
    backup.write_text('mine')
    os.utime(str(backup), (0, 0))  # older than every snapshot
    then = {'fresh': [], 'overwrite': ['--overwrite', '--seed', '1'],
            'resume': ['--resume', out, '--epoch', '2']}[path]
    status, _, err = main(capsys, *SMALL, '--epoch', '1', '--out', out, *then)
    assert status == 0, err
    assert backup.read_text() == 'mine'
    snapshot = 'snapshot_iter_4' if path == 'resume' else 'snapshot_iter_2'
    assert sorted(os.listdir(out)) == ['accuracy.png', 'log', 'loss.png', snapshot,
                                       'snapshot_iter_4.bak']


def test_a_snapshot_removes_only_the_one_it_replaces(tmp_path):
    for name in ('snapshot_iter_2', 'snapshot_iter_2.bak', 'snapshot_iter_3x'):
        (tmp_path / name).write_text('earlier')
    model = chainer.links.Linear(2, 3)
    writer = utils.snapshot(replaces=str(tmp_path / 'snapshot_iter_2')).writer
    for iteration in (5, 7):
        writer('snapshot_iter_{}'.format(iteration), str(tmp_path),
               chainer.serializers.npz.serialize(model))
    assert sorted(os.listdir(tmp_path)) == ['snapshot_iter_2.bak', 'snapshot_iter_3x',
                                            'snapshot_iter_7']


# --- Issue 20: a resumed run has the settings of the run it resumes ----------------------------

def with_options(argv, changes):
    """``argv`` with the options of ``changes`` replaced or added."""
    argv = list(argv)
    while changes:
        option, *rest = changes
        n_values = 0 if option == '--dense' else 1
        if option in argv:
            index = argv.index(option)
            argv[index + 1:index + 1 + n_values] = rest[:n_values]
        else:
            argv += [option] + rest[:n_values]
        changes = rest[n_values:]
    return argv


@pytest.mark.parametrize('change, message', [
    (['--batchsize', '50'], '--batchsize 100, this run has --batchsize 50'),
    (['--seed', '6'], '--seed 5, this run has --seed 6'),
    (['--data-dir', '{copy}'], 'no --data-dir, this run has --data-dir {copy}'),
    (['--dataset', 'fashion-mnist'], '--dataset mnist-5k, this run has --dataset fashion-mnist'),
    (['--train-size', '200'], '--train-size 250, this run has --train-size 200'),
    (['--val-size', '50'], '--val-size 100, this run has --val-size 50'),
    (['--unit', '50'], '--unit 100, this run has --unit 50'),
    (['--out-units', '80'], '--out-units 90, this run has --out-units 80'),
    (['--shared', '5'], '--shared 10, this run has --shared 5'),
    (['--dense'], 'no --dense, this run has --dense'),
])
def test_resuming_with_other_settings_is_refused_by_name(tmp_path, capsys, change, message):
    if '--dataset' in change and not os.path.isdir(utils.FASHION_MNIST_DIR):
        pytest.skip('needs Fashion-MNIST in {} (apt-get install dataset-fashion-mnist)'.format(
            utils.FASHION_MNIST_DIR))
    copy = tmp_path / 'copy'
    copy.mkdir()
    (copy / utils.MNIST_5K_FILE).write_bytes(
        open(os.path.join(utils.BUNDLED_DIR, utils.MNIST_5K_FILE), 'rb').read())
    out = tmp_path / 'out'
    status, _, err = main(capsys, *EXACT, '--epoch', '1', '--out', out)
    assert status == 0, err
    before = snapshot_files(out)
    change = [arg.format(copy=copy) for arg in change]
    status, stdout, err = main(capsys, *with_options(EXACT, change), '--epoch', '2',
                               '--resume', out, '--out', out)
    assert status == 2, err
    assert err.count('\n') == 1, err
    assert 'error: cannot resume from {}: it was trained with {}'.format(
        out / 'snapshot_iter_3', message.format(copy=copy)) in err
    assert 'main/loss' not in stdout  # no training began
    assert snapshot_files(out) == before
