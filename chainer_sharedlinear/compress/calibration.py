"""The statistics of the inputs of a model's ``L.Linear`` layers, gathered on calibration data.

A layer ``y = x Wᵀ + b`` replaced by ``y' = x Vᵀ + c`` is off on the inputs
``X`` (one row per input) by ``X (W − V)ᵀ + 1 (b − c)ᵀ``, whose squared norm
depends on ``X`` only through its Gram matrix ``XᵀX``, its column sums
``Xᵀ1`` and its number of rows. :func:`gather_statistics` runs a model on
calibration inputs and keeps these three for each selected layer
(:class:`LayerStatistics`), never the activations themselves: what fitting a
replacement to the layer's outputs rather than to its weight needs
(:mod:`chainer_sharedlinear.compress.fitting`).
"""

import collections
import dataclasses
import typing as tp

import chainer
import chainer.links as L
import numpy
from chainer import backend

from chainer_sharedlinear import _checks
from chainer_sharedlinear.convert import Include, _candidates, _named_links, _selected


@dataclasses.dataclass(frozen=True)
class LayerStatistics:
    """What the inputs of one layer were on the calibration data, in float64.

    The inputs are the rows ``X`` of the layer's inputs flattened as
    ``F.linear`` flattens them: every batch axis is a row, the feature axes
    one row's ``in_size`` numbers. The arrays are on the layer's device (NumPy
    or CuPy).

    Attributes:
        gram: ``XᵀX``, ``(in_size, in_size)``.
        n_samples (int): The number of rows of ``X``.
        column_sums: ``Xᵀ1``, ``(in_size,)``: the sum of the inputs.

    .. admonition:: Example

        >>> import numpy as np
        >>> x = np.array([[1., 2.], [3., 4.]])
        >>> stats = LayerStatistics(gram=x.T @ x, n_samples=2, column_sums=x.sum(axis=0))
        >>> stats.in_size, stats.mean()
        (2, array([2., 3.]))
    """

    gram: tp.Any
    n_samples: int
    column_sums: tp.Any

    @property
    def in_size(self) -> int:
        """int: The number of features of an input."""
        return int(self.gram.shape[0])

    def mean(self):
        """The mean input ``Xᵀ1 / n_samples``, ``(in_size,)``."""
        return self.column_sums / self.n_samples


class CalibrationError(ValueError):
    """Calibration data that the statistics cannot be gathered on; the message says why."""


class _StatisticsHook(chainer.LinkHook):
    """Adds the inputs of the links it watches to their running statistics."""

    name = 'chainer_sharedlinear.compress.calibration'

    def __init__(self, paths: tp.Dict[int, str]) -> None:
        self.paths = paths  # id of a watched link -> the path it is reported under
        self.sums: tp.Dict[int, tp.List] = {}  # id -> [gram, n_samples, column sums]
        self.called: tp.List[str] = []  # the paths, in the order of their first calls
        self.batch = 0

    def forward_preprocess(self, args) -> None:
        path = self.paths.get(id(args.link))
        if path is None or not args.args:
            return
        x = args.args[0]
        x = x.array if isinstance(x, chainer.Variable) else x
        n_batch_axes = args.kwargs.get(
            'n_batch_axes', args.args[1] if len(args.args) > 1 else 1)
        try:
            in_size = _checks.in_size_of(x.shape, n_batch_axes)
        except (ValueError, AttributeError):
            return  # not an input the layer takes: its own check says so
        weight = args.link.W.array
        if weight is not None and weight.shape[1] != in_size:
            return  # the same
        xp = backend.get_array_module(x)
        rows = x.reshape(-1, in_size).astype(numpy.float64)
        column_sums = rows.sum(axis=0)
        if not bool(xp.isfinite(column_sums).all()):
            raise CalibrationError(
                'the input of {} holds a NaN or an infinity on calibration batch {}: the '
                'calibration data must be finite, and so must the activations they give; '
                'check the model on these inputs'.format(path, self.batch))
        sums = self.sums.get(id(args.link))
        if sums is None:
            self.sums[id(args.link)] = [rows.T @ rows, rows.shape[0], column_sums]
            self.called.append(path)
        elif sums[0].shape[0] != in_size:
            raise CalibrationError(
                '{} was called on inputs of {} features and then of {}, on calibration batch '
                '{}: a layer has one in_size'.format(path, sums[0].shape[0], in_size,
                                                     self.batch))
        else:
            sums[0] += rows.T @ rows
            sums[1] += rows.shape[0]
            sums[2] += column_sums


def gather_statistics(model: chainer.Link, calibration, *,
                      include: Include = None) -> tp.Dict[str, LayerStatistics]:
    """Runs ``model`` on ``calibration`` and returns the statistics of its layers' inputs.

    The model runs in test mode (``chainer.config.train`` off) with no graph
    (``chainer.no_backprop_mode``), batch by batch; a link hook adds the
    inputs of every selected ``L.Linear`` to its :class:`LayerStatistics`,
    in float64 on the layer's device, so that no activation is kept. A layer
    called several times in a batch (a Transformer's, on each position, or a
    layer reached at several paths) adds all its inputs, under its first path.

    Bad calibration data is a :class:`CalibrationError` (a ``ValueError``)
    that names what was wrong: no batch, or an empty one; an input that is not
    finite, or an activation of a selected layer that is not (named by the
    layer and the batch); a batch the model refuses (the model's own error
    follows); a selected layer that the data never reached. Nothing of the
    model changes, but for a lazy layer's initialisation by the first batch.

    Args:
        model (~chainer.Link): The model; ``model(x)`` is called on each batch.
        calibration: The model's input, as ``model(x)`` takes it: one array
            (NumPy or CuPy) or :class:`~chainer.Variable`, or an iterable of them
            (a list, a generator), each a batch.
        include: Which ``L.Linear`` links, as in
            :func:`~chainer_sharedlinear.convert_linears`: ``None`` (all), a
            path or collection of paths, or a callable ``include(path, link)``.

    Returns:
        dict: The :class:`LayerStatistics` of each selected
        layer by its (first) path, in the model's order.

    .. admonition:: Example

        >>> import chainer
        >>> import chainer.functions as F
        >>> import chainer.links as L
        >>> import numpy as np
        >>> model = chainer.Sequential(L.Linear(3, 4), F.relu, L.Linear(4, 2))
        >>> x = np.random.RandomState(0).randn(10, 3).astype(np.float32)
        >>> stats = gather_statistics(model, [x[:6], x[6:]])
        >>> list(stats)
        ['/0', '/1']
        >>> stats['/0'].n_samples, stats['/0'].gram.shape, stats['/1'].in_size
        (10, (3, 3), 4)
        >>> bool(np.allclose(stats['/0'].gram, x.T.astype(float) @ x))
        True
        >>> gather_statistics(model, [])
        Traceback (most recent call last):
        ...
        chainer_sharedlinear.compress.calibration.CalibrationError: the calibration data holds no \
batch: give the model's input, an array or an iterable of batches
    """
    in_call_order = _gather_in_call_order(model, calibration, include=include)
    return collections.OrderedDict((path, in_call_order[path]) for path in
                                   _selected_paths(model, include))


def _selected_paths(model, include) -> tp.List[str]:
    links = dict(model.namedlinks())
    candidates = _candidates(links, L.Linear)
    named = _named_links(include, links, candidates, L.Linear)
    return [c.paths[0] for c in candidates.values() if _selected(include, named, c)]


def _gather_in_call_order(model, calibration, *, include=None):
    """:func:`gather_statistics`' statistics in the order of the layers' first calls."""
    if not isinstance(model, chainer.Link):
        raise TypeError('gather_statistics expects a chainer.Link (the model), got {}'.format(
            type(model).__name__))
    batches = _batches(calibration)
    links = dict(model.namedlinks())
    candidates = _candidates(links, L.Linear)
    named = _named_links(include, links, candidates, L.Linear)
    selected = [c for c in candidates.values() if _selected(include, named, c)]
    hook = _StatisticsHook({id(c.link): c.paths[0] for c in selected})
    n_batches = 0
    with chainer.using_config('train', False), chainer.no_backprop_mode(), hook:
        for x in batches:
            hook.batch = n_batches
            _check_batch(x, n_batches)
            try:
                model(x)
            except CalibrationError:
                raise
            except Exception as e:
                raise CalibrationError('the model refused calibration batch {} ({}): {}: '
                                       '{}'.format(n_batches, _describe(x), type(e).__name__,
                                                   e)) from e
            n_batches += 1
    if not n_batches:
        raise CalibrationError('the calibration data holds no batch: give the model\'s '
                               'input, an array or an iterable of batches')
    unreached = [c.paths[0] for c in selected if id(c.link) not in hook.sums]
    if unreached:
        raise CalibrationError('the calibration data never reached {}: the model did not call '
                               '{} on it'.format(', '.join(unreached),
                                                 'it' if len(unreached) == 1 else 'them'))
    ids = {c.paths[0]: id(c.link) for c in selected}
    return collections.OrderedDict(
        (path, LayerStatistics(gram=sums[0], n_samples=int(sums[1]), column_sums=sums[2]))
        for path in hook.called for sums in [hook.sums[ids[path]]])


class _InputRows(chainer.LinkHook):
    """Keeps the inputs of one link in one forward pass, as rows in float64."""

    name = 'chainer_sharedlinear.compress.input_rows'

    def __init__(self, link) -> None:
        self.link = link
        self.rows = []

    def forward_preprocess(self, args) -> None:
        if args.link is self.link:
            x = args.args[0]
            x = x.array if isinstance(x, chainer.Variable) else x
            self.rows.append(x.reshape(-1, self.link.W.shape[1]).astype(numpy.float64))

    def matrix(self):
        return backend.get_array_module(self.rows[0]).concatenate(self.rows)


def _gather_cross_statistics(model, calibration, link, replaced: chainer.LinkHook):
    """The inputs ``X̃`` of ``link`` with the hook ``replaced`` on and ``X`` without, compared.

    Two passes of each batch (so that no activation outlives its batch), in
    test mode with no graph, on data :func:`gather_statistics` took already.

    Returns:
        ``(statistics, cross, dense_sums)``: the :class:`LayerStatistics` of
        ``X̃``, ``X̃ᵀX`` and ``Xᵀ1``, in float64 on the layer's device.
    """
    sums = None
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        for x in _batches(calibration):
            dense, new = _InputRows(link), _InputRows(link)
            with dense:
                model(x)
            with new, replaced:
                model(x)
            dense_rows, new_rows = dense.matrix(), new.matrix()
            terms = [new_rows.T @ new_rows, new_rows.shape[0], new_rows.sum(axis=0),
                     new_rows.T @ dense_rows, dense_rows.sum(axis=0)]
            sums = terms if sums is None else [a + b for a, b in zip(sums, terms)]
    gram, n_samples, column_sums, cross, dense_sums = sums
    return LayerStatistics(gram=gram, n_samples=int(n_samples),
                           column_sums=column_sums), cross, dense_sums


def _batches(calibration) -> tp.Iterator:
    if _is_array(calibration):
        return iter([calibration])
    try:
        return iter(calibration)
    except TypeError:
        raise TypeError('calibration must be the model\'s input: an array, or an iterable of '
                        'batches; got {}'.format(type(calibration).__name__)) from None


def _is_array(value) -> bool:
    return isinstance(value, chainer.Variable) or (
        hasattr(value, 'shape') and hasattr(value, 'dtype'))


def _check_batch(x, batch: int) -> None:
    """Refuses an empty or non-finite array; other inputs are the model's to judge."""
    if not _is_array(x):
        return
    array = x.array if isinstance(x, chainer.Variable) else x
    if array.size == 0:
        raise CalibrationError('calibration batch {} is empty ({}): every batch needs at '
                               'least one input'.format(batch, _describe(x)))
    if array.dtype.kind in 'fc':
        xp = backend.get_array_module(array)
        if not bool(xp.isfinite(array).all()):
            raise CalibrationError('calibration batch {} holds a NaN or an infinity ({}): the '
                                   'calibration data must be finite'.format(batch, _describe(x)))


def _describe(x) -> str:
    if _is_array(x):
        return 'an array of shape {} and dtype {}'.format(tuple(x.shape), x.dtype)
    return 'a {}'.format(type(x).__name__)
