"""Data-parallel training of a model with SharedLinear, one MPI process per rank.

Run by tests/test_chainermn.py as::

    mpiexec -n 2 python tests/mpi/data_parallel.py OUT_DIR [--fail-on-rank R]

Each rank builds the model from its own random seed, so the ranks start with
different parameters, as independent processes would. The multi-node optimizer's
first update broadcasts rank 0's parameters, and every later one averages the
gradients across ranks before stepping. Each rank trains on its slice of the same
fixed global minibatches and writes ``rank<R>.npz`` to OUT_DIR with its parameters
at three points, under the keys ``initial/<name>``, ``synced/<name>`` and
``final/<name>``, where ``<name>`` is a parameter path such as ``/l1/W``.

With ``--fail-on-rank R``, rank R raises just after the communicator exists while
the others wait in the first broadcast: ChainerMN's global except hook must then
abort the whole job instead of leaving them waiting forever.

The model, the data and the single-process reference training live here too, so
that the test imports exactly what the ranks ran. This module imports neither
mpi4py nor chainermn at import time (pytest imports it to collect doctests).
"""

import argparse
import os

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np

from chainer_sharedlinear import SharedLinear

IN_SIZE, HIDDEN, N_SHARED, N_CLASSES = 12, 8, 4, 3
GLOBAL_BATCH = 8
N_STEPS = 5
LEARNING_RATE = 0.1
# float64 so that the only difference between averaging the gradients of the
# halves and differentiating the whole batch is summation order (~1e-16).
DTYPE = np.float64


class SharedMLP(chainer.Chain):
    """A shared-weight layer followed by an ordinary one."""

    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.l1 = SharedLinear(IN_SIZE, HIDDEN, n_shared=N_SHARED)
            self.l2 = L.Linear(HIDDEN, N_CLASSES)

    def forward(self, x):
        return self.l2(F.tanh(self.l1(x)))


def make_model(seed):
    """A :class:`SharedMLP` in :data:`DTYPE`, its initial parameters drawn from ``seed``."""
    # Chainer's default initializers draw from NumPy's global generator.
    np.random.seed(seed)
    with chainer.using_config('dtype', DTYPE):
        return L.Classifier(SharedMLP())


def make_optimizer():
    # Momentum makes every step depend on all earlier gradients, so an error in
    # any one averaged gradient would persist to the final parameters.
    return chainer.optimizers.MomentumSGD(lr=LEARNING_RATE, momentum=0.9)


def global_minibatches():
    """``N_STEPS`` fixed minibatches ``(x, t)`` of ``GLOBAL_BATCH`` examples each."""
    rng = np.random.default_rng(20240601)
    xs = rng.standard_normal((N_STEPS, GLOBAL_BATCH, IN_SIZE)).astype(DTYPE)
    ts = rng.integers(0, N_CLASSES, (N_STEPS, GLOBAL_BATCH)).astype(np.int32)
    return list(zip(xs, ts))


def rank_slice(rank, size):
    """The examples of every global minibatch that ``rank`` of ``size`` trains on."""
    if GLOBAL_BATCH % size:
        raise ValueError('{} processes cannot split a minibatch of {} evenly'.format(
            size, GLOBAL_BATCH))
    per_rank = GLOBAL_BATCH // size
    return slice(rank * per_rank, (rank + 1) * per_rank)


def params_of(model):
    """``{name: copy of the array}`` for every parameter of ``model``."""
    return {name: np.array(param.array) for name, param in model.namedparams()}


def train_single_process(initial_params, examples=slice(None)):
    """Trains a fresh model from ``initial_params`` in this process alone.

    Uses the examples ``examples`` of every global minibatch (all of them by
    default, that is, the concatenation of what the ranks see) and returns the
    final parameters.
    """
    model = make_model(seed=0)
    for name, param in model.namedparams():
        param.array[...] = initial_params[name]
    optimizer = make_optimizer()
    optimizer.setup(model)
    for x, t in global_minibatches():
        optimizer.update(model, x[examples], t[examples])
    return params_of(model)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('out_dir')
    parser.add_argument('--fail-on-rank', type=int, default=None,
                        help='raise an exception on this rank to check that the job aborts')
    args = parser.parse_args(argv)

    import chainermn

    # Without this hook, a rank that dies of an exception can leave the others
    # blocked in a collective forever; with it, the job is aborted (MPI_Abort).
    chainermn.global_except_hook.add_hook()

    comm = chainermn.create_communicator('naive')
    if comm.rank == args.fail_on_rank:
        raise RuntimeError('deliberate failure on rank {}'.format(comm.rank))

    model = make_model(seed=1000 + comm.rank)
    initial = params_of(model)
    optimizer = chainermn.create_multi_node_optimizer(make_optimizer(), comm)
    optimizer.setup(model)

    # The first update of a multi-node optimizer only broadcasts rank 0's
    # parameters (it does not step); doing it before the loop makes every
    # minibatch below a real step, as in the single-process reference.
    optimizer.update()
    synced = params_of(model)

    examples = rank_slice(comm.rank, comm.size)
    for x, t in global_minibatches():
        optimizer.update(model, x[examples], t[examples])
    final = params_of(model)

    arrays = {}
    for stage, params in (('initial', initial), ('synced', synced), ('final', final)):
        arrays.update({stage + name: array for name, array in params.items()})
    np.savez(os.path.join(args.out_dir, 'rank{}.npz'.format(comm.rank)), **arrays)


if __name__ == '__main__':
    main()
