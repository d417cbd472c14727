"""Times forward + backward of one layer: SharedLinear against what users have today.

Run ``python -m chainer_sharedlinear.benchmark --help``, or ``bash benchmarks/run.sh``
from the repository. For each layer shape (a :class:`Case`) it times four
implementations of the same step, forward and backward with a fixed output
gradient:

``shared``
    :class:`~chainer_sharedlinear.SharedLinear`, this project.
``dense``
    :class:`chainer.links.Linear` with the same ``in_size`` and ``out_size``.
``tiled2016``
    :class:`~chainer_sharedlinear.functions.TiledLinearFunction`, the 2016
    algorithm, on the shared link's own ``W`` and ``b``.
``floor``
    :func:`floor_forward_backward`: the fold arithmetic in plain NumPy or CuPy,
    with no Chainer around it; the bar Chainer's bookkeeping cannot beat.

The implementations of one case are timed round-robin, so that drift on a busy
machine affects them alike, after warm-up rounds; each figure is a median. The
report is a table of medians and of speed-ups over ``L.Linear``, the issue's
targets marked PASS or MISS, a JSON file and a plot.
"""

import argparse
import collections
import datetime
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
import typing as tp

import chainer
import chainer.links as L
import numpy

from chainer_sharedlinear.functions.fold import fold, unfold
from chainer_sharedlinear.functions.tiled_linear import TiledLinearFunction
from chainer_sharedlinear.links.shared_linear import SharedLinear

IMPLEMENTATIONS = ('shared', 'dense', 'tiled2016', 'floor')
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
    """One layer shape: ``batch`` rows of ``in_size`` features to ``out_size``.

    >>> Case(100, 1000, 900, 10, nobias=True).label
    '100x1000->900 n=10 nobias'
    """

    batch: int
    in_size: int
    out_size: int
    n_shared: int
    nobias: bool = False

    @property
    def label(self) -> str:
        label = '{}x{}->{} n={}'.format(self.batch, self.in_size, self.out_size, self.n_shared)
        return label + ' nobias' if self.nobias else label


def _large(batch=256, n_shared=8):
    return Case(batch, 4096, 4096, n_shared)


# The shapes of the issue. The large layer is also the sweep's n_shared = 8
# and the batch sweep's 256; a shape in several groups is timed once.
CASE_GROUPS = collections.OrderedDict([
    # The layer l2 of examples/train_mnist3.py.
    ('example', (Case(100, 1000, 900, 10, nobias=True),)),
    ('large', (_large(),)),
    ('sweep', tuple(_large(n_shared=n) for n in (1, 2, 4, 8, 16))),
    ('batch', tuple(_large(batch=b) for b in (1, 32, 256))),
])


def select_cases(group_names) -> 'collections.OrderedDict[Case, tp.List[str]]':
    """Maps each case of the named groups (or ``'all'``) to the groups it is in.

    >>> [case.n_shared for case in select_cases(['sweep'])]
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
    y = x_fold.dot(W.T)
    if b is not None:
        y += b
    gW = gy.T.dot(x_fold)
    gx = unfold(gy.dot(W), n_shared)
    gb = None if b is None else gy.sum(axis=0)
    return y, gx, gW, gb


def make_steps(case: Case, device, dtype, seed: int = 0) -> 'collections.OrderedDict':
    """Makes one zero-argument function per implementation, each a forward + backward.

    The three Chainer ones take the input as a :class:`chainer.Variable`, so
    the gradient of the input is computed as it is inside a network, and
    clear the gradients they leave before each step.
    """
    rng = numpy.random.default_rng(seed)
    x = device.send(rng.standard_normal((case.batch, case.in_size)).astype(dtype))
    gy = device.send(rng.standard_normal((case.batch, case.out_size)).astype(dtype))
    with chainer.using_config('dtype', dtype):
        shared = SharedLinear(case.in_size, case.out_size, n_shared=case.n_shared,
                              nobias=case.nobias)
        dense = L.Linear(case.in_size, case.out_size, nobias=case.nobias)
    shared.to_device(device)
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

    params = (shared.W,) if case.nobias else (shared.W, shared.b)

    def tiled_step():
        shared.cleargrads()
        x_var.cleargrad()
        backward(TiledLinearFunction()(x_var, *params))

    W = shared.W.array
    b = None if case.nobias else shared.b.array

    def floor_step():
        floor_forward_backward(x, W, b, gy, case.n_shared)

    return collections.OrderedDict([
        ('shared', link_step(shared)),
        ('dense', link_step(dense)),
        ('tiled2016', tiled_step),
        ('floor', floor_step),
    ])


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


def run_benchmark(cases, device='@numpy', dtype='float32', repeats=200, warmup=3,
                  seconds=10.0, log=None) -> dict:
    """Times every case and returns the report (what ``--json`` writes).

    Args:
        cases: A :class:`Case` to groups mapping, as :func:`select_cases` makes.
        device: A Chainer device specifier: ``'@numpy'``, ``'@cupy:0'``...
        dtype: The dtype of inputs and parameters.
        repeats (int): The most rounds to time per case.
        warmup (int): Untimed rounds first.
        seconds (float): Time after which a case stops (after ``MIN_REPEATS`` rounds).
        log: A file for progress lines, or ``None``.
    """
    device = chainer.get_device(device)
    if device.xp is not numpy and device.xp.__name__ != 'cupy':
        raise ValueError('the benchmark runs on NumPy or CuPy devices, not {}'.format(device))
    dtype = numpy.dtype(dtype)
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
    result['case'] = case._asdict()
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
    result['shared_over_floor'] = medians['shared'] / medians['floor']
    result['speedup_over_dense_of_min'] = collections.OrderedDict(
        (name, result['min_ms']['dense'] / fastest)
        for name, fastest in result['min_ms'].items())
    result['samples_ms'] = collections.OrderedDict(
        (name, [round(t * 1e3, 4) for t in times]) for name, times in samples.items())
    return result


class Target(tp.NamedTuple):
    """A speed target of the issue, checked on one case of the report."""

    description: str
    case: Case
    metric: str  # 'speedup' (dense / shared) or 'over_floor' (shared / floor)
    goal: float


TARGETS = (
    Target('example layer: SharedLinear >= 6.0x faster than L.Linear',
           CASE_GROUPS['example'][0], 'speedup', 6.0),
    Target('large layer: SharedLinear >= 7.0x faster than L.Linear',
           CASE_GROUPS['large'][0], 'speedup', 7.0),
    Target('n_shared = 1: SharedLinear >= 0.95x L.Linear',
           _large(n_shared=1), 'speedup', 0.95),
    Target('example layer: SharedLinear <= 1.25x the time of the plain floor',
           CASE_GROUPS['example'][0], 'over_floor', 1.25),
)


def evaluate_targets(results, itemsize) -> list:
    """Marks each target PASS or MISS with the measured figure (n/a if not measured)."""
    by_case = {Case(**result['case']): result for result in results}
    evaluated = []
    for target in TARGETS:
        result = by_case.get(target.case)
        entry = collections.OrderedDict([('target', target.description)])
        if result is None:
            entry.update(measured=None, status='n/a', note='case not run')
        elif target.metric == 'speedup':
            measured = result['speedup_over_dense']['shared']
            entry.update(measured=round(measured, 3),
                         status='PASS' if measured >= target.goal else 'MISS',
                         note='{:.2f}x, goal >= {}x'.format(measured, target.goal))
        else:
            measured = result['shared_over_floor']
            entry.update(measured=round(measured, 3),
                         status='PASS' if measured <= target.goal else 'MISS',
                         note='{:.2f}x the floor, goal <= {}x'.format(measured, target.goal))
        evaluated.append(entry)
    evaluated.append(_memory_target(results, itemsize))
    evaluated.append(collections.OrderedDict([
        ('target', 'end to end: an epoch of the example >= 1.8x faster with sharing'),
        ('measured', None), ('status', 'n/a'),
        ('note', 'not timed here: bash scripts/example.sh --compare'),
    ]))
    return evaluated


def _memory_target(results, itemsize):
    entry = collections.OrderedDict([
        ('target', 'no (out_size, in_size) array in forward or backward'),
        ('measured', None), ('status', 'n/a'),
        ('note', 'peak memory is measured on NumPy only; tests/test_memory.py checks it'),
    ])
    # With n_shared = 1 the weight itself is (out_size, in_size).
    measured = [result for result in results
                if 'peak_mib' in result and result['case']['n_shared'] > 1]
    if not measured:
        return entry

    def weight_against_activations(result):
        case = result['case']
        return (case['out_size'] * case['in_size']
                / (case['batch'] * (case['in_size'] + case['out_size'])), case['n_shared'])

    # The case where a dense weight would stand out most from everything else.
    result = max(measured, key=weight_against_activations)
    case = result['case']
    dense_weight_mib = case['out_size'] * case['in_size'] * itemsize / 2 ** 20
    peak = result['peak_mib']
    # Any one (out_size, in_size) array alive would alone make the peak that large.
    entry.update(
        measured=peak['shared'],
        status='PASS' if peak['shared'] < dense_weight_mib else 'MISS',
        note='{}: peak {} MiB (L.Linear {} MiB, tiled2016 {} MiB); one (out, in) array '
             '{:.1f} MiB; bound tested in tests/test_memory.py'.format(
                 result['label'], peak['shared'], peak['dense'], peak['tiled2016'],
                 dense_weight_mib))
    return entry


def format_table(report) -> str:
    """The medians and speed-ups of a report as a plain-text table."""
    header = ('case', 'shared ms', 'dense ms', 'tiled16 ms', 'floor ms',
              'shared x', 'tiled16 x', 'floor x', 'shared/floor', 'reps')
    rows = []
    for result in report['results']:
        medians, speedups = result['median_ms'], result['speedup_over_dense']
        rows.append(
            (result['label'],)
            + tuple('{:.3f}'.format(medians[name]) for name in IMPLEMENTATIONS)
            + tuple('{:.2f}'.format(speedups[name])
                    for name in ('shared', 'tiled2016', 'floor'))
            + ('{:.2f}'.format(result['shared_over_floor']), str(result['repeats'])))
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
    """The issue's targets, one a line: status, target, measured figure."""
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


def plot(report, path) -> None:
    """Draws speed-ups over ``L.Linear``: bars for named shapes, lines over ``n_shared``.

    Needs matplotlib (the ``examples`` extra).
    """
    from matplotlib.figure import Figure

    compared = ('shared', 'tiled2016', 'floor')
    named = [r for r in report['results'] if set(r['groups']) - {'sweep'}]
    sweep = sorted((r for r in report['results'] if 'sweep' in r['groups']),
                   key=lambda r: r['case']['n_shared'])
    panels = [panel for panel in (named, sweep) if panel]
    figure = Figure(figsize=(5.5 * len(panels), 4.5), layout='constrained')
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    axes_of = dict(zip((id(panel) for panel in panels), axes))

    if named:
        ax = axes_of[id(named)]
        width = 0.8 / len(compared)
        for i, name in enumerate(compared):
            positions = [j + (i - (len(compared) - 1) / 2) * width for j in range(len(named))]
            bars = ax.bar(positions, [r['speedup_over_dense'][name] for r in named], width,
                          label=name)
            ax.bar_label(bars, fmt='%.1f', fontsize=7)
        ax.axhline(1.0, color='black', linewidth=0.8, label='L.Linear')
        ax.set_xticks(range(len(named)))
        ax.set_xticklabels(['{}\n{}'.format(r['groups'][0], r['label'].replace(' ', '\n', 1))
                            for r in named], fontsize=8)
        ax.set_ylabel('speed-up over L.Linear (forward + backward)')
        ax.set_title('Layer shapes')
        ax.legend(fontsize=8)
    if sweep:
        ax = axes_of[id(sweep)]
        n_shared = [r['case']['n_shared'] for r in sweep]
        for name in compared:
            ax.plot(n_shared, [r['speedup_over_dense'][name] for r in sweep], marker='o',
                    label=name)
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
        ax.set_title('batch {}, {} -> {}'.format(case['batch'], case['in_size'],
                                                   case['out_size']))
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
        description='Times forward + backward of SharedLinear against L.Linear, the 2016 '
                    'tiled algorithm and plain NumPy/CuPy, and checks the speed targets.')
    parser.add_argument('--device', default='@numpy',
                        help="Chainer device: '@numpy' (default) or '@cupy:0' for a GPU")
    parser.add_argument('--dtype', default='float32', help='float16, float32 or float64')
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
    return args


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
