""":func:`compress_linears`: the ``L.Linear`` links of a trained model replaced, in place."""

import dataclasses
import fractions
import math
import types
import typing as tp
import warnings

import chainer
import chainer.links as L
from chainer import backend

from chainer_sharedlinear import _checks
from chainer_sharedlinear.compress.counting import _dense_bytes, _model_bytes, stored_bytes
from chainer_sharedlinear.compress.patterns import (
    _from_knobs,
    _from_linear,
    _pattern,
    _settings,
    knobs_at_budget,
    pattern_names,
)
from chainer_sharedlinear.compress.plan import (
    PLAN_FORMAT,
    _check_family,
    _family_layers,
    _plain,
    _plan_entry,
)
from chainer_sharedlinear.compress.report import CompressedLayer, CompressionReport
from chainer_sharedlinear.compress.weight_errors import _relative_error
from chainer_sharedlinear.convert import Include, _replace_links
from chainer_sharedlinear.links.virtual_linear import weight_hook_types

Convert = tp.Callable[[L.Linear, fractions.Fraction, str], chainer.Link]


def compress_linears(model: chainer.Link, budget, *,
                     pattern: tp.Union[str, Convert] = 'auto', include: Include = None,
                     patterns: tp.Optional[tp.Iterable[str]] = None) -> CompressionReport:
    """Compresses the ``L.Linear`` links of a trained model to ``budget`` of their bytes, in place.

    Each selected ``L.Linear`` becomes the layer of ``pattern`` that stores at
    most ``budget`` of its bytes (:func:`stored_bytes`, the bias included),
    with the knobs of :func:`knobs_at_budget` and the weights closest to the
    trained ones (the pattern's ``from_linear``). A layer that no setting of
    the pattern fits is skipped, and the report says why; if no layer is
    compressed, a warning says so too. The walk, the atomic replacement,
    ``include``, tied links and hooks are
    :func:`~chainer_sharedlinear.convert_linears`'.

    The weight fitted is the one the layer computes with in test mode: a
    layer with ``SpectralNormalization`` or ``WeightStandardization`` is
    fitted to the normalised weight, which the new layer then stores; a new
    layer that cannot take the hook again drops it (the report says so). The
    report also lists the layers of the family the model had already, and
    its plan describes them too, so that a model compressed in several calls
    (each its ``include`` and budget) saves and loads with the last plan.

    Args:
        model (~chainer.Link): A model whose ``L.Linear`` links are
            initialised; changed in place.
        budget (float): The fraction of each layer's dense bytes it may store,
            in ``(0, 1]``: ``1/8`` keeps an eighth.
        pattern: A name of :func:`pattern_names` (``'shared'``,
            ``'hashed'``, ``'kronecker'``, ``'phm'``, ``'lowrank'``,
            ``'clustered'``, ``'monarch'``); ``'auto'``, which takes for each layer the
            pattern of ``patterns`` whose layer is closest to the trained weight
            (the least relative Frobenius error of its ``dense_weight()``;
            ties go to the earlier pattern); or a function ``convert(linear,
            budget, path)`` returning a layer of the family (a
            ``ValueError`` from it skips the layer, with its message); its
            ``linear`` is an ``L.Linear`` with the weight to fit, without hooks.
        include: Which ``L.Linear`` links to compress, as in
            :func:`~chainer_sharedlinear.convert_linears`.
        patterns (list of str): The patterns ``'auto'`` chooses from; all
            of :func:`pattern_names` by default.

    Returns:
        CompressionReport: Per layer its pattern, knobs, bytes and error; the
        layers already of the family; the whole model's bytes; what was
        skipped and why; and the plan.

    Raises:
        ValueError: A selected ``L.Linear`` is not initialised yet (a lazy
            ``L.Linear(None, n)``): run one forward pass first; or its weight
            holds NaN or infinite values, which no layer can be fitted to.
            Nothing is changed.
        TypeError: ``convert`` returned a link that is not of the family.

    .. admonition:: Example

        >>> import chainer
        >>> import chainer.links as L
        >>> import numpy as np
        >>> tiled = np.tile(np.arange(12.).reshape(4, 3), 8)  # 8 copies of one (4, 3) block
        >>> model = chainer.Sequential(L.Linear(24, 4, nobias=True, initialW=tiled),
        ...                            L.Linear(7, 3))
        >>> report = compress_linears(model, 1/8)
        >>> print(report)  # doctest: +ELLIPSIS
        1 compressed, 1 skipped, at a budget of 1/8 of the dense bytes
          /0: shared n_shared=8, 48 of 384 bytes (0.1250), error 0.0000
          skipped /1: no pattern fits: shared cannot store a 7 -> 3 layer in 1/8 of its 96 bytes...
          whole model: 144 of 480 bytes (0.3000, 1/3.3), every layer counted
        >>> model[0]
        SharedLinear(in_size=24, out_size=4, n_shared=8, nobias=True)
        >>> report.layers[0].errors['hashed'] > 0
        True
    """
    fraction = _checks.budget(budget)
    if pattern == 'auto':
        names = pattern_names() if patterns is None else tuple(patterns)
        if not names:
            raise ValueError("patterns is empty: pattern='auto' needs at least one pattern")
        for name in names:
            _pattern(name)
    elif patterns is not None:
        raise ValueError("patterns is for pattern='auto'; pattern={!r} is one already".format(
            pattern))
    elif not callable(pattern):
        _pattern(pattern)

    first_paths = {}
    for path, link in model.namedlinks() if isinstance(model, chainer.Link) else ():
        first_paths.setdefault(id(link), path)
    rows: tp.Dict[int, CompressedLayer] = {}

    def why_not(linear):
        if type(linear) is not L.Linear:
            return 'a subclass of L.Linear ({}), whose forward may differ'.format(
                type(linear).__name__)
        if linear.W.array is None:
            raise ValueError(
                'compress_linears: {} is {} ({}); run one forward pass of the model first'.format(
                    first_paths[id(linear)], 'a lazy L.Linear(None, {})'.format(linear.out_size),
                    'its in_size is only known after it'))
        _check_finite(_weight_used(linear), first_paths[id(linear)])
        return None

    def convert(linear):
        path = first_paths[id(linear)]
        hooks = _weight_hooks(linear)
        fitted = _with_weight(linear, _weight_used(linear)) if hooks else linear
        if callable(pattern):
            layer = pattern(fitted, fraction, path)
            _check_family(layer, path)
            name = getattr(pattern, '__name__', type(pattern).__name__)
            row = _row(path, name, dict(layer._options()), layer, fitted)
        elif pattern == 'auto':
            row, layer = _auto(fitted, fraction, names, path)
        else:
            knobs = knobs_at_budget(pattern, fitted.W.shape[1], fitted.out_size, fraction,
                                    dtype=fitted.W.dtype, nobias=fitted.b is None,
                                    weight=fitted.W.array)
            layer = _from_linear(pattern, fitted, knobs)
            row = _row(path, pattern, knobs, layer, fitted)
        rows[id(layer)] = dataclasses.replace(row, weight_hooks=tuple(hooks))
        return layer

    conversion = _replace_links(model, include, 'compress_linears', L.Linear, why_not, convert)
    layers, already, entries = [], [], []
    for paths, layer in _family_layers(model):
        row = rows.get(id(layer))
        if row is None:
            options = _plain(dict(layer._options()))
            row = CompressedLayer(path=paths[0], pattern=None, knobs=options,
                                  stored_bytes=stored_bytes(layer),
                                  dense_bytes=_dense_bytes(layer), error=math.nan,
                                  link=type(layer).__name__)
            already.append(row)
        else:
            layers.append(row)
        entries.append(_plan_entry(layer, row.pattern, paths, row.knobs))
    plan = {'format': PLAN_FORMAT, 'budget': str(fraction), 'layers': entries}
    stored, dense, uncounted = _model_bytes(model)
    report = CompressionReport(budget=fraction, layers=tuple(layers),
                               skipped=dict(conversion.skipped), plan=plan,
                               conversion=conversion, already=tuple(already),
                               stored_bytes=stored, dense_bytes=dense, uncounted=uncounted)
    if not layers:
        warnings.warn('compress_linears compressed nothing at a budget of {}: {}'.format(
            fraction, '; '.join('{} skipped: {}'.format(path, why)
                                for path, why in conversion.skipped.items())
            or 'the model has no L.Linear'), stacklevel=2)
    return report


def _weight_hooks(linear) -> tp.List[str]:
    return [name for name, hook in linear.local_link_hooks.items()
            if isinstance(hook, weight_hook_types())]


def _weight_used(linear):
    """The weight ``linear`` computes with in test mode: ``W`` through its weight hooks.

    Each hook replaces ``W`` for the call as ``Link.__call__`` has it do
    (``SpectralNormalization`` by one power iteration from its vector, which
    test mode does not update), and puts it back after.
    """
    hooks = [linear.local_link_hooks[name] for name in _weight_hooks(linear)]
    if not hooks:
        return linear.W.array
    call = types.SimpleNamespace(link=linear, args=(None,), kwargs={})
    done = []
    try:
        with chainer.using_config('train', False), chainer.no_backprop_mode():
            for hook in hooks:
                hook.forward_preprocess(call)
                done.append(hook)
            return linear.W.array
    finally:
        for hook in reversed(done):  # each puts back the weight it was given
            hook.forward_postprocess(call)


def _with_weight(linear, weight) -> L.Linear:
    """An ``L.Linear`` without hooks that has ``weight`` and ``linear``'s bias (not copied)."""
    stand_in = L.Linear(linear.out_size, nobias=linear.b is None)  # lazy: nothing drawn
    stand_in.to_device(linear.device)
    stand_in.W.array = weight
    if linear.b is not None:
        stand_in.b.array = linear.b.array
    return stand_in


def _check_finite(weight, path) -> None:
    xp = backend.get_array_module(weight)
    n_finite = int(xp.count_nonzero(xp.isfinite(weight)))
    if n_finite < weight.size:
        n_nan = int(xp.count_nonzero(xp.isnan(weight)))
        raise ValueError(
            'compress_linears: the weight of {} is not finite: {} of its {:,} entries are NaN '
            'or infinite ({} NaN, {} infinite), and no layer can be fitted to it. The model '
            'is broken (a training that diverged?); restore a finite weight, or leave the '
            'layer out with include'.format(path, weight.size - n_finite, weight.size, n_nan,
                                            weight.size - n_finite - n_nan))


def _row(path, pattern, knobs, layer, linear, **auto) -> CompressedLayer:
    return CompressedLayer(path=path, pattern=pattern, knobs=knobs,
                           stored_bytes=stored_bytes(layer), dense_bytes=stored_bytes(linear),
                           error=_relative_error(layer, linear.W.array),
                           link=type(layer).__name__, **auto)


def _auto(linear, fraction, names, path):
    # A pattern whose error its singular values tell is built only if it is taken, and
    # of the layers built only the best so far is kept.
    out_size, in_size = linear.W.shape
    errors, refused = {}, {}
    best = None
    for name in names:
        try:
            settings, predicted = _settings(name, in_size, out_size, fraction, linear.W.dtype,
                                            linear.b is None, linear.W.array)
        except ValueError as e:
            refused[name] = str(e)
            continue
        knobs = _from_knobs(settings[0])
        layer = None
        if predicted is None:
            layer = _from_linear(name, linear, knobs)
            errors[name] = _relative_error(layer, linear.W.array)
        else:
            errors[name] = predicted[0]
        if best is None or errors[name] < errors[best[0]]:  # the first of equals
            best = name, knobs, layer
        del layer
    if best is None:
        raise ValueError('no pattern fits: ' + '; '.join(refused.values()))
    name, knobs, layer = best
    if layer is None:
        layer = _from_linear(name, linear, knobs)
    row = _row(path, name, knobs, layer, linear, refused=refused)
    errors[name] = row.error  # measured on the layer taken, as for every row
    return dataclasses.replace(row, errors=errors), layer
