#!/usr/bin/env python
"""Chainer's MNIST example with a second layer that shares its weight.

The 2016 experiment behind chainer_sharedlinear: Chainer's MNIST multi-layer
perceptron with ``l2`` replaced by a layer whose weight of shape
``(900, 1000 / 10)`` serves all ten blocks of its 1000 inputs::

    l1 = L.Linear(784, 1000)
    l2 = SharedLinear(1000, 900, n_shared=10, nobias=True)
    l3 = L.Linear(900, 10)

``--dense`` trains the same network with ``L.Linear(1000, 900, nobias=True)``
as ``l2`` (the baseline) and ``--compare`` trains both. See docs/example.md.

``--communicator NAME`` trains on several processes with ChainerMN, started as
``mpiexec -n N python train_mnist3.py --communicator naive ...``. See
docs/multi-process.md.
"""

import argparse
import ctypes
import functools
import importlib.util
import io
import os
import re
import shutil
import sys
import warnings
import zipfile

import chainer
import chainer.functions as F
import chainer.links as L
import chainermn  # imports no MPI: mpi4py is imported by create_communicator only
import mnist_data
import numpy
from chainer import serializers, training
from chainer.training import extensions

from chainer_sharedlinear import SharedLinear

SNAPSHOT_PREFIX = 'snapshot_iter_'
PLOTS = ('loss.png', 'accuracy.png')
COMPARE_PLOT = 'compare.png'
# What a run writes into --out, and so what --overwrite replaces.
RESULT_NAMES = ('log',) + PLOTS + (COMPARE_PLOT, 'shared', 'dense')

# The communicators ChainerMN 7.8.1 creates, less 'dummy', which averages
# nothing. Only 'naive' runs on NumPy arrays: the others pack the gradients
# into CuPy buffers ('flat', 'non_cuda_aware') or use NCCL ('pure_nccl').
COMMUNICATORS = ('naive', 'flat', 'non_cuda_aware', 'pure_nccl')
CPU_COMMUNICATORS = ('naive',)
# Set in every process that an MPI launcher starts: by Open MPI's mpiexec, by
# Hydra (MPICH, Intel MPI, MVAPICH) and by PMIx launchers (Slurm, Open MPI 5).
MPI_LAUNCHER_VARIABLES = ('OMPI_COMM_WORLD_SIZE', 'PMI_SIZE', 'PMIX_RANK')


class UsageError(Exception):
    """A mistake in the command line or its files, reported in one line."""


class FailedOnAnotherRank(Exception):
    """A mistake found on every rank, which rank 0 alone reports."""


class MLP(chainer.Chain):
    """``n_in -> n_units -> n_out_units -> n_out``, with ReLU in between.

    ``l2`` has no bias and shares its weight across ``n_shared`` blocks of
    its input; with ``n_shared=None`` it is a plain ``L.Linear`` instead.
    """

    def __init__(self, n_in, n_units, n_out_units, n_out, n_shared=None):
        super().__init__()
        with self.init_scope():
            self.l1 = L.Linear(n_in, n_units)
            if n_shared is None:
                self.l2 = L.Linear(n_units, n_out_units, nobias=True)
            else:
                self.l2 = SharedLinear(n_units, n_out_units, n_shared=n_shared, nobias=True)
            self.l3 = L.Linear(n_out_units, n_out)

    def forward(self, x):
        h1 = F.relu(self.l1(x))
        h2 = F.relu(self.l2(h1))
        return self.l3(h2)


class ArgumentParser(argparse.ArgumentParser):
    """Reports a mistake in one line, without the usage that ``--help`` shows."""

    def error(self, message):
        self.exit(2, '{}: error: {} (see --help)\n'.format(self.prog, message))


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError('expected a positive integer, got {!r}'.format(text))
    return value


def seed(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2 ** 32:
        raise argparse.ArgumentTypeError(
            'expected an integer from 0 to 2**32 - 1, got {!r}'.format(text))
    return value


def make_parser():
    parser = ArgumentParser(
        description='Chainer example: MNIST with a shared-weight second layer')
    parser.add_argument('--batchsize', '-b', type=positive_int, default=100,
                        help='Number of images in each mini-batch (default: 100)')
    parser.add_argument('--epoch', '-e', type=positive_int, default=20,
                        help='Number of sweeps over the dataset to train (default: 20)')
    parser.add_argument('--device', '-d', type=str, default='-1',
                        help='Device specifier: -1 or @numpy for the CPU, 0 or @cupy:0 '
                        'for the first GPU (default: -1)')
    parser.add_argument('--out', '-o', default='result',
                        help='Directory to output the result (default: result)')
    parser.add_argument('--resume', '-r', metavar='SNAPSHOT',
                        help='Resume the training from a snapshot, or from the latest '
                        'snapshot in a directory')
    parser.add_argument('--overwrite', action='store_true',
                        help='Replace the results of an earlier run in --out')
    parser.add_argument('--seed', type=seed, default=0,
                        help='Seed of the initial weights and of the order of the '
                        'examples; the same seed gives the same results on the CPU '
                        '(default: 0)')
    model = parser.add_argument_group('model')
    model.add_argument('--unit', '-u', type=positive_int, default=1000,
                       help='Number of units of the first hidden layer (default: 1000)')
    model.add_argument('--out-units', type=positive_int, default=900,
                       help='Number of units of the second hidden layer (default: 900)')
    model.add_argument('--shared', type=positive_int,
                       help='Number of blocks of the first hidden layer that share the '
                       'weight of l2; it must divide --unit; 1 means no sharing '
                       '(default: 10)')
    modes = model.add_mutually_exclusive_group()
    modes.add_argument('--dense', action='store_true',
                       help='Train the baseline: l2 is L.Linear, nothing shared')
    modes.add_argument('--compare', action='store_true',
                       help='Train the shared and the dense network one after the other '
                       '(into --out/shared and --out/dense) and print a table of both')
    parallel = parser.add_argument_group('several processes (ChainerMN)')
    parallel.add_argument('--communicator', choices=COMMUNICATORS,
                          help='Train on the processes that mpiexec starts, with this '
                          'ChainerMN communicator: naive on the CPU; pure_nccl (or naive, '
                          'flat, non_cuda_aware) on GPUs, each process using the GPU of '
                          'its rank within its node; --batchsize is then split among the '
                          'processes (default: one process, no MPI)')
    data = parser.add_argument_group('data')
    data.add_argument('--dataset', default='mnist-5k', choices=mnist_data.DATASETS,
                      help='mnist: the 60,000 + 10,000 MNIST digits, downloaded once; '
                      'mnist-5k: 5,000 MNIST digits that ship with the example (4,000 '
                      'to train, 1,000 to validate); fashion-mnist: read from --data-dir, '
                      'by default {} (Debian package dataset-fashion-mnist) '
                      '(default: mnist-5k)'.format(mnist_data.FASHION_MNIST_DIR))
    data.add_argument('--data-dir', metavar='DIR',
                      help='Read the dataset from this directory: the four IDX files '
                      '(.gz or not) for mnist and fashion-mnist, {} for mnist-5k'.format(
                          mnist_data.MNIST_5K_FILE))
    data.add_argument('--mirror', metavar='URL', action='append',
                      help='Download MNIST from this base URL instead of the default '
                      'mirrors; repeat it to try several in order')
    data.add_argument('--train-size', type=positive_int, metavar='N',
                      help='Train on the first N training images only (a quick run)')
    data.add_argument('--val-size', type=positive_int, metavar='N',
                      help='Validate on the first N validation images only')
    return parser


def parse_args(argv=None):
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.dense and args.shared is not None:
        parser.error('--dense trains l2 without sharing: it takes no --shared')
    if args.shared is None:
        args.shared = 10
    if args.unit % args.shared:
        parser.error('--unit {} is not divisible by --shared {}: the {} units must split '
                     'into {} equal blocks'.format(args.unit, args.shared, args.unit,
                                                   args.shared))
    if args.compare and args.resume:
        parser.error('--compare starts both runs afresh: it takes no --resume')
    if args.compare and args.communicator:
        parser.error('--compare times two runs on one process: it takes no --communicator')
    if args.mirror and (args.dataset != 'mnist' or args.data_dir):
        parser.error('--mirror is for downloading --dataset mnist, without --data-dir')
    return args


def get_device(spec):
    try:
        return chainer.get_device(spec)
    except (ValueError, RuntimeError, TypeError) as e:
        raise UsageError('--device {}: {}'.format(spec, ' '.join(str(e).split()))) from None


def load_dataset(args):
    """The training and validation sets as ``TupleDataset``s of float32 images, int32 labels."""
    mirrors = args.mirror or mnist_data.MNIST_MIRRORS
    train_raw, val_raw = mnist_data.load(args.dataset, args.data_dir, mirrors=mirrors)
    for option, size, (images, _) in (('--train-size', args.train_size, train_raw),
                                      ('--val-size', args.val_size, val_raw)):
        if size is not None and size > len(images):
            raise UsageError('{} {} is more than the {} images {} has'.format(
                option, size, len(images), args.dataset))
    return (mnist_data.as_dataset(*train_raw, size=args.train_size),
            mnist_data.as_dataset(*val_raw, size=args.val_size))


def build_model(args, n_in, dense):
    """The classifier to train, with its initial weights drawn from ``args.seed``."""
    numpy.random.seed(args.seed)
    return L.Classifier(MLP(n_in, args.unit, args.out_units, mnist_data.N_CLASSES,
                            n_shared=None if dense else args.shared))


def batchsize_per_rank(args, comm=None):
    return args.batchsize if comm is None else args.batchsize // comm.size


def build_trainer(args, model, train_set, val_set, device, out, comm=None):
    """A trainer of ``model`` with Adam, validated on ``val_set`` after every epoch.

    With a ChainerMN communicator ``comm``, ``train_set`` and ``val_set`` are
    this rank's shares, every rank takes its share of each minibatch, the
    gradients are averaged across the ranks before each step and so are the
    validation figures.
    """
    optimizer = chainer.optimizers.Adam()
    if comm is not None:
        optimizer = chainermn.create_multi_node_optimizer(optimizer, comm)
    optimizer.setup(model)

    batchsize = batchsize_per_rank(args, comm)
    order = chainer.iterators.ShuffleOrderSampler(numpy.random.RandomState(args.seed))
    train_iter = chainer.iterators.SerialIterator(train_set, batchsize, order_sampler=order)
    val_iter = chainer.iterators.SerialIterator(val_set, batchsize, repeat=False,
                                                shuffle=False)
    updater = training.updaters.StandardUpdater(train_iter, optimizer, device=device)
    trainer = training.Trainer(updater, (args.epoch, 'epoch'), out=out)
    evaluator = extensions.Evaluator(val_iter, model, device=device)
    if comm is not None:
        evaluator = chainermn.create_multi_node_evaluator(evaluator, comm)
    trainer.extend(evaluator, call_before_training=True)
    return trainer


def extend_reports(trainer, plots, iterations_per_epoch):
    """Adds what a user sees and keeps: snapshots, the log, plots, progress."""
    # One snapshot, the latest, is kept: each holds the model and Adam's state.
    # Uncompressed: trained float32 weights shrink by only about 12% in zlib,
    # which took 0.46 s of each 1 s dense epoch on mnist-5k (measured).
    trainer.extend(extensions.snapshot(filename=SNAPSHOT_PREFIX + '{.updater.iteration}',
                                       savefun=functools.partial(serializers.save_npz,
                                                                 compression=False),
                                       n_retains=1),
                   trigger=(1, 'epoch'))
    trainer.extend(extensions.LogReport(), call_before_training=True)
    if plots:
        trainer.extend(extensions.PlotReport(['main/loss', 'validation/main/loss'], 'epoch',
                                             file_name=PLOTS[0]),
                       call_before_training=True)
        trainer.extend(extensions.PlotReport(['main/accuracy', 'validation/main/accuracy'],
                                             'epoch', file_name=PLOTS[1]),
                       call_before_training=True)
    trainer.extend(extensions.PrintReport(
        ['epoch', 'main/loss', 'validation/main/loss',
         'main/accuracy', 'validation/main/accuracy', 'elapsed_time']),
        call_before_training=True)
    trainer.extend(extensions.ProgressBar(update_interval=max(1, min(10, iterations_per_epoch))))


def plots_available():
    try:
        import matplotlib
    except ImportError:
        print('matplotlib is not installed, so there will be no plots: '
              "pip install -e '.[examples]'", file=sys.stderr)
        return False
    matplotlib.use('Agg')  # files only, no display needed
    return True


def find_snapshot(path):
    """``path`` if it is a file, else the snapshot of the latest iteration in it."""
    if os.path.isdir(path):
        iterations = {}
        for name in os.listdir(path):
            match = re.fullmatch(re.escape(SNAPSHOT_PREFIX) + r'(\d+)', name)
            if match:
                iterations[int(match.group(1))] = name
        if not iterations:
            raise UsageError('--resume {}: no {}N snapshot in that directory'.format(
                path, SNAPSHOT_PREFIX))
        return os.path.join(path, iterations[max(iterations)])
    if not os.path.isfile(path):
        raise UsageError('--resume {}: no such snapshot file or directory'.format(path))
    return path


def earlier_results(out):
    """The names in ``out`` that a run of this script would write."""
    if not os.path.isdir(out):
        return []
    return sorted(name for name in os.listdir(out)
                  if name in RESULT_NAMES or name.startswith(SNAPSHOT_PREFIX))


def claim_out_dir(args, resume_path):
    """The earlier results in ``args.out`` that this run may replace.

    Resuming from a snapshot in ``args.out`` continues that run there, and
    replaces nothing. Other results are replaced only with ``--overwrite`` or
    when the user, asked in a terminal, says so; otherwise this raises.
    """
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError('--out {} is a file, not a directory'.format(args.out))
    found = earlier_results(args.out)
    if not found:
        return []
    if resume_path is not None and \
            os.path.samefile(os.path.dirname(os.path.abspath(resume_path)), args.out):
        return []
    if args.overwrite:
        return found
    listing = ', '.join(found)
    if not sys.stdin.isatty():
        raise UsageError('{} already holds the results of a run ({}): pass --overwrite to '
                         'replace them, --resume {} to continue that run, or another '
                         '--out'.format(args.out, listing, args.out))
    try:
        answer = input('{} already holds the results of a run ({}). Replace them? '
                       '[y/N] '.format(args.out, listing))
    except EOFError:
        answer = ''
    if answer.strip().lower() not in ('y', 'yes'):
        raise UsageError('nothing done: {} is left as it was'.format(args.out))
    return found


def remove_results(out, names):
    for name in names:
        path = os.path.join(out, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def resume(trainer, path, content=None):
    """Loads the snapshot at ``path``, or ``content``, the bytes read from there."""
    try:
        chainer.serializers.load_npz(path if content is None else io.BytesIO(content), trainer)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise UsageError('cannot resume from {}: it does not fit this model and these '
                         'options ({})'.format(path, ' '.join(str(e).split()))) from None


def train(args, train_set, val_set, device, out, dense=False, resume_path=None, plots=True,
          comm=None, snapshot=None):
    """Trains one network into ``out``; returns its log and its number of parameters.

    With a communicator ``comm``, every rank calls this with its share of the
    data and, to resume, ``snapshot``: the bytes of ``resume_path`` as rank 0
    read them. Only rank 0 reports and writes; the other ranks return no log.
    """
    model = build_model(args, train_set[0][0].size, dense)
    model.to_device(device)
    device.use()
    trainer = build_trainer(args, model, train_set, val_set, device, out, comm)
    is_root = comm is None or comm.rank == 0
    if is_root:
        extend_reports(trainer, plots, -(-len(train_set) // batchsize_per_rank(args, comm)))
    if resume_path is not None:
        if comm is None:
            resume(trainer, resume_path)
        else:
            # Every rank needs the weights and Adam's state. All load the same
            # bytes, so all fail or none, and rank 0 alone says so.
            error = None
            try:
                resume(trainer, resume_path, snapshot)
            except UsageError as e:
                error = e
            fail_together(comm, error)
        if is_root:
            print('Resuming from {} (epoch {}, iteration {})'.format(
                resume_path, trainer.updater.epoch, trainer.updater.iteration))
    if comm is not None:
        # The first update of ChainerMN's multi-node optimizer only broadcasts
        # rank 0's parameters, without a step; done here, the first minibatch
        # of the trainer trains as every other does.
        trainer.updater.get_optimizer('main').update()
    trainer.run()
    n_params = sum(param.size for param in model.params())
    log = trainer.get_extension('LogReport').log if is_root else None
    return log, n_params


def describe_l2(args, dense):
    if dense:
        return 'L.Linear({}, {}, nobias=True)'.format(args.unit, args.out_units)
    return 'SharedLinear({}, {}, n_shared={}, nobias=True)'.format(
        args.unit, args.out_units, args.shared)


def seconds_per_epoch(log):
    first, last = log[0], log[-1]
    if last['epoch'] == first['epoch']:
        return float('nan')
    return (last['elapsed_time'] - first['elapsed_time']) / (last['epoch'] - first['epoch'])


def summarize(log, out):
    last = log[-1]
    print('Final validation accuracy: {:.4f} (epoch {}, validation loss {:.4f}; '
          '{:.2f} s per epoch)'.format(last['validation/main/accuracy'], last['epoch'],
                                       last['validation/main/loss'], seconds_per_epoch(log)))
    print('Results in {}: {}'.format(out, ', '.join(earlier_results(out))))


def comparison_table(rows):
    """A Markdown table of ``(name, l2, n_params, log)`` rows."""
    lines = ['| model | l2 | parameters | s/epoch | train loss | train acc. '
             '| val. loss | val. acc. |',
             '|---|---|---:|---:|---:|---:|---:|---:|']
    for name, l2, n_params, log in rows:
        last = log[-1]
        lines.append('| {} | `{}` | {:,} | {:.3g} | {:.4f} | {:.4f} | {:.4f} | {:.4f} |'.format(
            name, l2, n_params, seconds_per_epoch(log), last['main/loss'],
            last['main/accuracy'], last['validation/main/loss'],
            last['validation/main/accuracy']))
    return '\n'.join(lines)


def plot_comparison(rows, path, title):
    """Loss and accuracy of every model, train and validation, side by side."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.5))
    for index, (metric, legend_at) in enumerate((('loss', 'upper right'),
                                                 ('accuracy', 'lower right'))):
        axes = figure.add_subplot(1, 2, index + 1)
        for (name, _, _, log), color in zip(rows, ('C0', 'C1')):
            for key, style, what in (('validation/main/' + metric, '-', 'validation'),
                                     ('main/' + metric, '--', 'train')):
                points = [(entry['epoch'], entry[key]) for entry in log if key in entry]
                if points:
                    epochs, values = zip(*points)
                    axes.plot(epochs, values, style, color=color, marker='.',
                              label='{} ({})'.format(name, what))
        axes.set_xlabel('epoch')
        axes.set_ylabel(metric)
        axes.grid()
        axes.legend(loc=legend_at)
    figure.suptitle(title, fontsize=9)
    figure.savefig(path, bbox_inches='tight')


def compare(args, train_set, val_set, device, plots):
    rows = []
    for name, dense in (('shared', False), ('dense', True)):
        print('== {}: l2 = {}'.format(name, describe_l2(args, dense)))
        # No plots while training: matplotlib takes 0.1-0.2 s per epoch for either
        # model, as long as an mnist-5k epoch itself, and would blur the timing.
        # Both models are drawn together once they are done.
        log, n_params = train(args, train_set, val_set, device, os.path.join(args.out, name),
                              dense=dense, plots=False)
        rows.append((name, describe_l2(args, dense), n_params, log))
    title = '{} epochs of {} ({} training, {} validation images), seed {}, device {}'.format(
        args.epoch, args.dataset, len(train_set), len(val_set), args.seed, device)
    print()
    print(title + ':')
    print(comparison_table(rows))
    print('s/epoch: training, validation, snapshot and log of one epoch (no plots).')
    if plots:
        plot_comparison(rows, os.path.join(args.out, COMPARE_PLOT), title)
        print('Plot of the loss and accuracy curves: {}'.format(
            os.path.join(args.out, COMPARE_PLOT)))


def keep_freed_memory():
    """Has glibc's malloc keep freed memory for the next iteration.

    Every iteration allocates NumPy arrays of the same sizes again. With
    glibc's adaptive defaults, the shared model's arrays (a few hundred kB)
    were mapped afresh or the heap trimmed after they were freed, so each
    iteration page-faulted on new memory: 740,000 faults in 6 epochs of
    mnist-5k, 0.49 s per epoch instead of 0.28 s (dense: 0.50 s instead of
    0.47 s). Fixed thresholds let one iteration reuse the memory of the last;
    the process keeps up to 256 MiB it no longer uses. Nothing changes where
    the C library is not glibc, or where MALLOC_MMAP_THRESHOLD_ or
    MALLOC_TRIM_THRESHOLD_ already say what the user wants.
    """
    if not sys.platform.startswith('linux') or any(
            name in os.environ
            for name in ('MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_')):
        return
    mallopt = getattr(ctypes.CDLL(None), 'mallopt', None)
    if mallopt is None:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    # Both, as setting either one alone freezes the other at its default.
    mallopt(m_mmap_threshold, 32 * 2 ** 20)  # the most glibc accepts
    mallopt(m_trim_threshold, 256 * 2 ** 20)


def check_multi_node_device(args, device):
    """Whether the ranks train on GPUs; raises if ``--communicator`` cannot use ``device``."""
    if isinstance(device, chainer.backend.GpuDevice):
        return True
    if device.xp is not numpy:
        raise UsageError('--communicator trains on the CPU (--device -1) or on GPUs '
                         '(--device 0), not on --device {}'.format(args.device))
    if args.communicator not in CPU_COMMUNICATORS:
        raise UsageError('--communicator {} needs GPUs (--device 0, and every process uses '
                         'the GPU of its rank within its node); on the CPU, use {}'.format(
                             args.communicator, ' or '.join(CPU_COMMUNICATORS)))
    return False


def create_communicator(name):
    """A ChainerMN communicator over the processes of this MPI job.

    Started without an MPI launcher, mpi4py would make this process an MPI
    job of its own, which would train alone while the user meant several;
    that, and a missing mpi4py, are stopped here with one line instead.
    """
    if not any(variable in os.environ for variable in MPI_LAUNCHER_VARIABLES):
        raise UsageError('--communicator {} trains on the processes that an MPI launcher '
                         'starts, and this one was not started by one (none of {} is set): '
                         'run mpiexec -n N python {} --communicator {} ..., or leave out '
                         '--communicator to train in one process'.format(
                             name, ', '.join(MPI_LAUNCHER_VARIABLES),
                             sys.argv[0], name))
    if importlib.util.find_spec('mpi4py') is None:
        raise UsageError("--communicator needs mpi4py: pip install -e '.[mpi]', after "
                         'installing an MPI (Debian/Ubuntu: apt-get install openmpi-bin '
                         'libopenmpi-dev); see docs/multi-process.md')
    # Without the hook, a rank that dies of an exception can leave the others
    # waiting for it forever; with it, the whole job is aborted (MPI_Abort).
    # CHAINERMN_FORCE_ABORT_ON_EXCEPTION may have added it already, which
    # add_hook would warn of on every rank.
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        chainermn.global_except_hook.add_hook()
    try:
        return chainermn.create_communicator(name)
    except ImportError as e:  # mpi4py without the MPI library it was built for
        raise UsageError('--communicator {}: {}'.format(name, ' '.join(str(e).split()))) \
            from None


def fail_together(comm, error):
    """Makes every rank raise if ``error`` is not ``None`` on any rank.

    A rank that exits alone leaves the others waiting for it in their next
    collective call. So every rank calls this with its own ``error`` (or
    ``None``) and all learn of the first one: rank 0 raises it, to be
    reported in one line, and the others raise :class:`FailedOnAnotherRank`,
    to exit quietly with the same status.
    """
    messages = comm.gather_obj(None if error is None else str(error))
    failures = None
    if comm.rank == 0:
        failures = [(rank, message) for rank, message in enumerate(messages)
                    if message is not None]
    failures = comm.bcast_obj(failures)
    if not failures:
        return
    if comm.rank != 0:
        raise FailedOnAnotherRank(failures[0][1])
    if error is not None:
        raise error
    raise UsageError('on rank {}: {}'.format(*failures[0]))


def print_settings(args, device, n_train, n_val):
    print('Device: {}'.format(device))
    print('# dataset: {} ({} training, {} validation images)'.format(
        args.dataset, n_train, n_val))
    print('# unit: {}'.format(args.unit))
    print('# out-units: {}'.format(args.out_units))
    print('# l2: {}'.format('both (--compare)' if args.compare
                            else describe_l2(args, args.dense)))
    print('# Minibatch-size: {}'.format(args.batchsize))
    print('# epoch: {}'.format(args.epoch))
    print('# seed: {}'.format(args.seed))


def run(args):
    keep_freed_memory()
    device = get_device(args.device)
    if args.communicator is not None:
        run_multi_node(args, device)
        return
    resume_path = None if args.resume is None else find_snapshot(args.resume)
    replaced = claim_out_dir(args, resume_path)
    train_set, val_set = load_dataset(args)
    remove_results(args.out, replaced)

    print_settings(args, device, len(train_set), len(val_set))
    print('')

    plots = plots_available()
    if args.compare:
        compare(args, train_set, val_set, device, plots)
    else:
        log, _ = train(args, train_set, val_set, device, args.out, dense=args.dense,
                       resume_path=resume_path, plots=plots)
        summarize(log, args.out)


def run_multi_node(args, device):
    """``run`` on every rank of an MPI job: rank 0 alone reads, prints and writes."""
    on_gpus = check_multi_node_device(args, device)
    comm = create_communicator(args.communicator)
    is_root = comm.rank == 0
    train_set = val_set = resume_path = snapshot = None
    error = None
    try:
        if on_gpus:
            device = get_device('@cupy:{}'.format(comm.intra_rank))
        if is_root:
            if args.batchsize % comm.size:
                raise UsageError('--batchsize {} does not split evenly among {} processes: '
                                 'pass a multiple of {}'.format(args.batchsize, comm.size,
                                                                 comm.size))
            resume_path = None if args.resume is None else find_snapshot(args.resume)
            replaced = claim_out_dir(args, resume_path)
            train_set, val_set = load_dataset(args)
            if resume_path is not None:
                with open(resume_path, 'rb') as f:
                    snapshot = f.read()
            remove_results(args.out, replaced)
    except (UsageError, mnist_data.DatasetError) as e:
        error = e
    fail_together(comm, error)

    n_train, n_val = (len(train_set), len(val_set)) if is_root else (None, None)
    # Shuffled once, from the seed: the shares stay the same for the whole run.
    train_set = chainermn.scatter_dataset(train_set, comm, shuffle=True, seed=args.seed)
    val_set = chainermn.scatter_dataset(val_set, comm)
    resume_path, snapshot = comm.bcast_obj((resume_path, snapshot) if is_root else None)

    plots = False
    if is_root:
        print_settings(args, device, n_train, n_val)
        print('# communicator: {}, {} processes, each with {} images of every minibatch, '
              '{} training and {} validation images'.format(
                  args.communicator, comm.size, batchsize_per_rank(args, comm),
                  len(train_set), len(val_set)))
        if on_gpus:
            print('# each process uses the GPU of its rank within its node')
        print('')
        plots = plots_available()
    log, _ = train(args, train_set, val_set, device, args.out, dense=args.dense,
                   resume_path=resume_path, plots=plots, comm=comm, snapshot=snapshot)
    if is_root:
        summarize(log, args.out)


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except (UsageError, mnist_data.DatasetError) as e:
        print('{}: error: {}'.format(os.path.basename(sys.argv[0]), e), file=sys.stderr)
        return 2
    except FailedOnAnotherRank:
        return 2
    except KeyboardInterrupt:
        if args.communicator is not None:
            raise  # for ChainerMN's hook to abort the ranks that were not interrupted
        snapshots = [name for name in earlier_results(args.out)
                     if name.startswith(SNAPSHOT_PREFIX)]
        hint = '; --resume {} continues from the last epoch'.format(args.out) \
            if snapshots and not args.compare else ''
        print('\n{}: interrupted{}'.format(os.path.basename(sys.argv[0]), hint),
              file=sys.stderr)
        return 130
    return 0


if __name__ == '__main__':
    sys.exit(main())
