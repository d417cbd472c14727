"""onnxruntime at deployment: the MLP 784-1000-1000-10 compressed by each pattern, against dense.

Run ``.venv/bin/python benchmarks/onnx_deploy.py`` from a clone (``--help`` lists the
options). Each pattern compresses every layer of one randomly initialised MLP to
``--budget`` of its bytes (``compress_linears(model, budget, pattern=...,
allocation='layer')``: :func:`compressed`), which
:func:`chainer_sharedlinear.onnx_export.export` writes to a file. Per file, the
table gives:

- its size;
- ``load``: the time onnxruntime takes to create a session from it, with the
  default options, in a fresh process (the median of ``--loads`` processes);
- ``peak`` and ``held``: the resident memory that creating the session added
  to that process, at its peak and once created, over the process with
  onnxruntime imported and no session (:func:`session_memory`);
- ``b1``, ``b256``: the latency of a call at batch 1 and 256 over the dense
  model's, each session in a process of its own, the two timed alternately, a
  block of calls each after a pause (:func:`latency_ratios`); the median of the
  rounds' ratios, and their quartiles: the machine may be busy;
- the Chainer columns of :mod:`benchmarks.chainer_deploy`: the npz file's size,
  the latency in test mode without a graph at batch 1 and 256 and the time of a
  training step, each over the dense model's, and the peak memory of a step.

``--sizes 1000 1000`` measures one layer instead of the MLP; ``--chainer-only``
leaves out onnxruntime.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import typing as tp
import warnings

if not __package__:
    # Run as a file, Python puts benchmarks/ itself on sys.path; the imports below need the
    # clone that holds it.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import chainer  # noqa: E402
import chainer.functions as F  # noqa: E402
import chainer.links as L  # noqa: E402
import numpy  # noqa: E402

from benchmarks.chainer_deploy import chainer_columns, median_and_quartiles  # noqa: E402
from benchmarks.measure import time_round_robin  # noqa: E402
from benchmarks.report import cpu_name  # noqa: E402

#: The patterns the table compares with the dense model, in its order: those of
#: ``compress_linears``, and ``clustered_lowrank``, which it has not (:func:`compressed`).
PATTERNS = ('shared', 'lowrank', 'monarch', 'kronecker', 'clustered', 'hashed',
            'clustered_lowrank')
#: The opset the files are written at: the first with ``BitwiseXor``, which the hashed
#: layer's graph needs to load at a small cost (opset 11, onnx_chainer's default, folds
#: the hash through gigabytes).
OPSET_VERSION = 18
SIZES = (784, 1000, 1000, 10)
BATCHES = (1, 256)

# Run in a fresh process by session_memory: the figures of /proc/self/status, in bytes.
_SESSION_MEMORY_SCRIPT = '''
import json, sys, time
import onnxruntime

def status(key):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1]) * 1024

bare = status('VmRSS')
try:
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # the peak (VmHWM) starts again from the current resident memory
except OSError:
    pass
options = onnxruntime.SessionOptions()
options.log_severity_level = 3
start = time.perf_counter()
session = onnxruntime.InferenceSession(sys.argv[1], options, providers=['CPUExecutionProvider'])
seconds = time.perf_counter() - start
print(json.dumps({'seconds': seconds, 'bare': bare, 'peak': status('VmHWM') - bare,
                  'held': status('VmRSS') - bare}))
'''


def mlp(sizes=SIZES, seed: int = 0) -> chainer.Sequential:
    """An MLP of ``sizes`` (784-1000-1000-10) with ReLUs, its weights drawn as Chainer does."""
    numpy.random.seed(seed)
    layers = []
    for in_size, out_size in zip(sizes[:-1], sizes[1:]):
        layers += [L.Linear(in_size, out_size), F.relu]
    return chainer.Sequential(*layers[:-1])


def compressed(model: chainer.Sequential, budget: float, pattern: str) -> None:
    """Replaces each ``L.Linear`` of ``model`` by ``pattern``'s layer at ``budget`` of its bytes.

    One budget a layer (``allocation='layer'``), so that every layer is of the pattern.
    """
    from chainer_sharedlinear import compress_linears
    compress_linears(model, budget, pattern=pattern, allocation='layer')


def model_of(pattern: tp.Optional[str], budget: float, sizes=SIZES) -> chainer.Sequential:
    """:func:`mlp` of ``sizes``, compressed by ``pattern`` if any."""
    model = mlp(sizes)
    if pattern is not None:
        compressed(model, budget, pattern)
    return model


def exported(pattern: tp.Optional[str], budget: float, path: str,
             opset_version: int = OPSET_VERSION, sizes=SIZES) -> None:
    """Writes the ONNX file of :func:`model_of` to ``path``."""
    from chainer_sharedlinear.onnx_export import export
    with warnings.catch_warnings():
        # onnx_chainer says it was tested up to opset 11 only.
        warnings.filterwarnings('ignore', message='ONNX-Chainer has been tested only')
        export(model_of(pattern, budget, sizes), numpy.zeros((1, sizes[0]), numpy.float32),
               path, opset_version=opset_version)


def session_memory(path: str) -> dict:
    """What creating an onnxruntime session of the file ``path`` costs, in a fresh process.

    Returns:
        dict: ``seconds`` to create it; ``bare``, the resident bytes of the
        process before, onnxruntime imported; ``peak`` and ``held``, the
        resident bytes the creation added, at most and once done (Linux only:
        read from ``/proc/self/status``).
    """
    result = subprocess.run([sys.executable, '-c', _SESSION_MEMORY_SCRIPT, path],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


#: The pause before each block of calls, untimed. After a call, onnxruntime's
#: worker threads spin for a while waiting for more work; on a machine of few
#: cores one session's spinning slows the other's calls, even from another
#: process, so that calls alternated one by one measure the two sessions'
#: contention, not either model.
SPIN_PAUSE = 0.05
#: The length of a block of calls of one session, timed as a whole: the dense
#: model's calls that take about this long.
BLOCK_SECONDS = 0.01

# Run in a fresh process by _SessionProcess: a session of the file argv[1], called on an
# input of shape (argv[2], argv[3]) as many times as each line of stdin says; each line of
# stdout the seconds they took.
_LATENCY_SCRIPT = '''
import sys, time
import numpy, onnxruntime

options = onnxruntime.SessionOptions()
options.log_severity_level = 3
session = onnxruntime.InferenceSession(sys.argv[1], options, providers=['CPUExecutionProvider'])
x = numpy.random.default_rng(0).standard_normal((int(sys.argv[2]), int(sys.argv[3])))
feed = {session.get_inputs()[0].name: x.astype(numpy.float32)}
for line in sys.stdin:
    calls = int(line)
    start = time.perf_counter()
    for _ in range(calls):
        session.run(None, feed)
    print(time.perf_counter() - start, flush=True)
'''


class _SessionProcess:
    """A process of its own that holds one session of a file and times calls of it.

    One session per process, as a deployed model runs: in one process the
    two sessions' thread pools (onnxruntime pins their workers to the same
    cores) made a session's calls fast or slow for its whole life, by up to
    half, whichever model it held.
    """

    def __init__(self, path: str, batch: int, in_size: int) -> None:
        self._process = subprocess.Popen(
            [sys.executable, '-c', _LATENCY_SCRIPT, path, str(batch), str(in_size)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def seconds(self, calls: int) -> float:
        """The seconds that ``calls`` calls take, one after the other."""
        self._process.stdin.write('{}\n'.format(calls))
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError('the onnxruntime session process ended: {}'.format(
                self._process.stderr.read()))
        return float(line)

    def __enter__(self) -> '_SessionProcess':
        return self

    def __exit__(self, *exc_info) -> None:
        self._process.stdin.close()
        self._process.wait()
        self._process.stdout.close()
        self._process.stderr.close()


def latency_ratios(path: str, dense_path: str, batch: int, rounds: int,
                   seconds: float, in_size: int = SIZES[0]) -> tp.List[float]:
    """Per round, the time of a call of ``path``'s model over the dense model's.

    Each session runs in a process of its own (:class:`_SessionProcess`); the
    two are timed alternately, a block of calls each after a pause
    (:data:`SPIN_PAUSE`), so that each runs as it would alone.
    """
    with _SessionProcess(path, batch, in_size) as model, \
            _SessionProcess(dense_path, batch, in_size) as dense:
        for _ in range(3):
            model.seconds(1)
        one_call = min(dense.seconds(1) for _ in range(8))
        per_block = max(1, round(BLOCK_SECONDS / one_call))
        samples = time_round_robin(
            {'model': lambda: model.seconds(per_block), 'dense': lambda: dense.seconds(per_block)},
            repeats=rounds, warmup=1, seconds=seconds, synchronize=lambda: None,
            pause=SPIN_PAUSE, self_timed=True)
    return [t / d for t, d in zip(samples['model'], samples['dense'])]


def measure(pattern: tp.Optional[str], folder: str, dense_path: str, args) -> dict:
    """The row of ``pattern`` (the dense model's for ``None``): every column of the table."""
    sizes = tuple(args.sizes)
    row = {'pattern': pattern or 'dense'}
    row.update(chainer_columns(model_of(pattern, args.budget, sizes), mlp(sizes), sizes[0],
                               BATCHES, args.rounds, args.seconds))
    if args.chainer_only:
        return row
    path = os.path.join(folder, '{}.onnx'.format(pattern or 'dense'))
    exported(pattern, args.budget, path, args.opset_version, sizes)
    loads = [session_memory(path) for _ in range(args.loads)]
    row['file_bytes'] = os.path.getsize(path)
    for key in ('seconds', 'peak', 'held'):
        row[key] = statistics.median(load[key] for load in loads)
    for batch in BATCHES:
        key = 'b{}'.format(batch)
        row[key], row[key + '_range'] = median_and_quartiles(
            latency_ratios(path, dense_path, batch, args.rounds, args.seconds, sizes[0]))
    return row


#: The table's columns: heading, and how a row shows it (``None``: not measured).
COLUMNS = (
    ('npz', lambda row: _bytes(row.get('npz'))),
    ('ONNX', lambda row: _bytes(row.get('file_bytes'))),
    ('ORT load', lambda row: _format('{:.3f} s', row.get('seconds'))),
    ('ORT peak over bare', lambda row: _mib(row.get('peak'))),
    ('ORT held', lambda row: _mib(row.get('held'))),
    ('ORT b1 / dense', lambda row: _ratio(row, 'b1')),
    ('ORT b256 / dense', lambda row: _ratio(row, 'b256')),
    ('Chainer b1 / dense', lambda row: _ratio(row, 'chainer_b1')),
    ('Chainer b256 / dense', lambda row: _ratio(row, 'chainer_b256')),
    ('train step / dense', lambda row: _ratio(row, 'step')),
    ('train step peak', lambda row: _mib(row.get('step_memory'), '{:.1f} MiB')),
)


def format_table(rows) -> str:
    """The Markdown table of ``rows``, a row a pattern, ``—`` where a column was not measured."""
    lines = ['| pattern | {} |'.format(' | '.join(name for name, _ in COLUMNS)),
             '|---|{}'.format('---:|' * len(COLUMNS))]
    for row in rows:
        lines.append('| {} | {} |'.format(row['pattern'], ' | '.join(
            show(row) for _, show in COLUMNS)))
    return '\n'.join(lines)


def _format(template: str, value) -> str:
    return '—' if value is None else template.format(value)


def _bytes(value) -> str:
    if value is None:
        return '—'
    return '{:.2f} MB'.format(value / 1e6) if value >= 1e6 else '{:.1f} KB'.format(value / 1e3)


def _mib(value, template: str = '{:.0f} MiB') -> str:
    return _format(template, None if value is None else value / 2 ** 20)


def _ratio(row, key) -> str:
    if key not in row:
        return '—'
    low, high = row[key + '_range']
    return '{:.2f} ({:.2f}-{:.2f})'.format(row[key], low, high)


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--patterns', nargs='+', default=list(PATTERNS), choices=PATTERNS)
    parser.add_argument('--sizes', type=int, nargs='+', default=list(SIZES),
                        help='the sizes of the MLP (default {}); two for one layer'.format(
                            ' '.join(map(str, SIZES))))
    parser.add_argument('--chainer-only', action='store_true',
                        help='measure the Chainer columns only, not onnxruntime')
    parser.add_argument('--budget', type=float, default=1 / 8,
                        help='the fraction of each layer\'s bytes kept (default 1/8)')
    parser.add_argument('--opset-version', type=int, default=OPSET_VERSION,
                        help='the opset of every file (default {})'.format(OPSET_VERSION))
    parser.add_argument('--loads', type=int, default=3,
                        help='fresh processes that create a session, per file (default 3)')
    parser.add_argument('--rounds', type=int, default=200,
                        help='the most rounds of alternated calls per batch size (default 200)')
    parser.add_argument('--seconds', type=float, default=2.0,
                        help='the time after which the rounds stop, per batch size (default 2)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = _parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        dense_path = os.path.join(folder, 'dense.onnx')
        rows = [measure(None, folder, dense_path, args)]
        print(format_table(rows), file=sys.stderr, flush=True)
        for pattern in args.patterns:
            rows.append(measure(pattern, folder, dense_path, args))
            print(format_table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print('MLP {} at {:.4g} of its bytes, opset {}; {}; '
          'Chainer {}, NumPy {}, {}; {} CPUs ({}), OPENBLAS_NUM_THREADS={}; times: medians of '
          'the rounds\' ratios (their quartiles), on a machine that may be busy'.format(
              '-'.join(map(str, args.sizes)), args.budget, args.opset_version,
              'onnxruntime not measured' if args.chainer_only else
              'onnxruntime {}, default session options'.format(_ort_version()),
              chainer.__version__, numpy.__version__, _train_batch(),
              len(os.sched_getaffinity(0)), cpu_name(),
              os.environ.get('OPENBLAS_NUM_THREADS', 'unset')))
    print(format_table(rows))
    return 0


def _train_batch() -> str:
    from benchmarks.chainer_deploy import TRAIN_BATCH
    return 'training step at batch {}'.format(TRAIN_BATCH)


def _ort_version() -> str:
    import onnxruntime
    return onnxruntime.__version__


if __name__ == '__main__':
    sys.exit(main())
