#!/usr/bin/env python
"""Compress a trained model to a budget and win its accuracy back: the recipe, measured.

Trains Chainer's MNIST MLP (784-1000-1000-10) dense, compresses all of its
layers to each ``--budgets`` of their bytes with each ``--patterns``
(``compress_linears``: the budget shared among the layers or split per layer,
``--allocation``; fitted to ``--calibration`` training images, drawn with the
seed, or to the weights), and measures the validation accuracy

- right after compression (``compressed``);
- after fine-tuning with Adam, without and with distillation from the dense
  model (``finetune``, ``distill``: after each epoch);
- of the same compressed layers trained from scratch for as many epochs as the
  dense training and the fine-tuning together (``scratch``).

Every measurement is a record of ``OUT/records.json``, keyed by its seed,
budget, pattern, calibration images, allocation and variant; a rerun skips
those it has. ``--table`` prints the table of the records in ``OUT`` (a folder, or a records
file such as docs/compress-fashion.json), whatever settings made them, and trains
nothing. See docs/compress.md.
"""

import argparse
import copy
import fcntl
import fractions
import json
import os
import sys
import time

import chainer
import chainer.functions as F
import chainer.links as L
import mnist3_utils as utils
import numpy
from chainer import training
from chainer.training import extensions

from chainer_sharedlinear import DistillationClassifier, apply_plan, compress_linears, stored_bytes
from chainer_sharedlinear.compress.compressing import ALLOCATIONS


class MLP(chainer.Chain):
    """Chainer's MNIST example's network: lazy layers, ReLU between them."""

    def __init__(self, n_units=1000, n_out=10):
        super().__init__()
        with self.init_scope():
            self.l1 = L.Linear(None, n_units)
            self.l2 = L.Linear(None, n_units)
            self.l3 = L.Linear(None, n_out)

    def forward(self, x):
        h1 = F.relu(self.l1(x))
        h2 = F.relu(self.l2(h1))
        return self.l3(h2)


def train(model, train_set, val_set, args, epochs, seed, lr):
    """Trains ``model`` (a classifier) with Adam; returns the validation accuracy of each epoch."""
    optimizer = chainer.optimizers.Adam(alpha=lr)
    optimizer.setup(model)
    train_iter = chainer.iterators.SerialIterator(
        train_set, args.batchsize, order_sampler=chainer.iterators.ShuffleOrderSampler(
            numpy.random.RandomState(seed)))
    val_iter = chainer.iterators.SerialIterator(val_set, 1000, repeat=False, shuffle=False)
    updater = training.updaters.StandardUpdater(train_iter, optimizer, device=args.device)
    trainer = training.Trainer(updater, (epochs, 'epoch'), out=os.path.join(args.out, 'runs'))
    trainer.extend(extensions.Evaluator(val_iter, model, device=args.device))
    trainer.extend(extensions.LogReport())
    utils.extend_progress(trainer, ['epoch', 'main/loss', 'validation/main/accuracy',
                                    'elapsed_time'], update_interval=50)
    trainer.run()
    return [entry['validation/main/accuracy'] for entry in
            trainer.get_extension('LogReport').log]


def evaluate(model, val_set, args):
    val_iter = chainer.iterators.SerialIterator(val_set, 1000, repeat=False, shuffle=False)
    evaluator = extensions.Evaluator(val_iter, model, device=args.device)
    evaluator.name = 'validation'
    return evaluator()['validation/main/accuracy']


def dense_model(train_set, val_set, args, seed, records):
    """The dense classifier of ``seed``: trained once, saved in OUT, loaded after."""
    path = os.path.join(args.out, 'dense-seed{}.npz'.format(seed))
    numpy.random.seed(seed)
    model = L.Classifier(MLP())
    model(*chainer.dataset.concat_examples([train_set[0]]))  # initialises the lazy layers
    model.to_device(args.device)
    if os.path.exists(path):
        chainer.serializers.load_npz(path, model)
        return model
    started = time.process_time()
    accuracies = train(model, train_set, val_set, args, args.dense_epochs, seed, args.lr)
    chainer.serializers.save_npz(path, model)
    records.add(seed=seed, budget='1', pattern='dense', variant='dense',
                accuracy=accuracies, cpu_seconds=time.process_time() - started)
    return model


def calibration_images(train_set, n_images, seed, device):
    """``n_images`` training images drawn with ``seed`` (``None`` for none), on ``device``."""
    if not n_images:
        return None
    picks = numpy.random.RandomState(seed).permutation(len(train_set))[:n_images]
    images, _ = chainer.dataset.concat_examples([train_set[i] for i in picks], device)
    return images


def measure(dense, train_set, val_set, args, seed, budget, pattern, records):
    """The four measurements of one budget and pattern that ``records`` lacks."""
    def key(variant):
        return dict(seed=seed, budget=str(budget), pattern=pattern,
                    calibration=args.calibration, allocation=args.allocation, variant=variant)

    if all(records.has(**key(variant)) for variant in variants(args)):
        return
    model = copy.deepcopy(dense)
    started = time.process_time()
    report = compress_linears(
        model.predictor, budget, pattern=pattern, allocation=args.allocation,
        calibration=calibration_images(train_set, args.calibration, seed, args.device))
    compress_seconds = time.process_time() - started
    layers = [dict(path=row.path, pattern=row.pattern, knobs=row.knobs,
                   stored_bytes=row.stored_bytes, dense_bytes=row.dense_bytes,
                   error=row.error, output_error=row.output_error) for row in report.layers]
    common = dict(layers=layers, skipped=report.skipped, compress_cpu_seconds=compress_seconds,
                  stored_bytes=sum(row.stored_bytes for row in report.layers),
                  dense_bytes=sum(row.dense_bytes for row in report.layers),
                  model_bytes=stored_bytes(model.predictor),
                  dense_model_bytes=stored_bytes(dense.predictor))
    if not records.has(**key('compressed')):
        records.add(accuracy=[evaluate(model, val_set, args)], **key('compressed'), **common)
    for variant in ('finetune', 'distill'):
        if records.has(**key(variant)) or variant not in variants(args):
            continue
        student = copy.deepcopy(model)
        if variant == 'distill':
            student = DistillationClassifier(student.predictor, dense.predictor,
                                             temperature=args.temperature, alpha=args.alpha)
        started = time.process_time()
        accuracies = train(student, train_set, val_set, args, args.finetune_epochs, seed,
                           args.finetune_lr)
        records.add(accuracy=accuracies, cpu_seconds=time.process_time() - started,
                    **key(variant), **common)
    if 'scratch' in variants(args) and not records.has(**key('scratch')):
        numpy.random.seed(seed)
        scratch = L.Classifier(MLP())
        apply_plan(scratch.predictor, report.plan, initialize=True)
        scratch.to_device(args.device)
        started = time.process_time()
        accuracies = train(scratch, train_set, val_set, args,
                           args.dense_epochs + args.finetune_epochs, seed, args.lr)
        records.add(accuracy=accuracies, cpu_seconds=time.process_time() - started,
                    **key('scratch'), **common)


def variants(args):
    """The variants measured of each budget and pattern."""
    return (('compressed', 'finetune') + (('distill',) if args.distill else ())
            + (('scratch',) if args.scratch else ()))


def records_path(out):
    """``OUT/records.json``, or ``OUT`` itself where it is a file of records."""
    return out if os.path.isfile(out) else os.path.join(out, 'records.json')


def read_records(path):
    """The records of the file ``path`` (none if there is no such file)."""
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            records = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise utils.UsageError('cannot read the records of {}: {}'.format(path, e)) from None
    if not (isinstance(records, list) and all(isinstance(r, dict) for r in records)):
        raise utils.UsageError('{} is not a file of records: expected a JSON list of '
                               'objects, as this script writes'.format(path))
    return records


class Records:
    """The records of ``OUT/records.json``, each written as soon as it is measured.

    They must all have been measured with this run's settings: a run adds to
    them, and its table compares them.
    """

    def __init__(self, args):
        self.path = os.path.join(args.out, 'records.json')
        self.settings = dict(dataset=args.dataset, train_size=args.train_size,
                             val_size=args.val_size, batchsize=args.batchsize,
                             dense_epochs=args.dense_epochs, lr=args.lr,
                             finetune_epochs=args.finetune_epochs,
                             finetune_lr=args.finetune_lr, temperature=args.temperature,
                             alpha=args.alpha)
        self.records = read_records(self.path)
        for record in self.records:
            other = {name: record.get(name) for name in self.settings}
            if other != self.settings:
                raise utils.UsageError(
                    '{} holds records of other settings ({}); this run has {}: choose another '
                    '--out (--table prints them as they are)'.format(
                        self.path, other, self.settings))

    def has(self, **key):
        return any(all(key_of(record, name) == value for name, value in key.items())
                   for record in self.records)

    def add(self, **record):
        """Adds ``record``, under a lock: several processes may share the folder."""
        record.update(self.settings)
        with open(self.path + '.lock', 'w') as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            records = read_records(self.path)
            records.append(record)
            with open(self.path + '.tmp', 'w') as f:
                json.dump(records, f, indent=1)
            os.replace(self.path + '.tmp', self.path)
        self.records = records


def key_of(record, name):
    """``record[name]``; a record written before calibration was a key had none (0), and
    one written before the allocation was has an unknown one (``None``), which no run's
    key matches."""
    return record.get(name, 0 if name == 'calibration' else None)


def model_ratio(record, dense_bytes):
    """The bytes of the whole model over the dense model's, or ``None`` where unknown.

    A record written before the whole model's bytes were recorded has them
    rebuilt from the layers' dense bytes, ``dense_bytes`` by path (a layer left
    dense counts whole); a layer that no record compressed has none.
    """
    if 'model_bytes' in record:
        return record['model_bytes'] / record['dense_model_bytes']
    kept = [dense_bytes.get(path) for path in record.get('skipped', {})]
    if None in kept:
        return None
    return (record.get('stored_bytes', 0) + sum(kept)) / sum(dense_bytes.values())


def table(records):
    """The mean accuracy of each budget, pattern and variant over the seeds, as text.

    ``ratio`` is the bytes of the whole model over the dense model's (``-``
    where the records cannot tell).
    """
    dense_bytes = {layer['path']: layer['dense_bytes'] for record in records
                   for layer in record.get('layers', ())}
    rows = {}
    for record in records:
        calibration, allocation = (key_of(record, name) for name in ('calibration',
                                                                       'allocation'))
        if record['variant'] == 'dense':  # the dense model is the same in every row
            calibration = allocation = None
        rows.setdefault((record['budget'], record['pattern'], calibration, allocation,
                         record['variant']), []).append(record)
    lines = ['{:>6} {:>10} {:>6} {:>6} {:>10} {:>6} {:>8} {:>8} {:>8}'.format(
        'budget', 'pattern', 'calib', 'alloc', 'variant', 'seeds', 'ratio', 'epoch 1', 'last')]
    for (budget, pattern, calibration, allocation, variant), group in sorted(
            rows.items(), key=lambda item: (-float(fractions.Fraction(item[0][0])),
                                            item[0][1], str(item[0][2:]), item[0][4])):
        first = numpy.mean([record['accuracy'][0] for record in group])
        last = numpy.mean([record['accuracy'][-1] for record in group])
        ratio = 1.0 if variant == 'dense' else model_ratio(group[0], dense_bytes)
        lines.append('{:>6} {:>10} {:>6} {:>6} {:>10} {:>6} {:>8} {:>8.4f} {:>8.4f}'.format(
            budget, pattern, '-' if calibration is None else calibration,
            '-' if allocation is None else allocation, variant, len(group),
            '-' if ratio is None else '{:.4f}'.format(ratio), first, last))
    return '\n'.join(lines)


def plot(records, path):
    """Accuracy by budget: each pattern's variants as markers, the dense model as a line."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    budgets = sorted({r['budget'] for r in records if r['variant'] != 'dense'},
                     key=lambda b: -float(fractions.Fraction(b)))
    patterns = sorted({r['pattern'] for r in records if r['variant'] != 'dense'})
    variants = ('compressed', 'finetune', 'distill', 'scratch')
    markers = dict(zip(variants, 'xos^'))
    figure, axes = plt.subplots(1, len(budgets), figsize=(4 * len(budgets), 4), sharey=True,
                                squeeze=False)
    dense = [r['accuracy'][-1] for r in records if r['variant'] == 'dense']
    labelled = set()
    for ax, budget in zip(axes[0], budgets):
        for i, pattern in enumerate(patterns):
            for variant in variants:
                found = [r['accuracy'][-1] for r in records if r['budget'] == budget
                         and r['pattern'] == pattern and r['variant'] == variant]
                if found:
                    ax.scatter([i], [numpy.mean(found)], marker=markers[variant],
                               color='C{}'.format(variants.index(variant)),
                               label=None if variant in labelled else variant)
                    labelled.add(variant)
        if dense:
            ax.axhline(numpy.mean(dense), color='gray', linestyle='--',
                       label=None if 'dense' in labelled else 'dense')
            labelled.add('dense')
        ax.set_xticks(range(len(patterns)))
        ax.set_xticklabels(patterns, rotation=45)
        ax.set_title('budget {}'.format(budget))
        ax.set_ylim(0.7, max(dense + [0.9]) + 0.01)
    axes[0][0].set_ylabel('validation accuracy (below 0.7: not drawn)')
    handles = [handle for ax in axes[0] for handle in ax.get_legend_handles_labels()[0]]
    figure.tight_layout(rect=(0, 0, 1, 0.9))
    figure.legend(handles=handles, loc='upper center', ncol=len(handles), fontsize='small')
    figure.savefig(path)


def print_table(args):
    """``--table``: the records in ``--out`` as they are; nothing is trained or written."""
    path = records_path(args.out)
    records = read_records(path)
    if not records:
        raise utils.UsageError('{} holds no records: nothing to print'.format(path))
    print(table(records))
    if args.plot:
        plot(records, args.plot)


def run(args):
    if args.table:
        return print_table(args)
    if os.path.isfile(args.out):
        raise utils.UsageError('--out {} is a file: a run writes its records into a folder '
                               '(--table reads a file of records)'.format(args.out))
    os.makedirs(args.out, exist_ok=True)
    records = Records(args)
    train_set, val_set = utils.load_datasets(args)
    print('{}: {} training and {} validation images; budgets {}; patterns {}; seeds {}'.format(
        args.dataset, len(train_set), len(val_set), ', '.join(map(str, args.budgets)),
        ', '.join(args.patterns), ', '.join(map(str, args.seeds))))
    for seed in args.seeds:
        dense = dense_model(train_set, val_set, args, seed, records)
        for budget in args.budgets:
            for pattern in args.patterns:
                measure(dense, train_set, val_set, args, seed, budget, pattern, records)
    print(table(records.records))


def budget(text):
    try:
        value = fractions.Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError('expected a fraction such as 1/8, got {!r}'.format(
            text)) from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError('expected a fraction in (0, 1], got {}'.format(text))
    return value


def calibration_size(text):
    if not text.isdigit():
        raise argparse.ArgumentTypeError('expected a number of images, 0 or more, got {!r}'.format(
            text))
    return int(text)


def parse_args(argv=None):
    parser = utils.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', '-o', default='result/compress',
                        help='Folder of the records (default: result/compress)')
    parser.add_argument('--budgets', type=budget, nargs='+',
                        default=[fractions.Fraction(1, 4), fractions.Fraction(1, 8),
                                 fractions.Fraction(1, 32)],
                        help='Fractions of the dense bytes (default: 1/4 1/8 1/32)')
    parser.add_argument('--patterns', nargs='+',
                        default=['auto', 'hashed', 'kronecker', 'lowrank', 'clustered',
                                 'monarch', 'shared', 'phm'],
                        help='Patterns of compress_linears, or auto (default: all and auto)')
    parser.add_argument('--seeds', type=utils.seed, nargs='+', default=[0])
    parser.add_argument('--calibration', type=calibration_size, default=0, metavar='N',
                        help='Fit the layers to N training images drawn with the seed '
                        '(default: 0, to the weights)')
    parser.add_argument('--allocation', choices=ALLOCATIONS, default='model',
                        help="The budget is the selected layers' together (model, the "
                        "default) or each layer's (layer)")
    parser.add_argument('--batchsize', '-b', type=utils.positive_int, default=100)
    parser.add_argument('--dense-epochs', type=utils.positive_int, default=5)
    parser.add_argument('--lr', type=float, default=1e-3, help="Adam's alpha, dense and scratch")
    parser.add_argument('--finetune-epochs', type=utils.positive_int, default=3)
    parser.add_argument('--finetune-lr', type=float, default=1e-4,
                        help="Adam's alpha when fine-tuning (default: 1e-4)")
    parser.add_argument('--temperature', type=float, default=4.0)
    parser.add_argument('--alpha', type=float, default=0.5,
                        help='The weight of the distillation term (default: 0.5)')
    parser.add_argument('--no-distill', dest='distill', action='store_false',
                        help='Do not fine-tune with distillation')
    parser.add_argument('--no-scratch', dest='scratch', action='store_false',
                        help='Do not train the compressed layers from scratch')
    parser.add_argument('--table', action='store_true',
                        help='Print the table of the records in --out (a folder, or a '
                        'records file), whatever settings made them, and stop')
    parser.add_argument('--plot', metavar='PATH',
                        help='With --table, draw the accuracies into this PNG file too')
    parser.add_argument('--device', '-d', type=utils.device, default='@numpy')
    utils.add_data_arguments(parser)
    args = parser.parse_args(argv)
    utils.check_data_arguments(parser, args)
    return args


if __name__ == '__main__':
    sys.exit(utils.exit_status(run, parse_args()))
