""":func:`compress_linears`: the ``L.Linear`` links of a trained model replaced, in place."""

import contextlib
import dataclasses
import fractions
import math
import types
import typing as tp
import warnings

import chainer
import chainer.links as L
import numpy
from chainer import backend

from chainer_sharedlinear import _checks
from chainer_sharedlinear.compress import fitting
from chainer_sharedlinear.compress.allocation import allocate
from chainer_sharedlinear.compress.calibration import (
    LayerStatistics,
    _gather_cross_statistics,
    _gather_in_call_order,
    _is_array,
)
from chainer_sharedlinear.compress.candidates import _LayerFit
from chainer_sharedlinear.compress.counting import _dense_bytes, _model_bytes, stored_bytes
from chainer_sharedlinear.compress.patterns import (
    _PATTERNS,
    _allocation_settings,
    _from_knobs,
    _pattern,
    _settings,
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
from chainer_sharedlinear.compress.weight_fit import _relative_error
from chainer_sharedlinear.convert import (
    Include,
    _candidates,
    _named_links,
    _replace_links,
    _selected,
)
from chainer_sharedlinear.links.virtual_linear import weight_hook_types

Convert = tp.Callable[[L.Linear, fractions.Fraction, str], chainer.Link]


#: How :func:`compress_linears` shares the budget among the layers.
ALLOCATIONS = ('model', 'layer')

#: The patterns ``pattern='auto'`` chooses from with ``allocation='model'``: those that win
#: on trained weights (docs/compress.md); the others cost time and are rarely chosen.
MODEL_PATTERNS = ('lowrank', 'clustered', 'clustered_lowrank')


def compress_linears(model: chainer.Link, budget, *,
                     pattern: tp.Union[str, Convert] = 'auto', include: Include = None,
                     patterns: tp.Optional[tp.Iterable[str]] = None, calibration=None,
                     allocation: str = 'model', correct_bias: bool = True,
                     sequential: bool = False,
                     allow_more_multiply_adds: bool = False) -> CompressionReport:
    """Compresses the ``L.Linear`` links of a trained model to ``budget`` of their bytes, in place.

    With ``allocation='model'`` (the default), ``budget`` is a fraction of the
    selected layers' bytes **together**: each layer gets the pattern and
    knobs (or stays dense) that make the sum of the squared relative errors
    of the layers (each weighted by its sensitivity with calibration data,
    below) least within the total, an exact multiple-choice knapsack
    (:func:`~chainer_sharedlinear.compress.allocation.allocate`) over each
    layer's candidates: each pattern's settings at the budgets of ``LADDER``
    (from all of a layer's bytes down to 1/1024) or, for a pattern of
    several knobs, on its grid (``clustered_lowrank``: every bit width of
    ``CLUSTERED_LOW_RANK_GRID_BITS`` at the ranks of ``patterns.rank_grid``),
    none larger than the whole budget; and the dense layer. Use it to
    compress a model: the layers that matter most (a small output layer)
    keep more. With ``allocation='layer'`` each layer stores at most
    ``budget`` of its own bytes (:func:`stored_bytes`, the bias included),
    with the knobs of :func:`knobs_at_budget`: use it where each layer must
    fit on its own (a layer-by-layer memory limit), or to compare.

    With ``calibration`` (the model's input, as ``model(x)`` takes it: an
    array, or an iterable of batches), the statistics of each selected
    layer's inputs are gathered first
    (:func:`~chainer_sharedlinear.compress.calibration.gather_statistics`, in
    test mode with no graph), and every candidate is scored on the layer's
    output error ``‖X (W − V)ᵀ‖ / ‖X Wᵀ‖`` on them
    (:func:`~chainer_sharedlinear.compress.fitting.output_error`) instead of the
    weight's ``‖W − V‖ / ‖W‖``; ``lowrank`` is then the whitened SVD
    (SVD-LLM), and ``clustered`` and ``clustered_lowrank`` are rounded onto
    their codebooks with error feedback (GPTQ); ``clustered_lowrank``'s
    candidates are scored as they are built. With ``allocation='model'`` each
    layer's squared error is weighted by its sensitivity, measured on the
    calibration data: ``(‖Δy‖ / ‖y‖ / e)²`` for the change ``Δy`` of the model's
    outputs ``y`` when that layer alone is replaced by its candidate of least
    error ``e`` within its own share of the budget (HAWQ-V2's weights, measured
    rather than from the Hessian): an error in a layer whose outputs the later
    layers amplify costs more. Calibration data that can be run only once (an
    iterator, a generator) leave every weight 1: give a list of batches or an
    array. Bad calibration data (an
    empty set or batch, a NaN or an infinity, a batch the model refuses) is a
    :class:`~chainer_sharedlinear.compress.calibration.CalibrationError` before
    anything changes. A layer with fewer calibration samples than inputs is
    fitted on its Gram matrix plus a ridge
    (:func:`~chainer_sharedlinear.compress.fitting.cholesky_of_gram`): the
    directions the data do not reach are kept as near the weight as the
    ridge makes them.

    With ``sequential`` (calibration data that can be run again needed), the
    choice of each layer (its pattern and knobs) is made as above, on the dense
    model's statistics; then the layers are built one at a time in the order
    of their first calls in a forward pass (GPTQ's order), each fitted on its
    inputs ``X̃`` in the model whose earlier layers are the new ones, to the
    dense model's outputs ``X Wᵀ + b`` on its inputs ``X`` there: it makes
    ``‖X̃ Vᵀ + c − (X Wᵀ + b)‖`` least, and so corrects what the earlier layers
    lost (fitting ``V`` to ``W`` on ``X̃`` alone, as GPTQ does, corrected nothing
    and lost more). The layer's dense outputs are first regressed on ``X̃``
    (least squares, with a small ridge that pulls the regressed weight to
    ``W``, never to 0), and the layer fitted to that weight and bias on
    ``X̃``'s statistics; the report's errors are then against them. It costs
    two passes of the calibration data per layer, and the statistics ``X̃ᵀX`` of
    one layer at a time. It pays where errors compound over depth, at budgets
    where the one-pass fit loses points; where that loses little, it gains
    nothing for its time (experiments/transformer.py ``--sequential``).

    No setting costs more multiply-adds than the dense layer unless
    ``allow_more_multiply_adds``. A layer that no setting fits is skipped
    (with ``allocation='model'``, a layer the allocation keeps dense too),
    and the report says why; if no layer is compressed, a warning says so too.
    The walk, the atomic replacement, ``include``, tied links and hooks are
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
        budget (float): The fraction of the dense bytes, in ``(0, 1]``: ``1/8``
            keeps an eighth; of the selected layers together, or of each (see
            ``allocation``).
        pattern: A name of :func:`pattern_names` (``'shared'``,
            ``'hashed'``, ``'kronecker'``, ``'phm'``, ``'lowrank'``,
            ``'clustered'``, ``'monarch'``, ``'clustered_lowrank'``); ``'auto'``,
            which takes for each layer the pattern of ``patterns`` of least error
            (ties go to the earlier pattern); or a function ``convert(linear,
            budget, path)`` returning a layer of the family (a
            ``ValueError`` from it skips the layer, with its message); its
            ``linear`` is an ``L.Linear`` with the weight to fit, without hooks
            (a function takes ``allocation='layer'`` only).
        include: Which ``L.Linear`` links to compress, as in
            :func:`~chainer_sharedlinear.convert_linears`.
        patterns (list of str): The patterns ``'auto'`` chooses from: with
            ``allocation='model'``, ``MODEL_PATTERNS`` by default; with
            ``'layer'``, all of :func:`pattern_names`.
        calibration: The model's input on which to fit and score, or ``None``.
        allocation (str): ``'model'`` or ``'layer'``, above.
        sequential (bool): With ``calibration``, fit each layer on the inputs of
            the model with the layers before it compressed (above).
        correct_bias (bool): With ``calibration``, give each new layer the bias
            that keeps its mean output
            (:func:`~chainer_sharedlinear.compress.fitting.corrected_bias`), and
            score the candidates with it: it keeps more of the accuracy of the
            Fashion-MNIST MLP at 1/32 (docs/compress.md).
        allow_more_multiply_adds (bool): Whether a layer may cost more
            multiply-adds than the dense one (a Kronecker layer of many terms).

    Returns:
        CompressionReport: Per layer its pattern, knobs, bytes, multiply-adds and
        errors (the output error with calibration); the layers already of the
        family; the whole model's bytes; what was skipped and why; and the plan.

    Raises:
        ValueError: A selected ``L.Linear`` is not initialised yet (a lazy
            ``L.Linear(None, n)``): run one forward pass first; or its weight
            holds NaN or infinite values, which no layer can be fitted to; or
            the calibration data are bad (a ``CalibrationError``); or
            ``sequential`` without calibration data that can be run again,
            or with a function of your own. Nothing is changed.
        TypeError: ``convert`` returned a link that is not of the family.

    .. admonition:: Example

        >>> import chainer
        >>> import chainer.links as L
        >>> import numpy as np
        >>> tiled = np.tile(np.arange(12.).reshape(4, 3), 8)  # 8 copies of one (4, 3) block
        >>> model = chainer.Sequential(L.Linear(24, 4, nobias=True, initialW=tiled),
        ...                            L.Linear(7, 3))
        >>> report = compress_linears(model, 1/8, allocation='layer')
        >>> print(report)  # doctest: +ELLIPSIS
        1 compressed, 1 skipped, at a budget of 1/8 of each layer's bytes
          /0: shared n_shared=8, 48 of 384 bytes (0.1250), 12 of 96 multiply-adds, error 0.0000
          skipped /1: no pattern fits: shared cannot store a 7 -> 3 layer in 1/8 of its 96 bytes...
          whole model: 144 of 480 bytes (0.3000, 1/3.3), every layer counted
        >>> model[0]
        SharedLinear(in_size=24, out_size=4, n_shared=8, nobias=True)
        >>> report.layers[0].errors['hashed'] > 0
        True

        The whole-model budget, fitted on calibration data:

        >>> rng = np.random.RandomState(0)
        >>> model = chainer.Sequential(L.Linear(64, 64), L.Linear(64, 4))
        >>> x = rng.randn(256, 64).astype(np.float32)
        >>> report = compress_linears(model, 1/4, calibration=x)
        >>> report.stored_bytes <= report.dense_bytes / 4
        True
        >>> all(0 <= row.output_error < 1 for row in report.layers)
        True

        Each layer fitted on the inputs the layers compressed before it give it:

        >>> model = chainer.Sequential(L.Linear(64, 64), L.Linear(64, 4))
        >>> report = compress_linears(model, 1/4, calibration=x, sequential=True)
        >>> report.stored_bytes <= report.dense_bytes / 4
        True
        >>> compress_linears(model, 1/4, sequential=True)
        Traceback (most recent call last):
        ...
        ValueError: sequential=True fits each layer on the inputs that the layers compressed \
before it give it, two passes of the calibration data per layer: it needs calibration data \
that can be run again (an array or a list of batches), got none
    """
    fraction = _checks.budget(budget)
    if allocation not in ALLOCATIONS:
        raise ValueError('allocation must be one of {}, got {!r}'.format(
            ', '.join(map(repr, ALLOCATIONS)), allocation))
    if pattern == 'auto':
        default = MODEL_PATTERNS if allocation == 'model' else pattern_names()
        names = default if patterns is None else tuple(patterns)
        if not names:
            raise ValueError("patterns is empty: pattern='auto' needs at least one pattern")
        for name in names:
            _pattern(name)
    elif patterns is not None:
        raise ValueError("patterns is for pattern='auto'; pattern={!r} is one already".format(
            pattern))
    elif callable(pattern):
        if allocation == 'model':
            raise ValueError("a function of your own compresses a layer to its own budget: "
                             "pass allocation='layer' with it")
        if sequential:
            raise ValueError('sequential=True fits the layers to the calibration data, and a '
                             'function of your own fits them to the weight: leave sequential '
                             'off')
        names = ()
    else:
        names = (_pattern(pattern) and pattern,)
    if sequential and (calibration is None or not _reiterable(calibration)):
        raise ValueError('sequential=True fits each layer on the inputs that the layers '
                         'compressed before it give it, two passes of the calibration '
                         'data per layer: it needs calibration data that can be run again (an '
                         'array or a list of batches), got {}'.format(
                             'none' if calibration is None else 'a one-pass iterator'))

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

    statistics = {}
    if calibration is not None:
        selected = _selected_linears(model, include)
        for linear in selected:  # a bad weight is refused before the data are run
            why_not(linear)
        statistics = _gather_in_call_order(model, calibration, include=include)
    fits: tp.Dict[int, _LayerFit] = {}

    def layer_fit(linear, layer_statistics=None, replaces=None):
        """The fit of the layer that replaces ``linear``, on the dense model's statistics.

        Or of ``linear`` (an ``L.Linear`` without hooks) fitted on ``layer_statistics``
        in place of the one it ``replaces``: the fit of the sequential build.
        """
        if replaces is not None:
            fits[id(replaces)] = _LayerFit(linear, layer_statistics, correct_bias=correct_bias)
        elif id(linear) not in fits:
            hooks = _weight_hooks(linear)
            fitted = _with_weight(linear, _weight_used(linear)) if hooks else linear
            fits[id(linear)] = _LayerFit(fitted, statistics.get(first_paths[id(linear)]),
                                         correct_bias=correct_bias)
        return fits[id(replaces or linear)]

    chosen = {}
    if allocation == 'model':
        sensitivity = None
        if statistics and _reiterable(calibration):
            sensitivity = _Sensitivity(model, calibration)
        chosen = _allocate(model, include, fraction, names, why_not, layer_fit,
                           allow_more_multiply_adds, sensitivity)

    def why_not_here(linear):
        why = why_not(linear)
        if why is None and allocation == 'model' and chosen[id(linear)] is None:
            return 'kept dense by the allocation (its error would cost more than its bytes save)'
        return why

    def convert(linear):
        path = first_paths[id(linear)]
        hooks = _weight_hooks(linear)
        fit = layer_fit(linear)
        if callable(pattern):
            layer = pattern(fit.linear, fraction, path)
            _check_family(layer, path)
            name = getattr(pattern, '__name__', type(pattern).__name__)
            row = _row(path, name, dict(layer._options()), layer, fit, None)
        elif allocation == 'model':
            name, knobs, errors = chosen[id(linear)]
            layer = fit.build(name, knobs)
            row = _row(path, name, knobs, layer, fit, errors)
        else:
            row, layer = _auto(fit, fraction, names, path, allow_more_multiply_adds,
                               pattern == 'auto')
        del fits[id(linear)]
        rows[id(layer)] = dataclasses.replace(row, weight_hooks=tuple(hooks))
        return layer

    if sequential:
        built = _build_in_call_order(model, calibration, statistics, why_not_here, layer_fit,
                                     convert)
        convert = built.pop
    conversion = _replace_links(model, include, 'compress_linears', L.Linear, why_not_here,
                                convert)
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
                               stored_bytes=stored, dense_bytes=dense, uncounted=uncounted,
                               allocation=allocation)
    if not layers:
        warnings.warn('compress_linears compressed nothing at a budget of {}: {}'.format(
            fraction, '; '.join('{} skipped: {}'.format(path, why)
                                for path, why in conversion.skipped.items())
            or 'the model has no L.Linear'), stacklevel=2)
    return report


def _selected_linears(model, include) -> tp.List[L.Linear]:
    """The ``L.Linear`` links ``include`` selects, each once, in the model's order."""
    links = dict(model.namedlinks())
    candidates = _candidates(links, L.Linear)
    named = _named_links(include, links, candidates, L.Linear)
    return [c.link for c in candidates.values() if _selected(include, named, c)]


class _Built(dict):
    """The layers :func:`_build_in_call_order` made, by the id of the ``L.Linear`` replaced."""

    def pop(self, linear):
        """The layer made for ``linear``, or the ``ValueError`` that skipped it, raised."""
        layer = super().pop(id(linear))
        if isinstance(layer, ValueError):
            raise layer
        return layer


def _build_in_call_order(model, calibration, order, why_not, layer_fit, convert) -> _Built:
    """Each layer made by ``convert``, fitted on the inputs the layers made before it give it.

    The layers are made in the order of the paths ``order`` (that of their
    first calls), each fitted to its :func:`_regressed_linear`. The model is not
    changed: a hook puts each made layer's outputs in place of its
    ``L.Linear``'s while the next layer's statistics are gathered.
    """
    links = dict(model.namedlinks())
    built = _Built()
    replaced = _ReplacedOutputs()
    for path in order:
        linear = links[path]
        if why_not(linear) is not None:
            continue
        statistics, cross, dense_sums = _gather_cross_statistics(model, calibration, linear,
                                                                 replaced)
        layer_fit(_regressed_linear(linear, statistics, cross, dense_sums), statistics,
                  replaces=linear)
        try:
            built[id(linear)] = layer = convert(linear)
        except ValueError as e:
            built[id(linear)] = e
            continue
        replaced.replace(linear, layer)
    return built


#: The ridge of :func:`_regressed_linear`, relative to the inputs' mean square.
SEQUENTIAL_RIDGE = 1e-3


def _regressed_linear(linear, statistics, cross, dense_sums) -> L.Linear:
    """The dense layer's outputs on the dense model's inputs, as an affine map of the new inputs.

    The ``L.Linear`` (without hooks) of weight ``W'`` and bias ``b'`` that make
    ``‖X̃ W'ᵀ + 1 b'ᵀ − (X Wᵀ + 1 bᵀ)‖`` least, for the inputs ``X̃`` of the
    layer in the model whose earlier layers are compressed (``statistics``, and
    ``cross`` ``X̃ᵀX``) and its inputs ``X`` in the dense model (their sums
    ``dense_sums``): a least-squares regression on the centred inputs, with
    :func:`~chainer_sharedlinear.compress.fitting.cholesky_of_gram`'s ridge where
    they do not determine it; without a bias, ``b' = b = 0`` and the inputs
    are not centred. Since ``X̃ W'ᵀ + 1 b'ᵀ`` is the projection of the dense
    outputs on what ``X̃`` can give, a layer ``(V, c)`` fitted to ``(W', b')`` on
    ``X̃`` makes ``‖X̃ Vᵀ + 1 cᵀ − (X Wᵀ + 1 bᵀ)‖`` least as well.
    """
    host = backend.CpuDevice()
    weight = host.send(_weight_used(linear)).astype(numpy.float64)
    gram, cross, dense_sums = (host.send(a) for a in (statistics.gram, cross, dense_sums))
    n_samples = statistics.n_samples
    new_mean, dense_mean = host.send(statistics.column_sums) / n_samples, dense_sums / n_samples
    if linear.b is not None:  # centred: the bias takes the means
        gram = gram - n_samples * numpy.outer(new_mean, new_mean)
        cross = cross - n_samples * numpy.outer(new_mean, dense_mean)
    factor, _ = fitting.cholesky_of_gram(LayerStatistics(
        gram=gram, n_samples=n_samples, column_sums=numpy.zeros_like(new_mean)),
        ridge=SEQUENTIAL_RIDGE)
    # W' − W, so that the ridge pulls W' to W, not to 0: directions X̃ does not reach
    # (a layer norm's outputs span one fewer) keep the dense weight, not a blown-up one
    change = numpy.linalg.solve(factor.T, numpy.linalg.solve(factor, (cross - gram) @ weight.T))
    solved = weight.T + change
    regressed = L.Linear(linear.out_size, nobias=linear.b is None)  # lazy: nothing drawn
    regressed.to_device(linear.device)
    regressed.W.array = linear.device.send(solved.T.astype(linear.W.dtype))
    if linear.b is not None:
        bias = (host.send(linear.b.array).astype(numpy.float64) + weight @ dense_mean
                - solved.T @ new_mean)
        regressed.b.array = linear.device.send(bias.astype(linear.b.dtype))
    return regressed


def _allocate(model, include, fraction, names, why_not, layer_fit, allow_more_multiply_adds,
              sensitivity=None):
    """The choice of each layer to compress: ``(pattern, knobs, errors)``, or ``None`` (dense).

    Every layer's candidates are scored before any layer changes; a layer that
    :func:`compress_linears` would skip is left out of the budget.
    """
    layers = [linear for linear in _selected_linears(model, include) if why_not(linear) is None]
    candidates, options = [], []
    sizes = [linear.W.size * linear.W.dtype.itemsize
             + (0 if linear.b is None else linear.b.size * linear.b.dtype.itemsize)
             for linear in layers]
    budget = math.floor(fraction * sum(sizes))
    for linear, dense in zip(layers, sizes):
        fit = layer_fit(linear)
        out_size, in_size = fit.weight.shape
        itemsize = fit.weight.dtype.itemsize
        bias = 0 if linear.b is None else linear.b.size * linear.b.dtype.itemsize
        layer_candidates, layer_options = [(dense, 0.0)], [None]
        least = {}
        for name in names:
            settings = _allocation_settings(name, in_size, out_size, fit.weight.dtype,
                                            linear.b is None, budget, allow_more_multiply_adds)
            if not settings:
                continue
            entry = _PATTERNS[name]
            for knobs, error in zip(settings, fit.scores(name, settings)):
                size = bias + entry.weight_bytes(in_size, out_size, itemsize, knobs)
                layer_candidates.append((size, error))
                layer_options.append((name, _from_knobs(knobs)))
                least[name] = min(least.get(name, math.inf), error)
        candidates.append(layer_candidates)
        options.append((layer_options, least))
    if not layers:
        return {}
    sensitivities = None
    if sensitivity is not None:  # s_l = (the model's relative error / the layer's)²
        sensitivities = []
        for linear, dense, layer_candidates, (layer_options, _) in zip(layers, sizes, candidates,
                                                                        options):
            own = [i for i, (size, _) in enumerate(layer_candidates)
                   if layer_options[i] is not None and size <= fraction * dense]
            if not own:
                sensitivities.append(1.0)
                continue
            pick = min(own, key=lambda i: (layer_candidates[i][1], layer_candidates[i][0]))
            error = layer_candidates[pick][1]
            layer = layer_fit(linear).build(*layer_options[pick])
            model_error = sensitivity.model_error(linear, layer)
            sensitivities.append(1.0 if error == 0 else max((model_error / error) ** 2, 1e-12))
    try:
        allocated = allocate(candidates, budget, sensitivities=sensitivities)
    except ValueError as e:
        raise ValueError('compress_linears: the selected layers cannot be stored in {} of '
                         'their {:,} bytes: {}'.format(fraction, sum(sizes), e)) from None
    chosen = {}
    for linear, (layer_options, least), choice in zip(layers, options, allocated.choices):
        option = layer_options[choice]
        chosen[id(linear)] = None if option is None else option + (least,)
    return chosen
def _reiterable(calibration) -> bool:
    """Whether the calibration data can be run again (not a one-pass iterator)."""
    try:
        return iter(calibration) is not calibration
    except TypeError:
        return True  # an array


class _Sensitivity:
    """How much the model's outputs change when one layer's outputs change.

    The outputs are every array the model returns on the calibration data (a
    variable, or those of a tuple, list or dict), in float64 on the host.
    """

    def __init__(self, model, calibration):
        self.model = model
        self.calibration = calibration
        self.dense = self._outputs(None)

    def _outputs(self, hook):
        batches = [self.calibration] if _is_array(self.calibration) else self.calibration
        found = []
        with chainer.using_config('train', False), chainer.no_backprop_mode():
            with contextlib.ExitStack() as stack:
                if hook is not None:
                    stack.enter_context(hook)
                for x in batches:
                    found += [backend.CpuDevice().send(a).astype(numpy.float64).ravel()
                              for a in _arrays_of(self.model(x))]
        return numpy.concatenate(found) if found else numpy.zeros(0)

    def model_error(self, linear, layer) -> float:
        """``‖y' − y‖ / ‖y‖`` of the model's outputs with ``linear``'s replaced by ``layer``'s."""
        outputs = self._outputs(_ReplacedOutputs({linear: layer}))
        norm = float(numpy.linalg.norm(self.dense))
        return float(numpy.linalg.norm(outputs - self.dense)) / norm if norm else 0.0


class _ReplacedOutputs(chainer.LinkHook):
    """Overwrites the outputs of ``L.Linear`` links with those of other layers on their inputs."""

    name = 'chainer_sharedlinear.compress.replaced'

    def __init__(self, layers=None):
        self.layers = {}  # id of an L.Linear -> (the dense weight, the bias) of its new layer
        for linear, layer in (layers or {}).items():
            self.replace(linear, layer)

    def replace(self, linear, layer) -> None:
        """From now on, ``linear``'s outputs are ``layer``'s."""
        weight = layer.xp.asarray(layer.dense_weight())
        self.layers[id(linear)] = weight, None if layer.b is None else layer.b.array

    def forward_postprocess(self, args):
        replacement = self.layers.get(id(args.link))
        if replacement is None:
            return
        weight, bias = replacement
        x = args.args[0]
        x = x.array if isinstance(x, chainer.Variable) else x
        rows = x.reshape(-1, weight.shape[1])
        y = rows @ weight.T.astype(rows.dtype)
        if bias is not None:
            y = y + bias
        args.out.array[...] = y.reshape(args.out.shape)


def _arrays_of(outputs) -> tp.List:
    if isinstance(outputs, chainer.Variable):
        return [outputs.array]
    if _is_array(outputs):
        return [outputs]
    if isinstance(outputs, dict):
        return [a for key in sorted(outputs, key=str) for a in _arrays_of(outputs[key])]
    if isinstance(outputs, (tuple, list)):
        return [a for output in outputs for a in _arrays_of(output)]
    return []


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


def _row(path, pattern, knobs, layer, fit, errors, **auto) -> CompressedLayer:
    out_size, in_size = fit.weight.shape
    entry = _PATTERNS.get(pattern)
    return CompressedLayer(
        path=path, pattern=pattern, knobs=knobs, stored_bytes=stored_bytes(layer),
        dense_bytes=stored_bytes(fit.linear), error=_relative_error(layer, fit.weight),
        link=type(layer).__name__, errors=dict(errors or {}),
        output_error=math.nan if fit.statistics is None else fit.output_error(layer),
        multiply_adds=None if entry is None else entry.multiply_adds(in_size, out_size, knobs),
        dense_multiply_adds=in_size * out_size, **auto)


def _auto(fit, fraction, names, path, allow_more_multiply_adds, auto=True):
    # Each pattern's knobs at the budget, scored; only the layer taken is built.
    out_size, in_size = fit.weight.shape
    errors, refused = {}, {}
    best = None
    for name in names:
        try:
            settings, _ = _settings(name, in_size, out_size, fraction, fit.weight.dtype,
                                    fit.linear.b is None, fit.weight, allow_more_multiply_adds)
        except ValueError as e:
            refused[name] = str(e)
            continue
        if auto:  # a pattern named alone is not scored: its layer is built once
            errors[name], = fit.scores(name, settings[:1])
        if best is None or (auto and errors[name] < errors[best[0]]):  # the first of equals
            best = name, _from_knobs(settings[0])
    if best is None:
        raise ValueError(('no pattern fits: ' if auto else '') + '; '.join(refused.values()))
    name, knobs = best
    layer = fit.build(name, knobs)
    if not auto:
        return _row(path, name, knobs, layer, fit, None), layer
    row = _row(path, name, knobs, layer, fit, errors, refused=refused)
    # measured on the layer taken, as for every row
    errors[name] = row.error if fit.statistics is None else row.output_error
    return dataclasses.replace(row, errors=errors), layer
