"""A Chainer trainer that resumes exactly, as if it had never stopped.

Chainer's trainer snapshot holds the model, the optimizer's state, the
updater's iteration, the iterator's position and the order of the current
epoch, the triggers' state and the extensions' (``LogReport``'s log and its
running means of the epoch so far). It lacks one thing: the generator that
shuffles the next epochs, as ``SerialIterator.serialize`` leaves out its order
sampler. A run resumed from it went on with a freshly seeded generator, so
its later epochs saw the examples in another order than an unbroken run.

:func:`shuffled_iterator` makes an iterator whose snapshot includes that
generator's state, so a resumed run gives, bit for bit, the log (but for the
times) and the parameters of a run that never stopped, from a snapshot taken
at the end of an epoch or within one (:func:`snapshot` every N iterations).
"""

import collections
import copy
import functools
import io
import os
import pickle
import zipfile
import zlib

import chainer
import multi_node
import numpy
from chainer import serializers
from chainer.training import extensions
from chainer.training.extensions import snapshot_writers
from command_line import UsageError
from result_folder import SNAPSHOT_PREFIX

#: A snapshot read into memory: where it was read from, and its bytes.
Snapshot = collections.namedtuple('Snapshot', ('path', 'content'))


class ShuffleOrderSampler(chainer.iterators.OrderSampler):
    """Chainer's ``ShuffleOrderSampler`` on ``RandomState(seed)``, saved in snapshots.

    It draws the same orders as
    ``chainer.iterators.ShuffleOrderSampler(numpy.random.RandomState(seed))``,
    and :meth:`serialize` saves and loads the generator's whole state.
    """

    def __init__(self, seed):
        self._random = numpy.random.RandomState(seed)

    def __call__(self, current_order, current_position):
        return self._random.permutation(len(current_order))

    def serialize(self, serializer):
        algorithm, key, position, has_gauss, cached_gaussian = self._random.get_state()
        key = serializer('key', key)
        position = serializer('position', position)
        has_gauss = serializer('has_gauss', has_gauss)
        cached_gaussian = serializer('cached_gaussian', cached_gaussian)
        self._random.set_state((algorithm, key, position, has_gauss, cached_gaussian))


class SerialIterator(chainer.iterators.SerialIterator):
    """Chainer's ``SerialIterator``, whose snapshot includes its order sampler's state."""

    def serialize(self, serializer):
        super().serialize(serializer)
        if hasattr(self.order_sampler, 'serialize'):
            self.order_sampler.serialize(serializer['order_sampler'])


def shuffled_iterator(dataset, batch_size, seed):
    """A repeating iterator over ``dataset``, shuffled every epoch from ``seed``, resumable.

    Every process that makes one from the same ``seed`` over a dataset of the
    same length draws the same orders. Under ChainerMN, where every rank's
    share of the data has the same length, the snapshot that rank 0 alone
    writes is then right for every rank.
    """
    return SerialIterator(dataset, batch_size, order_sampler=ShuffleOrderSampler(seed))


class PlotReport(extensions.PlotReport):
    """Chainer's ``PlotReport``, which draws what ``LogReport`` logged, also after resuming.

    Chainer's keeps running means of its own, which its snapshot lacks: an
    epoch resumed in its middle was drawn as the mean of its later iterations
    only, and its trigger, not saved either, drew a point too many. This one
    starts every run from the state of the trainer's ``LogReport`` (its log,
    running means and trigger, which the snapshot holds) and saves nothing of
    its own, so that a snapshot of a run that drew no plots (``--compare``, or
    no matplotlib) resumes into one that does. The trainer must have a
    ``LogReport`` with the same trigger (by default, every epoch).
    """

    def initialize(self, trainer):
        log_report = trainer.get_extension('LogReport')
        # Chainer 7.8.1's attributes: the points drawn, the means of the epoch so
        # far and when to draw the next point.
        self._data = {key: [(entry[self._x_key], entry[key])
                            for entry in log_report.log if key in entry]
                      for key in self._y_keys}
        self._summary = copy.deepcopy(log_report._summary)
        self._trigger = copy.deepcopy(log_report._trigger)

    def serialize(self, serializer):
        pass


class LatestSnapshotWriter(snapshot_writers.SimpleWriter):
    """Chainer's ``SimpleWriter``, which removes the snapshot it replaces once it has saved one.

    That is the one it saved before, or for its first, ``replaces`` (the
    snapshot a resumed run continues, or ``None``), and nothing else. The
    snapshot extension's own ``n_retains`` removes every file whose name starts
    and ends as the snapshots' do, such as a user's ``snapshot_iter_4.bak``.
    """

    def __init__(self, savefun, replaces=None):
        super().__init__(savefun=savefun)
        self._replaced = replaces

    def __call__(self, filename, outdir, target):
        super().__call__(filename, outdir, target)
        path = os.path.join(outdir, filename)
        # The user may have moved it away meanwhile.
        if (self._replaced is not None and os.path.exists(self._replaced)
                and not os.path.samefile(self._replaced, path)):
            os.remove(self._replaced)
        self._replaced = path


def snapshot(replaces=None):
    """Chainer's trainer snapshot, ``snapshot_iter_<iteration>``, keeping only the latest.

    Each replaces the one before, the first ``replaces`` (see
    :class:`LatestSnapshotWriter`). Uncompressed: trained float32 weights
    shrink by only about 12% in zlib, which took 0.46 s of each 1 s dense
    epoch of the MNIST example (measured).
    """
    return extensions.snapshot(
        filename=SNAPSHOT_PREFIX + '{.updater.iteration}',
        writer=LatestSnapshotWriter(functools.partial(serializers.save_npz, compression=False),
                                    replaces))


def read_snapshot(path):
    """Reads the snapshot at ``path`` into memory, checking that it is an npz archive."""
    try:
        with open(path, 'rb') as f:
            content = f.read()
    except OSError as e:
        raise UsageError('cannot resume from {}: {}'.format(path, e.strerror or e)) from None
    if not zipfile.is_zipfile(io.BytesIO(content)):
        raise UsageError('cannot resume from {}: not a snapshot of this example (expected '
                         'the npz archive of a trainer, as {}N files are)'.format(
                             path, SNAPSHOT_PREFIX))
    return Snapshot(path, content)


def _is_plot_trigger(key):
    # Missing where the run drew no plots; it fires at every iteration, so it
    # has no state to restore.
    return key.startswith('extension_triggers/PlotReport')


def resume(trainer, snapshot, comm=None):
    """Loads a :class:`Snapshot` into ``trainer`` on every rank, and says so on rank 0.

    A snapshot that cannot be loaded raises a one-line :class:`UsageError`
    (on every rank with ChainerMN's ``comm``: see ``multi_node.together``).
    """
    multi_node.together(comm, _load, trainer, snapshot)
    if comm is None or comm.rank == 0:
        print('Resuming from {} (epoch {}, iteration {})'.format(
            snapshot.path, trainer.updater.epoch, trainer.updater.iteration))


def _load(trainer, snapshot):
    try:
        serializers.load_npz(io.BytesIO(snapshot.content), trainer,
                             ignore_names=_is_plot_trigger)
    except (KeyError, ValueError, TypeError) as e:
        raise UsageError('cannot resume from {}: it does not fit this model and these '
                         'options ({})'.format(snapshot.path, ' '.join(str(e).split()))) \
            from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, pickle.UnpicklingError) as e:
        raise UsageError('cannot resume from {}: not a snapshot of this example ({})'.format(
            snapshot.path, ' '.join(str(e).split()) or type(e).__name__)) from None
