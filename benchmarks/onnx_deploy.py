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
  model's, in one process, the two sessions called alternately
  (:func:`benchmarks.measure.time_round_robin`); the median of the rounds'
  ratios, and their quartiles: the machine may be busy.
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

from benchmarks.measure import time_round_robin  # noqa: E402

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


def exported(pattern: tp.Optional[str], budget: float, path: str,
             opset_version: int = OPSET_VERSION) -> None:
    """Writes the ONNX file of :func:`mlp` to ``path``, compressed by ``pattern`` if any."""
    from chainer_sharedlinear.onnx_export import export
    model = mlp()
    if pattern is not None:
        compressed(model, budget, pattern)
    with warnings.catch_warnings():
        # onnx_chainer says it was tested up to opset 11 only.
        warnings.filterwarnings('ignore', message='ONNX-Chainer has been tested only')
        export(model, numpy.zeros((1, SIZES[0]), numpy.float32), path,
               opset_version=opset_version)


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


def _session(path: str):
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def latency_ratios(path: str, dense_path: str, batch: int, rounds: int,
                   seconds: float) -> tp.List[float]:
    """Per round, the time of a call of ``path``'s model over the dense model's, alternated."""
    x = numpy.random.default_rng(0).standard_normal((batch, SIZES[0])).astype(numpy.float32)
    sessions = {'model': _session(path), 'dense': _session(dense_path)}
    steps = {name: (lambda s=s: s.run(None, {s.get_inputs()[0].name: x}))
             for name, s in sessions.items()}
    samples = time_round_robin(steps, repeats=rounds, warmup=3, seconds=seconds,
                               synchronize=lambda: None)
    return [t / d for t, d in zip(samples['model'], samples['dense'])]


def measure(pattern: tp.Optional[str], folder: str, dense_path: str, args) -> dict:
    path = os.path.join(folder, '{}.onnx'.format(pattern or 'dense'))
    exported(pattern, args.budget, path, args.opset_version)
    loads = [session_memory(path) for _ in range(args.loads)]
    row = {'pattern': pattern or 'dense', 'file_bytes': os.path.getsize(path)}
    for key in ('seconds', 'peak', 'held'):
        row[key] = statistics.median(load[key] for load in loads)
    for batch in BATCHES:
        ratios = latency_ratios(path, dense_path, batch, args.rounds, args.seconds)
        quartiles = statistics.quantiles(ratios, n=4)
        row['b{}'.format(batch)] = quartiles[1]
        row['b{}_range'.format(batch)] = (quartiles[0], quartiles[2])
    return row


def format_table(rows) -> str:
    lines = ['| pattern | file | ORT load | peak over bare | held | b1 / dense | b256 / dense |',
             '|---|---:|---:|---:|---:|---:|---:|']
    for row in rows:
        lines.append('| {} | {:.2f} MB | {:.3f} s | {:.0f} MiB | {:.0f} MiB | {} | {} |'.format(
            row['pattern'], row['file_bytes'] / 1e6, row['seconds'], row['peak'] / 2 ** 20,
            row['held'] / 2 ** 20, _ratio(row, 'b1'), _ratio(row, 'b256')))
    return '\n'.join(lines)


def _ratio(row, key) -> str:
    low, high = row[key + '_range']
    return '{:.2f} ({:.2f}-{:.2f})'.format(row[key], low, high)


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--patterns', nargs='+', default=list(PATTERNS), choices=PATTERNS)
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
        for pattern in args.patterns:
            rows.append(measure(pattern, folder, dense_path, args))
            print(format_table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print('MLP {} at {:.4g} of its bytes, opset {}; onnxruntime {}, default session options; '
          '{} CPUs; latency: medians of the rounds\' ratios (their quartiles), on a machine '
          'that may be busy'.format('-'.join(map(str, SIZES)), args.budget, args.opset_version,
                                    _ort_version(), len(os.sched_getaffinity(0))))
    print(format_table(rows))
    return 0


def _ort_version() -> str:
    import onnxruntime
    return onnxruntime.__version__


if __name__ == '__main__':
    sys.exit(main())
