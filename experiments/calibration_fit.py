#!/usr/bin/env python
"""Low-rank layers fitted to calibration data, with no fine-tuning: the accuracy they keep.

Trains the MNIST MLP 784-1000-1000-10 dense on Fashion-MNIST (Adam, batch 100), or
loads it from ``OUT/dense-seedN.npz`` (its own, or the classifier that
``examples/compress_trained.py`` saves there), gathers the statistics of its layers' inputs on
``--calibration`` training images (:mod:`chainer_sharedlinear.compress.calibration`), and
replaces every layer by a low-rank one in each ``--budgets`` of the model's bytes:

- ``svd``: the plain truncated SVD of the weight, float32 factors;
- ``wsvd``: the whitened SVD (SVD-LLM), float32 factors; ``+bias``: the bias corrected;
- ``wsvd-Kbit``: the whitened SVD's factors as codebooks of ``2**K`` values, rounded to
  the nearest value (``nearest``) or with error feedback and ``U`` refitted (``ef``).

``uniform``: each layer gets the budget's fraction of its own bytes (the rank that
fits; rank 0 leaves the bias alone). ``allocated``: the model's bytes shared by
:func:`chainer_sharedlinear.compress.allocation.allocate` over each layer's ranks and the dense
layer, on the output errors. Prints one row per method and budget: the validation
accuracy of the whole 10,000 images, the model's ratio, and each layer's rank.
"""

import argparse
import os
import sys
import time

import chainer
import chainer.functions as F
import chainer.links as L
import numpy

from chainer_sharedlinear.compress import allocation, fitting
from chainer_sharedlinear.compress.calibration import gather_statistics
from chainer_sharedlinear.compress.patterns import _PATTERNS

# The example's datasets and helpers; the experiments are not meant to be copied.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'examples'))
import mnist3_utils as utils  # noqa: E402


class MLP(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.l1 = L.Linear(784, 1000)
            self.l2 = L.Linear(1000, 1000)
            self.l3 = L.Linear(1000, 10)

    def forward(self, x):
        return self.l3(F.relu(self.l2(F.relu(self.l1(x)))))


def dense_model(train_x, train_t, seed, epochs, out):
    model = MLP()
    path = os.path.join(out, 'dense-seed{}.npz'.format(seed))
    if os.path.exists(path):
        with numpy.load(path) as saved:  # examples/compress_trained.py saves the classifier
            prefix = 'predictor/' if 'predictor/l1/W' in saved.files else ''
        chainer.serializers.load_npz(path, model, path=prefix)
        return model
    numpy.random.seed(seed)
    model = MLP()
    optimizer = chainer.optimizers.Adam()
    optimizer.setup(model)
    rng = numpy.random.RandomState(seed)
    for _ in range(epochs):
        for batch in rng.permutation(len(train_x)).reshape(-1, 100):
            loss = F.softmax_cross_entropy(model(train_x[batch]), train_t[batch])
            model.cleargrads()
            loss.backward()
            optimizer.update()
    os.makedirs(out, exist_ok=True)
    chainer.serializers.save_npz(path, model)
    return model


def accuracy(model, x, t):
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        return float(F.accuracy(model(x), t).array)


def dense_bytes(w):
    return 4 * (w.size + w.shape[0])


def factor_bytes(w, rank, bits):
    """The bytes of the layer (its bias included), as ``compress_linears`` counts them."""
    out_size, in_size = w.shape
    if not rank:
        return 4 * out_size
    name, knobs = ('lowrank', {'rank': rank}) if bits is None else (
        'clustered_lowrank', {'rank': rank, 'n_clusters': 2 ** bits})
    return _PATTERNS[name].weight_bytes(in_size, out_size, 4, knobs) + 4 * out_size


def fitted(method, stats, w, b, rank, bits):
    """The weight and bias of ``method`` at ``rank``."""
    if rank == 0:
        weight = numpy.zeros_like(w)
    elif method == 'svd':
        u, s, vt = numpy.linalg.svd(w, full_matrices=False)
        weight = (u[:, :rank] * s[:rank]) @ vt[:rank]
    elif method.startswith('wsvd-') and bits is not None:
        weight = fitting.fit_low_rank_codebooks(
            stats, w, rank, 2 ** bits, error_feedback=method.endswith('ef')).weight()
    else:
        u, v = fitting.whitened_svd(stats, w, rank)
        weight = u @ v
    bias = fitting.corrected_bias(stats, w, weight, b) if method.endswith('+bias') else b
    return weight, bias


def rank_fitting(w, budget, bits):
    rank = 0
    while rank < min(w.shape) and factor_bytes(w, rank + 1, bits) <= budget:
        rank += 1
    return rank


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seeds', type=int, nargs='+', default=[0])
    parser.add_argument('--epoch', type=int, default=5)
    parser.add_argument('--calibration', type=int, default=2000)
    parser.add_argument('--budgets', type=int, nargs='+', default=[16, 32])
    parser.add_argument('--bits', type=int, default=6)
    parser.add_argument('--methods', nargs='+', default=[
        'svd', 'wsvd', 'wsvd+bias', 'wsvd-nearest', 'wsvd-ef', 'wsvd-ef+bias'])
    parser.add_argument('--allocated', nargs='*', default=['wsvd+bias', 'wsvd-ef+bias'])
    parser.add_argument('--grid', type=int, default=24,
                        help='ranks tried per layer by the allocation, geometrically spaced')
    parser.add_argument('--out', default='result/calibration-fit')
    args = parser.parse_args()
    train, val = utils.load_idx_dir(utils.FASHION_MNIST_DIR, 'fashion-mnist')
    train_x, train_t = train._datasets
    val_x, val_t = val._datasets
    for seed in args.seeds:
        model = dense_model(train_x, train_t, seed, args.epoch, args.out)
        dense = accuracy(model, val_x, val_t)
        print('seed {}: dense {:.4f}'.format(seed, dense), flush=True)
        picks = numpy.random.RandomState(seed).permutation(len(train_x))[:args.calibration]
        start = time.time()
        statistics = gather_statistics(model, train_x[picks])
        print('  statistics in {:.1f} s'.format(time.time() - start), flush=True)
        layers = [(path, model[path.strip('/')]) for path in statistics]
        weights = {path: (link.W.array.astype('d'), link.b.array.astype('d'))
                   for path, link in layers}
        total = sum(dense_bytes(w) for w, _ in weights.values())
        rows = [(m, 'uniform') for m in args.methods] + [(m, 'allocated')
                                                         for m in args.allocated]
        for budget in args.budgets:
            for method, split in rows:
                bits = args.bits if method.startswith('wsvd-') else None
                start = time.time()
                if split == 'uniform':
                    ranks = {path: rank_fitting(w, dense_bytes(w) // budget, bits)
                             for path, (w, _) in weights.items()}
                else:
                    ranks = allocated_ranks(method, statistics, weights, total // budget, bits,
                                            args.grid)
                stored = 0
                errors = []
                for path, link in layers:
                    w, b = weights[path]
                    if ranks[path] is None:  # dense
                        stored += dense_bytes(w)
                        link.W.array[...], link.b.array[...] = w, b
                        errors.append(0.0)
                        continue
                    weight, bias = fitted(method, statistics[path], w, b, ranks[path], bits)
                    stored += factor_bytes(w, ranks[path], bits)
                    errors.append(fitting.output_error(statistics[path], w, weight,
                                                       bias_change=bias - b))
                    link.W.array[...], link.b.array[...] = weight, bias
                print('  1/{} {:>13} {:>9}: {:.4f} ({:+.2f} pt) at 1/{:.1f}, ranks {}, output '
                      'errors {} ({:.0f} s)'.format(
                          budget, method, split, accuracy(model, val_x, val_t),
                          100 * (accuracy(model, val_x, val_t) - dense), total / stored,
                          [ranks[p] if ranks[p] is not None else 'dense' for p, _ in layers],
                          ', '.join('{:.3f}'.format(e) for e in errors), time.time() - start),
                      flush=True)
                for path, link in layers:
                    link.W.array[...], link.b.array[...] = weights[path]


def allocated_ranks(method, statistics, weights, budget, bits, grid):
    """Each layer's rank (``None``: dense) that :func:`allocation.allocate` chooses."""
    candidates, options = [], []
    for path, (w, b) in weights.items():
        top = rank_fitting(w, dense_bytes(w), bits)
        ranks = sorted({0} | {int(r) for r in numpy.unique(numpy.geomspace(1, top, grid).round())})
        layer = [(dense_bytes(w), 0.0)]
        for rank in ranks:
            weight, bias = fitted(method, statistics[path], w, b, rank, bits)
            layer.append((factor_bytes(w, rank, bits), fitting.output_error(
                statistics[path], w, weight, bias_change=bias - b)))
        candidates.append(layer)
        options.append([None] + ranks)
    chosen = allocation.allocate(candidates, budget)
    return {path: option[i] for path, option, i in zip(weights, options, chosen.choices)}


if __name__ == '__main__':
    main()
