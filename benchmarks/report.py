"""A run's report: its results summarised, the machine, a table, a JSON file and a plot.

The report is a dict, as ``--json`` writes it: ``machine`` (:func:`describe_machine`),
``settings``, and ``results``, one :func:`summarize` per case. The committed
``docs/benchmark-cpu.json`` also has the ``targets`` that the benchmark printed
when it was run; nothing reads them.
"""

import collections
import datetime
import json
import os
import platform
import statistics
import typing as tp

import chainer
import numpy

from benchmarks.cases import IMPLEMENTATIONS


def _mib(n_bytes):
    return None if n_bytes is None else round(n_bytes / 2 ** 20, 2)


def _quartiles_ms(times):
    ordered = sorted(times)
    return [ordered[len(ordered) // 4] * 1e3, ordered[(3 * len(ordered)) // 4] * 1e3]


def summarize(case, groups, samples, peak_bytes=None) -> dict:
    """One entry of the report's ``results``: a case's figures from its samples.

    Args:
        case (~benchmarks.cases.Case): The case.
        groups: The names of the groups it is in.
        samples: Seconds per step of each implementation, as
            :func:`~benchmarks.measure.time_round_robin` returns them.
        peak_bytes: The peak memory of each implementation's step, or ``None``
            where it was not measured.
    """
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
    if peak_bytes is not None:
        result['peak_mib'] = collections.OrderedDict(
            (name, _mib(n_bytes)) for name, n_bytes in peak_bytes.items())
    return result


def describe_machine(device) -> dict:
    """What the figures were measured on: CPU, cores, load, library versions."""
    machine = collections.OrderedDict()
    machine['date'] = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
    machine['device'] = str(device)
    machine['cpu'] = cpu_name()
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


def cpu_name() -> str:
    """The model name of the CPU, from ``/proc/cpuinfo``, else what :mod:`platform` says."""
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
    elif case['layer'] == 'MonarchLinear':
        pattern = 'n_blocks={}'.format(options['n_blocks'])
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
