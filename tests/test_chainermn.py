"""Data-parallel training with ChainerMN: SharedLinear needs no special handling.

The workers in tests/mpi/ and the MNIST example's examples/train_mnist3_multi.py run
under ``mpiexec -n 2``; every run has a hard time bound, so that a rank that
hangs fails the test instead of hanging the suite.
These tests are skipped with a reason where MPI or mpi4py is missing, except under
CI (``CI=true``), which installs both (see .ci/run), so a skip there would only hide
that they did not run.
"""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys

import chainer
import numpy as np
import pytest

from chainer_sharedlinear import (
    ClusteredLinear,
    DistillationClassifier,
    HashedLinear,
    bcast_model,
)
from tests.examples_tests import import_script
from tests.mpi import compressed, data_parallel

utils, train_mnist3, multi = import_script('examples', 'mnist3_utils', 'train_mnist3',
                                           'train_mnist3_multi')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_PROCESSES = 2
TIMEOUT_S = 120
WORKER = os.path.join('tests', 'mpi', 'data_parallel.py')
COMPRESSED_WORKER = os.path.join('tests', 'mpi', 'compressed.py')
EXAMPLE = os.path.join('examples', 'train_mnist3_multi.py')


def _why_no_mpi():
    if shutil.which('mpiexec') is None:
        return ('needs MPI: apt-get install openmpi-bin libopenmpi-dev (Debian/Ubuntu), '
                'then scripts/test.sh installs mpi4py (the "mpi" extra)')
    if importlib.util.find_spec('mpi4py') is None:
        return ('needs mpi4py: pip install -e ".[mpi]", which scripts/test.sh does by itself '
                'when mpicc is on PATH')
    return None


def _require_mpi():
    reason = _why_no_mpi()
    if reason is None:
        return
    if os.environ.get('CI') == 'true':
        pytest.fail('CI must run the MPI tests, but this one ' + reason)
    pytest.skip(reason)


def mpiexec_command(n_processes):
    """The ``mpiexec`` command line, up to the program, that starts ``n_processes`` ranks."""
    command = [shutil.which('mpiexec')]
    version = subprocess.run(command + ['--version'], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             universal_newlines=True, timeout=30).stdout
    if 'Open MPI' in version or 'OpenRTE' in version:
        # Open MPI refuses more ranks than cores (a CI machine may have one) and,
        # without being told, to run as root (CI runs as root).
        command.append('--oversubscribe')
        if os.geteuid() == 0:
            command.append('--allow-run-as-root')
    return command + ['-n', str(n_processes)]


def run_under_mpi(script_args, n_processes=N_PROCESSES, timeout=TIMEOUT_S):
    """Runs ``python SCRIPT_ARGS...`` on ``n_processes`` ranks and returns ``(rc, output)``.

    ``output`` is the ranks' stdout and stderr together. A job that outlives
    ``timeout`` seconds is killed and fails the calling test with that output.
    """
    _require_mpi()
    command = mpiexec_command(n_processes) + [sys.executable] + list(script_args)
    # Its own process group, so that a hung job can be killed with all its ranks.
    process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               universal_newlines=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # mpiexec passes SIGTERM on to its ranks; SIGKILL is for whatever ignores it.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
        pytest.fail('{} did not finish within {} s and was killed; its output:\n{}'.format(
            ' '.join(command), timeout, output))
    return process.returncode, output


def _arrays_of_each_rank(tmp_path_factory, worker: str, name: str):
    """``[arrays of rank 0, arrays of rank 1]`` that ``worker`` wrote under ``mpiexec``."""
    out_dir = tmp_path_factory.mktemp(name)
    rc, output = run_under_mpi([worker, str(out_dir)])
    assert rc == 0, 'the {} worker failed (exit status {}):\n{}'.format(name, rc, output)
    ranks = []
    for rank in range(N_PROCESSES):
        with np.load(str(out_dir / 'rank{}.npz'.format(rank))) as saved:
            ranks.append(dict(saved))
    return ranks


@pytest.fixture(scope='module')
def rank_params(tmp_path_factory):
    """``[params of rank 0, params of rank 1]``, each ``{stage + name: array}``."""
    return _arrays_of_each_rank(tmp_path_factory, WORKER, 'data-parallel')


def _stage(params, stage):
    prefix = stage + '/'
    return {key[len(prefix) - 1:]: array for key, array in params.items()
            if key.startswith(prefix)}


def test_model_has_a_shared_linear_and_an_ordinary_linear(rank_params):
    names = set(_stage(rank_params[0], 'final'))
    assert names == {'/predictor/l1/W', '/predictor/l1/b', '/predictor/l2/W', '/predictor/l2/b'}
    assert rank_params[0]['final/predictor/l1/W'].shape == (
        data_parallel.HIDDEN, data_parallel.IN_SIZE // data_parallel.N_SHARED)


def test_ranks_start_different_and_are_synced_from_rank_0(rank_params):
    initial = [_stage(params, 'initial') for params in rank_params]
    synced = [_stage(params, 'synced') for params in rank_params]
    # Otherwise the broadcast below would be checked against nothing.
    assert not np.array_equal(initial[0]['/predictor/l1/W'], initial[1]['/predictor/l1/W'])
    for rank in range(N_PROCESSES):
        for name, array in synced[rank].items():
            np.testing.assert_array_equal(array, initial[0][name], err_msg=name)


def test_every_rank_holds_bit_identical_parameters_after_training(rank_params):
    final = [_stage(params, 'final') for params in rank_params]
    synced = _stage(rank_params[0], 'synced')
    for name in final[0]:
        assert final[0][name].dtype == data_parallel.DTYPE
        assert not np.array_equal(final[0][name], synced[name]), name + ' was not trained'
        for rank in range(1, N_PROCESSES):
            assert final[rank][name].tobytes() == final[0][name].tobytes(), (
                '{} differs between rank 0 and rank {}'.format(name, rank))


# Averaging the gradients of the halves and differentiating the whole minibatch
# differ only in summation order, about 1e-16 relative per operation in float64;
# a few steps of momentum SGD amplify that by far less than 1e3.
RTOL, ATOL = 1e-12, 1e-14


def test_parameters_equal_single_process_training_on_the_whole_minibatch(rank_params):
    initial = _stage(rank_params[0], 'initial')
    final = _stage(rank_params[0], 'final')
    expected = data_parallel.train_single_process(initial)
    assert set(expected) == set(final)
    for name in final:
        np.testing.assert_allclose(final[name], expected[name], rtol=RTOL, atol=ATOL,
                                   err_msg=name)


def test_without_averaging_rank_0_would_have_trained_elsewhere(rank_params):
    # The tolerance above is tight enough to tell the averaged gradients from
    # rank 0's own: training on rank 0's half alone ends far from the result.
    initial = _stage(rank_params[0], 'initial')
    final = _stage(rank_params[0], 'final')
    alone = data_parallel.train_single_process(
        initial, data_parallel.rank_slice(0, N_PROCESSES))
    for name in ('/predictor/l1/W', '/predictor/l2/W'):
        assert not np.allclose(final[name], alone[name], rtol=RTOL, atol=ATOL), name


def test_a_failing_rank_aborts_the_whole_job(tmp_path):
    rc, output = run_under_mpi([WORKER, str(tmp_path), '--fail-on-rank', '1'], timeout=60)
    assert rc != 0, output
    assert 'RuntimeError: deliberate failure on rank 1' in output, output
    # ChainerMN's global except hook, not a lucky exit, ended rank 0's wait.
    assert 'Uncaught exception on rank 1' in output, output
    assert not (tmp_path / 'rank0.npz').exists(), output


@pytest.fixture(scope='module')
def compressed_ranks(tmp_path_factory):
    """``[arrays of rank 0, arrays of rank 1]`` written by tests/mpi/compressed.py."""
    return _arrays_of_each_rank(tmp_path_factory, COMPRESSED_WORKER, 'compressed-model')


def _differ(ranks, key):
    return not np.array_equal(ranks[0][key], ranks[1][key])


def test_ranks_that_compress_alike_but_seeded_otherwise_get_other_indices(compressed_ranks):
    # Otherwise neither test below would check anything.
    for way in ('optimizer', 'bcast_model'):
        for name in compressed.LAYERS:
            assert _differ(compressed_ranks, '{}/index_before/{}'.format(way, name))


def test_the_multi_node_optimizer_alone_broadcasts_the_codebooks_not_the_indices(
        compressed_ranks):
    # ChainerMN's blind spot, which bcast_model covers: alike parameters, other functions.
    params = [key for key in compressed_ranks[0] if key.startswith('optimizer/param/')]
    assert params and not any(_differ(compressed_ranks, key) for key in params)
    assert _differ(compressed_ranks, 'optimizer/index/l1')
    assert _differ(compressed_ranks, 'optimizer/first')


def test_after_bcast_model_every_rank_computes_rank_0s_compressed_model(compressed_ranks):
    rank_0 = compressed_ranks[0]
    for rank in compressed_ranks:
        for name in compressed.LAYERS:
            np.testing.assert_array_equal(rank['bcast_model/index/' + name],
                                          rank_0['bcast_model/index_before/' + name])
        for stage in ('first', 'final'):
            # The same parameters and indices: the same function, bit for bit.
            key = 'bcast_model/' + stage
            assert rank[key].tobytes() == rank_0[key].tobytes()
    assert not np.array_equal(rank_0['bcast_model/final'], rank_0['bcast_model/first'])


class OneOfTheRanks(object):
    """A rank of ranks in one process, rank 0 first: ChainerMN's ``rank`` and ``bcast_obj``."""

    def __init__(self, rank, sent):
        self.rank, self._sent = rank, sent

    def bcast_obj(self, obj, root=0):
        if self.rank == root:
            self._sent[:] = [obj]
        return self._sent[0]


def _bcast(models):
    sent = []
    for rank, model in enumerate(models):
        bcast_model(OneOfTheRanks(rank, sent), model)


def test_bcast_model_sends_what_is_not_a_parameter():
    def model(seed):
        rng = np.random.RandomState(seed)
        chain = chainer.Sequential(
            ClusteredLinear.from_linear(chainer.links.Linear(
                6, 5, initialW=rng.normal(size=(5, 6))), n_clusters=4),
            chainer.links.BatchNormalization(5))
        chain[1].avg_mean[...] = rng.normal(size=5)
        teacher = chainer.links.Linear(6, 5, initialW=rng.normal(size=(5, 6)))
        return DistillationClassifier(chain, teacher, save_teacher=True)

    models = [model(0), model(1)]
    expected = chainer.serializers.DictionarySerializer()
    expected.save(models[0])
    _bcast(models)
    got = chainer.serializers.DictionarySerializer()
    got.save(models[1])
    assert sorted(got.target) == sorted(expected.target)
    assert {'predictor/0/index', 'predictor/1/avg_mean', 'teacher/W'} <= set(got.target)
    for key, array in expected.target.items():
        np.testing.assert_array_equal(got.target[key], array, err_msg=key)
    x = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    with chainer.using_config('train', False):
        np.testing.assert_array_equal(models[1].predictor(x).array,
                                      models[0].predictor(x).array)


@pytest.mark.parametrize('rank_1, message', [
    (lambda: HashedLinear(6, 5, n_weights=10, seed=1),
     r"rank 1 cannot take rank 0's model, which is built otherwise: cannot load a HashedLinear "
     r'saved with seed=0 into HashedLinear\(in_size=6, out_size=5, n_weights=10, seed=1'),
    (lambda: ClusteredLinear(6, 5, n_clusters=8),
     r'cannot load a ClusteredLinear saved with n_clusters=4 into'),
    (lambda: chainer.Sequential(chainer.links.Linear(6, 5), chainer.links.Linear(5, 2)),
     r"rank 1 cannot take rank 0's model, which is built otherwise: rank 0's has no 1/[Wb]$"),
])
def test_bcast_model_refuses_a_rank_whose_model_is_built_otherwise(rank_1, message):
    rank_0 = {HashedLinear: lambda: HashedLinear(6, 5, n_weights=10, seed=0),
              ClusteredLinear: lambda: ClusteredLinear(6, 5, n_clusters=4),
              chainer.Sequential: lambda: chainer.Sequential(chainer.links.Linear(6, 5))}
    model = rank_1()
    with pytest.raises(ValueError, match=message):
        _bcast([rank_0[type(model)](), model])


# The example on 2 ranks: 400 training images, 200 to validate, minibatches of
# 100 split into 50 per rank, so 200 training and 100 validation images each,
# and 4 iterations an epoch.
EXAMPLE_QUICK = ['--dataset', 'mnist-5k', '--train-size', '400', '--val-size', '200',
                 '--batchsize', '100', '--seed', '0']


def run_example(*args, n_processes=N_PROCESSES):
    """Runs the example on two ranks with ``EXAMPLE_QUICK`` and ``args``; returns its output."""
    rc, output = run_under_mpi([EXAMPLE, '--communicator', 'naive'] + list(args) + EXAMPLE_QUICK,
                               n_processes=n_processes, timeout=90)
    assert rc == 0, output
    assert 'Traceback' not in output, output
    return output


def files_under(folder):
    return sorted(os.path.relpath(os.path.join(parent, name), str(folder))
                  for parent, _, names in os.walk(str(folder)) for name in names)


def read_log(folder):
    with open(str(folder / 'log')) as f:
        return json.load(f)


def initial_validation(argv):
    """Loss and accuracy of the example's initial model on its whole validation set."""
    args = train_mnist3.parse_args(argv)
    _, val_set = utils.load_datasets(args)
    model = train_mnist3.build_model(args, dense=False)
    x, t = chainer.dataset.concat_examples(val_set)
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        model(x, t)
    return float(model.loss.array), float(model.accuracy.array)


def without_times(log):
    return [{k: v for k, v in entry.items() if k != 'elapsed_time'} for entry in log]


def assert_same_training(resumed, straight):
    """The logs but for the times, and the trainers' states in the snapshots, bit for bit."""
    assert without_times(read_log(resumed)) == without_times(read_log(straight))
    with np.load(str(resumed / 'snapshot_iter_8')) as a, \
            np.load(str(straight / 'snapshot_iter_8')) as b:
        keys = [key for key in b.files if key.startswith('updater/')]
        assert sorted(key for key in a.files if key.startswith('updater/')) == sorted(keys)
        for key in keys:
            assert a[key].tobytes() == b[key].tobytes(), key


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory):
    """Two epochs of the example on two ranks that never stopped: iterations 1 to 8."""
    out = tmp_path_factory.mktemp('straight') / 'result'
    run_example('--epoch', '2', '--out', str(out))
    return out


def test_example_trains_on_two_ranks_and_only_rank_0_reports_then_resumes(tmp_path,
                                                                          dataset_root,
                                                                          straight_run):
    out = tmp_path / 'result'
    output = run_example('--epoch', '1', '--out', str(out))
    # Rank 0 alone writes: one copy of each result, nothing else anywhere.
    assert files_under(tmp_path) == ['result/accuracy.png', 'result/log', 'result/loss.png',
                                     'result/snapshot_iter_4'], output
    log = read_log(out)
    # 4 iterations, not 2: each rank takes 50 images of every minibatch of 100.
    assert [(e['epoch'], e['iteration']) for e in log] == [(0, 0), (1, 4)]
    # Before training, the ranks evaluate rank 0's initial model on their halves;
    # the multi-node evaluator's average is the figure of the whole validation set.
    loss, accuracy = initial_validation(EXAMPLE_QUICK)
    assert log[0]['validation/main/loss'] == pytest.approx(loss, rel=1e-5)
    assert log[0]['validation/main/accuracy'] == pytest.approx(accuracy, rel=1e-5)
    assert 0 <= log[1]['validation/main/accuracy'] <= 1
    with np.load(str(out / 'snapshot_iter_4')) as snapshot:
        # Adam stepped at every iteration, the first included, SharedLinear.W too.
        assert snapshot['updater/optimizer:main/t'] == 4
        assert snapshot['updater/optimizer:main/predictor/l2/W/t'] == 4
    # Printed by rank 0 only.
    final = 'Final validation accuracy: {:.4f}'.format(log[-1]['validation/main/accuracy'])
    assert output.count(final) == 1, output
    assert output.count('# communicator: naive, 2 processes, each with 50 images of every '
                        'minibatch, 200 training and 100 validation images') == 1, output
    assert output.count('validation/main/accuracy  elapsed_time') == 1, output
    assert output.count('100.00%') == 1, output  # the progress bar

    output = run_example('--epoch', '2', '--out', str(out), '--resume', str(out))
    assert output.count('Resuming from {} (epoch 1, iteration 4)'.format(
        out / 'snapshot_iter_4')) == 1, output
    assert files_under(tmp_path) == ['result/accuracy.png', 'result/log', 'result/loss.png',
                                     'result/snapshot_iter_8'], output
    resumed = read_log(out)
    assert resumed[:2] == log
    assert [(e['epoch'], e['iteration']) for e in resumed] == [(0, 0), (1, 4), (2, 8)]
    with np.load(str(out / 'snapshot_iter_8')) as snapshot:
        assert snapshot['updater/optimizer:main/t'] == 8
    # As if it had never stopped.
    assert_same_training(out, straight_run)


def test_example_on_two_ranks_leaves_a_file_named_like_a_snapshot_alone(tmp_path,
                                                                       dataset_root):
    out = tmp_path / 'result'
    run_example('--epoch', '1', '--out', str(out))
    (out / 'snapshot_iter_4.bak').write_text('mine')
    run_example('--epoch', '2', '--out', str(out), '--resume', str(out))
    assert (out / 'snapshot_iter_4.bak').read_text() == 'mine'
    assert sorted(name for name in os.listdir(str(out)) if name.startswith('snapshot')) == [
        'snapshot_iter_4.bak', 'snapshot_iter_8']


def test_example_resumes_exactly_from_the_middle_of_an_epoch(tmp_path, dataset_root,
                                                             straight_run):
    out = tmp_path / 'result'
    output = run_example('--epoch', '1', '--snapshot-every', '3', '--out', str(out))
    assert files_under(tmp_path) == ['result/accuracy.png', 'result/log', 'result/loss.png',
                                     'result/snapshot_iter_3'], output
    output = run_example('--epoch', '2', '--out', str(out), '--resume', str(out))
    assert output.count('Resuming from {} (epoch 0, iteration 3)'.format(
        out / 'snapshot_iter_3')) == 1, output
    assert_same_training(out, straight_run)


def test_example_mistake_found_on_rank_0_ends_every_rank(tmp_path, dataset_root):
    # Rank 0 alone reads the dataset; the other rank must not wait for it forever.
    rc, output = run_under_mpi([EXAMPLE, '--communicator', 'naive', '--train-size', '4001',
                                '--out', str(tmp_path / 'out')], timeout=60)
    assert rc == 2, output
    message = 'train_mnist3_multi.py: error: --train-size 4001 is more than the 4000 images'
    assert output.count(message) == 1, output
    assert 'Traceback' not in output, output
    assert not (tmp_path / 'out').exists()


def test_example_resumed_on_another_number_of_processes_is_refused(tmp_path, dataset_root,
                                                                   straight_run):
    out = tmp_path / 'result'
    run_example('--epoch', '1', '--out', str(out))
    rc, output = run_under_mpi([EXAMPLE, '--epoch', '2', '--resume', str(out), '--out', str(out)]
                               + EXAMPLE_QUICK, n_processes=1, timeout=60)
    assert rc == 2, output
    assert output.count('error: cannot resume from {}: it was trained with mpiexec -n 2, this '
                        'run has mpiexec -n 1'.format(out / 'snapshot_iter_4')) == 1, output
    assert files_under(out) == ['accuracy.png', 'log', 'loss.png', 'snapshot_iter_4'], output


def test_example_without_mpiexec_is_one_line(tmp_path):
    env = {name: value for name, value in os.environ.items()
           if name not in multi.MPI_LAUNCHER_VARIABLES}
    result = subprocess.run([sys.executable, EXAMPLE, '--out', str(tmp_path / 'out')],
                            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stdout == ''
    assert result.stderr.count('\n') == 1, result.stderr
    assert result.stderr.startswith('train_mnist3_multi.py: error: this script trains on the '
                                    'processes that an MPI launcher starts')
    assert 'mpiexec -n N python {} ...'.format(EXAMPLE) in result.stderr
    assert 'or train_mnist3.py to train in one process' in result.stderr
    assert not (tmp_path / 'out').exists()


def test_example_without_mpi4py_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('OMPI_COMM_WORLD_SIZE', '2')  # as if mpiexec had started it
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda name, *args: None if name == 'mpi4py' else find_spec(name, *args))
    status = multi.main(['--out', str(tmp_path / 'out')])
    out, err = capsys.readouterr()
    assert status == 2
    assert out == ''
    assert err.count('\n') == 1, err
    assert "error: ChainerMN needs mpi4py: pip install -e '.[mpi]'" in err
    assert 'apt-get install openmpi-bin libopenmpi-dev' in err
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('args, message', [
    (['--communicator', 'nccl'], "argument --communicator: invalid choice: 'nccl' (choose "
     "from 'naive', 'flat', 'non_cuda_aware', 'pure_nccl')"),
    (['--compare'], 'unrecognized arguments: --compare'),
    # Found before MPI is started, so no rank waits for another.
    (['--communicator', 'pure_nccl'], '--communicator pure_nccl needs GPUs (--device 0'),
    (['--communicator', 'flat', '--device', '@numpy'], '--communicator flat needs GPUs'),
])
def test_example_mistakes_before_mpi_are_one_line(tmp_path, capsys, args, message):
    try:
        status = multi.main(args + ['--out', str(tmp_path / 'out')])
    except SystemExit as e:
        status = e.code
    err = capsys.readouterr().err
    assert status == 2
    assert err.count('\n') == 1, err
    assert message in err
    assert not (tmp_path / 'out').exists()


class FourRanks(object):
    rank, size = 0, 4


def test_the_ranks_split_a_minibatch_evenly(tmp_path):
    args = multi.parse_args(['--batchsize', '10', '--out', str(tmp_path / 'out')])
    with pytest.raises(utils.UsageError, match='--batchsize 10 does not split evenly '
                       'among 4 processes: pass a multiple of 4'):
        multi.prepare(args, FourRanks())
    assert not (tmp_path / 'out').exists()
