"""The command line of the examples: one-line errors, argument types, common options.

A mistake in the command line, or in the files and folders it names, stops an
example with one line on the standard error and exit status 2, never with a
traceback: code raises :class:`UsageError` (or ``mnist_data.DatasetError``)
and :func:`exit_status` prints it.
"""

import argparse
import os
import sys

import chainer
import mnist_data


class UsageError(Exception):
    """A mistake in the command line or its files, reported in one line."""


class ReportedElsewhere(Exception):
    """A mistake that another process reports; this one exits with status 2 quietly."""


#: What :func:`exit_status` reports in one line.
ERRORS = (UsageError, mnist_data.DatasetError)


class ArgumentParser(argparse.ArgumentParser):
    """Reports a mistake in one line, without the usage that ``--help`` shows."""

    def error(self, message):
        self.exit(2, '{}: error: {} (see --help)\n'.format(self.prog, message))


def positive_int(text):
    """An argument type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError('expected a positive integer, got {!r}'.format(text))
    return value


def seed(text):
    """An argument type: a seed of NumPy's ``RandomState``, 0 to 2**32 - 1."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2 ** 32:
        raise argparse.ArgumentTypeError(
            'expected an integer from 0 to 2**32 - 1, got {!r}'.format(text))
    return value


def add_training_arguments(parser):
    """Adds the options of a Chainer trainer, as Chainer's MNIST example names them.

    ``--batchsize``, ``--epoch``, ``--device``, ``--out``, ``--resume``,
    ``--overwrite``, ``--seed`` and ``--snapshot-every``.
    """
    parser.add_argument('--batchsize', '-b', type=positive_int, default=100,
                        help='Number of images in each mini-batch (default: 100)')
    parser.add_argument('--epoch', '-e', type=positive_int, default=20,
                        help='Number of sweeps over the dataset to train (default: 20)')
    parser.add_argument('--device', '-d', type=str, default='-1',
                        help='Device specifier: -1 or @numpy for the CPU, 0 or @cupy:0 '
                        'for the first GPU (default: -1)')
    parser.add_argument('--out', '-o', default='result',
                        help='Directory to output the result (default: result)')
    parser.add_argument('--resume', '-r', metavar='SNAPSHOT',
                        help='Resume the training from a snapshot, or from the latest '
                        'snapshot in a directory; it continues exactly as if it had not '
                        'stopped')
    parser.add_argument('--overwrite', action='store_true',
                        help='Replace the results of an earlier run in --out (only the '
                        'files this run writes)')
    parser.add_argument('--seed', type=seed, default=0,
                        help='Seed of the initial weights and of the order of the '
                        'examples; the same seed gives the same results on the CPU '
                        '(default: 0)')
    parser.add_argument('--snapshot-every', type=positive_int, metavar='N',
                        help='Take the snapshot every N iterations instead of after every '
                        'epoch; only the latest is kept')


def add_data_arguments(parser):
    """Adds the options that choose the dataset: :func:`load_datasets` reads them."""
    data = parser.add_argument_group('data')
    data.add_argument('--dataset', default='mnist-5k', choices=mnist_data.DATASETS,
                      help='mnist: the 60,000 + 10,000 MNIST digits, downloaded once; '
                      'mnist-5k: 5,000 MNIST digits that ship with the example (4,000 '
                      'to train, 1,000 to validate); fashion-mnist: read from --data-dir, '
                      'by default {} (Debian package dataset-fashion-mnist) '
                      '(default: mnist-5k)'.format(mnist_data.FASHION_MNIST_DIR))
    data.add_argument('--data-dir', metavar='DIR',
                      help='Read the dataset from this directory: the four IDX files '
                      '(.gz or not) for mnist and fashion-mnist, {} for mnist-5k'.format(
                          mnist_data.MNIST_5K_FILE))
    data.add_argument('--mirror', metavar='URL', action='append',
                      help='Download MNIST from this base URL instead of the default '
                      'mirrors; repeat it to try several in order')
    data.add_argument('--train-size', type=positive_int, metavar='N',
                      help='Train on the first N training images only (a quick run)')
    data.add_argument('--val-size', type=positive_int, metavar='N',
                      help='Validate on the first N validation images only')


def check_data_arguments(parser, args):
    """Stops with ``parser.error`` on data options that contradict each other."""
    if args.mirror and (args.dataset != 'mnist' or args.data_dir):
        parser.error('--mirror is for downloading --dataset mnist, without --data-dir')


def load_datasets(args):
    """The training and validation sets as ``TupleDataset``s of float32 images, int32 labels.

    Reads the options of :func:`add_data_arguments`, and ``--batchsize``: a
    training set smaller than one minibatch is refused, as every iteration
    would then count several epochs.
    """
    mirrors = args.mirror or mnist_data.MNIST_MIRRORS
    train_raw, val_raw = mnist_data.load(args.dataset, args.data_dir, mirrors=mirrors)
    for option, size, (images, _) in (('--train-size', args.train_size, train_raw),
                                      ('--val-size', args.val_size, val_raw)):
        if size is not None and size > len(images):
            raise UsageError('{} {} is more than the {} images {} has'.format(
                option, size, len(images), args.dataset))
    train_set = mnist_data.as_dataset(*train_raw, size=args.train_size)
    if args.batchsize > len(train_set):
        raise UsageError('--batchsize {} is more than the {} training images: expected at '
                         'most {}, one minibatch per epoch'.format(
                             args.batchsize, len(train_set), len(train_set)))
    return train_set, mnist_data.as_dataset(*val_raw, size=args.val_size)


def print_settings(args, device, n_train, n_val, model=()):
    """Prints a run's settings as Chainer's examples do, with the model's ``(name, value)``s."""
    print('Device: {}'.format(device))
    print('# dataset: {} ({} training, {} validation images)'.format(args.dataset, n_train, n_val))
    for name, value in model:
        print('# {}: {}'.format(name, value))
    print('# Minibatch-size: {}\n# epoch: {}\n# seed: {}'.format(args.batchsize, args.epoch,
                                                                args.seed))


def get_device(spec):
    """``chainer.get_device(spec)``, or a :class:`UsageError` naming ``--device``."""
    try:
        return chainer.get_device(spec)
    except (ValueError, RuntimeError, TypeError) as e:
        raise UsageError('--device {}: {}'.format(spec, ' '.join(str(e).split()))) from None


def exit_status(run, args, on_interrupt=None):
    """Calls ``run(args)`` and returns the exit status of the example.

    0 when it returns; 2 after printing the one-line message of an error in
    :data:`ERRORS` (or quietly after :class:`ReportedElsewhere`); 130 on
    Ctrl-C, after printing ``interrupted`` and what ``on_interrupt()`` returns
    (a hint such as how to resume). With ``on_interrupt=None`` the
    ``KeyboardInterrupt`` propagates, e.g. for ChainerMN's hook to end the
    other processes.
    """
    prog = os.path.basename(sys.argv[0])
    try:
        run(args)
    except ERRORS as e:
        print('{}: error: {}'.format(prog, e), file=sys.stderr)
        return 2
    except ReportedElsewhere:
        return 2
    except KeyboardInterrupt:
        if on_interrupt is None:
            raise
        print('\n{}: interrupted{}'.format(prog, on_interrupt()), file=sys.stderr)
        return 130
    return 0
