#!/usr/bin/env python
"""A small Transformer classifier compressed with no fine-tuning: the accuracy it keeps.

Trains :class:`PatchTransformer` dense on the images of ``--dataset`` (Adam, its step
falling linearly to 0, Chainer's Trainer), one model per seed, saved in
``OUT/dense-seedN.npz`` and loaded on a rerun; then, for each ``--budgets`` and seed,
compresses a copy with ``compress_linears(model, budget, pattern=--pattern)``, given
``--calibration N`` training images drawn with the seed (the model's input,
``calibration=``) where N > 0, and records the validation accuracy it keeps with no fine-tuning.
``--sequential`` passes ``sequential=True`` (each layer fitted on the inputs the layers
compressed before it give it).

The model: each 28 x 28 image is 49 tokens of 4 x 4 patches, embedded by an ``L.Linear(16,
64)`` with learned position embeddings; two pre-norm encoder blocks (self-attention of 4
heads with separate query, key, value and output ``L.Linear(64, 64)``, an MLP 64-128-64),
every ``L.Linear`` of them called with ``n_batch_axes=2``; a final layer norm, the mean of
the tokens and an ``L.Linear(64, 10)``: 14 ``L.Linear`` layers.

Every measurement is a record of ``OUT/records.json``, written as soon as it is made; a
rerun skips those it has, and refuses a folder of other training settings. ``--table``
prints the table of the records in ``OUT`` (a folder or a records file) and trains nothing.
"""

import argparse
import copy
import dataclasses
import fractions
import inspect
import json
import math
import os
import statistics
import sys
import time

import chainer
import chainer.functions as F
import chainer.links as L
import numpy
from chainer import initializers, training
from chainer.training import extensions

from chainer_sharedlinear import compress_linears, stored_bytes

# The example's datasets and helpers; the experiments are not meant to be copied.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'examples'))
import compress_trained as recipe  # noqa: E402
import mnist3_utils as utils  # noqa: E402

IMAGE_SIZE = 28
N_CLASSES = 10


# --- The model -----------------------------------------------------------------------------

def layer_norm(norm, x):
    """``norm`` (an ``L.LayerNormalization``, which takes matrices) on each token of ``x``."""
    return F.reshape(norm(F.reshape(x, (-1, x.shape[-1]))), x.shape)


class EncoderBlock(chainer.Chain):
    """A pre-norm encoder block: ``x + attention(norm(x))``, then ``x + mlp(norm(x))``.

    It takes ``(batch, tokens, width)``; every ``L.Linear`` takes the batch and token
    axes as batch axes (``n_batch_axes=2``).
    """

    def __init__(self, width, n_heads, hidden):
        super().__init__()
        if width % n_heads:
            raise ValueError('width {} is not a multiple of n_heads {}'.format(width, n_heads))
        self.n_heads = n_heads
        with self.init_scope():
            self.attention_norm = L.LayerNormalization(width)
            self.query = L.Linear(width, width)
            self.key = L.Linear(width, width)
            self.value = L.Linear(width, width)
            self.attention_out = L.Linear(width, width)
            self.mlp_norm = L.LayerNormalization(width)
            self.mlp_in = L.Linear(width, hidden)
            self.mlp_out = L.Linear(hidden, width)

    def attention(self, x):
        batch, tokens, width = x.shape
        head = width // self.n_heads

        def heads(linear):  # (batch, n_heads, tokens, head)
            return F.transpose(F.reshape(linear(x, n_batch_axes=2),
                                         (batch, tokens, self.n_heads, head)), (0, 2, 1, 3))

        scores = F.matmul(heads(self.query), heads(self.key), transb=True) * (1 / math.sqrt(head))
        weighted = F.matmul(F.softmax(scores, axis=3), heads(self.value))
        merged = F.reshape(F.transpose(weighted, (0, 2, 1, 3)), (batch, tokens, width))
        return self.attention_out(merged, n_batch_axes=2)

    def forward(self, x):
        x = x + self.attention(layer_norm(self.attention_norm, x))
        hidden = F.relu(self.mlp_in(layer_norm(self.mlp_norm, x), n_batch_axes=2))
        return x + self.mlp_out(hidden, n_batch_axes=2)


class PatchTransformer(chainer.Chain):
    """A Transformer classifier of square images cut into square patches.

    ``model(x)`` takes images as the datasets give them, ``(batch, 784)`` (or
    ``(batch, 28, 28)``), and returns the logits of the classes.

    Args:
        patch (int): The side of a patch; the image's side a multiple of it.
        width (int): The size of a token's features.
        n_blocks (int): The encoder blocks.
        n_heads (int): The attention heads of a block.
        hidden (int): The hidden width of a block's MLP.
    """

    def __init__(self, patch=4, width=64, n_blocks=2, n_heads=4, hidden=128,
                 image_size=IMAGE_SIZE, n_classes=N_CLASSES):
        super().__init__()
        if image_size % patch:
            raise ValueError('image size {} is not a multiple of the patch {}'.format(
                image_size, patch))
        self.patch, self.image_size = patch, image_size
        n_tokens = (image_size // patch) ** 2
        with self.init_scope():
            self.embed = L.Linear(patch * patch, width)
            self.position = chainer.Parameter(initializers.Normal(0.02), (n_tokens, width))
            self.blocks = chainer.ChainList(*(EncoderBlock(width, n_heads, hidden)
                                              for _ in range(n_blocks)))
            self.final_norm = L.LayerNormalization(width)
            self.head = L.Linear(width, n_classes)

    def patches(self, x):
        """The images ``x`` as ``(batch, tokens, patch · patch)``, row by row of patches."""
        side = self.image_size // self.patch
        x = F.reshape(x, (-1, side, self.patch, side, self.patch))
        return F.reshape(F.transpose(x, (0, 1, 3, 2, 4)), (x.shape[0], side * side, -1))

    def forward(self, x):
        h = self.embed(self.patches(x), n_batch_axes=2)
        h = h + F.broadcast_to(self.position, h.shape)
        for block in self.blocks:
            h = block(h)
        return self.head(F.mean(layer_norm(self.final_norm, h), axis=1))


# --- Records -------------------------------------------------------------------------------

#: The values of the options that records made before the option lack.
UNRECORDED = dict(sequential=False)


def training_settings(args):
    """What changes a dense model: a folder's records and models share these."""
    return dict(dataset=args.dataset, data_dir=utils.data_source(args.dataset, args.data_dir),
                train_size=args.train_size, val_size=args.val_size, batchsize=args.batchsize,
                epochs=args.epoch, lr=args.lr)


class Records:
    """The records of ``OUT/records.json``, all of one :func:`training_settings`.

    One process per folder: each record is added to the file as it is, atomically.
    """

    def __init__(self, out, settings):
        self.path = recipe.records_path(out)
        self.settings = settings
        self.records = recipe.read_records(self.path)
        other = next((r for r in self.records
                      if {name: r.get(name) for name in settings} != settings), None)
        if other is not None:
            raise utils.UsageError(
                '{} holds the records and dense models of other training settings ({}); this '
                'run has {}: choose another --out (--table prints them)'.format(
                    out, describe(other, settings), describe(settings, settings)))

    def find(self, **key):
        return next((r for r in self.records
                     if all(r.get(name, UNRECORDED.get(name)) == value
                            for name, value in key.items())), None)

    def add(self, **record):
        record.update(self.settings)
        self.records.append(record)
        with open(self.path + '.tmp', 'w') as f:
            json.dump(self.records, f, indent=1, default=json_value)
            f.write('\n')
        os.replace(self.path + '.tmp', self.path)
        return record


def json_value(value):
    """A NumPy number or array of a report as JSON takes it."""
    if isinstance(value, (numpy.generic, numpy.ndarray)):
        return value.tolist()
    raise TypeError('{} is not JSON serializable'.format(type(value).__name__))


def describe(record, settings):
    return ', '.join('{} {}'.format(name, record.get(name)) for name in settings)


# --- Training and measuring ----------------------------------------------------------------

def train(model, train_set, val_set, args, seed, out):
    """Trains ``model`` (a classifier) with Adam; returns the log and the CPU seconds.

    Adam's step falls linearly from ``--lr`` to 0 over the training.
    """
    optimizer = chainer.optimizers.Adam(alpha=args.lr)
    optimizer.setup(model)
    train_iter = utils.ShuffledIterator(train_set, args.batchsize, seed)
    val_iter = chainer.iterators.SerialIterator(val_set, 1000, repeat=False, shuffle=False)
    updater = training.updaters.StandardUpdater(train_iter, optimizer, device=args.device)
    trainer = training.Trainer(updater, (args.epoch, 'epoch'), out=out)
    trainer.extend(extensions.LinearShift(
        'alpha', (args.lr, 0), (0, args.epoch * math.ceil(len(train_set) / args.batchsize))))
    trainer.extend(extensions.Evaluator(val_iter, model, device=args.device))
    trainer.extend(extensions.LogReport())
    utils.extend_progress(trainer, ['epoch', 'main/loss', 'main/accuracy',
                                    'validation/main/accuracy', 'elapsed_time'],
                          update_interval=20)
    started = time.process_time()
    trainer.run()
    return trainer.get_extension('LogReport').log, time.process_time() - started


def dense_model(train_set, val_set, args, seed, records):
    """The dense classifier of ``seed`` and its record: trained once, saved, loaded after."""
    path = os.path.join(args.out, 'dense-seed{}.npz'.format(seed))
    numpy.random.seed(seed)
    model = L.Classifier(PatchTransformer())
    model.to_device(args.device)
    record = records.find(seed=seed, variant='dense')
    if os.path.exists(path):
        if record is None:
            raise utils.UsageError('{} has no record in {}: it may be of other settings; move '
                                   'it away to train it again'.format(path, records.path))
        chainer.serializers.load_npz(path, model)
        return model, record
    if record is not None:
        raise utils.UsageError('{} records a dense model of seed {}, but {} is missing: put it '
                               'back, or choose another --out'.format(records.path, seed, path))
    log, cpu_seconds = train(model, train_set, val_set, args, seed,
                             os.path.join(args.out, 'runs', 'seed{}'.format(seed)))
    chainer.serializers.save_npz(path, model)
    record = records.add(
        seed=seed, variant='dense', model=path,
        accuracy=log[-1]['validation/main/accuracy'],
        curve=[entry['validation/main/accuracy'] for entry in log],
        train_accuracy=log[-1]['main/accuracy'],
        seconds_per_epoch=log[-1]['elapsed_time'] / log[-1]['epoch'],
        cpu_seconds_per_epoch=cpu_seconds / log[-1]['epoch'],
        model_bytes=stored_bytes(model.predictor))
    print('seed {}: dense {:.4f} ({:.1f} s per epoch)'.format(
        seed, record['accuracy'], record['seconds_per_epoch']), flush=True)
    return model, record


def calibration_images(train_set, n, seed):
    """``n`` training images drawn with ``seed``, as one array: the model's input."""
    if n > len(train_set):
        raise utils.UsageError('--calibration {} is more than the {} training images'.format(
            n, len(train_set)))
    picks = numpy.random.RandomState(seed).permutation(len(train_set))[:n]
    return chainer.dataset.concat_examples([train_set[i] for i in picks])[0]


def takes_calibration():
    return 'calibration' in inspect.signature(compress_linears).parameters


def measure(dense, dense_record, train_set, val_set, args, seed, budget, records):
    """Compresses a copy of ``dense`` to ``budget`` and records its accuracy, once."""
    key = dict(seed=seed, variant='compressed', budget=str(budget), pattern=args.pattern,
               calibration=args.calibration, sequential=args.sequential)
    if records.find(**key) is not None:
        return
    options = dict(pattern=args.pattern)
    if args.sequential:
        options['sequential'] = True
    if args.calibration:
        options['calibration'] = args.device.send(
            calibration_images(train_set, args.calibration, seed))
    model = copy.deepcopy(dense)
    started = time.perf_counter()
    report = compress_linears(model.predictor, float(budget), **options)
    seconds = time.perf_counter() - started
    accuracy = recipe.evaluate(model, val_set, args)
    layers = [dataclasses.asdict(row) for row in report.layers]
    model_bytes = stored_bytes(model.predictor)
    # Compression changes the L.Linear links alone: the rest stores what it stored.
    other_bytes = dense_record['model_bytes'] - sum(
        stored_bytes(link) for link in dense.predictor.links() if type(link) is L.Linear)
    records.add(**key, accuracy=accuracy, dense_accuracy=dense_record['accuracy'],
                model_bytes=model_bytes, dense_model_bytes=dense_record['model_bytes'],
                ratio=model_bytes / dense_record['model_bytes'],
                linears_ratio=(model_bytes - other_bytes) / (dense_record['model_bytes']
                                                             - other_bytes),
                compress_seconds=seconds, layers=layers, skipped=report.skipped)
    print('seed {}: {} {}{}{}: {:.4f} ({:+.2f} pt from dense), the model at {:.4f} of its '
          'bytes ({:.1f} s)'.format(
              seed, budget, args.pattern,
              ', {} calibration images'.format(args.calibration) if args.calibration else '',
              ', sequential' if args.sequential else '', accuracy,
              100 * (accuracy - dense_record['accuracy']),
              model_bytes / dense_record['model_bytes'], seconds), flush=True)


# --- The table -----------------------------------------------------------------------------

def mean_std(values, scale=1.0, digits=4):
    """``mean ± standard deviation`` (over seeds), the mean alone for one value."""
    mean = scale * statistics.mean(values)
    if len(values) == 1:
        return '{:.{}f}'.format(mean, digits)
    return '{:.{}f} ± {:.{}f}'.format(mean, digits, scale * statistics.stdev(values), digits)


def table(records):
    """A Markdown table: the dense models, then each budget, pattern and calibration size.

    Accuracies are means ± standard deviations over the seeds; ``from dense`` is
    the compressed model's accuracy less its own dense model's, in points; the
    pattern of a ``--sequential`` record is followed by ``, sequential``;
    ``linears`` is the stored bytes of the model's ``L.Linear`` layers (those the
    budget is of, compressed or left dense) over the dense ones', ``model`` the
    whole model's over the dense model's; ``s``, the seconds to compress.
    """
    lines = ['| budget | pattern | calibration | seeds | linears | model | accuracy | '
             'from dense (pt) | s |',
             '|---|---|---:|---:|---:|---:|---:|---:|---:|']
    dense = [r for r in records if r['variant'] == 'dense']
    if dense:
        lines.append('| dense | | | {} | 1 | 1 | {} | | {:.1f} s/epoch |'.format(
            len(dense), mean_std([r['accuracy'] for r in dense]),
            statistics.mean(r['seconds_per_epoch'] for r in dense)))
    groups = {}
    for record in records:
        if record['variant'] != 'dense':
            pattern = record['pattern'] + (', sequential' if record.get('sequential') else '')
            groups.setdefault((record['budget'], pattern, record['calibration']),
                              []).append(record)
    for (budget, pattern, calibration), group in sorted(
            groups.items(), key=lambda item: (-fractions.Fraction(item[0][0]),) + item[0][1:]):
        lines.append('| {} | {} | {} | {} | {:.4f} | {:.4f} | {} | {} | {:.1f} |'.format(
            budget, pattern, calibration, len(group),
            statistics.mean(r['linears_ratio'] for r in group),
            statistics.mean(r['ratio'] for r in group),
            mean_std([r['accuracy'] for r in group]),
            mean_std([r['accuracy'] - r['dense_accuracy'] for r in group], 100, 2),
            statistics.mean(r['compress_seconds'] for r in group)))
    return '\n'.join(lines)


# --- The command line ----------------------------------------------------------------------

def print_table(args):
    """``--table``: the records in ``--out`` as they are; nothing is trained or written."""
    path = recipe.records_path(args.out)
    records = recipe.read_records(path)
    if not records:
        raise utils.UsageError('{} holds no records: nothing to print'.format(path))
    print(table(records))


def run(args):
    if args.table:
        return print_table(args)
    if args.calibration and not takes_calibration():
        raise utils.UsageError(
            '--calibration {}: this chainer_sharedlinear.compress_linears takes no '
            'calibration yet; run without --calibration'.format(args.calibration))
    if args.sequential and not args.calibration:
        raise utils.UsageError('--sequential fits each layer on calibration data: give '
                               '--calibration N too')
    if os.path.isfile(args.out):
        raise utils.UsageError('--out {} is a file: a run writes its records and models into '
                               'a folder (--table reads a file of records)'.format(args.out))
    utils.check_folder(args.out)
    records = Records(args.out, training_settings(args))
    train_set, val_set = utils.load_datasets(args)
    utils.make_folder(args.out, args.out)
    print('{}: {} training and {} validation images; budgets {}; seeds {}'.format(
        args.dataset, len(train_set), len(val_set), ', '.join(map(str, args.budgets)),
        ', '.join(map(str, args.seeds))), flush=True)
    for seed in args.seeds:
        dense, dense_record = dense_model(train_set, val_set, args, seed, records)
        for budget in args.budgets:
            measure(dense, dense_record, train_set, val_set, args, seed, budget, records)
    print(table(records.records))


def non_negative_int(text):
    """An argument type: an integer of at least 0."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError('expected an integer of at least 0, got {!r}'.format(
            text))
    return int(text)


def parse_args(argv=None):
    parser = utils.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', '-o', default='result/transformer',
                        help='Folder of the dense models and the records; a rerun continues '
                        'there (default: result/transformer)')
    parser.add_argument('--seeds', type=utils.seed, nargs='+', default=[0],
                        help='A dense model for each (default: 0)')
    parser.add_argument('--budgets', type=recipe.budget, nargs='+',
                        default=[fractions.Fraction(1, 8), fractions.Fraction(1, 16),
                                 fractions.Fraction(1, 32)],
                        help="Fractions of the selected layers' bytes (default: 1/8 1/16 1/32)")
    parser.add_argument('--pattern', default='auto',
                        help="compress_linears' pattern (default: auto)")
    parser.add_argument('--calibration', type=non_negative_int, default=0, metavar='N',
                        help='Give compress_linears N training images drawn with the seed as '
                        'calibration data; 0: none (default: 0)')
    parser.add_argument('--sequential', action='store_true',
                        help='Fit each layer on the inputs the layers compressed before it give '
                        'it (compress_linears(sequential=True)); needs --calibration')
    parser.add_argument('--epoch', '-e', type=utils.positive_int, default=6,
                        help='Epochs of dense training (default: 6)')
    parser.add_argument('--batchsize', '-b', type=utils.positive_int, default=100)
    parser.add_argument('--lr', type=float, default=1e-3,
                        help="Adam's alpha at the start, falling linearly to 0 (default: 1e-3)")
    parser.add_argument('--table', action='store_true',
                        help='Print the table of the records in --out (a folder, or a records '
                        'file) and stop')
    parser.add_argument('--device', '-d', type=utils.device, default='@numpy')
    utils.add_data_arguments(parser)
    args = parser.parse_args(argv)
    utils.check_data_arguments(parser, args)
    return args


def main(argv=None):
    return utils.exit_status(run, parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())
