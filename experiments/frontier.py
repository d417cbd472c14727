#!/usr/bin/env python
"""Which sharing pattern at which parameter budget: accuracy against stored parameters.

Trains one network per setting, pattern, compression (or width) and seed, and writes
``OUT/frontier.json`` (one record per network), ``OUT/frontier.png``, ``OUT/expansion.png``
and a table:

- ``--setting 2016``: the network of train_mnist3.py, 784-1000-900-10, ``l2`` compressed;
  ``hashednets``: HashedNets' 784-1000-10, both layers compressed.
- ``--patterns``: ``dense`` (the reference), ``shared``, ``hashed``, ``kronecker``,
  ``phm``, ``monarch``, and two baselines at equal storage: ``lowrank`` (two ``L.Linear``)
  and ``narrow`` (fewer hidden units).
- ``--compressions``: each compressed layer stores about ``1/c`` of its dense
  parameters, as closely as its pattern's sizes allow (compression.py).
- ``--setting expansion`` grows instead: 784-100-100-10 with hidden layers ``w`` times
  wider for each of ``--widths``, every layer of the pattern, storing what the dense
  784-100-100-10 stores (``shared`` tiles the hidden-to-hidden layer, hashes the others).

A rerun with the same ``--out`` skips the networks that have finished. See
docs/frontier.md for the figures measured on Fashion-MNIST.
"""

import argparse
import os
import sys
import time

import chainer
import chainer.links as L
import numpy
from chainer import training
from chainer.training import extensions

# The example's datasets and helpers; the experiments are not meant to be copied.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'examples'))
import compression  # noqa: E402
import frontier_results as results  # noqa: E402
import mnist3_utils as utils  # noqa: E402

#: The folder of ``--out`` that holds a trainer's folder for each network.
RUNS_FOLDER = 'runs'


def train(network, train_set, val_set, args, device, seed, out):
    """Trains ``network`` with Adam, validated after every epoch.

    Returns the log and the CPU seconds the process spent in training.
    """
    model = L.Classifier(network)
    model.to_device(device)
    optimizer = chainer.optimizers.Adam()
    optimizer.setup(model)
    train_iter = utils.ShuffledIterator(train_set, args.batchsize, seed)
    val_iter = chainer.iterators.SerialIterator(val_set, 1000, repeat=False, shuffle=False)
    updater = training.updaters.StandardUpdater(train_iter, optimizer, device=device)
    trainer = training.Trainer(updater, (args.epoch, 'epoch'), out=out)
    trainer.extend(extensions.Evaluator(val_iter, model, device=device))
    trainer.extend(extensions.LogReport())
    trainer.extend(extensions.ProgressBar(update_interval=10))
    cpu_started = time.process_time()
    trainer.run()
    return trainer.get_extension('LogReport').log, time.process_time() - cpu_started


def run_grid(args, device, train_set, val_set):
    this_training = {'dataset': args.dataset,
                     'data_dir': utils.data_source(args.dataset, args.data_dir),
                     'train_size': len(train_set), 'val_size': len(val_set),
                     'batchsize': args.batchsize, 'epochs': args.epoch}

    def finished_records():
        # Read anew for each network: another process may share the folder.
        records = results.load_records(args.out)
        results.check_same_training(records, this_training, args.out)
        return records

    finished_records()
    grid = [(setting, pattern, c, width, seed) for setting in args.setting
            for pattern in args.patterns
            for c, width in grid_axis(setting, pattern, args)
            for seed in range(args.seeds)]
    dense_params = {setting: sum(compression.stored_parameters(layer)
                                 for layer in compression.build_network(setting, 'dense', 1)[1])
                    for setting in args.setting}
    for number, (setting, pattern, c, width, seed) in enumerate(grid, 1):
        record = dict(this_training, setting=setting, pattern=pattern, compression=c,
                      width=width, seed=seed)
        finished = finished_records()
        if results.key_of(record) in {results.key_of(r) for r in finished}:
            continue
        numpy.random.seed(seed)
        network, layers = compression.build_network(setting, pattern, c, seed=seed, width=width)
        record.update(
            layers=[compression.describe(layer) for layer in layers],
            params=sum(compression.stored_parameters(layer) for layer in layers),
            dense_params=dense_params[setting],
            network_params=compression.stored_parameters(network))
        # Another compression may have given this very network: it is not trained twice.
        same = next((r for r in finished if 'same_as' not in r and all(
            r[k] == record[k] for k in ('setting', 'pattern', 'seed', 'layers'))), None)
        print('[{}/{}] {} {} c={} width={} seed {}: {}'.format(
            number, len(grid), setting, pattern, c, width, seed, '; '.join(record['layers'])),
            file=sys.stderr, flush=True)
        if same is not None:
            record.update({k: same[k] for k in ('accuracy', 'best_accuracy', 'loss', 'curve',
                                                'seconds_per_epoch', 'cpu_seconds_per_epoch')
                           if k in same}, same_as=same['compression'])
        else:
            run_folder = ('{setting}-{pattern}-c{compression}-seed{seed}' if width == 1 else
                          '{setting}-{pattern}-w{width}-seed{seed}').format(**record)
            log, cpu_seconds = train(network, train_set, val_set, args, device, seed,
                                     os.path.join(args.out, RUNS_FOLDER, run_folder))
            curve = [entry['validation/main/accuracy'] for entry in log]
            # Training and validation, from the start: defined for one epoch too. The
            # CPU time is the process's, all its threads: other work on the machine
            # does not inflate it as it does the wall-clock time.
            record.update(accuracy=curve[-1], best_accuracy=max(curve), curve=curve,
                          loss=log[-1]['validation/main/loss'],
                          seconds_per_epoch=log[-1]['elapsed_time'] / log[-1]['epoch'],
                          cpu_seconds_per_epoch=cpu_seconds / log[-1]['epoch'])
        results.add_record(args.out, record)
    return results.load_records(args.out)


def grid_axis(setting, pattern, args):
    """The ``(compression, width)`` of each network of ``setting`` and ``pattern``.

    The frontier's settings shrink what a layer stores by each of ``--compressions``;
    a ``width`` setting grows the network by each of ``--widths`` at the storage of
    its narrow dense network (``compression`` 1). The dense reference is trained once,
    at ``(1, 1)``; a pattern a setting does not define gives nothing.
    """
    if compression.SETTINGS[setting].get('width'):
        if pattern not in compression.WIDE_PATTERNS:
            return []
        return [(1, 1)] if pattern == 'dense' else [(1, width) for width in args.widths]
    return [(1, 1)] if pattern == 'dense' else [(c, 1) for c in args.compressions]


def comma_separated(kind):
    """An argument type: a comma-separated list of ``kind``, at least one."""
    def parse(text):
        items = [kind(item.strip()) for item in text.split(',') if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError('expected a comma-separated list, got {!r}'
                                             .format(text))
        return items
    return parse


def choices(allowed):
    """An argument type: a comma-separated list of names from ``allowed``."""
    def check(name):
        if name not in allowed:
            raise argparse.ArgumentTypeError('{!r} is not one of {}'.format(
                name, ', '.join(allowed)))
        return name
    return comma_separated(check)


def parse_args(argv=None):
    parser = utils.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--setting', type=choices(compression.SETTINGS),
                        default=[name for name, spec in compression.SETTINGS.items()
                                 if not spec.get('width')],
                        help='comma-separated: 2016, hashednets, expansion (default: 2016 '
                        'and hashednets; the expansion only when named)')
    parser.add_argument('--patterns', type=choices(compression.PATTERNS),
                        default=list(compression.PATTERNS),
                        help='comma-separated, from {} (default: all)'.format(
                            ', '.join(compression.PATTERNS)))
    parser.add_argument('--compressions', type=comma_separated(utils.positive_int),
                        default=[4, 16, 64],
                        help='comma-separated integers c: each compressed layer stores about '
                        '1/c of its dense parameters (default: 4,16,64)')
    parser.add_argument('--widths', type=comma_separated(utils.positive_int),
                        default=[2, 4, 8, 16],
                        help='comma-separated integers w: the expansion setting makes its '
                        'hidden layers w times wider (default: 2,4,8,16)')
    parser.add_argument('--seeds', type=utils.positive_int, default=1,
                        help='Seeds 0 to N-1 for each point (default: 1)')
    parser.add_argument('--epoch', '-e', type=utils.positive_int, default=20,
                        help='Number of sweeps over the dataset to train (default: 20)')
    parser.add_argument('--batchsize', '-b', type=utils.positive_int, default=100,
                        help='Number of images in each mini-batch (default: 100)')
    parser.add_argument('--device', '-d', type=utils.device, default='-1',
                        help='Device specifier: -1 or @numpy for the CPU, 0 or @cupy:0 for '
                        'the first GPU (default: -1)')
    parser.add_argument('--out', '-o', default='result/frontier',
                        help='Folder of the results; a rerun continues there '
                        '(default: result/frontier)')
    utils.add_data_arguments(parser)
    args = parser.parse_args(argv)
    utils.check_data_arguments(parser, args)
    return args


def run(args):
    device = args.device
    utils.check_folder(args.out)
    train_set, val_set = utils.load_datasets(args)
    for folder in (args.out, os.path.join(args.out, RUNS_FOLDER)):
        utils.make_folder(args.out, folder)
    records = run_grid(args, device, train_set, val_set)
    title = '{}, {} epochs, {} training and {} validation images'.format(
        args.dataset, args.epoch, len(train_set), len(val_set))
    print(title)
    print(results.format_short_table(records))
    expansion = results.format_expansion_table(records)
    if expansion:
        print('expansion (validation accuracy, final; stored parameters; CPU s per epoch):')
        print(expansion)
        print("the same, each network's mean over its last {} epochs:".format(
            results.EXPANSION_LAST_EPOCHS))
        print(results.format_expansion_table(records, results.EXPANSION_LAST_EPOCHS))
    with open(os.path.join(args.out, results.TABLE_FILE), 'w') as f:
        f.write('{}\n\n{}\n'.format(title, results.format_table(records)))
    print('Records in {}, every figure in {}'.format(
        os.path.join(args.out, results.RESULTS_FILE), os.path.join(args.out, results.TABLE_FILE)))
    if utils.plots_available():
        plots = ((results.PLOT_FILE, False, lambda path: results.plot(records, path, title)),
                 (results.EXPANSION_PLOT_FILE, True, lambda path: results.plot_expansion(
                     records, path, title, results.EXPANSION_LAST_EPOCHS)))
        for name, wide, draw in plots:
            if any(results.is_wide(r) == wide for r in records):
                draw(os.path.join(args.out, name))
                print('Plot in {}'.format(os.path.join(args.out, name)))


def main(argv=None):
    return utils.exit_status(run, parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())
