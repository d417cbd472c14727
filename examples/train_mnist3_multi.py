#!/usr/bin/env python
"""train_mnist3.py on the processes that an MPI launcher starts, with ChainerMN.

    mpiexec -n 2 python train_mnist3_multi.py --dataset mnist-5k --out result/mpi

Every process (rank) trains a copy of the model on its share of the data and
of each minibatch, and the ranks average their gradients. Rank 0 alone checks
the files, reads the data, prints and writes. See docs/multi-process.md.
"""

import importlib.util
import os
import sys
import warnings

import chainer
import chainermn  # imports no MPI: create_communicator imports mpi4py
import mnist3_utils as utils
import numpy
import train_mnist3
from chainer import training
from chainer.training import extensions

# ChainerMN 7.8.1's communicators, less 'dummy', which averages nothing. Only 'naive'
# works on NumPy arrays: the others pack the gradients into CuPy buffers or use NCCL.
COMMUNICATORS = ('naive', 'flat', 'non_cuda_aware', 'pure_nccl')
CPU_COMMUNICATORS = ('naive',)
# Set in every process that Open MPI's mpiexec, Hydra (MPICH, Intel MPI) or PMIx starts.
MPI_LAUNCHER_VARIABLES = ('OMPI_COMM_WORLD_SIZE', 'PMI_SIZE', 'PMIX_RANK')


def train(args, comm, train_set, val_set, settings, plots, folder=None, snapshot=None):
    """Trains this rank's share; returns the log on rank 0, ``None`` elsewhere."""
    model = train_mnist3.build_model(args, args.dense)
    model.to_device(args.device)
    args.device.use()
    optimizer = chainermn.create_multi_node_optimizer(chainer.optimizers.Adam(), comm)
    optimizer.setup(model)
    # The first update of a multi-node optimizer only broadcasts rank 0's parameters;
    # done here, every minibatch of the trainer is a step.
    optimizer.update()

    batchsize = args.batchsize // comm.size
    train_iter = utils.ShuffledIterator(train_set, batchsize, args.seed)
    test_iter = chainer.iterators.SerialIterator(val_set, batchsize,
                                                 repeat=False, shuffle=False)
    updater = training.updaters.StandardUpdater(train_iter, optimizer, device=args.device)
    trainer = training.Trainer(updater, (args.epoch, 'epoch'), out=args.out)
    evaluator = extensions.Evaluator(test_iter, model, device=args.device)
    trainer.extend(chainermn.create_multi_node_evaluator(evaluator, comm),
                   call_before_training=True)
    if comm.rank == 0:
        train_mnist3.extend_reports(trainer, args, settings, plots,
                                    replaces=folder.continued)
    else:
        trainer.extend(utils.TrainingSettings(settings))
    if snapshot is not None:
        together(comm, utils.resume, trainer, *snapshot)
        if comm.rank == 0:
            print('Resuming from {} (epoch {}, iteration {})'.format(
                snapshot[0], updater.epoch, updater.iteration))
    together(comm, folder and folder.take)
    trainer.run()
    return trainer.get_extension('LogReport').log if comm.rank == 0 else None


def prepare(args, comm):
    """Rank 0's part: checks --resume and --out, reads the data and prints the settings."""
    if args.batchsize % comm.size:
        raise utils.UsageError('--batchsize {} does not split evenly among {} processes: '
                               'pass a multiple of {}'.format(args.batchsize, comm.size,
                                                              comm.size))
    path = None if args.resume is None else utils.find_snapshot(args.resume)
    snapshot = None if path is None else (path, utils.read_snapshot(path))
    folder = utils.ResultFolder(args.out, train_mnist3.RESULTS, overwrite=args.overwrite,
                                resume_from=path)
    train_set, val_set = utils.load_datasets(args)
    settings = dict(train_mnist3.settings(args, train_set, val_set, args.dense),
                    **{'mpiexec -n': comm.size})
    # As chainermn.scatter_dataset splits them.
    shares = [-(-len(dataset) // comm.size) for dataset in (train_set, val_set)]
    train_mnist3.print_settings(
        args, len(train_set), len(val_set), train_mnist3.describe_l2(args, args.dense), [
            '# communicator: {}, {} processes, each with {} images of every minibatch, {} '
            'training and {} validation images'.format(
                args.communicator, comm.size, args.batchsize // comm.size, *shares)]
        + ([] if args.device.xp is numpy else
           ['# each process uses the GPU of its rank within its node']))
    return train_set, val_set, snapshot, folder, settings


def run(args):
    comm = create_communicator(args)
    if isinstance(args.device, chainer.backend.GpuDevice):
        args.device = together(comm, utils.device, '@cupy:{}'.format(comm.intra_rank))
    train_set, val_set, snapshot, folder, settings = (
        together(comm, prepare, args, comm, only_rank_0=True) or (None,) * 5)
    # The training images are shuffled from --seed before they are split, so every
    # start of the run, resumed or not, gives each rank the same share.
    train_set = chainermn.scatter_dataset(train_set, comm, shuffle=True, seed=args.seed)
    val_set = chainermn.scatter_dataset(val_set, comm)
    snapshot, settings = comm.bcast_obj([snapshot, settings] if comm.rank == 0 else None)
    plots = comm.rank == 0 and utils.plots_available()
    log = train(args, comm, train_set, val_set, settings, plots, folder, snapshot)
    if comm.rank == 0:
        print(utils.final_figures(log))
        print('Results in {}: {}'.format(args.out, ', '.join(folder.find())))


def create_communicator(args):
    """ChainerMN's communicator over this MPI job, or a one-line refusal before MPI starts.

    Started without an MPI launcher, mpi4py would make this process a job of
    its own, which would train alone where the user meant several.
    """
    name = args.communicator
    if not isinstance(args.device, chainer.backend.GpuDevice):
        if args.device.xp is not numpy:
            raise utils.UsageError('--communicator trains on the CPU (--device -1) or on GPUs '
                                   '(--device 0), not on --device {}'.format(args.device))
        if name not in CPU_COMMUNICATORS:
            raise utils.UsageError(
                '--communicator {} needs GPUs (--device 0, and every process uses the GPU of '
                'its rank within its node); on the CPU, use {}'.format(
                    name, ' or '.join(CPU_COMMUNICATORS)))
    if not any(variable in os.environ for variable in MPI_LAUNCHER_VARIABLES):
        raise utils.UsageError(
            'this script trains on the processes that an MPI launcher starts, and this one '
            'was not started by one (none of {} is set): run mpiexec -n N python {} ..., or '
            'train_mnist3.py to train in one process'.format(
                ', '.join(MPI_LAUNCHER_VARIABLES), sys.argv[0]))
    if importlib.util.find_spec('mpi4py') is None:
        raise utils.UsageError("ChainerMN needs mpi4py: pip install -e '.[mpi]', after "
                               'installing an MPI (Debian/Ubuntu: apt-get install openmpi-bin '
                               'libopenmpi-dev); see docs/multi-process.md')
    # Without the hook, a rank that dies of an exception can leave the others waiting
    # forever; with it, the job is aborted. CHAINERMN_FORCE_ABORT_ON_EXCEPTION may have
    # added it already, which add_hook would warn of on every rank.
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        chainermn.global_except_hook.add_hook()
    try:
        return chainermn.create_communicator(name)
    except ImportError as e:  # mpi4py without the MPI library it was built for
        raise utils.UsageError('--communicator {}: {}'.format(name, ' '.join(str(e).split()))) \
            from None


class ReportedElsewhere(Exception):
    """A mistake that rank 0 reports; this rank exits with status 2 quietly."""


def together(comm, function, *args, only_rank_0=False):
    """``function(*args)`` on every rank (or rank 0 alone); a mistake on any ends them all.

    Otherwise the other ranks would wait for the failed one forever in their
    next collective call. Rank 0 reports the first mistake in one line; the
    others raise :class:`ReportedElsewhere`. ``function=None`` does nothing.
    """
    result = error = None
    if function is not None and (comm.rank == 0 or not only_rank_0):
        try:
            result = function(*args)
        except utils.UsageError as e:
            error = e
    messages = comm.gather_obj(None if error is None else str(error))
    failures = comm.bcast_obj(None if comm.rank != 0 else [
        (rank, message) for rank, message in enumerate(messages) if message is not None])
    if failures and comm.rank != 0:
        raise ReportedElsewhere(failures[0][1])
    if failures:
        raise error or utils.UsageError('on rank {}: {}'.format(*failures[0]))
    return result


def parse_args(argv=None):
    parser = train_mnist3.make_parser('Chainer example: MNIST with a shared-weight second '
                                      'layer, on several processes (ChainerMN)')
    parser.add_argument('--communicator', choices=COMMUNICATORS, default='naive',
                        help='ChainerMN communicator: naive on the CPU; pure_nccl (or naive, '
                        'flat, non_cuda_aware) on GPUs, each process using the GPU of its '
                        'rank within its node; --batchsize is split among the processes '
                        '(default: naive)')
    return train_mnist3.check_args(parser, parser.parse_args(argv))


def main(argv=None):
    try:
        # Ctrl-C goes on to ChainerMN's hook, which ends every rank.
        return utils.exit_status(run, parse_args(argv), catch_interrupt=False)
    except ReportedElsewhere:
        return 2


if __name__ == '__main__':
    sys.exit(main())
