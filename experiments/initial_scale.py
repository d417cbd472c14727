#!/usr/bin/env python
"""Does SharedLinear's initial scale matter in training? The example's network, two scales.

``SharedLinear``'s default initial weights have variance ``1 / in_size``, which
gives its outputs ``L.Linear``'s variance for zero-mean inputs. The example's
``l2`` reads ReLU outputs, whose mean adds up across the ``n_shared`` blocks:
its outputs start ``sqrt((s² + n·m²) / (s² + m²))`` times larger than a dense
layer's (about 1.96 for ``n_shared = 10``). This trains the example's network
(784-1000-900-10, ``l2 = SharedLinear(1000, 900, n_shared=10, nobias=True)``,
Adam) with the default scale and with the scale that matches ``L.Linear``'s
output variance for ReLU inputs of a standard normal, and prints the final
validation accuracies::

    .venv/bin/python experiments/initial_scale.py --dataset mnist-5k --epoch 20 --seeds 3
    .venv/bin/python experiments/initial_scale.py --dataset fashion-mnist --epoch 20 --seeds 3

The figures are in docs/shared-linear.md.
"""

import math
import os
import statistics
import sys
import tempfile

import chainer
import chainer.functions as F
import chainer.links as L
import numpy
from chainer import training
from chainer.training import extensions

from chainer_sharedlinear import SharedLinear

# The example's datasets; the experiments are not meant to be copied.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'examples'))
import mnist3_utils as utils  # noqa: E402

BATCHSIZE = 100

# A ReLU of a standard normal has mean 1/sqrt(2 pi) and mean square 1/2.
RELU_MEAN_SQUARE = 0.5
RELU_MEAN2 = 1 / (2 * math.pi)


def relu_matched_factor(n_shared):
    """How much smaller than the default the weights must start to give L.Linear's scale.

    >>> round(relu_matched_factor(10), 3)
    0.509
    """
    variance = RELU_MEAN_SQUARE - RELU_MEAN2
    return math.sqrt(RELU_MEAN_SQUARE / (variance + n_shared * RELU_MEAN2))


class MLP(chainer.Chain):
    """The network of examples/train_mnist3.py, with l2's initial scale given."""

    def __init__(self, n_shared, factor):
        super().__init__()
        with self.init_scope():
            self.l1 = L.Linear(784, 1000)
            self.l2 = SharedLinear(1000, 900, n_shared=n_shared, nobias=True,
                                   initialW=chainer.initializers.LeCunNormal(
                                       scale=factor / math.sqrt(n_shared)))
            self.l3 = L.Linear(900, 10)

    def forward(self, x):
        return self.l3(F.relu(self.l2(F.relu(self.l1(x)))))


def train(train_set, val_set, n_shared, factor, seed, epochs):
    """Trains one network; returns its validation accuracy after each epoch."""
    numpy.random.seed(seed)
    model = L.Classifier(MLP(n_shared, factor))
    optimizer = chainer.optimizers.Adam()
    optimizer.setup(model)
    order = chainer.iterators.ShuffleOrderSampler(numpy.random.RandomState(seed))
    train_iter = chainer.iterators.SerialIterator(train_set, BATCHSIZE, order_sampler=order)
    val_iter = chainer.iterators.SerialIterator(val_set, 1000, repeat=False, shuffle=False)
    with tempfile.TemporaryDirectory() as out:
        trainer = training.Trainer(training.updaters.StandardUpdater(train_iter, optimizer),
                                   (epochs, 'epoch'), out=out)
        trainer.extend(extensions.Evaluator(val_iter, model))
        trainer.extend(extensions.LogReport())
        trainer.run()
        return [entry['validation/main/accuracy']
                for entry in trainer.get_extension('LogReport').log]


def main(argv=None):
    parser = utils.ArgumentParser(description=__doc__.split('\n')[0])
    utils.add_data_arguments(parser)
    parser.add_argument('--epoch', type=int, default=20)
    parser.add_argument('--seeds', type=int, default=3)
    parser.add_argument('--shared', type=int, default=10)
    args = parser.parse_args(argv)
    args.batchsize = BATCHSIZE
    train_set, val_set = utils.load_datasets(args)
    factor = relu_matched_factor(args.shared)
    print('{}, {} epochs, n_shared={}: final validation accuracy (best epoch) per seed'.format(
        args.dataset, args.epoch, args.shared))
    for name, scale in (('default (variance 1/in_size)', 1.0),
                        ('ReLU-matched (x{:.3f})'.format(factor), factor)):
        curves = [train(train_set, val_set, args.shared, scale, seed, args.epoch)
                  for seed in range(args.seeds)]
        finals = [curve[-1] for curve in curves]
        print('{:<30} {}  mean {:.4f} (best {})'.format(
            name, ' '.join('{:.4f}'.format(a) for a in finals), statistics.mean(finals),
            ' '.join('{:.4f}'.format(max(curve)) for curve in curves)), flush=True)


if __name__ == '__main__':
    sys.exit(utils.exit_status(main, None))
