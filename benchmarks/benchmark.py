"""Times forward + backward of one layer: the family against what users have today.

Run ``bash benchmarks/run.sh`` from a clone, or ``.venv/bin/python
benchmarks/benchmark.py --help`` for the options. Each case of
:mod:`benchmarks.cases` is timed in each of its implementations, round-robin
(:mod:`benchmarks.measure`), after warm-up rounds; each figure is a median.
The report (:mod:`benchmarks.report`) is a table of medians and of speed-ups
over ``L.Linear``, a JSON file and a plot. What the figures say about the
project's targets is in docs/benchmarks.md.
"""

import argparse
import collections
import errno
import os
import sys
import tempfile

if not __package__:
    # Run as a file (python benchmarks/benchmark.py), Python puts benchmarks/ itself on
    # sys.path; the imports below need the clone that holds it.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import chainer  # noqa: E402
import numpy  # noqa: E402

from benchmarks.cases import CASE_GROUPS, make_steps, select_cases  # noqa: E402
from benchmarks.measure import (  # noqa: E402
    MIN_REPEATS,
    peak_allocated_bytes,
    synchronizer,
    time_round_robin,
)
from benchmarks.report import (  # noqa: E402
    describe_machine,
    format_machine,
    format_table,
    noisy_cases,
    plot,
    summarize,
    write_json,
)

# Timed in a round of their own, after the others in the same run. The 2016
# code allocates and frees two (out_size, in_size) arrays per step, after which
# glibc hands memory back to the OS; interleaved with it, the next step
# page-faults on fresh memory. No layer of a real model does that, so it would
# measure the neighbour, not the layer.
TIMED_ALONE = ('tiled2016',)

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
        cases: A :class:`~benchmarks.cases.Case` to groups mapping, as
            :func:`~benchmarks.cases.select_cases` makes.
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
    synchronize = synchronizer(device)
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
            # tracemalloc sees NumPy's arrays only.
            peak_bytes = None if device.xp is not numpy else collections.OrderedDict(
                (name, peak_allocated_bytes(step)) for name, step in steps.items())
            report['results'].append(summarize(case, groups, samples, peak_bytes))
            del steps
    report['machine']['load_average_after'] = (
        [round(load, 2) for load in os.getloadavg()] if hasattr(os, 'getloadavg') else None)
    return report


def _parse_args(argv):
    parser = argparse.ArgumentParser(
        prog='python benchmarks/benchmark.py',
        description='Times forward + backward of the family (SharedLinear, HashedLinear, '
                    'KroneckerLinear, MonarchLinear) against L.Linear, the 2016 tiled '
                    'algorithm and plain NumPy/CuPy.')
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
          'layer/floor is a ratio of times.')
    noisy = noisy_cases(report)
    if noisy:
        print('noisy (quartiles more than 10% apart; the machine was busy): {}'.format(
            '; '.join(noisy)))
    if args.json:
        write_json(report, args.json)
        print('wrote', args.json)
    if args.plot:
        plot(report, args.plot)
        print('wrote', args.plot)
    return 0


if __name__ == '__main__':
    sys.exit(main())
