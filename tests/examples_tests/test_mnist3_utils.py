"""examples/mnist3_utils.py part by part, but for its datasets (test_datasets.py)."""

import io
import math
import os
import sys

import chainer
import numpy as np
import pytest
from chainer import serializers

from tests.examples_tests import import_script

utils = import_script('examples', 'mnist3_utils')

# --- One-line errors -------------------------------------------------------------------------


@pytest.mark.parametrize('text, value', [('1', 1), ('20', 20)])
def test_positive_int_accepts(text, value):
    assert utils.positive_int(text) == value


@pytest.mark.parametrize('text', ['0', '-3', '1.5', 'ten', ''])
def test_positive_int_refuses(text):
    with pytest.raises(Exception, match='expected a positive integer'):
        utils.positive_int(text)


@pytest.mark.parametrize('text, ok', [('0', True), (str(2 ** 32 - 1), True), ('-1', False),
                                      (str(2 ** 32), False), ('x', False)])
def test_seed_is_a_32_bit_unsigned_integer(text, ok):
    if ok:
        assert utils.seed(text) == int(text)
    else:
        with pytest.raises(Exception, match=r'expected an integer from 0 to 2\*\*32 - 1'):
            utils.seed(text)


def test_exit_status_reports_a_mistake_in_one_line(capsys):
    def run(args):
        raise utils.UsageError('--out x is a file, not a directory')

    assert utils.exit_status(run, None) == 2
    out, err = capsys.readouterr()
    assert out == ''
    assert err == '{}: error: --out x is a file, not a directory\n'.format(
        os.path.basename(sys.argv[0]))


def test_exit_status_on_ctrl_c(capsys, tmp_path):
    def run(args):
        raise KeyboardInterrupt

    assert utils.exit_status(run, None) == 130
    assert capsys.readouterr().err.endswith(': interrupted\n')
    (tmp_path / 'snapshot_iter_6').write_text('')
    assert utils.exit_status(run, None, str(tmp_path)) == 130
    assert capsys.readouterr().err.endswith(
        ': interrupted; --resume {0} --out {0} continues from {0}/snapshot_iter_6\n'.format(
            tmp_path))
    with pytest.raises(KeyboardInterrupt):  # left to ChainerMN's hook under mpiexec
        utils.exit_status(run, None, catch_interrupt=False)


# --- The result folder -----------------------------------------------------------------------

ONE_TRAINING = ['log', 'loss.png', 'snapshot_iter_*']


def make_files(folder, *names):
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('earlier ' + name)


def test_latest_snapshot_is_the_largest_iteration(tmp_path):
    assert utils.latest_snapshot(str(tmp_path)) is None
    make_files(tmp_path, 'snapshot_iter_9', 'snapshot_iter_10', 'snapshot_iter_x', 'log')
    assert utils.latest_snapshot(str(tmp_path)) == str(tmp_path / 'snapshot_iter_10')
    assert utils.find_snapshot(str(tmp_path)) == str(tmp_path / 'snapshot_iter_10')


def test_a_result_folder_on_a_new_folder_replaces_nothing_and_creates_it(tmp_path):
    out = str(tmp_path / 'new' / 'out')
    folder = utils.ResultFolder(out, ['log', 'sub/log'])
    assert folder.replaced == [] and not os.path.exists(out)  # nothing done yet
    folder.take()
    assert os.path.isdir(os.path.join(out, 'sub'))


@pytest.mark.parametrize('out, message', [
    ('', "--out '' is empty: expected a directory"),
    ('{tmp}/file', '--out {tmp}/file is a file, not a directory'),
    ('{tmp}/file/a/b', '--out {tmp}/file/a/b: {tmp}/file is a file, not a directory'),
    ('{tmp}/file/', '--out {tmp}/file/ is a file, not a directory'),
])
def test_a_result_folder_on_what_cannot_be_a_folder_is_refused(tmp_path, out, message):
    make_files(tmp_path, 'file')
    with pytest.raises(utils.UsageError) as error:
        utils.ResultFolder(out.format(tmp=tmp_path), ONE_TRAINING, overwrite=True)
    assert str(error.value).startswith(message.format(tmp=tmp_path))


def test_a_result_folder_under_out_must_not_be_a_file(tmp_path):
    make_files(tmp_path, 'shared')
    with pytest.raises(utils.UsageError) as error:
        utils.ResultFolder(str(tmp_path), ['shared/log'], overwrite=True)
    assert str(error.value) == '--out {0}: {0}/shared is a file, not a directory'.format(
        tmp_path)


def test_overwrite_replaces_only_the_results(tmp_path):
    make_files(tmp_path, 'log', 'loss.png', 'snapshot_iter_4', 'notes.txt', 'sub/log',
               'logs', 'snapshot.npz')
    folder = utils.ResultFolder(str(tmp_path), ONE_TRAINING, overwrite=True)
    assert folder.replaced == ['log', 'loss.png', 'snapshot_iter_4']
    folder.take()
    assert sorted(os.listdir(tmp_path)) == ['logs', 'notes.txt', 'snapshot.npz', 'sub']
    assert (tmp_path / 'sub' / 'log').is_file()


def test_a_result_name_that_is_a_folder_is_refused(tmp_path):
    (tmp_path / 'log').mkdir()
    with pytest.raises(utils.UsageError, match='log is a directory, where this run '
                       'writes a file'):
        utils.ResultFolder(str(tmp_path), ONE_TRAINING, overwrite=True)


def test_without_overwrite_the_refusal_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, 'stdin', io.StringIO())  # not a terminal
    make_files(tmp_path, 'log')
    with pytest.raises(utils.UsageError) as error:
        utils.ResultFolder(str(tmp_path), ONE_TRAINING)
    assert str(error.value) == ('{} already holds the results of a run (log): pass '
                                '--overwrite to replace them, or another --out'.format(tmp_path))
    make_files(tmp_path, 'snapshot_iter_3')
    with pytest.raises(utils.UsageError, match='--resume {0} --out {0} to continue '
                       'that run there'.format(tmp_path)):
        utils.ResultFolder(str(tmp_path), ONE_TRAINING)
    with pytest.raises(utils.UsageError) as error:
        utils.ResultFolder(str(tmp_path), ONE_TRAINING, can_resume=False)
    assert '--resume' not in str(error.value)
    assert sorted(os.listdir(tmp_path)) == ['log', 'snapshot_iter_3']


def test_resuming_from_one_of_the_results_continues_that_run_and_removes_nothing(tmp_path):
    make_files(tmp_path, 'log', 'snapshot_iter_3')
    for overwrite in (False, True):
        folder = utils.ResultFolder(str(tmp_path), ONE_TRAINING, overwrite=overwrite,
                                    resume_from=str(tmp_path / 'snapshot_iter_3'))
        assert folder.replaced == []
    # A snapshot elsewhere continues another run: these results are not its own.
    make_files(tmp_path, 'elsewhere/snapshot_iter_1')
    folder = utils.ResultFolder(str(tmp_path), ONE_TRAINING, overwrite=True,
                                resume_from=str(tmp_path / 'elsewhere' / 'snapshot_iter_1'))
    assert folder.replaced == ['log', 'snapshot_iter_3']


def test_only_a_snapshots_own_name_is_a_result(tmp_path):
    make_files(tmp_path, 'snapshot_iter_4.bak', 'snapshot_iter_', 'snapshot_iter_3x',
               'snapshot_iter_12')
    assert utils.ResultFolder(str(tmp_path), ONE_TRAINING, overwrite=True).find() == [
        'snapshot_iter_12']
    assert utils.latest_snapshot(str(tmp_path)) == str(tmp_path / 'snapshot_iter_12')
    folder = utils.ResultFolder(str(tmp_path), ONE_TRAINING, overwrite=True,
                                resume_from=str(tmp_path / 'snapshot_iter_12'))
    assert (folder.replaced, folder.continued) == ([], str(tmp_path / 'snapshot_iter_12'))
    folder = utils.ResultFolder(str(tmp_path), ONE_TRAINING, overwrite=True,
                                resume_from=str(tmp_path / 'snapshot_iter_4.bak'))
    assert (folder.replaced, folder.continued) == (['snapshot_iter_12'], None)


# --- Exact resumption ------------------------------------------------------------------------

def test_the_iterator_draws_the_orders_of_chainers():
    ours = utils.ShuffledIterator(list(range(10)), 10, seed=7)
    order = chainer.iterators.ShuffleOrderSampler(np.random.RandomState(7))
    chainers = chainer.iterators.SerialIterator(list(range(10)), 10, order_sampler=order)
    for _ in range(3):
        assert ours.next() == chainers.next()


def take_batches(iterator, n):
    return [np.array(iterator.next()) for _ in range(n)]


def resumed(make_iterator, iterator):
    """A new iterator from ``make_iterator`` with the state of ``iterator``, via npz."""
    saved = io.BytesIO()
    serializers.save_npz(saved, iterator)
    saved.seek(0)
    new = make_iterator()
    serializers.load_npz(saved, new)
    return new


@pytest.mark.parametrize('n_before', [2, 3, 4])  # mid-epoch, at its end, across it
def test_a_resumed_iterator_continues_in_the_same_order(n_before):
    def make():
        return utils.ShuffledIterator(list(range(10)), 4, seed=3)

    straight, stopped = make(), make()
    expected = take_batches(straight, n_before + 12)
    assert [b.tolist() for b in take_batches(stopped, n_before)] == \
        [b.tolist() for b in expected[:n_before]]
    continued = take_batches(resumed(make, stopped), 12)
    assert [b.tolist() for b in continued] == [b.tolist() for b in expected[n_before:]]


def test_chainers_own_iterator_does_not_continue_in_the_same_order():
    # The defect the sampler's state in the snapshot fixes (issue 11).
    def make():
        order = chainer.iterators.ShuffleOrderSampler(np.random.RandomState(3))
        return chainer.iterators.SerialIterator(list(range(10)), 5, order_sampler=order)

    straight, stopped = make(), make()
    expected = take_batches(straight, 6)
    take_batches(stopped, 2)
    continued = take_batches(resumed(make, stopped), 4)
    assert [b.tolist() for b in continued] != [b.tolist() for b in expected[2:]]


def test_every_process_with_the_seed_draws_the_same_orders():
    # Under ChainerMN the ranks' shares differ but have one length: rank 0's
    # snapshot then holds every rank's order.
    a = utils.ShuffledIterator(list(range(0, 10)), 2, seed=5)
    b = utils.ShuffledIterator(list(range(100, 110)), 2, seed=5)
    for _ in range(12):
        assert [x - 100 for x in b.next()] == a.next()


def test_read_snapshot_refuses_what_is_not_an_npz_archive(tmp_path):
    path = tmp_path / 'log'
    path.write_text('[]')
    with pytest.raises(utils.UsageError, match='cannot resume from {}: not a snapshot '
                       'of this example'.format(path)):
        utils.read_snapshot(str(path))
    np.savez(str(tmp_path / 'a.npz'), x=np.zeros(2))
    assert utils.read_snapshot(str(tmp_path / 'a.npz'))[:2] == b'PK'


# --- Reports ---------------------------------------------------------------------------------

LOG = [{'epoch': 0, 'iteration': 0, 'elapsed_time': 0.5, 'validation/main/loss': 2.3,
        'validation/main/accuracy': 0.1},
       {'epoch': 1, 'iteration': 4, 'elapsed_time': 1.5, 'main/loss': 0.5,
        'main/accuracy': 0.875, 'validation/main/loss': 0.25, 'validation/main/accuracy': 0.9},
       {'epoch': 2, 'iteration': 8, 'elapsed_time': 3.5, 'main/loss': 0.25,
        'main/accuracy': 0.9375, 'validation/main/loss': 0.125,
        'validation/main/accuracy': 0.96875}]


def test_seconds_per_epoch_from_a_log():
    assert utils.seconds_per_epoch(LOG) == 1.5
    assert utils.seconds_per_epoch(LOG[1:]) == 2.0
    assert math.isnan(utils.seconds_per_epoch(LOG[:1]))


def test_final_figures():
    assert utils.final_figures(LOG) == ('Final validation accuracy: 0.9688 (epoch 2, '
                                          'validation loss 0.1250; 1.50 s per epoch)')


def test_comparison_table():
    assert utils.comparison_table([('a', 'L.Linear(2, 3)', 1234, LOG)]).splitlines() == [
        '| model | l2 | parameters | s/epoch | train loss | train acc. | val. loss | val. acc. |',
        '|---|---|---:|---:|---:|---:|---:|---:|',
        '| a | `L.Linear(2, 3)` | 1,234 | 1.500 | 0.2500 | 0.9375 | 0.1250 | 0.9688 |']


def test_plot_comparison_draws_a_png(tmp_path):
    pytest.importorskip('matplotlib')
    rows = [(name, '', 0, LOG) for name in 'abcdefghijkl']  # more than the colours
    utils.plot_comparison(rows, str(tmp_path / 'c.png'), 'title')
    assert (tmp_path / 'c.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
