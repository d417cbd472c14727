"""What train_mnist3.py needs beyond Chainer's own extensions.

- One-line errors: a mistake in the command line or in the files it names
  raises :class:`UsageError`, which :func:`exit_status` prints in one line.
- The datasets: ``mnist`` (``chainer.datasets.get_mnist``, its files fetched
  from mirrors that still serve them), the bundled ``mnist-5k`` and Debian's
  ``fashion-mnist``.
- Exact resumption: an iterator whose snapshot holds its shuffling generator,
  a ``PlotReport`` that draws what ``LogReport`` logged, and the settings of
  the run, saved in the snapshot, that a resumed run must share.
- A result folder that loses nothing of the user's: a run replaces only what it
  writes, with ``--overwrite``, and its snapshot only the one before it.
- The per-epoch lines, under Chainer's progress bar on a terminal only.
- The table of ``--compare``.
"""

import argparse
import copy
import functools
import glob
import gzip
import hashlib
import http.client
import io
import json
import os
import pickle
import re
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib

import chainer
import numpy
from chainer import serializers, training
from chainer.dataset import download
from chainer.training import extensions
from chainer.training.extensions import snapshot_writers

# --- One-line errors -----------------------------------------------------------------------


class UsageError(Exception):
    """A mistake in the command line or in the files it names; the message is one line."""


class DatasetError(UsageError):
    """A dataset that cannot be found, fetched or read."""


class ArgumentParser(argparse.ArgumentParser):
    """Reports a mistake in one line, without the usage that ``--help`` shows."""

    def error(self, message):
        self.exit(2, '{}: error: {} (see --help)\n'.format(self.prog, message))


def positive_int(text):
    """An argument type: an integer of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError('expected a positive integer, got {!r}'.format(text))
    return int(text)


def seed(text):
    """An argument type: a seed of NumPy's ``RandomState``, 0 to 2**32 - 1."""
    if not text.isdigit() or int(text) >= 2 ** 32:
        raise argparse.ArgumentTypeError(
            'expected an integer from 0 to 2**32 - 1, got {!r}'.format(text))
    return int(text)


def device(spec):
    """An argument type: ``chainer.get_device(spec)``."""
    try:
        return chainer.get_device(spec)
    except (ValueError, RuntimeError, TypeError) as e:
        raise argparse.ArgumentTypeError(' '.join(str(e).split())) from None


def exit_status(run, args, out=None, catch_interrupt=True):
    """Calls ``run(args)``; returns 0, or 2 after a :class:`UsageError`'s one line.

    On Ctrl-C, returns 130 after saying how to resume from the latest snapshot
    in ``out`` (if given); without ``catch_interrupt`` the ``KeyboardInterrupt``
    propagates (under mpiexec, to ChainerMN's hook, which ends every rank).
    """
    prog = os.path.basename(sys.argv[0])
    try:
        run(args)
    except UsageError as e:
        print('{}: error: {}'.format(prog, e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if not catch_interrupt:
            raise
        snapshot = None if out is None else latest_snapshot(out)
        hint = '' if snapshot is None else '; --resume {} --out {} continues from {}'.format(
            out, out, snapshot)
        print('\n{}: interrupted{}'.format(prog, hint), file=sys.stderr)
        return 130
    return 0


# --- Datasets ------------------------------------------------------------------------------

DATASETS = ('mnist', 'mnist-5k', 'fashion-mnist')
N_CLASSES = 10
FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
BUNDLED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')
MNIST_5K_FILE = 'mnist-5k.npz'

#: The four IDX files of MNIST and of Fashion-MNIST, by part, and the MD5 of MNIST's.
IDX_FILES = {'train_images': 'train-images-idx3-ubyte.gz',
             'train_labels': 'train-labels-idx1-ubyte.gz',
             'val_images': 't10k-images-idx3-ubyte.gz',
             'val_labels': 't10k-labels-idx1-ubyte.gz'}
MNIST_MD5 = {'train-images-idx3-ubyte.gz': 'f68b3c2dcbeaaa9fbdd348bbdeb94873',
             'train-labels-idx1-ubyte.gz': 'd53e105ee54ea40749a09fcbcd1e9432',
             't10k-images-idx3-ubyte.gz': '9fb629c4189551a2d022fa330f9573f3',
             't10k-labels-idx1-ubyte.gz': 'ec29112dd5afa0611ce80d1b7f02629c'}
# Chainer 7.8.1 downloads from CHAINER_MNIST_URL, which no longer serves the files reliably.
MNIST_MIRRORS = ('https://ossci-datasets.s3.amazonaws.com/mnist/',
                 'https://storage.googleapis.com/cvdf-datasets/mnist/')
CHAINER_MNIST_URL = 'http://yann.lecun.com/exdb/mnist/'
OFFLINE_HINT = ('without a network, use --dataset mnist-5k (ships with the example) or '
                '--data-dir DIR with the four MNIST IDX files')

_IDX_DTYPES = {0x08: '>u1', 0x09: '>i1', 0x0B: '>i2', 0x0C: '>i4', 0x0D: '>f4', 0x0E: '>f8'}


def add_data_arguments(parser):
    """Adds the options that :func:`load_datasets` reads."""
    data = parser.add_argument_group('data')
    data.add_argument('--dataset', default='mnist-5k', choices=DATASETS,
                      help='mnist: the 60,000 + 10,000 MNIST digits, downloaded once; '
                      'mnist-5k: 5,000 MNIST digits that ship with the example (4,000 '
                      'to train, 1,000 to validate); fashion-mnist: read from --data-dir, '
                      'by default {} (Debian package dataset-fashion-mnist) '
                      '(default: mnist-5k)'.format(FASHION_MNIST_DIR))
    data.add_argument('--data-dir', metavar='DIR',
                      help='Read the dataset from this directory: the four IDX files '
                      '(.gz or not) for mnist and fashion-mnist, {} for mnist-5k'.format(
                          MNIST_5K_FILE))
    data.add_argument('--mirror', metavar='URL', action='append',
                      help='Download MNIST from this base URL instead of the default '
                      'mirrors; repeat it to try several in order')
    data.add_argument('--train-size', type=positive_int, metavar='N',
                      help='Train on the first N training images only (a quick run)')
    data.add_argument('--val-size', type=positive_int, metavar='N',
                      help='Validate on the first N validation images only')


def check_data_arguments(parser, args):
    if args.mirror and (args.dataset != 'mnist' or args.data_dir):
        parser.error('--mirror is for downloading --dataset mnist, without --data-dir')


def load_datasets(args):
    """The training and validation sets of :func:`add_data_arguments`' options.

    ``TupleDataset``s of float32 images in ``[0, 1]`` and int32 labels, as
    ``chainer.datasets.get_mnist`` gives them. A training set smaller than
    ``args.batchsize`` is refused: every iteration would count several epochs.
    """
    if args.dataset == 'mnist' and args.data_dir is None:
        train, val = get_mnist(args.mirror or MNIST_MIRRORS)
    elif args.dataset == 'mnist-5k':
        train, val = load_mnist_5k(os.path.join(args.data_dir or BUNDLED_DIR, MNIST_5K_FILE))
    else:
        train, val = load_idx_dir(args.data_dir or FASHION_MNIST_DIR, args.dataset)
    sets = []
    for option, size, dataset in (('--train-size', args.train_size, train),
                                  ('--val-size', args.val_size, val)):
        if size is not None and size > len(dataset):
            raise UsageError('{} {} is more than the {} images {} has'.format(
                option, size, len(dataset), args.dataset))
        sets.append(dataset if size is None else chainer.datasets.SubDataset(dataset, 0, size))
    if args.batchsize > len(sets[0]):
        raise UsageError('--batchsize {} is more than the {} training images: expected at '
                         'most {}, one minibatch per epoch'.format(
                             args.batchsize, len(sets[0]), len(sets[0])))
    return tuple(sets)


def data_source(name, data_dir):
    """``None`` for the dataset's own place, however ``data_dir`` names it; else its real path."""
    own = {'mnist-5k': BUNDLED_DIR, 'fashion-mnist': FASHION_MNIST_DIR}.get(name)
    if data_dir is None or (own and os.path.isdir(own) and os.path.samefile(data_dir, own)):
        return None
    return os.path.realpath(data_dir)


def as_dataset(images, labels):
    x = images.reshape(len(images), -1).astype(numpy.float32)
    x *= 1 / 255
    return chainer.datasets.TupleDataset(x, labels.astype(numpy.int32))


def read_idx(path):
    """Reads an IDX file, gzip-compressed or not, into an array; raises :class:`DatasetError`."""
    try:
        with open(path, 'rb') as f:
            data = f.read()
        if data[:2] == b'\x1f\x8b':
            data = gzip.decompress(data)
    except FileNotFoundError:
        raise DatasetError('{}: no such file'.format(path)) from None
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError('{}: corrupted gzip data ({})'.format(path, e)) from None
    if len(data) < 4 or data[:2] != b'\0\0' or data[2] not in _IDX_DTYPES:
        raise DatasetError(
            '{}: not an IDX file: wrong magic number {}; expected two zero bytes, a type '
            'code and the number of dimensions'.format(path, '0x' + data[:4].hex()))
    header = 4 + 4 * data[3]
    if len(data) < header:
        raise DatasetError('{}: truncated: the header of {} dimensions needs {} bytes, '
                           'the file has {}'.format(path, data[3], header, len(data)))
    shape = tuple(numpy.frombuffer(data, '>u4', data[3], 4).tolist())
    dtype = numpy.dtype(_IDX_DTYPES[data[2]])
    expected, found = int(numpy.prod(shape)) * dtype.itemsize, len(data) - header
    if found != expected:
        raise DatasetError('{}: {}: the header gives shape {}, {} bytes of data, the file '
                           'has {}'.format(path, 'truncated' if found < expected else
                                           'too long', shape, expected, found))
    return numpy.frombuffer(data, dtype, offset=header).reshape(shape).astype(
        dtype.newbyteorder('='))


def check_images(images, labels, images_path, labels_path):
    """Raises :class:`DatasetError` unless these are uint8 images with as many labels 0-9."""
    if images.dtype != numpy.uint8 or images.ndim != 3:
        raise DatasetError('{}: expected images, unsigned bytes of shape (N, height, width); '
                           'found {} of shape {}'.format(images_path, images.dtype,
                                                         images.shape))
    if labels.dtype != numpy.uint8 or labels.ndim != 1:
        raise DatasetError('{}: expected labels, unsigned bytes of shape (N,); found {} of '
                           'shape {}'.format(labels_path, labels.dtype, labels.shape))
    if labels.size and labels.max() >= N_CLASSES:
        raise DatasetError('{}: label {} is out of range: expected 0 to {}'.format(
            labels_path, labels.max(), N_CLASSES - 1))
    if len(images) != len(labels):
        raise DatasetError('{} has {} images but {} has {} labels'.format(
            images_path, len(images), labels_path, len(labels)))


def load_idx_dir(folder, name):
    """The training and validation sets from the four IDX files in ``folder``."""
    if not os.path.isdir(folder):
        how = 'pass --data-dir DIR holding the four IDX files'
        if name == 'fashion-mnist' and folder == FASHION_MNIST_DIR:
            how = ("install Debian's dataset-fashion-mnist package (apt-get install "
                   'dataset-fashion-mnist) or pass --data-dir DIR holding its four IDX files')
        raise DatasetError('{}: {} is not a directory: {}'.format(name, folder, how))
    paths = {part: next((path for path in (os.path.join(folder, file_name),
                                           os.path.join(folder, file_name[:-3]))
                         if os.path.isfile(path)), None)
             for part, file_name in IDX_FILES.items()}
    missing = [IDX_FILES[part] for part, path in paths.items() if path is None]
    if missing:
        raise DatasetError('{}: {} lacks {} (each IDX file may be gzip-compressed or '
                           'not)'.format(name, folder, ', '.join(missing)))
    sets = []
    for split in ('train', 'val'):
        images, labels = (read_idx(paths[split + part]) for part in ('_images', '_labels'))
        check_images(images, labels, paths[split + '_images'], paths[split + '_labels'])
        sets.append(as_dataset(images, labels))
    return tuple(sets)


def get_mnist(mirrors):
    """``chainer.datasets.get_mnist(ndim=1)``, its files fetched from ``mirrors`` if need be.

    Unless Chainer's cache of the dataset exists, each of the four files that
    get_mnist reads from Chainer's download cache is put there first, from the
    first mirror that serves it with the right MD5.
    """
    cache = os.path.join(download.get_dataset_root(), 'pfnet', 'chainer', 'mnist')
    if not all(os.path.isfile(os.path.join(cache, n)) for n in ('train.npz', 'test.npz')):
        for name in IDX_FILES.values():
            fetch(CHAINER_MNIST_URL + name, MNIST_MD5[name], mirrors)
    try:
        return chainer.datasets.get_mnist(ndim=1)
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise DatasetError('{}: unreadable cache of chainer.datasets.get_mnist ({}); move it '
                           'away to download MNIST again'.format(cache, e)) from None


def _md5(path):
    digest = hashlib.md5()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url, md5, mirrors, timeout=30):
    """Puts the file of ``url`` into Chainer's download cache, with MD5 ``md5``; its path.

    A cached copy of another MD5 is fetched again. Each mirror is tried in
    turn (the mirror and the file's name); a download goes to a temporary file
    and into the cache only once its MD5 is right.
    """
    cache_dir = os.path.join(download.get_dataset_root(), '_dl_cache')
    path = os.path.join(cache_dir, hashlib.md5(url.encode('utf-8')).hexdigest())
    if os.path.isfile(path) and _md5(path) == md5:
        return path
    name = url.rsplit('/', 1)[1]
    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError as e:
        raise DatasetError('cannot create the download cache {} ({}); set CHAINER_DATASET_ROOT '
                           'to a writable folder'.format(cache_dir, e)) from None
    failures = []
    for mirror in mirrors:
        source = mirror.rstrip('/') + '/' + name
        print('Downloading {}'.format(source), file=sys.stderr)
        fd, part = tempfile.mkstemp(prefix=name + '.', suffix='.part', dir=cache_dir)
        try:
            digest = hashlib.md5()
            with os.fdopen(fd, 'wb') as out, \
                    urllib.request.urlopen(source, timeout=timeout) as response:
                for chunk in iter(lambda: response.read(1 << 16), b''):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() == md5:
                os.replace(part, path)
                return path
            failures.append('{} (MD5 {}, expected {})'.format(source, digest.hexdigest(), md5))
        except urllib.error.HTTPError as e:
            failures.append('{} (HTTP {} {})'.format(source, e.code, e.reason))
        except urllib.error.URLError as e:
            failures.append('{} ({})'.format(source, e.reason))
        except (OSError, http.client.HTTPException, ValueError) as e:
            failures.append('{} ({})'.format(source, e or type(e).__name__))
        finally:
            if os.path.exists(part):
                os.remove(part)
    raise DatasetError('cannot download {}: tried {}; {}'.format(
        name, '; '.join(failures) or 'no mirrors', OFFLINE_HINT))


def load_mnist_5k(path, n_train=400, n_val=100):
    """The bundled digits: of each, the first ``n_train`` train and the next ``n_val`` validate.

    Both sets take the digits in turn (0, 1, ..., 9, 0, ...), so any prefix is balanced.
    """
    try:
        with numpy.load(path, allow_pickle=False) as npz:
            images, labels = npz['images'], npz['labels']
    except FileNotFoundError:
        raise DatasetError('mnist-5k: {} does not exist; it ships with the example in '
                           'examples/data, or pass --data-dir DIR holding {}'.format(
                               path, MNIST_5K_FILE)) from None
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise DatasetError('mnist-5k: {} is not a readable npz file with images and labels '
                           '({})'.format(path, e)) from None
    check_images(images, labels, path, path)
    counts = numpy.bincount(labels, minlength=N_CLASSES)
    if (counts < n_train + n_val).any():
        raise DatasetError('{}: expected at least {} images of each of the {} digits, found '
                           '{}'.format(path, n_train + n_val, N_CLASSES, counts.tolist()))
    by_digit = numpy.stack([numpy.flatnonzero(labels == digit)[:n_train + n_val]
                            for digit in range(N_CLASSES)])
    return tuple(as_dataset(images[order], labels[order]) for order in (
        by_digit[:, :n_train].T.ravel(), by_digit[:, n_train:].T.ravel()))


# --- Exact resumption ----------------------------------------------------------------------

class ShuffledIterator(chainer.iterators.SerialIterator):
    """Chainer's ``SerialIterator`` shuffled by ``RandomState(seed)``, saved in its snapshot.

    Chainer's own snapshot of an iterator lacks the generator that shuffles
    the next epochs, so a resumed run drew other orders than an unbroken one.
    Every process that makes one from the same seed over a dataset of the same
    length draws the same orders (ChainerMN's shares have one length).
    """

    def __init__(self, dataset, batch_size, seed):
        self.random = numpy.random.RandomState(seed)
        super().__init__(dataset, batch_size, order_sampler=chainer.iterators.ShuffleOrderSampler(
            self.random))

    def serialize(self, serializer):
        super().serialize(serializer)
        state = serializer['order_sampler']
        algorithm, *values = self.random.get_state()
        self.random.set_state((algorithm,) + tuple(
            state(key, value) for key, value in zip(
                ('key', 'position', 'has_gauss', 'cached_gaussian'), values)))


class PlotReport(extensions.PlotReport):
    """Chainer's ``PlotReport``, drawing what ``LogReport`` logged, also after resuming.

    Chainer's keeps running means and a trigger of its own, which its snapshot
    lacks: an epoch resumed in its middle was drawn wrong. This one takes them
    from the trainer's ``LogReport`` (which needs the same trigger) and saves
    nothing, so a snapshot of a run that drew no plots resumes into one that does.
    """

    def initialize(self, trainer):
        log_report = trainer.get_extension('LogReport')
        self._data = {key: [(entry[self._x_key], entry[key])
                            for entry in log_report.log if key in entry]
                      for key in self._y_keys}
        self._summary = copy.deepcopy(log_report._summary)
        self._trigger = copy.deepcopy(log_report._trigger)

    def serialize(self, serializer):
        pass


class TrainingSettings(training.Extension):
    """The settings that change a run's result, saved in its snapshot.

    ``settings`` maps an option (``'--batchsize'``) to its value (``None``:
    not given, ``True``: a flag). Resuming with another value is refused in
    one line that names it.
    """

    trigger = (1, 'epoch')

    def __init__(self, settings):
        self.settings = settings

    def __call__(self, trainer):
        pass

    def serialize(self, serializer):
        saved = json.loads(serializer('settings', json.dumps(self.settings)))
        for key, value in self.settings.items():
            if saved.get(key) != value:
                raise UsageError('it was trained with {}, this run has {}'.format(
                    _setting(key, saved.get(key)), _setting(key, value)))


def _setting(key, value):
    if value is None or value is False:
        return 'no ' + key
    return key if value is True else '{} {}'.format(key, value)


SNAPSHOT_PREFIX = 'snapshot_iter_'


class LatestSnapshotWriter(snapshot_writers.SimpleWriter):
    """Removes the snapshot it replaces once it has saved one, and nothing else.

    That is the one it saved before or, first, ``replaces`` (the snapshot a
    resumed run continues). Chainer's ``n_retains`` would remove every file
    named like a snapshot, such as a user's ``snapshot_iter_4.bak``.
    """

    def __init__(self, replaces=None):
        # Uncompressed: trained float32 weights hardly shrink, and zlib is slow.
        super().__init__(savefun=functools.partial(serializers.save_npz, compression=False))
        self.replaces = replaces

    def __call__(self, filename, outdir, target):
        super().__call__(filename, outdir, target)
        path = os.path.join(outdir, filename)
        # The user may have moved it away meanwhile.
        if (self.replaces is not None and os.path.exists(self.replaces)
                and not os.path.samefile(self.replaces, path)):
            os.remove(self.replaces)
        self.replaces = path


def snapshot(replaces=None):
    """Chainer's trainer snapshot, ``snapshot_iter_N``, keeping only the latest."""
    return extensions.snapshot(filename=SNAPSHOT_PREFIX + '{.updater.iteration}',
                               writer=LatestSnapshotWriter(replaces))


def snapshot_iteration(name):
    """N of a file name ``snapshot_iter_N``, or ``None`` for any other name."""
    match = re.fullmatch(re.escape(SNAPSHOT_PREFIX) + r'(\d+)', name)
    return int(match.group(1)) if match else None


def latest_snapshot(folder):
    """The ``snapshot_iter_N`` with the largest N in ``folder``, or ``None``."""
    names = os.listdir(folder) if os.path.isdir(folder) else []
    iterations = {snapshot_iteration(name): name for name in names}
    iterations.pop(None, None)
    return os.path.join(folder, iterations[max(iterations)]) if iterations else None


def find_snapshot(path):
    """The snapshot that ``--resume path`` names: ``path``, or the latest one in it."""
    if os.path.isdir(path):
        if latest_snapshot(path) is None:
            raise UsageError('--resume {}: no {}N snapshot in that directory'.format(
                path, SNAPSHOT_PREFIX))
        return latest_snapshot(path)
    if not os.path.isfile(path):
        raise UsageError('--resume {}: no such snapshot file or directory'.format(path))
    return path


def read_snapshot(path):
    """The bytes of the snapshot at ``path``, checked to be an npz archive."""
    try:
        with open(path, 'rb') as f:
            content = f.read()
    except OSError as e:
        raise UsageError('cannot resume from {}: {}'.format(path, e.strerror or e)) from None
    if not zipfile.is_zipfile(io.BytesIO(content)):
        raise UsageError('cannot resume from {}: not a snapshot of this example (expected '
                         'the npz archive of a trainer, as {}N files are)'.format(
                             path, SNAPSHOT_PREFIX))
    return content


def resume(trainer, path, content):
    """Loads the snapshot ``content`` read from ``path`` into ``trainer``.

    Its :class:`TrainingSettings` are checked first, so that a run of other
    settings is refused by name rather than by the shape it does not fit.
    """
    try:
        serializers.load_npz(io.BytesIO(content), trainer.get_extension('TrainingSettings'),
                             path='extensions/TrainingSettings/')
    except UsageError as e:
        raise UsageError('cannot resume from {}: {}'.format(path, e)) from None
    except KeyError:
        raise UsageError('cannot resume from {}: it lacks the settings it was trained with, '
                         'as snapshots of an older train_mnist3.py do'.format(path)) from None
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error,
            pickle.UnpicklingError) as e:
        raise UsageError('cannot resume from {}: not a snapshot of this example ({})'.format(
            path, ' '.join(str(e).split()) or type(e).__name__)) from None
    try:
        # A run that drew no plots saved no trigger of PlotReport's, which has no state.
        serializers.load_npz(io.BytesIO(content), trainer, ignore_names=lambda key: key.startswith(
            'extension_triggers/PlotReport'))
    except (KeyError, ValueError, TypeError) as e:
        raise UsageError('cannot resume from {}: it does not fit this model and these '
                         'options ({})'.format(path, ' '.join(str(e).split()))) from None


# --- The result folder ---------------------------------------------------------------------

def check_folder(out, folder=''):
    """Raises unless ``folder`` of ``--out out`` is, or can become, a directory; creates nothing.

    ``out`` must not be empty (as an unset ``$OUT`` in ``--out "$OUT"`` gives).
    """
    if not out:
        raise UsageError("--out '' is empty: expected a directory (--out . for the current "
                         'one)')
    existing = (os.path.join(out, folder) if folder else out).rstrip(os.sep) or os.sep
    while existing and not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if existing and not os.path.isdir(existing):
        if existing == out.rstrip(os.sep):
            raise UsageError('--out {} is a file, not a directory'.format(out))
        raise UsageError('--out {}: {} is a file, not a directory'.format(out, existing))


def make_folder(out, folder):
    """Creates ``folder`` (``out`` or one in it) and checks that it can be written into."""
    try:
        os.makedirs(folder, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise UsageError('--out {}: cannot write into {} ({})'.format(
            out, folder, e.strerror or e)) from None


class ResultFolder(object):
    """What a run writes into ``--out``, and which earlier results there it replaces.

    ``results`` are the glob patterns, relative to ``out``, of what the run
    writes; of those that match ``snapshot_iter_*``, only ``snapshot_iter_N``
    counts. The earlier results are replaced with ``overwrite``; resuming from
    one of them (``resume_from``) continues that run there and replaces none
    (its first snapshot replaces ``continued``). Otherwise they are refused in
    one line, which suggests ``--resume`` where ``can_resume`` and ``out``
    holds a snapshot. Nothing changes on disk before :meth:`take`.
    """

    def __init__(self, out, results, overwrite=False, resume_from=None, can_resume=True):
        for folder in sorted({os.path.dirname(pattern) for pattern in results} | {''}):
            check_folder(out, folder)
        self.out, self.results = out, results
        found = self.find()
        self.continued = next((os.path.join(out, name) for name in found
                               if resume_from is not None
                               and os.path.samefile(resume_from, os.path.join(out, name))), None)
        self.replaced = [] if self.continued else found
        if found and not overwrite and not self.continued:
            resume = ''
            if can_resume and latest_snapshot(out) is not None:
                resume = ', --resume {} --out {} to continue that run there'.format(out, out)
            raise UsageError('{} already holds the results of a run ({}): pass --overwrite to '
                             'replace them{}, or another --out'.format(out, ', '.join(found),
                                                                       resume))

    def find(self):
        """The results that are in ``out`` now, relative to it."""
        found = set()
        for pattern in self.results:
            for path in glob.glob(os.path.join(glob.escape(self.out), pattern)):
                if (pattern.endswith(SNAPSHOT_PREFIX + '*')
                        and snapshot_iteration(os.path.basename(path)) is None):
                    continue
                if os.path.isdir(path) and not os.path.islink(path):
                    raise UsageError('--out {}: {} is a directory, where this run writes a '
                                     'file'.format(self.out, path))
                found.add(os.path.relpath(path, self.out))
        return sorted(found)

    def take(self):
        """Creates the folders, checks that they are writable, then removes ``replaced``."""
        for folder in sorted({os.path.normpath(os.path.join(self.out, os.path.dirname(p)))
                              for p in self.results}):
            make_folder(self.out, folder)
        for name in self.replaced:
            try:
                os.remove(os.path.join(self.out, name))
            except OSError as e:
                raise UsageError('--out {}: cannot replace {} ({})'.format(
                    self.out, name, e.strerror or e)) from None


# --- Reports -------------------------------------------------------------------------------

def plots_available():
    """Whether matplotlib can draw (to files); says why not on the standard error."""
    try:
        import matplotlib
    except ImportError:
        print('matplotlib is not installed, so there will be no plots: '
              "pip install -e '.[examples]'", file=sys.stderr)
        return False
    matplotlib.use('Agg')
    return True


class _Plain(object):
    """A stream without the one escape code ``PrintReport`` writes: erase what is below.

    On a terminal it clears the progress bar before each line; in a log there is
    no bar to clear.
    """

    ERASE_BELOW = '\033[J'

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        if text != self.ERASE_BELOW:
            self.stream.write(text)

    def flush(self):
        self.stream.flush()


def extend_progress(trainer, entries, update_interval, call_before_training=False):
    """A line of ``entries`` per epoch (``PrintReport``), under a progress bar on a terminal.

    Where the standard output is not a terminal (a log file, a pipe) the lines
    are plain text: no progress bar, no escape codes.
    """
    out = sys.stdout
    if out.isatty():
        trainer.extend(extensions.PrintReport(entries, out=out),
                       call_before_training=call_before_training)
        trainer.extend(extensions.ProgressBar(update_interval=update_interval, out=out))
    else:
        trainer.extend(extensions.PrintReport(entries, out=_Plain(out)),
                       call_before_training=call_before_training)


def seconds_per_epoch(log):
    """Wall-clock seconds per epoch of a ``LogReport`` log, first entry to last; nan if none."""
    first, last = log[0], log[-1]
    if last['epoch'] == first['epoch']:
        return float('nan')
    return (last['elapsed_time'] - first['elapsed_time']) / (last['epoch'] - first['epoch'])


def final_figures(log):
    last = log[-1]
    return ('Final validation accuracy: {:.4f} (epoch {}, validation loss {:.4f}; {:.2f} s '
            'per epoch)'.format(last['validation/main/accuracy'], last['epoch'],
                                last['validation/main/loss'], seconds_per_epoch(log)))


FIGURES = ('main/loss', 'main/accuracy', 'validation/main/loss', 'validation/main/accuracy')


def comparison_table(rows):
    """A Markdown table of ``(name, l2, n_params, log)`` rows: the last epoch of each."""
    lines = ['| model | l2 | parameters | s/epoch | train loss | train acc. '
             '| val. loss | val. acc. |',
             '|---|---|---:|---:|---:|---:|---:|---:|']
    for name, l2, n_params, log in rows:
        lines.append('| {} | `{}` | {:,} | {:.3f} | {} |'.format(
            name, l2, n_params, seconds_per_epoch(log),
            ' | '.join('{:.4f}'.format(log[-1][key]) for key in FIGURES)))
    return '\n'.join(lines)


def plot_comparison(rows, path, title):
    """Draws the loss and accuracy of every ``(name, _, _, log)`` row, training and validation."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.5))
    for index, (metric, legend_at) in enumerate((('loss', 'upper right'),
                                                 ('accuracy', 'lower right'))):
        axes = figure.add_subplot(1, 2, index + 1)
        for row_index, (name, _, _, log) in enumerate(rows):
            for key, style, what in (('validation/main/' + metric, '-', 'validation'),
                                     ('main/' + metric, '--', 'train')):
                points = [(entry['epoch'], entry[key]) for entry in log if key in entry]
                if points:
                    axes.plot(*zip(*points), style, color='C{}'.format(row_index % 10),
                              marker='.', label='{} ({})'.format(name, what))
        axes.set_xlabel('epoch')
        axes.set_ylabel(metric)
        axes.grid()
        axes.legend(loc=legend_at)
    figure.suptitle(title, fontsize=9)
    figure.savefig(path, bbox_inches='tight')
