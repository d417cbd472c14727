#!/usr/bin/env python
"""Chainer's MNIST example with a second layer that shares its weight (the 2016 experiment).

``l2``'s weight of shape ``(900, 1000 / 10)`` serves all ten blocks of its 1000
inputs. ``--dense`` trains the baseline, ``L.Linear(1000, 900, nobias=True)``,
and ``--compare`` both. See docs/example.md.
"""

import os
import sys

import chainer
import chainer.functions as F
import chainer.links as L
import mnist3_utils as utils
import numpy
from chainer import training
from chainer.training import extensions

from chainer_sharedlinear import SharedLinear


class MLP(chainer.Chain):
    """``784 -> n_units -> n_out_units -> 10``; ``l2`` shares its weight, or is dense."""

    def __init__(self, n_units, n_out_units, n_shared=None):
        super().__init__()
        with self.init_scope():
            self.l1 = L.Linear(28 * 28, n_units)
            if n_shared is None:
                self.l2 = L.Linear(n_units, n_out_units, nobias=True)
            else:
                self.l2 = SharedLinear(n_units, n_out_units, n_shared=n_shared, nobias=True)
            self.l3 = L.Linear(n_out_units, utils.N_CLASSES)

    def forward(self, x):
        h1 = F.relu(self.l1(x))
        h2 = F.relu(self.l2(h1))
        return self.l3(h2)


def train(args, train_set, val_set, out, dense=False, plots=False, folder=None, snapshot=None):
    """Trains into ``out``; returns the log and the number of parameters."""
    model = build_model(args, dense)
    model.to_device(args.device)
    args.device.use()
    optimizer = chainer.optimizers.Adam()
    optimizer.setup(model)

    # Shuffled by a generator that the snapshot saves: a resumed run goes on exactly.
    train_iter = utils.ShuffledIterator(train_set, args.batchsize, args.seed)
    test_iter = chainer.iterators.SerialIterator(val_set, args.batchsize,
                                                 repeat=False, shuffle=False)
    updater = training.updaters.StandardUpdater(train_iter, optimizer, device=args.device)
    trainer = training.Trainer(updater, (args.epoch, 'epoch'), out=out)
    trainer.extend(extensions.Evaluator(test_iter, model, device=args.device),
                   call_before_training=True)
    extend_reports(trainer, args, settings(args, train_set, val_set, dense), plots,
                   replaces=folder and folder.continued)
    if snapshot is not None:
        utils.resume(trainer, *snapshot)
        print('Resuming from {} (epoch {}, iteration {})'.format(
            snapshot[0], updater.epoch, updater.iteration))
    if folder is not None:
        folder.take()  # now that all is read: the dataset, the snapshot
    trainer.run()
    return trainer.get_extension('LogReport').log, sum(p.size for p in model.params())


def build_model(args, dense):
    """The classifier to train, its initial weights drawn from ``--seed``."""
    numpy.random.seed(args.seed)
    return L.Classifier(MLP(args.unit, args.out_units, None if dense else args.shared))


PLOTS = {'loss.png': ['main/loss', 'validation/main/loss'],
         'accuracy.png': ['main/accuracy', 'validation/main/accuracy']}
RESULTS = ['log'] + list(PLOTS) + [utils.SNAPSHOT_PREFIX + '*']


def extend_reports(trainer, args, settings, plots, replaces=None):
    """The snapshot (replacing ``replaces`` first), the log, the plots and the progress.

    The progress is a line per epoch, under a progress bar where the standard
    output is a terminal (:func:`utils.extend_progress`).
    """
    every = (args.snapshot_every, 'iteration') if args.snapshot_every else (1, 'epoch')
    trainer.extend(utils.snapshot(replaces), trigger=every)
    trainer.extend(utils.TrainingSettings(settings))
    trainer.extend(extensions.LogReport(), call_before_training=True)
    if plots:
        for file_name, y_keys in PLOTS.items():
            trainer.extend(utils.PlotReport(y_keys, 'epoch', file_name=file_name),
                           call_before_training=True)
    train_iter = trainer.updater.get_iterator('main')
    utils.extend_progress(
        trainer, ['epoch', 'main/loss', 'validation/main/loss', 'main/accuracy',
                  'validation/main/accuracy', 'elapsed_time'],
        update_interval=min(10, len(train_iter.dataset) // train_iter.batch_size),
        call_before_training=True)


def settings(args, train_set, val_set, dense):
    """What a resumed run must share with the run it resumes (see utils.TrainingSettings)."""
    return {'--dataset': args.dataset,
            '--data-dir': utils.data_source(args.dataset, args.data_dir),
            '--train-size': len(train_set), '--val-size': len(val_set),
            '--batchsize': args.batchsize, '--seed': args.seed, '--unit': args.unit,
            '--out-units': args.out_units, '--dense': dense,
            '--shared': None if dense else args.shared}


def describe_l2(args, dense):
    if dense:
        return 'L.Linear({}, {}, nobias=True)'.format(args.unit, args.out_units)
    return 'SharedLinear({}, {}, n_shared={}, nobias=True)'.format(
        args.unit, args.out_units, args.shared)


def compare(args, train_set, val_set, folder, plots):
    """Trains the shared and the dense network alike and prints a table of both."""
    folder.take()
    rows = []
    for name, dense in (('shared', False), ('dense', True)):
        print('== {}: l2 = {}'.format(name, describe_l2(args, dense)))
        # No plots while training: matplotlib would take as long as an epoch, and blur
        # the timing. Both are drawn together below.
        log, n_params = train(args, train_set, val_set, os.path.join(args.out, name), dense)
        rows.append((name, describe_l2(args, dense), n_params, log))
    title = '{} epochs of {} ({} training, {} validation images), seed {}, device {}'.format(
        args.epoch, args.dataset, len(train_set), len(val_set), args.seed, args.device)
    print('\n{}:\n{}'.format(title, utils.comparison_table(rows)))
    print('s/epoch: training, validation, snapshot and log of one epoch (no plots).')
    if plots:
        utils.plot_comparison(rows, os.path.join(args.out, 'compare.png'), title)
        print('Plot of the loss and accuracy curves: {}'.format(
            os.path.join(args.out, 'compare.png')))


def print_settings(args, n_train, n_val, l2, extra=()):
    print('Device: {}'.format(args.device))
    print('# dataset: {} ({} training, {} validation images)'.format(
        args.dataset, n_train, n_val))
    print('# unit: {}\n# out-units: {}\n# l2: {}'.format(args.unit, args.out_units, l2))
    print('# Minibatch-size: {}\n# epoch: {}\n# seed: {}'.format(
        args.batchsize, args.epoch, args.seed))
    for line in extra:
        print(line)
    print()


def run(args):
    path = None if args.resume is None else utils.find_snapshot(args.resume)
    snapshot = None if path is None else (path, utils.read_snapshot(path))
    if args.compare:
        results = [os.path.join(name, result) for name in ('shared', 'dense')
                   for result in RESULTS] + ['compare.png']
    else:
        results = RESULTS
    folder = utils.ResultFolder(args.out, results, overwrite=args.overwrite, resume_from=path,
                                can_resume=not args.compare)
    train_set, val_set = utils.load_datasets(args)
    print_settings(args, len(train_set), len(val_set),
                   'both (--compare)' if args.compare else describe_l2(args, args.dense))
    plots = utils.plots_available()
    if args.compare:
        return compare(args, train_set, val_set, folder, plots)
    log, _ = train(args, train_set, val_set, args.out, args.dense, plots, folder, snapshot)
    print(utils.final_figures(log))
    print('Results in {}: {}'.format(args.out, ', '.join(folder.find())))


def make_parser(description):
    """The options of this example, as Chainer's MNIST example names them, and of its data."""
    parser = utils.ArgumentParser(description=description)
    parser.add_argument('--batchsize', '-b', type=utils.positive_int, default=100,
                        help='Number of images in each mini-batch (default: 100)')
    parser.add_argument('--epoch', '-e', type=utils.positive_int, default=20,
                        help='Number of sweeps over the dataset to train (default: 20)')
    parser.add_argument('--device', '-d', type=utils.device, default='-1',
                        help='Device specifier: -1 or @numpy for the CPU, 0 or @cupy:0 '
                        'for the first GPU (default: -1)')
    parser.add_argument('--out', '-o', default='result',
                        help='Directory to output the result (default: result)')
    parser.add_argument('--resume', '-r', metavar='SNAPSHOT',
                        help='Resume the training from a snapshot, or from the latest '
                        'snapshot in a directory, exactly as if it had not stopped; the '
                        'settings that change the result must be the same')
    parser.add_argument('--overwrite', action='store_true',
                        help='Replace the results of an earlier run in --out (only the '
                        'files this run writes)')
    parser.add_argument('--seed', type=utils.seed, default=0,
                        help='Seed of the initial weights and of the order of the '
                        'examples; the same seed gives the same results on the same '
                        'machine with the same number of BLAS threads (default: 0)')
    parser.add_argument('--snapshot-every', type=utils.positive_int, metavar='N',
                        help='Take the snapshot every N iterations instead of after every '
                        'epoch; only the latest is kept')
    model = parser.add_argument_group('model')
    model.add_argument('--unit', '-u', type=utils.positive_int, default=1000,
                       help='Number of units of the first hidden layer (default: 1000)')
    model.add_argument('--out-units', type=utils.positive_int, default=900,
                       help='Number of units of the second hidden layer (default: 900)')
    model.add_argument('--shared', type=utils.positive_int,
                       help='Blocks of the first hidden layer that share the weight of l2; '
                       'it must divide --unit; 1: no sharing (default: 10)')
    model.add_argument('--dense', action='store_true',
                       help='Train the baseline: l2 is L.Linear, nothing shared')
    utils.add_data_arguments(parser)
    return parser


def check_args(parser, args):
    if args.dense and args.shared is not None:
        parser.error('--dense trains l2 without sharing: it takes no --shared')
    args.shared = 10 if args.shared is None else args.shared
    if args.unit % args.shared:
        parser.error('--unit {} is not divisible by --shared {}: the {} units must split '
                     'into {} equal blocks'.format(args.unit, args.shared, args.unit,
                                                   args.shared))
    utils.check_data_arguments(parser, args)
    return args


def parse_args(argv=None):
    parser = make_parser('Chainer example: MNIST with a shared-weight second layer')
    parser.add_argument('--compare', action='store_true',
                        help='Train the shared and the dense network one after the other '
                        '(into --out/shared and --out/dense) and print a table of both')
    args = parser.parse_args(argv)
    if args.compare and args.dense:
        parser.error('--compare trains both: it takes no --dense')
    if args.compare and args.resume:
        parser.error('--compare starts both runs afresh: it takes no --resume')
    return check_args(parser, args)


def main(argv=None):
    args = parse_args(argv)
    return utils.exit_status(run, args, None if args.compare else args.out)


if __name__ == '__main__':
    sys.exit(main())
