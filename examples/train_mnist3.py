#!/usr/bin/env python
"""Chainer's MNIST example with a second layer that shares its weight (the 2016 experiment).

``l2``'s weight of shape ``(900, 1000 / 10)`` serves all ten blocks of its 1000
inputs. ``--dense`` trains the baseline, ``L.Linear(1000, 900, nobias=True)``,
and ``--compare`` both; ``mpiexec -n N python train_mnist3.py --communicator
naive`` trains on N processes. See docs/example.md and docs/multi-process.md.
"""

import functools
import os
import sys

import chainer
import chainer.functions as F
import chainer.links as L
import chainermn
import command_line
import malloc_tuning
import mnist_data
import multi_node
import numpy
import reports
import result_folder
import resumable
from chainer import training
from chainer.training import extensions

from chainer_sharedlinear import SharedLinear

PLOTS = {'loss.png': ['main/loss', 'validation/main/loss'],
         'accuracy.png': ['main/accuracy', 'validation/main/accuracy']}


class MLP(chainer.Chain):
    """``n_in -> n_units -> n_out_units -> n_out``; ``l2`` shares its weight, or is dense."""

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


def build_trainer(args, model, train_set, val_set, device, out, plots=False, comm=None,
                  replaces=None):
    """A trainer of ``model`` with Adam, validated after every epoch.

    With ChainerMN (``comm``), every rank trains on its share of the data and
    of each minibatch, the ranks average their gradients and rank 0 reports
    and takes the snapshots. Its first snapshot replaces ``replaces``.
    """
    optimizer = chainer.optimizers.Adam()
    if comm is not None:
        optimizer = chainermn.create_multi_node_optimizer(optimizer, comm)
    optimizer.setup(model)
    if comm is not None:
        # The first update of a multi-node optimizer only broadcasts rank 0's
        # parameters; done here, every minibatch of the trainer is a step.
        optimizer.update()
    batchsize = args.batchsize if comm is None else multi_node.batchsize_per_rank(
        comm, args.batchsize)
    # Shuffled from --seed, the generator saved in every snapshot: resuming is exact.
    train_iter = resumable.shuffled_iterator(train_set, batchsize, args.seed)
    val_iter = chainer.iterators.SerialIterator(val_set, batchsize, repeat=False, shuffle=False)
    updater = training.updaters.StandardUpdater(train_iter, optimizer, device=device)
    trainer = training.Trainer(updater, (args.epoch, 'epoch'), out=out)
    evaluator = extensions.Evaluator(val_iter, model, device=device)
    if comm is not None:
        evaluator = chainermn.create_multi_node_evaluator(evaluator, comm)
    trainer.extend(evaluator, call_before_training=True)
    if comm is not None and comm.rank != 0:
        return trainer
    every = (args.snapshot_every, 'iteration') if args.snapshot_every else (1, 'epoch')
    trainer.extend(resumable.snapshot(replaces), trigger=every)
    trainer.extend(extensions.LogReport(), call_before_training=True)
    if plots:
        for file_name, y_keys in PLOTS.items():
            trainer.extend(resumable.PlotReport(y_keys, 'epoch', file_name=file_name),
                           call_before_training=True)
    trainer.extend(extensions.PrintReport(
        ['epoch', 'main/loss', 'validation/main/loss',
         'main/accuracy', 'validation/main/accuracy', 'elapsed_time']),
        call_before_training=True)
    trainer.extend(extensions.ProgressBar(update_interval=min(10, len(train_set) // batchsize)))
    return trainer


def build_model(args, n_in, dense):
    """The classifier to train, with its initial weights drawn from ``args.seed``."""
    numpy.random.seed(args.seed)
    return L.Classifier(MLP(n_in, args.unit, args.out_units, mnist_data.N_CLASSES,
                            n_shared=None if dense else args.shared))


def train(args, train_set, val_set, device, out, dense=False, plots=False, comm=None,
          snapshot=None, claim=None):
    """Trains into ``out``; returns the log (rank 0) and the size of the model."""
    model = build_model(args, train_set[0][0].size, dense)
    model.to_device(device)
    device.use()
    trainer = build_trainer(args, model, train_set, val_set, device, out, plots, comm,
                            replaces=None if claim is None else claim.continued)
    if snapshot is not None:
        resumable.resume(trainer, snapshot, comm)
    multi_node.together(comm, result_folder.take, claim, only_rank_0=True)
    trainer.run()
    log = trainer.get_extension('LogReport').log if comm is None or comm.rank == 0 else None
    return log, sum(param.size for param in model.params())


def describe_l2(args, dense):
    if dense:
        return 'L.Linear({}, {}, nobias=True)'.format(args.unit, args.out_units)
    return 'SharedLinear({}, {}, n_shared={}, nobias=True)'.format(
        args.unit, args.out_units, args.shared)


def compare(args, train_set, val_set, device, claim, plots):
    claim.take()  # nothing to resume from, so nothing to load first
    rows = []
    for name, dense in (('shared', False), ('dense', True)):
        print('== {}: l2 = {}'.format(name, describe_l2(args, dense)))
        # No plots while training: matplotlib takes 0.1-0.2 s per epoch, as long as
        # an mnist-5k epoch itself, and would blur the timing. Both are drawn below.
        log, n_params = train(args, train_set, val_set, device, os.path.join(args.out, name),
                              dense=dense)
        rows.append((name, describe_l2(args, dense), n_params, log))
    reports.print_comparison(
        rows, '{} epochs of {} ({} training, {} validation images), seed {}, device {}'.format(
            args.epoch, args.dataset, len(train_set), len(val_set), args.seed, device),
        os.path.join(args.out, 'compare.png') if plots else None)


def prepare(args, device, comm):
    """Rank 0's part: checks --resume and --out, reads the data and prints the settings."""
    if comm is not None:
        multi_node.batchsize_per_rank(comm, args.batchsize)
    snapshot = None if args.resume is None else resumable.read_snapshot(
        result_folder.find_snapshot(args.resume))
    if args.compare:
        results = result_folder.training_results(('shared', 'dense'), PLOTS) + ['compare.png']
    else:
        results = result_folder.training_results(('',), PLOTS)
    claim = result_folder.claim(args.out, results, overwrite=args.overwrite,
                                resume_from=snapshot and snapshot.path,
                                can_resume=not args.compare)
    train_set, val_set = command_line.load_datasets(args)
    command_line.print_settings(args, device, len(train_set), len(val_set), [
        ('unit', args.unit), ('out-units', args.out_units),
        ('l2', 'both (--compare)' if args.compare else describe_l2(args, args.dense))])
    if comm is not None:
        print(multi_node.describe(comm, args, len(train_set), len(val_set), device))
    print()
    return train_set, val_set, snapshot, claim


def run(args):
    malloc_tuning.keep_freed_memory()
    device = command_line.get_device(args.device)
    comm, device = multi_node.create_communicator(args.communicator, device, args.device)
    is_root = comm is None or comm.rank == 0
    plots = is_root and reports.plots_available()
    # Rank 0 alone checks and reads; the other ranks get their shares below.
    train_set, val_set, snapshot, claim = multi_node.together(
        comm, prepare, args, device, comm, only_rank_0=True) or (None,) * 4
    if args.compare:
        return compare(args, train_set, val_set, device, claim, plots)
    train_set, val_set, snapshot = multi_node.share(comm, train_set, val_set, args.seed,
                                                    snapshot)
    log, _ = train(args, train_set, val_set, device, args.out, dense=args.dense, plots=plots,
                   comm=comm, snapshot=snapshot, claim=claim)
    if is_root:
        print(reports.final_figures(log))
        print('Results in {}: {}'.format(args.out, ', '.join(claim.find())))


def parse_args(argv=None):
    parser = command_line.ArgumentParser(
        description='Chainer example: MNIST with a shared-weight second layer')
    command_line.add_training_arguments(parser)
    model = parser.add_argument_group('model')
    model.add_argument('--unit', '-u', type=command_line.positive_int, default=1000,
                       help='Number of units of the first hidden layer (default: 1000)')
    model.add_argument('--out-units', type=command_line.positive_int, default=900,
                       help='Number of units of the second hidden layer (default: 900)')
    model.add_argument('--shared', type=command_line.positive_int,
                       help='Blocks of the first hidden layer that share the weight of l2; '
                       'it must divide --unit; 1: no sharing (default: 10)')
    modes = model.add_mutually_exclusive_group()
    modes.add_argument('--dense', action='store_true',
                       help='Train the baseline: l2 is L.Linear, nothing shared')
    modes.add_argument('--compare', action='store_true',
                       help='Train the shared and the dense network one after the other '
                       '(into --out/shared and --out/dense) and print a table of both')
    multi_node.add_communicator_argument(parser)
    command_line.add_data_arguments(parser)
    args = parser.parse_args(argv)
    if args.dense and args.shared is not None:
        parser.error('--dense trains l2 without sharing: it takes no --shared')
    args.shared = 10 if args.shared is None else args.shared
    if args.unit % args.shared:
        parser.error('--unit {} is not divisible by --shared {}: the {} units must split '
                     'into {} equal blocks'.format(args.unit, args.shared, args.unit,
                                                   args.shared))
    if args.compare and args.resume:
        parser.error('--compare starts both runs afresh: it takes no --resume')
    if args.compare and args.communicator:
        parser.error('--compare times two runs on one process: it takes no --communicator')
    command_line.check_data_arguments(parser, args)
    return args


def main(argv=None):
    args = parse_args(argv)
    # Under mpiexec, Ctrl-C goes on to ChainerMN's hook, which ends every rank.
    hint = functools.partial(result_folder.resume_hint, args.out, can_resume=not args.compare)
    return command_line.exit_status(run, args, None if args.communicator else hint)


if __name__ == '__main__':
    sys.exit(main())
