"""Times forward + backward of one layer: the family against what users have today.

Run ``python -m chainer_sharedlinear.benchmark --help``, or ``bash benchmarks/run.sh``
from the repository. For each layer shape (a :class:`Case`) it times the same
step, forward and backward with a fixed output gradient, in several
implementations:

``layer``
    The case's layer of this package: ``SharedLinear``, ``HashedLinear`` or
    ``KroneckerLinear``.
``dense``
    :class:`chainer.links.Linear` with the same ``in_size`` and ``out_size``.
``tiled2016``
    For ``SharedLinear`` only: :class:`~chainer_sharedlinear.functions.TiledLinearFunction`,
    the 2016 algorithm, on the shared link's own ``W`` and ``b``.
``floor``
    The layer's own array code in plain NumPy or CuPy (:data:`FLOORS`), with no
    Chainer around it; the bar Chainer's bookkeeping cannot beat.

The implementations of one case are timed round-robin, so that drift on a busy
machine affects them alike, after warm-up rounds; each figure is a median. The
report is a table of medians and of speed-ups over ``L.Linear``, the issues'
targets marked PASS or MISS, a JSON file and a plot.
"""

import argparse
import collections
import datetime
import errno
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
import typing as tp

import chainer
import chainer.links as L
import numpy

from chainer_sharedlinear.functions.fold import fold, unfold
from chainer_sharedlinear.functions.kronecker_linear import (
    KroneckerLinearFunction,
    _ArrayOps,
    _Products,
)
from chainer_sharedlinear.functions.tied_linear import TiedWeight, TiedWeightGrad
from chainer_sharedlinear.functions.tiled_linear import TiledLinearFunction
from chainer_sharedlinear.links import HashedLinear, KroneckerLinear, SharedLinear

IMPLEMENTATIONS = ('layer', 'dense', 'tiled2016', 'floor')
LAYERS = {'SharedLinear': SharedLinear, 'HashedLinear': HashedLinear,
          'KroneckerLinear': KroneckerLinear}
# Timed in a round of their own, after the others in the same run. The 2016
# code allocates and frees two (out_size, in_size) arrays per step, after which
# glibc hands memory back to the OS; interleaved with it, the next step
# page-faults on fresh memory (measured at 256x4096->4096, n_shared=8: 1,765
# faults and +4 ms per SharedLinear step, 0 faults without it). No layer of a
# real model does that, so it would measure the neighbour, not the layer.
TIMED_ALONE = ('tiled2016',)

# A case ends its timing after this many rounds once it has used up its time.
MIN_REPEATS = 5


class Case(tp.NamedTuple):
    """One layer: ``batch`` rows of ``in_size`` features to ``out_size``, and its pattern.

    ``options`` are the keyword arguments of ``layer`` besides the sizes and
    ``nobias``, as ``(name, value)`` pairs.

    >>> Case(100, 1000, 900, 'SharedLinear', (('n_shared', 10),), nobias=True).label
    'SharedLinear 100x1000->900 n_shared=10 nobias'
    """

    batch: int
    in_size: int
    out_size: int
    layer: str = 'SharedLinear'
    options: tp.Tuple[tp.Tuple[str, tp.Any], ...] = ()
    nobias: bool = False

    @property
    def label(self) -> str:
        label = '{} {}x{}->{}'.format(self.layer, self.batch, self.in_size, self.out_size)
        for name, value in self.options:
            if isinstance(value, tuple):
                value = 'x'.join(str(v) for v in value)
            label += ' {}={}'.format(name, value)
        return label + ' nobias' if self.nobias else label

    def make_layer(self) -> chainer.Link:
        """The case's layer, with its default initial weights."""
        return LAYERS[self.layer](self.in_size, self.out_size, nobias=self.nobias,
                                  **dict(self.options))

    def to_json(self) -> dict:
        case = self._asdict()
        case['options'] = {name: list(value) if isinstance(value, tuple) else value
                           for name, value in self.options}
        return case

    @classmethod
    def from_json(cls, case: dict) -> 'Case':
        options = tuple((name, tuple(value) if isinstance(value, list) else value)
                        for name, value in case['options'].items())
        return cls(case['batch'], case['in_size'], case['out_size'], case['layer'], options,
                   case['nobias'])


def shared(batch, in_size, out_size, n_shared, nobias=False) -> Case:
    return Case(batch, in_size, out_size, 'SharedLinear', (('n_shared', n_shared),), nobias)


def hashed(batch, in_size, out_size, compression, nobias=False) -> Case:
    """A ``HashedLinear`` storing ``1 / compression`` of the dense weights."""
    return Case(batch, in_size, out_size, 'HashedLinear',
                (('n_weights', in_size * out_size // compression),), nobias)


def kronecker(batch, in_size, out_size, in_factors, out_factors, n_terms=1,
              nobias=False) -> Case:
    return Case(batch, in_size, out_size, 'KroneckerLinear',
                (('in_factors', in_factors), ('out_factors', out_factors),
                 ('n_terms', n_terms)), nobias)


def _large(batch=256, n_shared=8):
    return shared(batch, 4096, 4096, n_shared)


# The example's l2 (examples/train_mnist3.py) and the large layer of the issues, in
# each pattern. A shape in several groups is timed once.
CASE_GROUPS = collections.OrderedDict([
    ('example', (shared(100, 1000, 900, 10, nobias=True),)),
    ('large', (_large(),)),
    ('sweep', tuple(_large(n_shared=n) for n in (1, 2, 4, 8, 16))),
    ('batch', tuple(_large(batch=b) for b in (1, 32, 256))),
    ('hashed', (hashed(100, 1000, 900, 8, nobias=True), hashed(256, 4096, 4096, 8))),
    ('kronecker', (kronecker(100, 1000, 900, (25, 40), (30, 30), nobias=True),
                   kronecker(100, 1000, 900, (4, 250), (4, 225), n_terms=4, nobias=True),
                   kronecker(256, 4096, 4096, (64, 64), (64, 64)))),
])


def select_cases(group_names) -> 'collections.OrderedDict[Case, tp.List[str]]':
    """Maps each case of the named groups (or ``'all'``) to the groups it is in.

    >>> [dict(case.options)['n_shared'] for case in select_cases(['sweep'])]
    [1, 2, 4, 8, 16]
    """
    names = list(CASE_GROUPS) if 'all' in group_names else list(group_names)
    unknown = [name for name in names if name not in CASE_GROUPS]
    if unknown:
        raise ValueError('unknown case group(s) {}; choose from {} or all'.format(
            ', '.join(unknown), ', '.join(CASE_GROUPS)))
    selected = collections.OrderedDict()
    for name in names:
        for case in CASE_GROUPS[name]:
            selected.setdefault(case, []).append(name)
    return selected


# --- floors: each layer's array code, without Chainer ------------------------------------

def floor_forward_backward(x, W, b, gy, n_shared):
    """Forward and backward of the shared-weight layer in plain NumPy or CuPy.

    The arithmetic of :func:`~chainer_sharedlinear.shared_linear`, with the
    same array functions (:func:`~chainer_sharedlinear.functions.fold`,
    :func:`~chainer_sharedlinear.functions.unfold`, ``dot``) and nothing of
    Chainer: no graph, no type checks, no variables. The layer's time over
    this one is what Chainer's bookkeeping costs. It returns freshly
    allocated arrays, as any layer must.

    Args:
        x: Input, ``(B, n_shared * k)``.
        W: Shared weight, ``(out_size, k)``.
        b: Bias, ``(out_size,)``, or ``None``.
        gy: Gradient of the output, ``(B, out_size)``.
        n_shared (int): The number of blocks of ``x``.

    Returns:
        tuple: ``y``, ``gx``, ``gW`` and ``gb`` (``None`` without a bias).

    >>> x = numpy.ones((1, 4), numpy.float32)
    >>> W = numpy.array([[1, 2]], numpy.float32)
    >>> gy = numpy.ones((1, 1), numpy.float32)
    >>> y, gx, gW, gb = floor_forward_backward(x, W, None, gy, 2)
    >>> y, gx, gW
    (array([[6.]], dtype=float32), array([[1., 2., 1., 2.]], dtype=float32), \
array([[2., 2.]], dtype=float32))
    """
    x_fold = fold(x, n_shared)
    y = x_fold.dot(W.T).astype(x.dtype, copy=False)
    if b is not None:
        y += b
    gW = gy.T.dot(x_fold).astype(W.dtype, copy=False)
    gx = unfold(gy.dot(W), n_shared)
    gb = None if b is None else gy.sum(axis=0)
    return y, gx, gW, gb


def hashed_floor_forward_backward(x, W, b, gy, bucket, sign):
    """Forward and backward of a hashed layer in plain arrays: gather, three products, scatter.

    ``bucket`` and ``sign`` are the layer's index map (``HashedLinear.index_map()``).
    Returns ``y``, ``gx``, ``gW`` and ``gb`` as :func:`floor_forward_backward` does.
    """
    V, = TiedWeight(bucket, sign).forward((W,))
    y = x.dot(V.T)
    if b is not None:
        y += b
    gx = gy.dot(V)
    gW, = TiedWeightGrad(bucket, sign, W.shape).forward((gy.T.dot(x),))
    gb = None if b is None else gy.sum(axis=0)
    return y, gx, gW, gb


def kronecker_floor_forward_backward(x, A, B, b, gy):
    """Forward and backward of a Kronecker layer in plain arrays, its node's own code.

    Returns ``y``, ``gx``, ``gA``, ``gB`` and ``gb`` (``None`` without a bias).
    """
    node = KroneckerLinearFunction()
    y, = node.forward((x, A, B) if b is None else (x, A, B, b))
    products = _Products(_ArrayOps(chainer.backend.get_array_module(x)), x, A, B)
    gx, gA, gB = products.gradients((0, 1, 2), gy, node._T, (x.dtype, A.dtype, B.dtype))
    gb = None if b is None else gy.sum(axis=0)
    return y, gx, gA, gB, gb


def _floor_step(case, layer, x, gy):
    """The zero-argument floor of ``layer`` on ``x`` and ``gy``."""
    b = None if layer.b is None else layer.b.array
    if case.layer == 'SharedLinear':
        W = layer.W.array
        return lambda: floor_forward_backward(x, W, b, gy, layer.n_shared)
    if case.layer == 'HashedLinear':
        W = layer.W.array
        bucket, sign = layer.index_map()
        return lambda: hashed_floor_forward_backward(x, W, b, gy, bucket, sign)
    A, B = layer.A.array, layer.B.array
    return lambda: kronecker_floor_forward_backward(x, A, B, b, gy)


def make_steps(case: Case, device, dtype, seed: int = 0) -> 'collections.OrderedDict':
    """Makes one zero-argument function per implementation, each a forward + backward.

    The Chainer ones take the input as a :class:`chainer.Variable`, so the
    gradient of the input is computed as it is inside a network, and clear
    the gradients they leave before each step.
    """
    rng = numpy.random.default_rng(seed)
    x = device.send(rng.standard_normal((case.batch, case.in_size)).astype(dtype))
    gy = device.send(rng.standard_normal((case.batch, case.out_size)).astype(dtype))
    with chainer.using_config('dtype', dtype):
        layer = case.make_layer()
        dense = L.Linear(case.in_size, case.out_size, nobias=case.nobias)
    layer.to_device(device)
    dense.to_device(device)
    x_var = chainer.Variable(x)

    def backward(y):
        y.grad = gy
        y.backward()

    def link_step(link):
        def step():
            link.cleargrads()
            x_var.cleargrad()
            backward(link(x_var))
        return step

    steps = collections.OrderedDict([('layer', link_step(layer)), ('dense', link_step(dense))])
    if case.layer == 'SharedLinear':
        params = (layer.W,) if case.nobias else (layer.W, layer.b)

        def tiled_step():
            layer.cleargrads()
            x_var.cleargrad()
            backward(TiledLinearFunction()(x_var, *params))
        steps['tiled2016'] = tiled_step
    link_step(layer)()  # a hashed layer makes its index map on its first call
    steps['floor'] = _floor_step(case, layer, x, gy)
    return steps


def _synchronizer(device):
    if device.xp is numpy:
        return lambda: None
    import cupy

    def synchronize():
        cupy.cuda.get_current_stream().synchronize()
    return synchronize


def time_round_robin(steps, repeats: int, warmup: int, seconds: float, synchronize):
    """Times each step ``repeats`` times, interleaved; returns seconds per step.

    Each round runs every step once, starting from a different one each round.
    Timing stops early once ``seconds`` have passed and ``MIN_REPEATS``
    rounds are done.
    """
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    synchronize()
    samples = collections.OrderedDict((name, []) for name in names)
    start = time.perf_counter()
    for i in range(repeats):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize()
            t0 = time.perf_counter()
            steps[name]()
            synchronize()
            samples[name].append(time.perf_counter() - t0)
        if i + 1 >= MIN_REPEATS and time.perf_counter() - start > seconds:
            break
    return samples


def peak_allocated_bytes(step) -> tp.Optional[int]:
    """The most memory that ``step()`` held at once, as ``tracemalloc`` sees it.

    NumPy reports its array buffers to ``tracemalloc``; CuPy's do not show.
    ``None`` if something else is already tracing.
    """
    if tracemalloc.is_tracing():
        return None
    tracemalloc.start()
    try:
        step()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def describe_machine(device) -> dict:
    """What the figures were measured on: CPU, cores, load, library versions."""
    machine = collections.OrderedDict()
    machine['date'] = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
    machine['device'] = str(device)
    machine['cpu'] = _cpu_model()
    machine['cpu_count'] = os.cpu_count()
    if hasattr(os, 'sched_getaffinity'):
        machine['cpus_usable'] = len(os.sched_getaffinity(0))
    if hasattr(os, 'getloadavg'):
        machine['load_average'] = [round(load, 2) for load in os.getloadavg()]
    machine['platform'] = platform.platform()
    machine['python'] = platform.python_version()
    machine['numpy'] = numpy.__version__
    machine['chainer'] = chainer.__version__
    machine['blas'] = _blas_info()
    machine['thread_settings'] = {
        name: os.environ[name] for name in (
            'OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS')
        if name in os.environ}
    if device.xp is not numpy:
        import cupy
        properties = cupy.cuda.runtime.getDeviceProperties(device.device.id)
        machine['gpu'] = properties['name'].decode()
        machine['cupy'] = cupy.__version__
        machine['cuda_runtime'] = cupy.cuda.runtime.runtimeGetVersion()
    return machine


def _cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as cpuinfo:
            for line in cpuinfo:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _blas_info() -> tp.Optional[dict]:
    # numpy.show_config()'s data, which NumPy 1.25 and later keep as a dict.
    config = getattr(numpy.__config__, 'CONFIG', None)
    try:
        blas = config['Build Dependencies']['blas']
    except (TypeError, KeyError):
        return None
    return {key: blas[key] for key in ('name', 'version', 'openblas configuration')
            if key in blas}


#: The dtypes the benchmark times the layers in.
DTYPES = ('float16', 'float32', 'float64')


def get_dtype(dtype) -> numpy.dtype:
    """``numpy.dtype(dtype)``, or a ``ValueError`` unless it is one of :data:`DTYPES`."""
    try:
        resolved = numpy.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is None or resolved.name not in DTYPES:
        raise ValueError('expected {} or {}, got {!r}'.format(
            ', '.join(DTYPES[:-1]), DTYPES[-1], str(dtype)))
    return resolved


def get_device(spec) -> chainer.backend.Device:
    """``chainer.get_device(spec)``, or a ``ValueError`` unless it is a NumPy or CuPy device.

    A specifier Chainer does not know, and one of a backend it cannot load
    (CuPy, iDeep, ChainerX), raise it too, with Chainer's reason in one line.
    """
    expected = 'expected a NumPy or CuPy device (@numpy, @cupy:N), got {!r}'.format(str(spec))
    try:
        device = chainer.get_device(spec)
    except (ValueError, RuntimeError, TypeError) as e:
        raise ValueError('{}: {}'.format(expected, ' '.join(str(e).split()))) from None
    if device.xp is not numpy and device.xp.__name__ != 'cupy':
        raise ValueError('{}, a {} device'.format(expected, device.xp.__name__))
    return device


def _argument_type(parse):
    """An argparse type: ``parse``, whose ``ValueError`` becomes argparse's one-line error."""
    def parse_argument(text):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse_argument


def run_benchmark(cases, device='@numpy', dtype='float32', repeats=200, warmup=3,
                  seconds=10.0, log=None) -> dict:
    """Times every case and returns the report (what ``--json`` writes).

    Args:
        cases: A :class:`Case` to groups mapping, as :func:`select_cases` makes.
        device: A Chainer device specifier: ``'@numpy'``, ``'@cupy:0'``... (see
            :func:`get_device`).
        dtype: The dtype of inputs and parameters, one of :data:`DTYPES`.
        repeats (int): The most rounds to time per case.
        warmup (int): Untimed rounds first.
        seconds (float): Time after which a case stops (after ``MIN_REPEATS`` rounds).
        log: A file for progress lines, or ``None``.
    """
    device = get_device(device)
    dtype = get_dtype(dtype)
    synchronize = _synchronizer(device)
    report = collections.OrderedDict()
    report['machine'] = describe_machine(device)
    report['settings'] = collections.OrderedDict([
        ('dtype', dtype.name), ('repeats', repeats), ('warmup', warmup),
        ('seconds_per_case', seconds), ('min_repeats', MIN_REPEATS),
        ('clock', 'time.perf_counter'), ('statistic', 'median'),
    ])
    report['results'] = []
    with chainer.using_device(device):
        for case, groups in cases.items():
            if log is not None:
                print('timing {} ...'.format(case.label), file=log, flush=True)
            steps = make_steps(case, device, dtype)
            samples = {}
            for group in (
                    [name for name in steps if name not in TIMED_ALONE],
                    [name for name in steps if name in TIMED_ALONE]):
                if group:
                    samples.update(time_round_robin(
                        {name: steps[name] for name in group}, repeats, warmup, seconds,
                        synchronize))
            samples = collections.OrderedDict((name, samples[name]) for name in steps)
            result = _summarize(case, groups, samples)
            if device.xp is numpy:
                result['peak_mib'] = collections.OrderedDict(
                    (name, _mib(peak_allocated_bytes(step))) for name, step in steps.items())
            report['results'].append(result)
            del steps
    report['machine']['load_average_after'] = (
        [round(load, 2) for load in os.getloadavg()] if hasattr(os, 'getloadavg') else None)
    report['targets'] = evaluate_targets(report['results'], dtype.itemsize)
    return report


def _mib(n_bytes):
    return None if n_bytes is None else round(n_bytes / 2 ** 20, 2)


def _quartiles_ms(times):
    ordered = sorted(times)
    return [ordered[len(ordered) // 4] * 1e3, ordered[(3 * len(ordered)) // 4] * 1e3]


def _summarize(case, groups, samples) -> dict:
    medians = collections.OrderedDict(
        (name, statistics.median(times) * 1e3) for name, times in samples.items())
    result = collections.OrderedDict()
    result['case'] = case.to_json()
    result['label'] = case.label
    result['groups'] = list(groups)
    result['repeats'] = min(len(times) for times in samples.values())
    result['median_ms'] = medians
    # How noisy the machine was: the fastest step and the middle half of them.
    result['min_ms'] = collections.OrderedDict(
        (name, min(times) * 1e3) for name, times in samples.items())
    result['quartiles_ms'] = collections.OrderedDict(
        (name, _quartiles_ms(times)) for name, times in samples.items())
    result['speedup_over_dense'] = collections.OrderedDict(
        (name, medians['dense'] / median) for name, median in medians.items())
    result['layer_over_floor'] = medians['layer'] / medians['floor']
    result['speedup_over_dense_of_min'] = collections.OrderedDict(
        (name, result['min_ms']['dense'] / fastest)
        for name, fastest in result['min_ms'].items())
    result['samples_ms'] = collections.OrderedDict(
        (name, [round(t * 1e3, 4) for t in times]) for name, times in samples.items())
    return result


class Target(tp.NamedTuple):
    """A speed target of the issues, checked on one case of the report.

    ``metric``: ``'speedup'`` (dense time / layer time, at least ``goal``),
    ``'slowdown'`` (layer time / dense time, at most ``goal``), ``'over_floor'``
    (layer time / floor time, at most ``goal``), or ``'report'`` (no goal: the
    speed-up is reported).
    """

    description: str
    case: Case
    metric: str
    goal: tp.Optional[float]


TARGETS = (
    Target('example layer: SharedLinear >= 6.0x faster than L.Linear',
           CASE_GROUPS['example'][0], 'speedup', 6.0),
    Target('large layer: SharedLinear >= 7.0x faster than L.Linear',
           CASE_GROUPS['large'][0], 'speedup', 7.0),
    Target('n_shared = 1: SharedLinear >= 0.95x L.Linear',
           _large(n_shared=1), 'speedup', 0.95),
    Target('example layer: SharedLinear <= 1.25x the time of the plain floor',
           CASE_GROUPS['example'][0], 'over_floor', 1.25),
    Target('large layer: KroneckerLinear 64x64 (x) 64x64 >= 8x faster than L.Linear',
           CASE_GROUPS['kronecker'][2], 'speedup', 8.0),
    Target('example shape: KroneckerLinear (most square factors), speed-up reported',
           CASE_GROUPS['kronecker'][0], 'report', None),
    Target('example shape: PHM layer, n = 4, speed-up reported',
           CASE_GROUPS['kronecker'][1], 'report', None),
    Target('example shape: HashedLinear 1/8 <= 2.0x the time of L.Linear',
           CASE_GROUPS['hashed'][0], 'slowdown', 2.0),
    Target('large layer: HashedLinear 1/8 <= 1.3x the time of L.Linear',
           CASE_GROUPS['hashed'][1], 'slowdown', 1.3),
)


def evaluate_targets(results, itemsize) -> list:
    """Marks each target PASS or MISS with the measured figure (n/a if not measured)."""
    by_case = {Case.from_json(result['case']): result for result in results}
    evaluated = []
    for target in TARGETS:
        result = by_case.get(target.case)
        entry = collections.OrderedDict([('target', target.description)])
        if result is None:
            entry.update(measured=None, status='n/a', note='case not run')
            evaluated.append(entry)
            continue
        speedup = result['speedup_over_dense']['layer']
        if target.metric == 'speedup':
            measured, passed = speedup, speedup >= target.goal
            note = '{:.2f}x, goal >= {}x'.format(measured, target.goal)
        elif target.metric == 'slowdown':
            measured = 1 / speedup
            passed = measured <= target.goal
            note = '{:.2f}x the time, goal <= {}x'.format(measured, target.goal)
        elif target.metric == 'over_floor':
            measured = result['layer_over_floor']
            passed = measured <= target.goal
            note = '{:.2f}x the floor, goal <= {}x'.format(measured, target.goal)
        else:
            measured, passed = speedup, None
            note = '{:.2f}x faster than L.Linear'.format(speedup)
        entry.update(measured=round(measured, 3), note=note,
                     status='info' if passed is None else 'PASS' if passed else 'MISS')
        evaluated.append(entry)
    evaluated += _memory_targets(results, itemsize)
    evaluated.append(collections.OrderedDict([
        ('target', 'end to end: an epoch of the example >= 1.8x faster with sharing'),
        ('measured', None), ('status', 'n/a'),
        ('note', 'not timed here: bash scripts/example.sh --compare'),
    ]))
    return evaluated


def _builds_no_dense_weight(case) -> bool:
    # A hashed layer gathers its (out_size, in_size) weight by design, and
    # SharedLinear with n_shared = 1 stores one.
    if case['layer'] == 'HashedLinear':
        return False
    return case['layer'] != 'SharedLinear' or case['options']['n_shared'] > 1


def _memory_targets(results, itemsize) -> list:
    """Per pattern that never builds an (out_size, in_size) array: is the peak below one?"""
    entries = []
    for layer in ('SharedLinear', 'KroneckerLinear'):
        entry = collections.OrderedDict([
            ('target', '{}: no (out_size, in_size) array in forward or backward'.format(layer)),
            ('measured', None), ('status', 'n/a'),
            ('note', 'peak memory is measured on NumPy only; tests/test_memory.py checks it'),
        ])
        measured = [result for result in results if 'peak_mib' in result
                    and result['case']['layer'] == layer
                    and _builds_no_dense_weight(result['case'])]
        if measured:
            # The case where a dense weight would stand out most from everything else.
            result = max(measured, key=_weight_against_activations)
            case = result['case']
            dense_weight_mib = case['out_size'] * case['in_size'] * itemsize / 2 ** 20
            peak = result['peak_mib']
            entry.update(
                measured=peak['layer'],
                status='PASS' if peak['layer'] < dense_weight_mib else 'MISS',
                note='{}: peak {} MiB (L.Linear {} MiB); one (out, in) array {:.1f} MiB; '
                     'bound tested in tests/test_memory.py'.format(
                         result['label'], peak['layer'], peak['dense'], dense_weight_mib))
        entries.append(entry)
    return entries


def _weight_against_activations(result):
    case = result['case']
    return case['out_size'] * case['in_size'] / (case['batch'] * (case['in_size']
                                                                  + case['out_size']))


def format_table(report) -> str:
    """The medians and speed-ups of a report as a plain-text table."""
    header = ('case', 'layer ms', 'dense ms', 'tiled16 ms', 'floor ms', 'layer x',
              'tiled16 x', 'layer/floor', 'reps')
    rows = []
    for result in report['results']:
        medians, speedups = result['median_ms'], result['speedup_over_dense']

        def cell(values, name, form):
            return form.format(values[name]) if name in values else '-'
        rows.append(
            (result['label'],)
            + tuple(cell(medians, name, '{:.3f}') for name in IMPLEMENTATIONS)
            + tuple(cell(speedups, name, '{:.2f}') for name in ('layer', 'tiled2016'))
            + ('{:.2f}'.format(result['layer_over_floor']), str(result['repeats'])))
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(len(header))]
    lines = ['  '.join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i])
                       for i, cell in enumerate(row)) for row in [header] + rows]
    lines.insert(1, '-' * len(lines[0]))
    return '\n'.join(lines)


def noisy_cases(report, spread=0.1) -> tp.List[str]:
    """The cases where some implementation's middle half of times spans more than ``spread``.

    A wide spread means other work on the machine: such ratios are rough.
    """
    noisy = []
    for result in report['results']:
        for name, (q1, q3) in result['quartiles_ms'].items():
            if q3 - q1 > spread * result['median_ms'][name]:
                noisy.append(result['label'])
                break
    return noisy


def format_targets(report) -> str:
    """The issues' targets, one a line: status, target, measured figure."""
    return '\n'.join('{:<4}  {}  [{}]'.format(t['status'], t['target'], t['note'])
                     for t in report['targets'])


def format_machine(report) -> str:
    machine, settings = report['machine'], report['settings']
    text = '{} ({} cores), {}, numpy {}, chainer {}, {}, load {} -> {}'.format(
        machine['cpu'], machine['cpu_count'], machine['device'], machine['numpy'],
        machine['chainer'], settings['dtype'], machine.get('load_average'),
        machine.get('load_average_after'))
    if 'gpu' in machine:
        text += ', GPU {} (CuPy {})'.format(machine['gpu'], machine['cupy'])
    return text


def write_json(report, path) -> None:
    """Writes the report as JSON, making the folder if needed."""
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, 'w') as f:
        json.dump(report, f, indent=2)
        f.write('\n')


def _short_label(case) -> str:
    """A case in a few short lines, for the plot's axis."""
    options = case['options']
    if case['layer'] == 'SharedLinear':
        pattern = 'n_shared={}'.format(options['n_shared'])
    elif case['layer'] == 'HashedLinear':
        pattern = '1/{:g} of W'.format(case['in_size'] * case['out_size'] / options['n_weights'])
    else:  # the shapes of A and B
        (m1, m2), (n1, n2) = options['out_factors'], options['in_factors']
        pattern = 'A {0}x{1}x{3}\nB {0}x{2}x{4}'.format(options['n_terms'], m1, m2, n1, n2)
    return '{}\n{}\n{}x{}->{}'.format(case['layer'], pattern, case['batch'], case['in_size'],
                                       case['out_size'])


def plot(report, path) -> None:
    """Draws speed-ups over ``L.Linear``: bars for the layers, lines over ``n_shared``.

    Needs matplotlib (the ``examples`` extra).
    """
    from matplotlib.figure import Figure

    compared = ('layer', 'tiled2016', 'floor')
    named = [r for r in report['results'] if set(r['groups']) - {'sweep'}]
    sweep = sorted((r for r in report['results'] if 'sweep' in r['groups']),
                   key=lambda r: r['case']['options']['n_shared'])
    panels = [panel for panel in (named, sweep) if panel]
    widths = [max(5.5, 1.1 * len(panel)) if panel is named else 5.5 for panel in panels]
    figure = Figure(figsize=(sum(widths), 5), layout='constrained')
    axes = figure.subplots(1, len(panels), squeeze=False, width_ratios=widths)[0]
    axes_of = dict(zip((id(panel) for panel in panels), axes))

    if named:
        ax = axes_of[id(named)]
        width = 0.8 / len(compared)
        for i, name in enumerate(compared):
            positions = [j + (i - (len(compared) - 1) / 2) * width for j in range(len(named))]
            heights = [r['speedup_over_dense'].get(name, float('nan')) for r in named]
            bars = ax.bar(positions, heights, width, label=name)
            ax.bar_label(bars, labels=['' if h != h else '{:.1f}'.format(h) for h in heights],
                         fontsize=7)
        ax.axhline(1.0, color='black', linewidth=0.8, label='L.Linear')
        ax.set_yscale('log', base=2)
        ax.set_xticks(range(len(named)))
        ax.set_xticklabels([_short_label(r['case']) for r in named], fontsize=7)
        ax.set_ylabel('speed-up over L.Linear (forward + backward)')
        ax.set_title('The layers of the family')
        ax.legend(fontsize=8)
    if sweep:
        ax = axes_of[id(sweep)]
        n_shared = [r['case']['options']['n_shared'] for r in sweep]
        for name in compared:
            ax.plot(n_shared, [r['speedup_over_dense'][name] for r in sweep], marker='o',
                    label='SharedLinear' if name == 'layer' else name)
        ax.plot(n_shared, n_shared, linestyle='--', color='gray',
                label='n_shared (arithmetic limit)')
        ax.axhline(1.0, color='black', linewidth=0.8, label='L.Linear')
        ax.set_xscale('log', base=2)
        ax.set_yscale('log', base=2)
        ax.set_xticks(n_shared)
        ax.set_xticklabels([str(n) for n in n_shared])
        low, high = ax.get_ylim()
        powers = [2.0 ** e for e in range(-8, 9) if low <= 2.0 ** e <= high]
        ax.set_yticks(powers)
        ax.set_yticklabels(['{:g}'.format(p) for p in powers])
        ax.set_xlabel('n_shared')
        ax.set_ylabel('speed-up over L.Linear')
        case = sweep[0]['case']
        ax.set_title('SharedLinear, batch {}, {} -> {}'.format(
            case['batch'], case['in_size'], case['out_size']))
        ax.legend(fontsize=8)
    machine = report['machine']
    figure.suptitle('{}, {}, {}: medians of forward + backward'.format(
        machine.get('gpu', machine['cpu']), machine['device'], report['settings']['dtype']),
        fontsize=9)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    figure.savefig(path, dpi=120)


def _parse_args(argv):
    parser = argparse.ArgumentParser(
        prog='python -m chainer_sharedlinear.benchmark',
        description='Times forward + backward of the family (SharedLinear, HashedLinear, '
                    'KroneckerLinear) against L.Linear, the 2016 tiled algorithm and plain '
                    'NumPy/CuPy, and checks the speed targets.')
    parser.add_argument('--device', default='@numpy', type=_argument_type(get_device),
                        help="Chainer device: '@numpy' (default) or '@cupy:0' for a GPU")
    parser.add_argument('--dtype', default='float32', type=_argument_type(get_dtype),
                        help='float16, float32 or float64')
    parser.add_argument('--cases', default='all',
                        help='comma-separated groups: {} or all (default)'.format(
                            ', '.join(CASE_GROUPS)))
    parser.add_argument('--repeats', type=int, default=200,
                        help='most timed rounds per case (default 200)')
    parser.add_argument('--warmup', type=int, default=3,
                        help='untimed rounds per case first (default 3)')
    parser.add_argument('--seconds', type=float, default=10.0,
                        help='a case stops after this long, once it has {} rounds '
                             '(default 10)'.format(MIN_REPEATS))
    parser.add_argument('--json', metavar='PATH', help='write the report as JSON here')
    parser.add_argument('--plot', metavar='PATH', help='draw the plot (PNG) here')
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error('--repeats must be at least 1 and --warmup at least 0')
    try:
        args.cases = select_cases([name.strip() for name in args.cases.split(',')])
    except ValueError as e:
        parser.error(str(e))
    for option, path in (('--json', args.json), ('--plot', args.plot)):
        if path is not None:
            try:
                _check_writable(path)
            except OSError as e:
                parser.error('{} {}: cannot write there ({})'.format(
                    option, path, e.strerror or e))
    return args


def _check_writable(path):
    # Before the timing, which takes minutes, rather than after it.
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    folder = os.path.dirname(path) or os.curdir
    os.makedirs(folder, exist_ok=True)
    tempfile.TemporaryFile(dir=folder).close()


def main(argv=None) -> int:
    """Runs the benchmark from the command line; returns the exit status."""
    args = _parse_args(argv)
    report = run_benchmark(args.cases, args.device, args.dtype, args.repeats, args.warmup,
                           args.seconds, log=sys.stderr)
    print(format_machine(report))
    print(format_table(report))
    print()
    print('speed-up (x) is the median of L.Linear over the median of each; '
          'shared/floor is a ratio of times.')
    noisy = noisy_cases(report)
    if noisy:
        print('noisy (quartiles more than 10% apart; the machine was busy): {}'.format(
            '; '.join(noisy)))
    print()
    print(format_targets(report))
    if args.json:
        write_json(report, args.json)
        print('wrote', args.json)
    if args.plot:
        plot(report, args.plot)
        print('wrote', args.plot)
    return 0


if __name__ == '__main__':
    sys.exit(main())
