"""The example's datasets (examples/mnist3_utils.py): the IDX reader, the verified
downloader, mnist-5k."""

import argparse
import gzip
import hashlib
import http.server
import os
import socket
import struct
import threading

import chainer
import numpy as np
import pytest

from tests.examples_tests import import_script

utils = import_script('examples', 'mnist3_utils')
DatasetError = utils.DatasetError
pytestmark = pytest.mark.usefixtures('dataset_root')

IDX_NAMES = utils.IDX_FILES


def load(name, data_dir=None, mirrors=None):
    """The training and validation sets of ``--dataset name --data-dir data_dir``."""
    return utils.load_datasets(argparse.Namespace(
        dataset=name, data_dir=data_dir, mirror=mirrors, train_size=None, val_size=None,
        batchsize=1))


def raw(dataset):
    """The uint8 images, of shape (N, 28, 28), and the labels of a dataset of the example."""
    x, t = chainer.dataset.concat_examples(dataset)
    assert x.dtype == np.float32 and t.dtype == np.int32
    return np.rint(x * 255).astype(np.uint8).reshape(-1, 28, 28), t.astype(np.uint8)


def idx_bytes(array):
    """``array`` in the IDX format, big-endian."""
    codes = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C,
             np.float32: 0x0D, np.float64: 0x0E}
    code = codes[array.dtype.type]
    header = struct.pack('>BBBB', 0, 0, code, array.ndim)
    header += struct.pack('>{}I'.format(array.ndim), *array.shape)
    return header + array.astype(array.dtype.newbyteorder('>')).tobytes()


def write(path, data, compress=None):
    if compress is None:
        compress = str(path).endswith('.gz')
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path


def small_mnist(n_train=30, n_val=20, seed=0):
    """A fake MNIST: the four ``.gz`` files' contents by name, and the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        'train_images': rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        'train_labels': (np.arange(n_train) % 10).astype(np.uint8),
        'val_images': rng.integers(0, 256, (n_val, 28, 28), dtype=np.uint8),
        'val_labels': (np.arange(n_val)[::-1] % 10).astype(np.uint8),
    }
    files = {IDX_NAMES[part]: gzip.compress(idx_bytes(a), mtime=0)
             for part, a in arrays.items()}
    return files, arrays


def md5(data):
    return hashlib.md5(data).hexdigest()


class MirrorHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``/good/NAME`` as is, ``/bad/NAME`` altered, ``/short/NAME`` cut
    short of its Content-Length, and 404 for anything else."""

    files = {}
    requests = []

    def do_GET(self):
        self.requests.append(self.path)
        kind, _, name = self.path.strip('/').partition('/')
        data = self.files.get(name)
        if data is None or kind not in ('good', 'bad', 'short'):
            self.send_error(404)
            return
        if kind == 'bad':
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        self.send_response(200)
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data[:len(data) // 2] if kind == 'short' else data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """An HTTP server on 127.0.0.1 serving a small fake MNIST; yields its base URL."""
    files, arrays = small_mnist()
    handler = type('Handler', (MirrorHandler,), {'files': files, 'requests': []})
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = 'http://127.0.0.1:{}/'.format(httpd.server_address[1])
    httpd.files, httpd.arrays, httpd.requests = files, arrays, handler.requests
    httpd.md5sums = {name: md5(data) for name, data in files.items()}
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def closed_port_url():
    """The address of a port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    return 'http://127.0.0.1:{}/'.format(port)


def assert_same_dataset(loaded, arrays):
    (train_x, train_y), (val_x, val_y) = (raw(dataset) for dataset in loaded)
    np.testing.assert_array_equal(train_x, arrays['train_images'])
    np.testing.assert_array_equal(train_y, arrays['train_labels'])
    np.testing.assert_array_equal(val_x, arrays['val_images'])
    np.testing.assert_array_equal(val_y, arrays['val_labels'])


# --- The downloader ------------------------------------------------------------------------

def cached(dataset_root, name):
    """Where the file ``name`` of MNIST lies in Chainer's download cache."""
    url = utils.CHAINER_MNIST_URL + name
    return dataset_root / '_dl_cache' / hashlib.md5(url.encode()).hexdigest()


@pytest.fixture
def fake_md5(server, monkeypatch):
    """The sums of the server's files in place of MNIST's."""
    for name, md5sum in server.md5sums.items():
        monkeypatch.setitem(utils.MNIST_MD5, name, md5sum)


def test_download_verifies_and_caches(server, dataset_root, fake_md5):
    loaded = utils.get_mnist([server.url + 'good/'])
    assert_same_dataset(loaded, server.arrays)
    for name, data in server.files.items():
        assert cached(dataset_root, name).read_bytes() == data
    # No partial download is left behind.
    assert not [n for n in os.listdir(dataset_root / '_dl_cache') if n.endswith('.part')]
    assert len(server.requests) == 4


def test_wrong_checksum_is_rejected_and_the_next_mirror_tried(server, dataset_root):
    mirrors = [server.url + 'bad/', server.url + 'short/', server.url + 'good/']
    for name in IDX_NAMES.values():
        path = utils.fetch(utils.CHAINER_MNIST_URL + name, server.md5sums[name], mirrors)
        assert path == str(cached(dataset_root, name))
        assert open(path, 'rb').read() == server.files[name]
        assert server.requests.count('/bad/' + name) == 1
        assert server.requests.count('/short/' + name) == 1
        assert server.requests.count('/good/' + name) == 1
    assert not [n for n in os.listdir(dataset_root / '_dl_cache') if n.endswith('.part')]


def test_every_mirror_failing_gives_one_clear_error(server, dataset_root, fake_md5):
    dead = closed_port_url()
    mirrors = [server.url + 'bad/', server.url + 'missing/', dead]
    with pytest.raises(DatasetError) as info:
        utils.get_mnist(mirrors)
    message = str(info.value)
    assert '\n' not in message
    name = IDX_NAMES['train_images']
    assert server.url + 'bad/' + name in message
    assert 'expected ' + server.md5sums[name] in message
    assert server.url + 'missing/' + name in message and 'HTTP 404' in message
    assert dead + name in message and 'refused' in message
    assert '--dataset mnist-5k' in message and '--data-dir' in message
    # Nothing corrupted was cached, and no partial download was left behind.
    cache = dataset_root / '_dl_cache'
    assert not cache.exists() or os.listdir(cache) == []


def test_cache_is_used_without_network(server, dataset_root, fake_md5):
    first = utils.get_mnist([server.url + 'good/'])
    n_requests = len(server.requests)
    server.shutdown()
    # Chainer's cache of the dataset, then the four files in its download cache.
    assert_same_dataset(utils.get_mnist([closed_port_url()]), server.arrays)
    for split in ('train.npz', 'test.npz'):
        os.remove(dataset_root / 'pfnet' / 'chainer' / 'mnist' / split)
    assert_same_dataset(utils.get_mnist([closed_port_url()]), server.arrays)
    assert len(server.requests) == n_requests
    assert_same_dataset(first, server.arrays)


def test_corrupted_cache_entry_is_downloaded_again(server, dataset_root):
    name = IDX_NAMES['train_labels']
    path = cached(dataset_root, name)
    path.parent.mkdir(parents=True)
    path.write_bytes(b'garbage')
    assert utils.fetch(utils.CHAINER_MNIST_URL + name, server.md5sums[name],
                       [server.url + 'good/']) == str(path)
    assert path.read_bytes() == server.files[name]
    assert server.requests.count('/good/' + name) == 1


def test_chainer_download_cache_is_used(server, dataset_root, fake_md5):
    # chainer.datasets.get_mnist's downloads, kept under the MD5 of their URL.
    for name, data in server.files.items():
        cached(dataset_root, name).parent.mkdir(parents=True, exist_ok=True)
        cached(dataset_root, name).write_bytes(data)
    assert_same_dataset(utils.get_mnist([]), server.arrays)
    assert server.requests == []


def test_chainer_npz_cache_is_used(dataset_root):
    _, arrays = small_mnist()
    folder = dataset_root / 'pfnet' / 'chainer' / 'mnist'
    folder.mkdir(parents=True)
    for split, part in (('train', 'train'), ('test', 'val')):
        np.savez_compressed(folder / (split + '.npz'),
                            x=arrays[part + '_images'].reshape(-1, 784),
                            y=arrays[part + '_labels'])
    assert_same_dataset(load('mnist', mirrors=[]), arrays)


def test_broken_chainer_npz_cache_is_reported(dataset_root):
    folder = dataset_root / 'pfnet' / 'chainer' / 'mnist'
    folder.mkdir(parents=True)
    (folder / 'train.npz').write_bytes(b'not a zip')
    (folder / 'test.npz').write_bytes(b'not a zip')
    with pytest.raises(DatasetError, match='unreadable cache of chainer.datasets.get_mnist'):
        load('mnist', mirrors=[])
    assert (folder / 'train.npz').read_bytes() == b'not a zip'  # left for the user to judge


# --- The IDX reader ------------------------------------------------------------------------

@pytest.mark.parametrize('compress', [False, True])
@pytest.mark.parametrize('array', [
    np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
    np.array([3, 1, 4], np.uint8),
    np.array([[-1, 2], [3, -40000]], np.int32),
    np.array([0.5, -2.25], np.float32),
    np.array([1e300], np.float64),
    np.zeros((0, 28, 28), np.uint8),
])
def test_read_idx(tmp_path, array, compress):
    path = write(tmp_path / 'a', idx_bytes(array), compress)
    read = utils.read_idx(str(path))
    assert read.dtype == array.dtype and read.dtype.isnative
    np.testing.assert_array_equal(read, array)


def test_read_idx_wrong_magic_number(tmp_path):
    data = bytearray(idx_bytes(np.zeros((2, 3), np.uint8)))
    data[1] = 8
    path = write(tmp_path / 'a', bytes(data))
    with pytest.raises(DatasetError, match='wrong magic number 0x00080802'):
        utils.read_idx(str(path))


@pytest.mark.parametrize('data', [b'', b'\0\0', b'\0\0\x07\x01', b'%PDF-1.4 ...'])
def test_read_idx_not_idx(tmp_path, data):
    path = write(tmp_path / 'a', data, compress=False)
    with pytest.raises(DatasetError, match='not an IDX file'):
        utils.read_idx(str(path))


@pytest.mark.parametrize('compress', [False, True])
def test_read_idx_short_read(tmp_path, compress):
    data = idx_bytes(np.zeros((10, 28, 28), np.uint8))[:-1]
    path = write(tmp_path / 'a', data, compress)
    with pytest.raises(DatasetError, match=r'truncated: .* 7840 bytes of data, the file has 7839'):
        utils.read_idx(str(path))


def test_read_idx_truncated_header(tmp_path):
    path = write(tmp_path / 'a', idx_bytes(np.zeros((10, 28, 28), np.uint8))[:10])
    with pytest.raises(DatasetError, match='truncated: the header of 3 dimensions needs 16'):
        utils.read_idx(str(path))


def test_read_idx_too_long(tmp_path):
    path = write(tmp_path / 'a', idx_bytes(np.zeros(5, np.uint8)) + b'\0')
    with pytest.raises(DatasetError, match='too long'):
        utils.read_idx(str(path))


def test_read_idx_truncated_gzip(tmp_path):
    data = gzip.compress(idx_bytes(np.arange(1000, dtype=np.int32)))
    path = write(tmp_path / 'a.gz', data[:len(data) // 2], compress=False)
    with pytest.raises(DatasetError, match='corrupted gzip data'):
        utils.read_idx(str(path))


def test_read_idx_gzip_checksum_mismatch(tmp_path):
    data = bytearray(gzip.compress(idx_bytes(np.arange(1000, dtype=np.int32))))
    data[-6] ^= 0xFF  # in the CRC-32 of the trailer
    path = write(tmp_path / 'a.gz', bytes(data), compress=False)
    with pytest.raises(DatasetError, match='corrupted gzip data .*CRC'):
        utils.read_idx(str(path))


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DatasetError, match='no such file'):
        utils.read_idx(str(tmp_path / 'nothing'))


@pytest.mark.parametrize('images, labels, message', [
    (np.zeros((3, 28, 28), np.uint8), np.zeros(4, np.uint8), '3 images but .* 4 labels'),
    (np.zeros((3, 784), np.uint8), np.zeros(3, np.uint8), 'expected images'),
    (np.zeros((3, 28, 28), np.float32), np.zeros(3, np.uint8), 'expected images'),
    (np.zeros((3, 28, 28), np.uint8), np.zeros((3, 1), np.uint8), 'expected labels'),
    (np.zeros((3, 28, 28), np.uint8), np.array([0, 10, 1], np.uint8),
     'label 10 is out of range'),
])
def test_load_idx_pair_mismatch(tmp_path, images, labels, message):
    x = write(tmp_path / 'x.gz', idx_bytes(images))
    y = write(tmp_path / 'y.gz', idx_bytes(labels))
    with pytest.raises(DatasetError, match=message):
        utils.check_images(utils.read_idx(str(x)), utils.read_idx(str(y)), str(x), str(y))


@pytest.mark.parametrize('compress', [False, True])
@pytest.mark.parametrize('name', ['mnist', 'fashion-mnist'])
def test_data_dir(tmp_path, name, compress):
    files, arrays = small_mnist()
    for file_name, data in files.items():
        if compress:
            write(tmp_path / file_name, data, compress=False)
        else:
            write(tmp_path / file_name[:-3], gzip.decompress(data), compress=False)
    assert_same_dataset(load(name, str(tmp_path)), arrays)


def test_data_dir_without_the_files(tmp_path):
    files, _ = small_mnist()
    write(tmp_path / IDX_NAMES['train_images'], files[IDX_NAMES['train_images']],
          compress=False)
    with pytest.raises(DatasetError) as info:
        load('fashion-mnist', str(tmp_path))
    message = str(info.value)
    assert message.startswith('fashion-mnist: {} lacks '.format(tmp_path))
    for part in ('train_labels', 'val_images', 'val_labels'):
        assert IDX_NAMES[part] in message
    assert IDX_NAMES['train_images'] not in message


def test_data_dir_that_does_not_exist(tmp_path):
    with pytest.raises(DatasetError, match='is not a directory: pass --data-dir'):
        load('mnist', str(tmp_path / 'nothing'))


def test_fashion_mnist_default_dir_names_the_debian_package(monkeypatch, tmp_path):
    monkeypatch.setattr(utils, 'FASHION_MNIST_DIR', str(tmp_path / 'absent'))
    with pytest.raises(DatasetError, match='apt-get install dataset-fashion-mnist'):
        load('fashion-mnist')


# --- mnist-5k ------------------------------------------------------------------------------

def test_mnist_5k_split():
    (train_x, train_y), (val_x, val_y) = (raw(dataset) for dataset in load('mnist-5k'))
    assert train_x.shape == (4000, 28, 28) and val_x.shape == (1000, 28, 28)
    assert train_x.dtype == np.uint8 and train_y.dtype == np.uint8
    assert np.bincount(train_y).tolist() == [400] * 10
    assert np.bincount(val_y).tolist() == [100] * 10
    # Any prefix is balanced: the digits take turns.
    np.testing.assert_array_equal(train_y[:20], np.tile(np.arange(10), 2))
    np.testing.assert_array_equal(val_y[:20], np.tile(np.arange(10), 2))
    # The two sets are disjoint and together the whole file (its 5,000 images all differ).
    with np.load(os.path.join(utils.BUNDLED_DIR, 'mnist-5k.npz')) as npz:
        everything = {image.tobytes() for image in npz['images']}
    train = {image.tobytes() for image in train_x}
    val = {image.tobytes() for image in val_x}
    assert len(train) == 4000 and len(val) == 1000
    assert train | val == everything


def test_mnist_5k_split_is_deterministic():
    first, second = load('mnist-5k'), load('mnist-5k')
    for a, b in zip(first, second):
        for x, y in zip(raw(a), raw(b)):
            np.testing.assert_array_equal(x, y)


def test_mnist_5k_images_match_labels():
    # A digit's mean image is closer to the mean of its own class than to the others':
    # catches images and labels that were shuffled apart.
    (train_x, train_y), (val_x, val_y) = (raw(dataset) for dataset in load('mnist-5k'))
    means = np.stack([train_x[train_y == d].mean(0) for d in range(10)])
    val_means = np.stack([val_x[val_y == d].mean(0) for d in range(10)])
    distances = ((val_means[:, None] - means[None]) ** 2).sum((2, 3))
    np.testing.assert_array_equal(distances.argmin(1), np.arange(10))


def test_the_split_needs_enough_of_each_digit(tmp_path):
    labels = np.repeat(np.arange(10, dtype=np.uint8), 5)
    labels[0] = 1  # one 0 fewer
    np.savez(str(tmp_path / 'a.npz'), images=np.zeros((50, 2, 2), np.uint8), labels=labels)
    with pytest.raises(DatasetError, match=r'at least 5 images .* \[4, 6,'):
        utils.load_mnist_5k(str(tmp_path / 'a.npz'), 3, 2)


def test_mnist_5k_corrupted_file(tmp_path):
    (tmp_path / 'mnist-5k.npz').write_bytes(b'PK\x03\x04 truncated')
    with pytest.raises(DatasetError, match='not a readable npz file'):
        load('mnist-5k', str(tmp_path))


def test_mnist_5k_missing_file(tmp_path):
    with pytest.raises(DatasetError, match='mnist-5k.npz does not exist'):
        load('mnist-5k', str(tmp_path))


def test_as_dataset():
    images = np.array([[[0, 255], [51, 102]], [[1, 2], [3, 4]]], np.uint8)
    labels = np.array([7, 3], np.uint8)
    dataset = utils.as_dataset(images, labels)
    assert len(dataset) == 2
    x, t = dataset[0]
    assert x.dtype == np.float32 and t.dtype == np.int32
    np.testing.assert_allclose(x, [0, 1, 0.2, 0.4], rtol=1e-6)
    assert t == 7


def test_the_example_trains_on_mnist_from_a_mirror(server, tmp_path, capsys, fake_md5):
    train_mnist3 = import_script('examples', 'train_mnist3')
    argv = ['--dataset', 'mnist', '--mirror', server.url + 'missing/', '--mirror',
            server.url + 'good/', '--epoch', '1', '--unit', '100', '--out-units', '90',
            '--batchsize', '10', '--out', str(tmp_path / 'out')]
    assert train_mnist3.main(argv) == 0
    out, _ = capsys.readouterr()
    assert '# dataset: mnist (30 training, 20 validation images)' in out
    assert 'Final validation accuracy' in out
    assert (tmp_path / 'out' / 'snapshot_iter_3').is_file()  # 30 images, 10 a minibatch
