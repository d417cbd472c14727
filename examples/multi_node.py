"""Training on several processes with ChainerMN: the plumbing around the trainer.

An example started by ``mpiexec -n N`` runs in N processes (ranks). Rank 0
alone checks the command line's files, reads the data, prints and writes;
every rank trains on its share. A mistake found on any rank must end them all
at once, or the others would wait for it forever in their next collective
call: :func:`together` does that, and on a single process (``comm=None``)
just calls the function.
"""

import importlib.util
import os
import sys
import warnings

import chainer
import chainermn  # imports no MPI: mpi4py is imported by create_communicator only
import numpy
from command_line import ERRORS, ReportedElsewhere, UsageError, get_device

# The communicators ChainerMN 7.8.1 creates, less 'dummy', which averages
# nothing. Only 'naive' runs on NumPy arrays: the others pack the gradients
# into CuPy buffers ('flat', 'non_cuda_aware') or use NCCL ('pure_nccl').
COMMUNICATORS = ('naive', 'flat', 'non_cuda_aware', 'pure_nccl')
CPU_COMMUNICATORS = ('naive',)
# Set in every process that an MPI launcher starts: by Open MPI's mpiexec, by
# Hydra (MPICH, Intel MPI, MVAPICH) and by PMIx launchers (Slurm, Open MPI 5).
MPI_LAUNCHER_VARIABLES = ('OMPI_COMM_WORLD_SIZE', 'PMI_SIZE', 'PMIX_RANK')


def add_communicator_argument(parser):
    """Adds ``--communicator NAME``; without it, the example runs in one process."""
    parallel = parser.add_argument_group('several processes (ChainerMN)')
    parallel.add_argument('--communicator', choices=COMMUNICATORS,
                          help='Train on the processes that mpiexec starts, with this '
                          'ChainerMN communicator: naive on the CPU; pure_nccl (or naive, '
                          'flat, non_cuda_aware) on GPUs, each process using the GPU of '
                          'its rank within its node; --batchsize is then split among the '
                          'processes (default: one process, no MPI)')


def check_device(name, device, spec):
    """Raises unless communicator ``name`` can train on ``device`` (``--device spec``)."""
    if isinstance(device, chainer.backend.GpuDevice):
        return
    if device.xp is not numpy:
        raise UsageError('--communicator trains on the CPU (--device -1) or on GPUs '
                         '(--device 0), not on --device {}'.format(spec))
    if name not in CPU_COMMUNICATORS:
        raise UsageError('--communicator {} needs GPUs (--device 0, and every process uses '
                         'the GPU of its rank within its node); on the CPU, use {}'.format(
                             name, ' or '.join(CPU_COMMUNICATORS)))


def create_communicator(name, device, spec):
    """A ChainerMN communicator over this MPI job's processes, and this process's device.

    ``device`` is that of ``--device spec``; on GPUs each process takes the
    GPU of its rank within its node. Without a ``name``, ``(None, device)``:
    one process, no MPI. Started without an MPI launcher, mpi4py
    would make this process an MPI job of its own, which would train alone
    while the user meant several; that, a device the communicator cannot use
    and a missing mpi4py are stopped here with one line, before any rank can
    wait for another.
    """
    if name is None:
        return None, device
    check_device(name, device, spec)
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
        comm = chainermn.create_communicator(name)
    except ImportError as e:  # mpi4py without the MPI library it was built for
        raise UsageError('--communicator {}: {}'.format(name, ' '.join(str(e).split()))) \
            from None
    if isinstance(device, chainer.backend.GpuDevice):
        device = together(comm, get_device, '@cupy:{}'.format(comm.intra_rank))
    return comm, device


def fail_together(comm, error):
    """Makes every rank raise if ``error`` is not ``None`` on any rank.

    Every rank calls this with its own ``error`` (or ``None``) and all learn
    of the first one: rank 0 raises it, to be reported in one line, and the
    others raise :class:`~command_line.ReportedElsewhere`, to exit quietly
    with the same status.
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
        raise ReportedElsewhere(failures[0][1])
    if error is not None:
        raise error
    raise UsageError('on rank {}: {}'.format(*failures[0]))


def together(comm, function, *args, only_rank_0=False):
    """Calls ``function(*args)`` on every rank, or on rank 0 alone; returns its result.

    A one-line error (``command_line.ERRORS``) that it raises on any rank
    makes every rank raise (see :func:`fail_together`). Ranks that did not
    call it return ``None``. With ``comm=None``, one process: just calls it.
    """
    if comm is None:
        return function(*args)
    result = error = None
    if comm.rank == 0 or not only_rank_0:
        try:
            result = function(*args)
        except ERRORS as e:
            error = e
    fail_together(comm, error)
    return result


def broadcast(comm, obj):
    """Rank 0's ``obj`` on every rank, even ``None``, which ``comm.bcast_obj`` refuses."""
    return comm.bcast_obj([obj] if comm.rank == 0 else None)[0]


def batchsize_per_rank(comm, batchsize):
    """Each rank's part of a minibatch; raises unless the ranks can split it evenly."""
    if batchsize % comm.size:
        raise UsageError('--batchsize {} does not split evenly among {} processes: pass a '
                         'multiple of {}'.format(batchsize, comm.size, comm.size))
    return batchsize // comm.size


def describe(comm, args, n_train, n_val, device):
    """What every rank trains on (``args.communicator``, ``args.batchsize``), in a line or two."""
    n_share = -(-n_train // comm.size), -(-n_val // comm.size)  # as scatter_dataset splits
    return ('# communicator: {}, {} processes, each with {} images of every minibatch, {} '
            'training and {} validation images{}'.format(
                args.communicator, comm.size, args.batchsize // comm.size, *n_share,
                '' if device.xp is numpy else
                '\n# each process uses the GPU of its rank within its node'))


def share(comm, train_set, val_set, seed, snapshot=None):
    """Every rank's share of rank 0's datasets, all of the same length, and its snapshot.

    The training set is shuffled once from ``seed`` before it is split, so the
    shares are the same at every start of the run, resumed or not; the
    validation set is split in order. With ``comm=None``, all is this process's.
    """
    if comm is None:
        return train_set, val_set, snapshot
    return (chainermn.scatter_dataset(train_set, comm, shuffle=True, seed=seed),
            chainermn.scatter_dataset(val_set, comm), broadcast(comm, snapshot))
