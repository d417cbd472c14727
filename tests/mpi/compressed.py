"""Data-parallel training of a compressed model, one MPI process per rank.

Run by tests/test_chainermn.py as::

    mpiexec -n 2 python tests/mpi/compressed.py OUT_DIR

Each rank draws a dense model from its own seed and compresses it with
``pattern='clustered'``, so that the indices of the ranks' ``ClusteredLinear``
layers differ, as those of independent processes would. Two such models are
trained by the multi-node optimizer: one as it is (its first update broadcasts
the parameters alone), one after :func:`~chainer_sharedlinear.bcast_model`.
Each rank writes ``rank<R>.npz`` with, for each (``optimizer/`` and
``bcast_model/``), the indices before and after, and the outputs on fixed
inputs after the first update (``first``) and after training (``final``).

This module imports neither mpi4py nor chainermn at import time (pytest imports
it to collect doctests).
"""

import argparse
import os

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np

from chainer_sharedlinear import ClusteredLinear, bcast_model, compress_linears

IN_SIZE, HIDDEN, N_CLASSES = 40, 30, 5
GLOBAL_BATCH, N_STEPS = 8, 3
LAYERS = ('l1', 'l2')


class MLP(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.l1 = L.Linear(IN_SIZE, HIDDEN)
            self.l2 = L.Linear(HIDDEN, N_CLASSES)

    def forward(self, x):
        return self.l2(F.relu(self.l1(x)))


def make_compressed_model(seed):
    """An ``L.Classifier`` of :class:`MLP` drawn from ``seed``, both layers clustered."""
    np.random.seed(seed)  # Chainer's default initializers draw from NumPy's generator
    model = L.Classifier(MLP())
    compress_linears(model, 1 / 4, pattern='clustered', allocation='layer')
    assert all(isinstance(getattr(model.predictor, name), ClusteredLinear) for name in LAYERS)
    return model


def data():
    """Inputs to compare the ranks' functions on, and the global minibatches."""
    rng = np.random.default_rng(20240601)
    probe = rng.standard_normal((4, IN_SIZE)).astype(np.float32)
    xs = rng.standard_normal((N_STEPS, GLOBAL_BATCH, IN_SIZE)).astype(np.float32)
    ts = rng.integers(0, N_CLASSES, (N_STEPS, GLOBAL_BATCH)).astype(np.int32)
    return probe, list(zip(xs, ts))


def outputs(model, probe):
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        return model.predictor(probe).array


def indices(model):
    return {name: np.array(getattr(model.predictor, name).index) for name in LAYERS}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('out_dir')
    args = parser.parse_args(argv)

    import chainermn

    chainermn.global_except_hook.add_hook()
    comm = chainermn.create_communicator('naive')
    probe, minibatches = data()
    per_rank = GLOBAL_BATCH // comm.size
    examples = slice(comm.rank * per_rank, (comm.rank + 1) * per_rank)

    arrays = {}
    for way in ('optimizer', 'bcast_model'):
        model = make_compressed_model(seed=1000 + comm.rank)
        arrays.update({'{}/index_before/{}'.format(way, name): index
                       for name, index in indices(model).items()})
        if way == 'bcast_model':
            bcast_model(comm, model)
        optimizer = chainermn.create_multi_node_optimizer(
            chainer.optimizers.MomentumSGD(lr=0.1), comm)
        optimizer.setup(model)
        optimizer.update()  # the first update broadcasts rank 0's parameters
        arrays[way + '/first'] = outputs(model, probe)
        for x, t in minibatches:
            optimizer.update(model, x[examples], t[examples])
        arrays[way + '/final'] = outputs(model, probe)
        arrays.update({'{}/index/{}'.format(way, name): index
                       for name, index in indices(model).items()})
        arrays.update({'{}/param{}'.format(way, name): np.array(param.array)
                       for name, param in model.namedparams()})
    np.savez(os.path.join(args.out_dir, 'rank{}.npz'.format(comm.rank)), **arrays)


if __name__ == '__main__':
    main()
