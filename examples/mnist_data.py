"""The datasets of the MNIST example: where they come from and how they are read.

Three datasets, each as ``(train, validation)`` pairs of ``(images, labels)``
``uint8`` arrays, ``images`` of shape ``(N, 28, 28)``:

- ``mnist``: the 60,000 + 10,000 MNIST digits. Taken from Chainer's own cache
  when ``chainer.datasets.get_mnist`` has filled it, otherwise from this
  example's cache, otherwise downloaded: each of the four IDX files is tried on
  the mirrors in order, its MD5 checked, and only then moved into the cache.
- ``mnist-5k``: 5,000 real MNIST digits that ship with the example
  (``data/mnist-5k.npz``), split 4,000 / 1,000 with 400 / 100 of each digit.
- ``fashion-mnist``: Zalando's Fashion-MNIST in the same IDX format, read from
  a folder, by default the one Debian's ``dataset-fashion-mnist`` fills.

Anything that cannot be found, fetched or read raises :class:`DatasetError`,
whose message is one line meant for the user.
"""

import gzip
import hashlib
import http.client
import os
import struct
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib

import chainer
import numpy
from chainer.dataset import download

DATASETS = ('mnist', 'mnist-5k', 'fashion-mnist')

#: The four IDX files of MNIST and of Fashion-MNIST, by part.
IDX_FILES = {
    'train_images': 'train-images-idx3-ubyte.gz',
    'train_labels': 'train-labels-idx1-ubyte.gz',
    'val_images': 't10k-images-idx3-ubyte.gz',
    'val_labels': 't10k-labels-idx1-ubyte.gz',
}

#: MD5 sums of the MNIST files as the mirrors serve them.
MNIST_MD5 = {
    'train-images-idx3-ubyte.gz': 'f68b3c2dcbeaaa9fbdd348bbdeb94873',
    'train-labels-idx1-ubyte.gz': 'd53e105ee54ea40749a09fcbcd1e9432',
    't10k-images-idx3-ubyte.gz': '9fb629c4189551a2d022fa330f9573f3',
    't10k-labels-idx1-ubyte.gz': 'ec29112dd5afa0611ce80d1b7f02629c',
}

#: Base addresses tried in order. Chainer 7.8.1 downloads from
#: yann.lecun.com, which no longer serves the files reliably.
MNIST_MIRRORS = (
    'https://ossci-datasets.s3.amazonaws.com/mnist/',
    'https://storage.googleapis.com/cvdf-datasets/mnist/',
)

#: Where ``chainer.dataset.cached_download`` keeps what it fetched for
#: ``chainer.datasets.get_mnist``: reused when the MD5 matches.
CHAINER_MNIST_URL = 'http://yann.lecun.com/exdb/mnist/'

#: This example's download cache, under Chainer's dataset root.
CACHE_NAME = 'chainer_sharedlinear/mnist'

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'

BUNDLED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')
MNIST_5K_FILE = 'mnist-5k.npz'
MNIST_5K_TRAIN_PER_DIGIT = 400
MNIST_5K_VAL_PER_DIGIT = 100

N_CLASSES = 10

OFFLINE_HINT = ('without a network, use --dataset mnist-5k (ships with the example) or '
                '--data-dir DIR with the four MNIST IDX files')

# IDX type codes: the third byte of the magic number.
_IDX_DTYPES = {0x08: '>u1', 0x09: '>i1', 0x0B: '>i2', 0x0C: '>i4', 0x0D: '>f4', 0x0E: '>f8'}


class DatasetError(Exception):
    """A dataset that cannot be found, fetched or read; the message is one line."""


def load(name, data_dir=None, *, mirrors=MNIST_MIRRORS, md5sums=MNIST_MD5, timeout=30):
    """Loads a dataset by name.

    Args:
        name (str): One of :data:`DATASETS`.
        data_dir (str): A folder to read the files from instead of the default
            place (for ``mnist``: no cache and no download).
        mirrors: Base URLs to download MNIST from, tried in order.
        md5sums (dict): The MD5 each MNIST file must have, by file name.
        timeout (float): Seconds before a silent connection is given up.

    Returns:
        ``((train_images, train_labels), (val_images, val_labels))``, ``uint8``.
    """
    if name == 'mnist':
        if data_dir is not None:
            return _load_idx_dir(data_dir, name)
        return load_mnist(mirrors=mirrors, md5sums=md5sums, timeout=timeout)
    if name == 'mnist-5k':
        return load_mnist_5k(os.path.join(
            default_dir(name) if data_dir is None else data_dir, MNIST_5K_FILE))
    if name == 'fashion-mnist':
        return _load_idx_dir(default_dir(name) if data_dir is None else data_dir, name)
    raise DatasetError('unknown dataset {!r}: expected one of {}'.format(
        name, ', '.join(DATASETS)))


def default_dir(name):
    """The folder :func:`load` reads dataset ``name`` from without a ``data_dir``.

    ``None`` for ``mnist``, which is downloaded.
    """
    return {'mnist-5k': BUNDLED_DIR, 'fashion-mnist': FASHION_MNIST_DIR}.get(name)


def source(name, data_dir=None):
    """Where :func:`load` reads dataset ``name`` from, given ``data_dir``, once it has.

    ``None`` for the dataset's own place (:func:`default_dir`, or MNIST's
    download, its MD5 checked), however ``data_dir`` names it; otherwise the
    real path of ``data_dir``, so that two names of one folder are one source.
    """
    if data_dir is None:
        return None
    default = default_dir(name)
    if default is not None and os.path.isdir(default) and os.path.samefile(data_dir, default):
        return None
    return os.path.realpath(data_dir)


def as_dataset(images, labels, size=None):
    """Makes a :class:`~chainer.datasets.TupleDataset` of the first ``size`` examples.

    Images become ``float32`` vectors in ``[0, 1]`` and labels ``int32``, as
    ``chainer.datasets.get_mnist`` gives them.
    """
    if size is not None:
        images, labels = images[:size], labels[:size]
    x = images.reshape(len(images), -1).astype(numpy.float32)
    x *= 1 / 255
    return chainer.datasets.TupleDataset(x, labels.astype(numpy.int32))


# --- IDX files -----------------------------------------------------------------------------

def read_idx(path):
    """Reads an IDX file, gzip-compressed or not, into a NumPy array.

    Raises:
        DatasetError: The file is missing, is not IDX (wrong magic number), is
            truncated or too long, or fails gzip's checksum.
    """
    try:
        with open(path, 'rb') as f:
            data = f.read()
        if data[:2] == b'\x1f\x8b':
            data = gzip.decompress(data)
    except FileNotFoundError:
        raise DatasetError('{}: no such file'.format(path)) from None
    except (OSError, EOFError, zlib.error) as e:
        # BadGzipFile (an OSError) on a bad checksum, EOFError when cut short.
        raise DatasetError('{}: corrupted gzip data ({})'.format(path, e)) from None

    if len(data) < 4 or data[:2] != b'\0\0' or data[2] not in _IDX_DTYPES:
        raise DatasetError(
            '{}: not an IDX file: wrong magic number {}; expected two zero bytes, a type '
            'code and the number of dimensions'.format(path, '0x' + data[:4].hex()))
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError('{}: truncated: the header of {} dimensions needs {} bytes, '
                           'the file has {}'.format(path, ndim, header, len(data)))
    shape = struct.unpack('>{}I'.format(ndim), data[4:header])
    dtype = numpy.dtype(_IDX_DTYPES[data[2]])
    expected = int(numpy.prod(shape, dtype=numpy.int64)) * dtype.itemsize
    found = len(data) - header
    if found != expected:
        raise DatasetError('{}: {}: the header gives shape {}, {} bytes of data, the file '
                           'has {}'.format(path, 'truncated' if found < expected else
                                           'too long', shape, expected, found))
    return numpy.frombuffer(data, dtype, offset=header).reshape(shape).astype(
        dtype.newbyteorder('='))


def load_idx_pair(images_path, labels_path):
    """Reads an IDX file of images and one of their labels.

    Returns:
        ``(images, labels)``: ``uint8`` arrays of shapes ``(N, H, W)`` and ``(N,)``.
    """
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != numpy.uint8 or images.ndim != 3:
        raise DatasetError('{}: expected images, unsigned bytes of shape (N, height, width); '
                           'found {} of shape {}'.format(images_path, images.dtype,
                                                         images.shape))
    _check_labels(labels, labels_path)
    if len(images) != len(labels):
        raise DatasetError('{} has {} images but {} has {} labels'.format(
            images_path, len(images), labels_path, len(labels)))
    return images, labels


def _check_labels(labels, where):
    if labels.dtype != numpy.uint8 or labels.ndim != 1:
        raise DatasetError('{}: expected labels, unsigned bytes of shape (N,); found {} of '
                           'shape {}'.format(where, labels.dtype, labels.shape))
    if labels.size and labels.max() >= N_CLASSES:
        raise DatasetError('{}: label {} is out of range: expected 0 to {}'.format(
            where, labels.max(), N_CLASSES - 1))


def _find_idx_files(folder, name):
    """The paths of the four IDX files in ``folder``, each gzip-compressed or not."""
    if not os.path.isdir(folder):
        if name == 'fashion-mnist' and folder == FASHION_MNIST_DIR:
            how = ("install Debian's dataset-fashion-mnist package (apt-get install "
                   'dataset-fashion-mnist) or pass --data-dir DIR holding its four IDX files')
        else:
            how = 'pass --data-dir DIR holding the four IDX files'
        raise DatasetError('{}: {} is not a directory: {}'.format(name, folder, how))
    paths, missing = {}, []
    for part, file_name in IDX_FILES.items():
        candidates = [os.path.join(folder, n) for n in (file_name, file_name[:-3])]
        found = [p for p in candidates if os.path.isfile(p)]
        if found:
            paths[part] = found[0]
        else:
            missing.append(file_name)
    if missing:
        raise DatasetError('{}: {} lacks {} (each IDX file may be gzip-compressed or '
                           'not)'.format(name, folder, ', '.join(missing)))
    return paths


def _load_idx_dir(folder, name):
    paths = _find_idx_files(folder, name)
    return (load_idx_pair(paths['train_images'], paths['train_labels']),
            load_idx_pair(paths['val_images'], paths['val_labels']))


# --- MNIST: Chainer's cache, this example's cache, the mirrors -----------------------------

def load_mnist(mirrors=MNIST_MIRRORS, md5sums=MNIST_MD5, timeout=30):
    """Loads MNIST from a cache, or downloads it; see the module's docstring."""
    cached = _load_chainer_npz()
    if cached is not None:
        return cached
    paths = fetch_mnist(mirrors, md5sums, timeout=timeout)
    return (load_idx_pair(paths['train_images'], paths['train_labels']),
            load_idx_pair(paths['val_images'], paths['val_labels']))


def _load_chainer_npz():
    """MNIST from the ``.npz`` files ``chainer.datasets.get_mnist`` caches, if present."""
    folder = os.path.join(download.get_dataset_root(), 'pfnet', 'chainer', 'mnist')
    paths = [os.path.join(folder, n) for n in ('train.npz', 'test.npz')]
    if not all(os.path.isfile(p) for p in paths):
        return None
    parts = []
    for path in paths:
        try:
            with numpy.load(path, allow_pickle=False) as npz:
                x, y = npz['x'], npz['y']
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise DatasetError('{}: unreadable cache of chainer.datasets.get_mnist ({}); '
                               'move it away to download MNIST again'.format(path, e)) from None
        if x.dtype != numpy.uint8 or x.ndim != 2 or x.shape[1] != 28 * 28:
            raise DatasetError('{}: expected x of unsigned bytes of shape (N, 784), found {} '
                               '{}'.format(path, x.dtype, x.shape))
        _check_labels(y, path)
        if len(x) != len(y):
            raise DatasetError('{}: {} images but {} labels'.format(path, len(x), len(y)))
        parts.append((x.reshape(-1, 28, 28), y))
    return tuple(parts)


def fetch_mnist(mirrors=MNIST_MIRRORS, md5sums=MNIST_MD5, cache_dir=None, timeout=30):
    """Gets the four MNIST files into the cache, verified; returns their paths by part.

    A file already in ``cache_dir`` (by default ``CACHE_NAME`` under Chainer's
    dataset root) or in Chainer's download cache is used if its MD5 matches.
    """
    if cache_dir is None:
        cache_dir = os.path.join(download.get_dataset_root(), CACHE_NAME)
    paths = {}
    for part, name in IDX_FILES.items():
        chainer_copy = os.path.join(
            download.get_dataset_root(), '_dl_cache',
            hashlib.md5((CHAINER_MNIST_URL + name).encode('utf-8')).hexdigest())
        if not _has_md5(os.path.join(cache_dir, name), md5sums[name]) and \
                _has_md5(chainer_copy, md5sums[name]):
            paths[part] = chainer_copy
        else:
            paths[part] = fetch(name, md5sums[name], mirrors, cache_dir, timeout=timeout)
    return paths


def fetch(name, md5, mirrors, cache_dir, timeout=30):
    """Returns the path of file ``name`` in ``cache_dir``, downloading it if needed.

    Each mirror is tried in turn (``mirror + name``). A download goes to a
    temporary file beside the cache and is moved into the cache only once its
    MD5 matches ``md5``; a cached file whose MD5 does not match is downloaded
    again.

    Raises:
        DatasetError: Every mirror failed; the message says how each did.
    """
    path = os.path.join(cache_dir, name)
    if _has_md5(path, md5):
        return path
    if os.path.exists(path):
        print('{} does not have MD5 {}: downloading it again'.format(path, md5),
              file=sys.stderr)
    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError as e:
        raise DatasetError('cannot create the download cache {} ({}); set CHAINER_DATASET_ROOT '
                           'to a writable folder'.format(cache_dir, e)) from None
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip('/') + '/' + name
        print('Downloading {}'.format(url), file=sys.stderr)
        fd, part_path = tempfile.mkstemp(prefix=name + '.', suffix='.part', dir=cache_dir)
        try:
            with os.fdopen(fd, 'wb') as out:
                digest = _download(url, out, timeout)
            if digest == md5:
                os.replace(part_path, path)
                return path
            failures.append('{} (MD5 {}, expected {})'.format(url, digest, md5))
        except (OSError, http.client.HTTPException, ValueError) as e:
            failures.append('{} ({})'.format(url, _describe(e)))
        finally:
            if os.path.exists(part_path):
                os.remove(part_path)
    raise DatasetError('cannot download {}: tried {}; {}'.format(
        name, '; '.join(failures) or 'no mirrors', OFFLINE_HINT))


def _download(url, out, timeout):
    """Copies ``url`` into the file ``out`` and returns the MD5 of what came."""
    md5 = hashlib.md5()
    with urllib.request.urlopen(url, timeout=timeout) as response:
        for chunk in iter(lambda: response.read(1 << 16), b''):
            md5.update(chunk)
            out.write(chunk)
    return md5.hexdigest()


def _describe(error):
    if isinstance(error, urllib.error.HTTPError):
        return 'HTTP {} {}'.format(error.code, error.reason)
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return str(error) or type(error).__name__


def _has_md5(path, md5):
    if not os.path.isfile(path):
        return False
    digest = hashlib.md5()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest() == md5


# --- mnist-5k ------------------------------------------------------------------------------

def load_mnist_5k(path):
    """Reads ``mnist-5k.npz`` and splits it with :func:`split_per_digit`."""
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
    if images.dtype != numpy.uint8 or images.ndim != 3 or len(images) != len(labels):
        raise DatasetError('mnist-5k: {}: expected uint8 images of shape (N, 28, 28) and N '
                           'labels, found {} {} and {} labels'.format(
                               path, images.dtype, images.shape, len(labels)))
    _check_labels(labels, path)
    return split_per_digit(images, labels, MNIST_5K_TRAIN_PER_DIGIT, MNIST_5K_VAL_PER_DIGIT)


def split_per_digit(images, labels, n_train, n_val):
    """Splits a dataset into ``n_train`` and ``n_val`` examples of each class.

    Of each class, the first ``n_train`` examples in file order go to the
    training set and the next ``n_val`` to the validation set. Both sets are
    ordered class by class in turn (0, 1, ..., 9, 0, 1, ...), so that any
    prefix of them is balanced too.
    """
    counts = numpy.bincount(labels, minlength=N_CLASSES)
    if (counts < n_train + n_val).any():
        raise DatasetError('expected at least {} examples of each of the {} classes, found '
                           '{}'.format(n_train + n_val, N_CLASSES, counts.tolist()))
    by_class = numpy.stack([numpy.flatnonzero(labels == c)[:n_train + n_val]
                            for c in range(N_CLASSES)])
    train = by_class[:, :n_train].T.ravel()
    val = by_class[:, n_train:].T.ravel()
    return (images[train], labels[train]), (images[val], labels[val])
