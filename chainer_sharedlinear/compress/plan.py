"""The plan of a compression, plain data that rebuilds the layers on a fresh model, and the
files that keep it (:func:`apply_plan`, :func:`save_compressed`, :func:`load_compressed`,
:func:`read_plan`)."""

import collections
import inspect
import json
import math
import os
import typing as tp
import uuid
import zipfile
import zlib

import chainer
import chainer.links as L
import numpy
from chainer import initializers

from chainer_sharedlinear import _checks
from chainer_sharedlinear.compress.patterns import Knobs, _family_class, _family_names
from chainer_sharedlinear.convert import ConversionReport, _replace_child, _replace_links, family
from chainer_sharedlinear.links.virtual_linear import VirtualLinear

#: The name and version of the plans this module writes and reads.
PLAN_FORMAT = 'chainer_sharedlinear.compress_linears/1'


#: The key under which :func:`save_compressed` keeps the plan in a file: no
#: child link has a ``.`` in its name, so no parameter is saved under it.
PLAN_KEY = 'chainer_sharedlinear.plan'


def _family_layers(model: chainer.Link
                   ) -> tp.List[tp.Tuple[tp.Tuple[str, ...], VirtualLinear]]:
    """The initialised layers of the family in ``model``, each with all its paths, in order.

    Of the family's own classes only: a subclass is the model's own code,
    which no plan rebuilds.
    """
    found: 'collections.OrderedDict[int, tp.Tuple[tp.List[str], VirtualLinear]]' = (
        collections.OrderedDict())
    for path, link in model.namedlinks():
        if type(link) in family() and link._is_initialized:
            found.setdefault(id(link), ([], link))[0].append(path)
    return [(tuple(paths), link) for paths, link in found.values()]


def _check_family(layer, path) -> None:
    if _family_class(type(layer).__name__) is not type(layer):
        raise TypeError('compress_linears: the conversion of {} returned {!r}, not a layer of '
                        'the family ({}), which a plan could not rebuild'.format(
                            path, layer, _family_names()))


def _plan_entry(layer, pattern, paths, knobs) -> tp.Dict[str, tp.Any]:
    return {
        'paths': list(paths), 'link': type(layer).__name__, 'pattern': pattern,
        'knobs': _plain(knobs), 'options': _plain(dict(layer._options())),
        'in_size': layer.in_size, 'out_size': layer.out_size, 'nobias': layer.b is None,
        'dtype': getattr(layer, layer.weight_names[0]).dtype.name,
        'bias_dtype': None if layer.b is None else layer.b.dtype.name,
    }


def _plain(value):
    """``value`` as JSON takes it: tuples as lists, NumPy integers as ``int``."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, numpy.generic):
        return value.item()
    return value


#: The keys of a plan's layer that every layer needs; ``bias_dtype`` too unless ``nobias``.
_ENTRY_KEYS = ('paths', 'link', 'options', 'in_size', 'out_size', 'nobias', 'dtype')


def _check_plan(plan) -> tp.List[tp.Dict[str, tp.Any]]:
    """The layers of ``plan``; ``ValueError`` naming the layer and the field of a wrong one.

    Each layer is checked as data, before any model is touched or any weight
    allocated: its keys, their types, and its options against its link's
    constructor and the link's own checks. (Its size is checked where it would
    replace a dense layer: :func:`_check_no_larger`.)
    """
    if not isinstance(plan, dict) or plan.get('format') != PLAN_FORMAT:
        raise ValueError('not a plan of compress_linears: expected a dict with '
                         "'format': {!r} (a CompressionReport's plan), got {!r}".format(
                             PLAN_FORMAT, plan if not isinstance(plan, dict)
                             else plan.get('format')))
    entries = plan.get('layers')
    if not isinstance(entries, list):
        raise ValueError("the plan's 'layers' must be a list, got {!r}".format(entries))
    for i, entry in enumerate(entries):
        _check_entry(i, entry)
    return entries


def _check_entry(i: int, entry) -> None:
    if not isinstance(entry, dict):
        raise ValueError('layer {} of the plan must be a dict, got {!r}'.format(i, entry))
    needed = _ENTRY_KEYS + (() if entry.get('nobias') is True else ('bias_dtype',))
    missing = [key for key in needed if key not in entry]
    if missing:
        raise ValueError('layer {} of the plan lacks {}'.format(i, ', '.join(missing)))
    paths = entry['paths']
    if not (isinstance(paths, list) and paths and all(isinstance(p, str) for p in paths)):
        raise ValueError('layer {} of the plan: paths must be a non-empty list of str, such as '
                         "['/l1'], got {!r}".format(i, paths))
    cls = _family_class(entry['link']) if isinstance(entry['link'], str) else None
    if cls is None:
        raise ValueError('layer {} of the plan is a {}, which is not a layer of the family '
                         '({})'.format(paths, entry['link'], _family_names()))
    try:
        _checks.positive_int('in_size', entry['in_size'])
        _checks.positive_int('out_size', entry['out_size'])
        if not isinstance(entry['nobias'], bool):
            raise ValueError('nobias must be true or false, got {!r}'.format(entry['nobias']))
        _checks.float_dtype('dtype', entry['dtype'])
        if not entry['nobias']:
            _checks.float_dtype('bias_dtype', entry['bias_dtype'])
        _planned_weights(entry)  # the link's own checks of its options, nothing allocated
    except (TypeError, ValueError) as e:
        raise ValueError('layer {} of the plan: {}'.format(paths, e)) from None


def _planned_weights(entry) -> int:
    """The weights the layer of ``entry`` would store (not its bias), none allocated.

    The link's constructor checks the options, and its ``_weight_shapes`` the
    sizes: a ``ValueError`` says what is wrong.
    """
    cls = _family_class(entry['link'])
    layer = type(cls.__name__, (_Unallocated, cls), {})(
        entry['in_size'], entry['out_size'], nobias=True,
        **_planned_options(cls, entry['options']))
    return sum(math.prod(shape) for shape in layer._weight_shapes(entry['in_size']).values())


class _Unallocated:
    """Mixed into a layer of the family, it checks its arguments and allocates no weights.

    Every layer's constructor checks its options, then initialises its
    weights through ``_initialize_params``: here, that only records ``in_size``.
    """

    def _initialize_params(self, in_size: int) -> None:
        self._in_size = in_size


def _planned_options(cls, options) -> Knobs:
    """A plan's ``options`` as ``cls`` takes them (pairs as tuples); ``ValueError`` if not.

    The options are the constructor's keyword-only arguments but ``nobias``
    and the initializers, the same rule for every layer of the family.
    """
    if not isinstance(options, dict):
        raise ValueError('options must be a dict of the options of {}, got {!r}'.format(
            cls.__name__, options))
    known = [p for p in inspect.signature(cls).parameters.values()
             if p.kind is p.KEYWORD_ONLY and p.name != 'nobias'
             and not p.name.startswith('initial')]
    unknown = [key for key in options if key not in [p.name for p in known]]
    if unknown:
        raise ValueError('options has {}, which {} does not take: its options are {}'.format(
            ', '.join(map(repr, unknown)), cls.__name__, ', '.join(p.name for p in known)))
    missing = [p.name for p in known if p.default is p.empty and p.name not in options]
    if missing:
        raise ValueError('options lacks {}, which {} needs'.format(
            ', '.join(missing), cls.__name__))
    return {key: tuple(value) if isinstance(value, list) else value
            for key, value in options.items()}


def _planned_layer(entry, initialize: bool) -> chainer.Link:
    cls = _family_class(entry['link'])
    options = _planned_options(cls, entry['options'])
    with chainer.using_config('dtype', numpy.dtype(entry['dtype'])):
        if initialize:  # as the constructor draws them
            return cls(entry['in_size'], entry['out_size'], nobias=entry['nobias'], **options)
        zero = initializers.Zero(numpy.dtype(entry['dtype']))
        options.update({'initial' + name: zero for name in cls.weight_names})
        bias = None if entry['nobias'] else initializers.Zero(numpy.dtype(entry['bias_dtype']))
        return cls(entry['in_size'], entry['out_size'], nobias=entry['nobias'],
                   initial_bias=bias, **options)


def _is_planned(link, entry) -> bool:
    # A lazy layer of the model's own code takes its in_size from the file.
    return (type(link).__name__ == entry['link'] and link.in_size in (None, entry['in_size'])
            and link.out_size == entry['out_size'] and (link.b is None) == entry['nobias']
            and _plain(dict(link._options())) == entry['options'])


def _links_to_plan(model, entries, caller: str
                   ) -> 'collections.OrderedDict[str, tp.Tuple[L.Linear, tp.Dict[str, tp.Any]]]':
    """The ``L.Linear`` links that ``entries`` replace, by path, each with its entry.

    ``ValueError`` if the plan does not fit the model; nothing is changed.
    """
    if not isinstance(model, chainer.Link):
        raise TypeError('{} expects a chainer.Link (a Chain, ChainList or Sequential), '
                        'got {}'.format(caller, type(model).__name__))
    found = dict(model.namedlinks())
    paths_of = collections.defaultdict(list)
    for path, link in found.items():
        paths_of[id(link)].append(path)
    planned = collections.OrderedDict()
    for entry in entries:
        for path in entry['paths']:
            link = found.get(path)
            if link is None:
                raise ValueError('the plan compresses {}, but the model has no link there; its '
                                 'links are: {}'.format(path, ', '.join(found) or 'none'))
            what = 'the plan has a {}(in_size={}, out_size={}, nobias={}) at {}'.format(
                entry['link'], entry['in_size'], entry['out_size'], entry['nobias'], path)
            if _is_planned(link, entry):
                continue
            if type(link) is not L.Linear:
                raise ValueError('{}, but the model has {} there, which is neither that nor an '
                                 'L.Linear'.format(what, link))
            in_size = None if link.W.array is None else link.W.shape[1]
            if (link.out_size != entry['out_size'] or in_size not in (None, entry['in_size'])
                    or (link.b is None) != entry['nobias']):
                raise ValueError('{}, but the model has L.Linear(in_size={}, out_size={}, '
                                 'nobias={}) there'.format(what, in_size, link.out_size,
                                                           link.b is None))
            if sorted(paths_of[id(link)]) != sorted(entry['paths']):
                raise ValueError('the plan has one layer at {}, but the model has that link at '
                                 '{}'.format(', '.join(entry['paths']),
                                             ', '.join(paths_of[id(link)])))
            _check_no_larger(entry)
            planned[path] = link, entry
    return planned


def _check_no_larger(entry) -> None:
    """``ValueError`` if the layer of ``entry`` would store more weights than the dense layer.

    compress_linears writes no such layer; an n_terms of 10**9 would be tens
    of GiB. (A layer of the family that the model has already is not built,
    and may be of any size.)
    """
    in_size, out_size = entry['in_size'], entry['out_size']
    n_weights = _planned_weights(entry)
    if n_weights > in_size * out_size:
        raise ValueError(
            'layer {} of the plan is {}({}), which would store {:,} weights, more than the {:,} '
            'of the dense {} -> {} layer it replaces: compress_linears writes no such plan; '
            'this one was edited or damaged'.format(
                entry['paths'], entry['link'], ', '.join(
                    '{}={}'.format(key, value) for key, value in
                    dict(entry['options'], in_size=in_size, out_size=out_size).items()),
                n_weights, in_size * out_size, in_size, out_size))


def apply_plan(model: chainer.Link, plan: tp.Dict[str, tp.Any], *,
               initialize: bool = False) -> ConversionReport:
    """Builds the layers of a plan on a model, in place, so that ``load_npz`` then fills them.

    ``model`` is a fresh copy of the model that was compressed: built by the
    same code, trained or not, lazy (``L.Linear(None, n)``) or not, since the
    plan knows the sizes. Each ``L.Linear`` named by the plan becomes the layer
    it describes, of the same dtype and device, with zero weights; a layer
    that already is the planned one is left as it is. Then
    ``chainer.serializers.load_npz(file, model)`` loads the compressed file.

    Args:
        model (~chainer.Link): The model; changed in place.
        plan (dict): A :class:`CompressionReport`'s ``plan``, or the same read
            back from JSON.
        initialize (bool): If ``True``, the new layers' weights are drawn as
            their constructors draw them, to train the planned layers from
            scratch, instead of zero.

    Returns:
        ConversionReport: What changed.

    Raises:
        ValueError: The plan is damaged: a layer lacks a key, or has one of
            the wrong type (``options`` not a dict, a dtype that is not a float
            dtype, sizes that are not positive integers), an option its link
            does not take or refuses, or options that would store more weights
            than the dense layer (the message names the layer and the field).
            Or the plan does not fit the model: a path it names is not
            there, or holds a link of other sizes, another bias, or another
            layer than the plan's. Nothing is changed, and nothing allocated.
    """
    planned = _links_to_plan(model, _check_plan(plan), 'apply_plan')
    entry_of = {id(link): entry for link, entry in planned.values()}
    return _replace_links(model, list(planned), 'apply_plan', L.Linear, lambda link: None,
                          lambda link: _planned_layer(entry_of[id(link)], initialize).to_device(
                              link.device))


def _check_plan_covers(model: chainer.Link, plan) -> None:
    """``ValueError`` unless ``plan`` has an entry for each layer of the family in ``model``.

    A plan that leaves one out cannot rebuild the model from its file.
    """
    planned = {path for entry in _check_plan(plan) for path in entry['paths']}
    missing = ['{} ({})'.format(paths[0], layer) for paths, layer in _family_layers(model)
               if not set(paths) <= planned]
    if missing:
        raise ValueError(
            'the plan does not describe every layer of the family in the model: {} {} not in '
            'it, so load_compressed could not rebuild the model from the file. Pass the plan '
            'of the last compress_linears call on this model, which describes them all'.format(
                ', '.join(missing), 'is' if len(missing) == 1 else 'are'))


def save_compressed(file, model: chainer.Link, plan: tp.Dict[str, tp.Any], *,
                    overwrite: bool = False) -> None:
    """Saves a compressed model as ``chainer.serializers.save_npz`` does, with its plan.

    The plan is kept in the file as JSON under ``'chainer_sharedlinear.plan'``, which
    ``load_npz`` ignores: the file loads as any other into a model the plan
    was applied to, and :func:`load_compressed` rebuilds the layers from it.

    A path is written as it is named (``'model.bin'`` is ``model.bin``, with no
    ``.npz`` added), in one step: the file is written beside it under another
    name, then renamed, so that a save that fails leaves no part of a file,
    and an existing file as it was. A file object is written at its position.

    Args:
        file (str or file-like): Where to save: a path (a ``pathlib.Path`` too) or a
            file object.
        model (~chainer.Link): The compressed model.
        plan (dict): Its :class:`CompressionReport`'s ``plan``.
        overwrite (bool): Whether to replace a file that is there already.

    Raises:
        FileExistsError: ``file`` is a path that exists, and ``overwrite`` is ``False``.
        ValueError: ``plan`` is not a plan (see :func:`apply_plan`).

    .. admonition:: Example

        >>> import io, os, tempfile
        >>> import chainer, chainer.links as L
        >>> from chainer_sharedlinear import compress_linears
        >>> model = chainer.Sequential(L.Linear(8, 4))
        >>> report = compress_linears(model, 1/2, pattern='shared')
        >>> path = os.path.join(tempfile.mkdtemp(), 'model.bin')
        >>> save_compressed(path, model, report.plan)
        >>> os.path.exists(path)
        True
        >>> save_compressed(path, model, report.plan)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FileExistsError: .../model.bin exists: save_compressed replaces a file only with \
overwrite=True
        >>> save_compressed(path, model, report.plan, overwrite=True)
        >>> stream = io.BytesIO()
        >>> save_compressed(stream, model, report.plan)
    """
    _check_plan_covers(model, plan)
    _check_plan(plan)
    to_stream = hasattr(file, 'write')
    if not to_stream:
        file = os.fspath(file)
        if os.path.lexists(file) and not overwrite:
            raise FileExistsError('{} exists: save_compressed replaces a file only with '
                                  'overwrite=True'.format(file))
    serializer = chainer.serializers.DictionarySerializer()
    serializer.save(model)
    serializer.target[PLAN_KEY] = numpy.array(json.dumps(plan))
    if to_stream:
        numpy.savez_compressed(file, **serializer.target)
        return
    # numpy.savez_compressed adds '.npz' to a name, not to a file object.
    partial = os.path.join(os.path.dirname(os.path.abspath(file)), '.{}.{}.partial'.format(
        os.path.basename(file), uuid.uuid4().hex))
    try:
        with open(partial, 'xb') as f:
            numpy.savez_compressed(f, **serializer.target)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, file)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise


def _read_saved(file, key: tp.Optional[str] = None) -> tp.Dict[str, numpy.ndarray]:
    """The arrays of a file of :func:`save_compressed` (only ``key``, if given), by key.

    A file object is read from its position and left there. A file that is
    not a whole npz file is a ``ValueError`` that says so.
    """
    position = file.tell() if hasattr(file, 'seek') else None
    try:
        saved = numpy.load(file)
        if not isinstance(saved, numpy.lib.npyio.NpzFile):
            raise ValueError('it holds one array, not the arrays of a model')
        with saved:
            keys = saved.files if key is None else [key] if key in saved.files else []
            return {k: saved[k] for k in keys}
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as e:
        raise ValueError('cannot read {}: it is not a whole npz file of save_compressed '
                         '({})'.format(_file_name(file), e)) from None
    finally:
        if position is not None:
            file.seek(position)


def _file_name(file) -> str:
    if isinstance(file, (str, os.PathLike)):
        return os.fspath(file)
    return getattr(file, 'name', repr(file))


def _plan_in(arrays, file) -> tp.Dict[str, tp.Any]:
    if PLAN_KEY not in arrays:
        raise ValueError('{} holds no plan: it was not saved by save_compressed. Apply the plan '
                         'of the compression to the model, then load it with '
                         'chainer.serializers.load_npz'.format(_file_name(file)))
    try:
        return json.loads(str(arrays[PLAN_KEY]))
    except ValueError as e:
        raise ValueError('the plan in {} is not JSON: {}'.format(_file_name(file), e)) from None


def read_plan(file) -> tp.Dict[str, tp.Any]:
    """The plan that :func:`save_compressed` kept in a file.

    Args:
        file (str or file-like): The file: a path (a ``pathlib.Path`` too),
            or a file object, which is left at the position it had.
    """
    return _plan_in(_read_saved(file, PLAN_KEY), file)


def load_compressed(file, model: chainer.Link) -> ConversionReport:
    """Loads a file of :func:`save_compressed` into a fresh model: the plan, then the parameters.

    :func:`apply_plan` with the plan kept in the file, then
    ``chainer.serializers.load_npz``. Everything is checked before the model
    is changed: the file is read, the plan checked against the model, and
    every array the planned model will ask for is found in the file with the
    shape it needs, the planned layers' own checks included (their options,
    sizes and index). A file that does not load leaves the model as it was.

    Args:
        file (str or file-like): The file: a path (a ``pathlib.Path`` too) or a
            file object.
        model (~chainer.Link): A fresh copy of the model that was compressed,
            lazy or not, or one the plan was applied to already.

    Returns:
        ConversionReport: What :func:`apply_plan` changed.

    Raises:
        ValueError: The file is not a whole npz file, holds no plan or a
            damaged one (see :func:`apply_plan`), or lacks an array the
            model needs or has one of another shape; or the plan does not fit
            the model. The model is left as it was.
    """
    arrays = _read_saved(file)
    planned = _links_to_plan(model, _check_plan(_plan_in(arrays, file)), 'load_compressed')
    built = {}
    for link, entry in planned.values():
        if id(link) not in built:
            built[id(link)] = _planned_layer(entry, False).to_device(link.device)
    layers_at = {path: built[id(link)] for path, (link, _) in planned.items()}
    _check_loads(arrays, model, layers_at, file)

    links_before = dict(model.namedlinks())
    report = _replace_links(model, list(planned), 'load_compressed', L.Linear,
                            lambda link: None, lambda link: built[id(link)])
    try:
        chainer.serializers.NpzDeserializer(arrays).load(model)
    except BaseException:
        links_now = dict(model.namedlinks())
        for path in report.changed:
            parent, _, name = path.rpartition('/')
            _replace_child(links_now[parent or '/'], name, links_now[path], links_before[path])
        raise
    return report


class _NotInFile(KeyError):
    """A key that a model asks for and a file lacks (a ``KeyError``, as ``load_npz`` raises)."""


class _DryLoad(chainer.serializer.Deserializer):
    """Loads a file of arrays into a model as ``load_npz`` would, and changes nothing.

    Each array the model asks for must be in the file, of the shape of the
    array it would fill; a layer's own reads (its saved integers, its index)
    are answered from the file, so that its checks run. An array nothing is
    to be filled with yet (an uninitialised parameter, a persistent value
    that is ``None``) is looked for but not handed out: the model would
    initialise it. Keys under a path of ``skipped`` are not looked for.
    """

    def __init__(self, arrays, path: str = '', skipped: tp.Tuple[str, ...] = (),
                 unset: tp.FrozenSet[str] = frozenset()) -> None:
        self.arrays, self.path, self.skipped, self.unset = arrays, path, skipped, unset

    def __getitem__(self, key):
        return _DryLoad(self.arrays, self.path + key.strip('/') + '/', self.skipped, self.unset)

    def __call__(self, key, value):
        key = self.path + key.lstrip('/')
        if key.startswith(self.skipped):
            return value
        if key not in self.arrays:
            raise _NotInFile(key)
        saved = self.arrays[key]
        if value is None:
            return None if key in self.unset else saved
        shape = getattr(value, 'shape', None)
        if shape is not None and tuple(shape) != saved.shape:
            raise ValueError('{} has shape {} in the file, and {} in the model'.format(
                key, saved.shape, tuple(shape)))
        return value


def _check_loads(arrays, model, layers_at, file) -> None:
    """``ValueError`` unless ``model``, with ``layers_at`` at their paths, loads ``arrays``."""
    unset = {path.lstrip('/') for path, param in model.namedparams() if param.array is None}
    unset.update((path.rstrip('/') + '/' + name).lstrip('/')
                 for path, link in model.namedlinks() for name in link._persistent
                 if getattr(link, name) is None)
    try:
        model.serialize(_DryLoad(arrays, skipped=tuple(path.lstrip('/') + '/'
                                                       for path in layers_at),
                                 unset=frozenset(unset)))
        for path, layer in layers_at.items():
            layer.serialize(_DryLoad(arrays, path.lstrip('/') + '/'))
    except _NotInFile as e:
        raise ValueError('cannot load {}: it has no {}, which the model needs (the file is '
                         "another model's, or damaged)".format(_file_name(file), e.args[0])
                         ) from None
    except ValueError as e:
        raise ValueError('{} does not load into the model: {}'.format(_file_name(file), e)
                         ) from None
