"""The benchmark runs, times what it claims, and writes its table, JSON and plot.

No timing is asserted here: docs/benchmarks.md holds the figures and the targets.
"""

import collections
import doctest
import json
import os
import pathlib
import subprocess
import sys
import time

import chainer
import numpy as np
import pytest

from benchmarks import benchmark, cases, measure, tiled_linear
from benchmarks.cases import Case, hashed, kronecker, monarch, shared
from benchmarks.report import format_table, noisy_cases, plot
from chainer_sharedlinear import HashedLinear, KroneckerLinear, MonarchLinear, SharedLinear
from chainer_sharedlinear.functions._ops import ArrayOps
from chainer_sharedlinear.functions.monarch_linear import _Layout, input_positions

ROOT = pathlib.Path(__file__).resolve().parents[2]

TINY_CASES = collections.OrderedDict([
    (shared(3, 8, 5, 2, nobias=True), ['example']),
    (shared(3, 8, 5, 1), ['sweep']),
    (shared(3, 8, 5, 4), ['sweep', 'batch']),
    (hashed(3, 8, 5, 4, nobias=True), ['hashed']),
    (kronecker(3, 8, 6, (2, 4), (3, 2), n_terms=2), ['kronecker']),
    (monarch(3, 8, 6, 2), ['monarch']),
])


@pytest.mark.parametrize('module', [cases, tiled_linear], ids=lambda module: module.__name__)
def test_the_examples_in_the_docstrings_hold(module):
    # benchmarks/ is not among pytest's testpaths, whose modules it runs these for.
    results = doctest.testmod(module)
    assert results.attempted > 0
    assert results.failed == 0


@pytest.mark.parametrize('n_shared', [1, 2, 5])
@pytest.mark.parametrize('nobias', [True, False])
def test_floor_computes_what_shared_linear_does(n_shared, nobias):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 10 * n_shared))
    gy = rng.standard_normal((4, 3))
    with chainer.using_config('dtype', np.float64):
        link = SharedLinear.from_params(rng.standard_normal((3, 10)), rng.standard_normal(3),
                                        nobias=nobias, n_shared=n_shared)
    assert link.W.dtype == np.float64
    link.cleargrads()  # Chainer fills new gradients with NaN
    x_var = chainer.Variable(x)
    y = link(x_var)
    y.grad = gy
    y.backward()

    b = None if nobias else link.b.array
    y_floor, gx, gW, gb = cases.floor_forward_backward(x, link.W.array, b, gy, n_shared)

    np.testing.assert_allclose(y_floor, y.array, rtol=1e-12)
    np.testing.assert_allclose(gx, x_var.grad, rtol=1e-12)
    np.testing.assert_allclose(gW, link.W.grad, rtol=1e-12)
    if nobias:
        assert gb is None
    else:
        np.testing.assert_allclose(gb, link.b.grad, rtol=1e-12)


def _link_grads(link, x, gy):
    link.cleargrads()  # Chainer fills new gradients with NaN
    x_var = chainer.Variable(x)
    y = link(x_var)
    y.grad = gy
    y.backward()
    return y.array, x_var.grad


@pytest.mark.parametrize('nobias', [True, False])
def test_hashed_floor_computes_what_hashed_linear_does(nobias):
    rng = np.random.default_rng(0)
    x, gy = rng.standard_normal((4, 10)), rng.standard_normal((4, 3))
    with chainer.using_config('dtype', np.float64):
        link = HashedLinear(10, 3, n_weights=7, nobias=nobias, initial_bias=1.0)
    y, gx = _link_grads(link, x, gy)
    b = None if nobias else link.b.array
    y_floor, gx_floor, gW, gb = cases.hashed_floor_forward_backward(
        x, link.W.array, b, gy, *link.index_map())
    np.testing.assert_allclose(y_floor, y, rtol=1e-12)
    np.testing.assert_allclose(gx_floor, gx, rtol=1e-12)
    np.testing.assert_allclose(gW, link.W.grad, rtol=1e-12)
    assert gb is None if nobias else np.allclose(gb, link.b.grad, rtol=1e-12)


@pytest.mark.parametrize('n_terms', [1, 3])
def test_kronecker_floor_computes_what_kronecker_linear_does(n_terms):
    rng = np.random.default_rng(0)
    x, gy = rng.standard_normal((4, 12)), rng.standard_normal((4, 6))
    with chainer.using_config('dtype', np.float64):
        link = KroneckerLinear(12, 6, n_terms=n_terms, initial_bias=1.0)
    y, gx = _link_grads(link, x, gy)
    y_floor, gx_floor, gA, gB, gb = cases.kronecker_floor_forward_backward(
        x, link.A.array, link.B.array, link.b.array, gy)
    for mine, theirs in ((y_floor, y), (gx_floor, gx), (gA, link.A.grad), (gB, link.B.grad),
                         (gb, link.b.grad)):
        np.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize('in_size, out_size, n_blocks', [(12, 6, 3), (13, 7, 3), (10, 12, 2)])
@pytest.mark.parametrize('nobias', [True, False])
def test_monarch_floor_computes_the_block_products_of_monarch_linear(in_size, out_size, n_blocks,
                                                                    nobias):
    rng = np.random.default_rng(0)
    x, gy = rng.standard_normal((4, in_size)), rng.standard_normal((4, out_size))
    with chainer.using_config('dtype', np.float64):
        link = MonarchLinear(in_size, out_size, n_blocks=n_blocks, nobias=nobias,
                             initial_bias=1.0)
    y, gx = _link_grads(link, x, gy)
    layout = _Layout(ArrayOps.of(x), x, link.R.array, link.L.array, out_size)
    Y, gX, gR, gL = cases.monarch_block_products(layout, layout.output_gradient_blocks(gy))

    # Output t of block l is output feature t·n_blocks + l; input place i of block k is
    # input feature input_positions[k, i] (-1: padding).
    y_blocks = Y.transpose(1, 2, 0).reshape(4, -1)[:, :out_size]
    positions = input_positions(in_size, n_blocks)
    gx_blocks = np.zeros_like(gx)
    gx_blocks[:, positions[positions >= 0]] = gX.transpose(1, 0, 2)[:, positions >= 0]
    bias = 0 if nobias else link.b.array
    for mine, theirs in ((y_blocks + bias, y), (gx_blocks, gx), (gR, link.R.grad),
                         (gL, link.L.grad)):
        np.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=1e-14)


def test_floor_takes_a_float32_layer():
    x = np.ones((2, 6), np.float32)
    W = np.ones((4, 3), np.float32)
    outputs = cases.floor_forward_backward(x, W, np.zeros(4, np.float32),
                                               np.ones((2, 4), np.float32), 2)
    assert [a.shape for a in outputs] == [(2, 4), (2, 6), (4, 3), (4,)]
    assert all(a.dtype == np.float32 for a in outputs)


def test_all_times_each_shape_once_and_keeps_its_groups():
    selected = cases.select_cases(['all'])
    assert len(selected) == len(set(selected)) == 15
    assert selected[shared(256, 4096, 4096, 8)] == ['large', 'sweep', 'batch']
    assert selected[shared(100, 1000, 900, 10, nobias=True)] == ['example']
    assert selected[hashed(256, 4096, 4096, 8)] == ['hashed']
    assert selected[kronecker(256, 4096, 4096, (64, 64), (64, 64))] == ['kronecker']
    assert selected[monarch(256, 4096, 4096, 64)] == ['monarch']


def test_a_case_makes_its_layer_and_survives_json():
    for case in cases.select_cases(['example', 'hashed', 'kronecker', 'monarch']):
        assert Case.from_json(json.loads(json.dumps(case.to_json()))) == case
    layer = kronecker(100, 1000, 900, (4, 250), (4, 225), n_terms=4).make_layer()
    assert (layer.A.shape, layer.B.shape) == ((4, 4, 4), (4, 225, 250))
    assert hashed(100, 1000, 900, 8).make_layer().W.shape == (112500,)
    layer = monarch(100, 1000, 900, 16, nobias=True).make_layer()
    assert layer.R.size + layer.L.size <= 1000 * 900 // 8 < (
        monarch(100, 1000, 900, 15).make_layer().R.size
        + monarch(100, 1000, 900, 15).make_layer().L.size)


def test_an_unknown_group_is_refused():
    with pytest.raises(ValueError, match='bogus'):
        cases.select_cases(['sweep', 'bogus'])
    with pytest.raises(SystemExit):
        benchmark.main(['--cases', 'bogus'])


def test_steps_are_interleaved_and_stop_when_time_is_up():
    calls = []
    steps = collections.OrderedDict(
        (name, (lambda name=name: calls.append(name))) for name in 'abc')
    samples = measure.time_round_robin(steps, repeats=100, warmup=1, seconds=0.0,
                                         synchronize=lambda: None)
    assert [len(times) for times in samples.values()] == [measure.MIN_REPEATS] * 3
    rounds = calls[3:]
    assert rounds[:9] == list('abc' 'bca' 'cab')  # each round starts one further on


def test_a_pause_before_each_step_is_left_out_of_its_time():
    ends = []
    steps = {name: (lambda: ends.append(time.perf_counter())) for name in 'ab'}
    samples = measure.time_round_robin(steps, repeats=10, warmup=0, seconds=0.1,
                                       synchronize=lambda: None, pause=0.02)
    assert all(t < 0.01 for times in samples.values() for t in times)
    assert min(np.diff(ends)) >= 0.02  # it paused before every step
    # Its pauses, 0.2 s after five rounds, do not count towards its seconds.
    assert [len(times) for times in samples.values()] == [10, 10]


def test_a_self_timed_step_s_own_time_is_recorded():
    times = iter([0.5, 0.25] * 5)
    steps = {name: (lambda: next(times)) for name in 'ab'}
    samples = measure.time_round_robin(steps, repeats=5, warmup=0, seconds=0.0,
                                       synchronize=lambda: None, self_timed=True)
    assert sorted(samples['a'] + samples['b']) == [0.25] * 5 + [0.5] * 5


def test_a_wide_spread_of_times_is_flagged():
    def result(label, q1, q3):
        return {'label': label, 'median_ms': {'shared': 1.0, 'dense': 1.0},
                'quartiles_ms': {'shared': [0.99, 1.01], 'dense': [q1, q3]}}

    report = {'results': [result('quiet', 0.96, 1.05), result('busy', 0.9, 1.5)]}
    assert noisy_cases(report) == ['busy']


def test_run_benchmark_reports_every_implementation(tmp_path):
    report = benchmark.run_benchmark(TINY_CASES, repeats=6, warmup=1, seconds=60)
    json.dumps(report)  # all of it can be written
    assert {'cpu', 'cpu_count', 'numpy', 'chainer', 'date', 'device'} <= set(report['machine'])
    assert [r['label'] for r in report['results']] == [c.label for c in TINY_CASES]
    for result in report['results']:
        assert result['repeats'] == 6
        implementations = list(cases.IMPLEMENTATIONS)
        if result['case']['layer'] != 'SharedLinear':
            implementations.remove('tiled2016')
        assert list(result['median_ms']) == implementations
        assert all(t > 0 for t in result['median_ms'].values())
        assert result['speedup_over_dense']['dense'] == 1.0
        assert result['speedup_over_dense_of_min']['dense'] == 1.0
        assert all(q1 <= q3 for q1, q3 in result['quartiles_ms'].values())
        assert all(len(times) == 6 for times in result['samples_ms'].values())
        assert list(result['peak_mib']) == implementations
    table = format_table(report)
    assert all(c.label in table for c in TINY_CASES)

    pytest.importorskip('matplotlib')
    plot(report, str(tmp_path / 'plots' / 'tiny.png'))
    assert (tmp_path / 'plots' / 'tiny.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_command_line_writes_table_json_and_plot(tmp_path, capsys):
    pytest.importorskip('matplotlib')
    json_path, plot_path = tmp_path / 'out' / 'bench.json', tmp_path / 'out' / 'bench.png'
    status = benchmark.main(['--cases', 'example', '--repeats', '3', '--warmup', '1',
                             '--json', str(json_path), '--plot', str(plot_path)])
    assert status == 0

    printed = capsys.readouterr().out
    assert 'SharedLinear 100x1000->900 n_shared=10 nobias' in printed
    report = json.loads(json_path.read_text())
    assert set(report) == {'machine', 'settings', 'results'}
    assert report['settings']['dtype'] == 'float32'
    result, = report['results']
    assert result['case'] == {'batch': 100, 'in_size': 1000, 'out_size': 900,
                              'layer': 'SharedLinear', 'options': {'n_shared': 10},
                              'nobias': True}
    assert set(result['speedup_over_dense']) == set(cases.IMPLEMENTATIONS)
    assert result['layer_over_floor'] == pytest.approx(
        result['median_ms']['layer'] / result['median_ms']['floor'])
    assert plot_path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_it_runs_as_a_file_from_anywhere(tmp_path):
    # python benchmarks/benchmark.py, as benchmarks/run.sh runs it, with nothing of the
    # clone on sys.path but the file's folder.
    env = dict(os.environ)
    env.pop('PYTHONPATH', None)
    run = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'benchmark.py'), '--help'],
                         cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith('usage: python benchmarks/benchmark.py')


def test_the_published_report_is_read_as_it_was_written(tmp_path):
    # docs/benchmark-cpu.json, from an earlier run, still makes the table and the plot.
    report = json.loads((ROOT / 'docs' / 'benchmark-cpu.json').read_text())
    table = format_table(report)
    assert all(result['label'] in table for result in report['results'])
    assert Case.from_json(report['results'][0]['case']) == cases.CASE_GROUPS['example'][0]
    pytest.importorskip('matplotlib')
    plot(report, str(tmp_path / 'cpu.png'))
    assert (tmp_path / 'cpu.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_the_package_needs_nothing_of_the_benchmarks():
    # Every module of the package imported, from the clone, where benchmarks/ could be.
    code = ('import importlib, pkgutil, sys, chainer_sharedlinear as p\n'
            'for m in pkgutil.walk_packages(p.__path__, p.__name__ + "."):\n'
            '    importlib.import_module(m.name)\n'
            'print(sorted(n for n in sys.modules if n.split(".")[0] == "benchmarks"))')
    run = subprocess.run([sys.executable, '-c', code], cwd=str(ROOT), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == '[]'


@pytest.mark.parametrize('argv, message', [
    (['--dtype', 'int32'], "argument --dtype: expected float16, float32 or float64, got 'int32'"),
    (['--dtype', 'float8'], "argument --dtype: expected float16, float32 or float64, got "
     "'float8'"),
    (['--device', '@bogus'], "argument --device: expected a NumPy or CuPy device (@numpy, "
     "@cupy:N), got '@bogus': Device specifiers starting with '@'"),
    (['--device', 'native:0'], "got 'native:0': Tried to parse ChainerX device specifier"),
    (['--device', '3'], "got '3': CUDA environment is not correctly set up"),
    (['--device', '@cupy:0'], "got '@cupy:0': CUDA environment is not correctly set up"),
])
def test_a_dtype_or_device_it_cannot_time_is_one_line(capsys, monkeypatch, argv, message):
    if 'CUDA' in message and chainer.backends.cuda.available:
        pytest.skip('CuPy is installed: the device exists')
    monkeypatch.setattr(benchmark, 'run_benchmark', lambda *args, **kwargs: pytest.fail(
        'the benchmark started'))
    with pytest.raises(SystemExit) as exit:
        benchmark.main(['--cases', 'example'] + argv)
    assert exit.value.code == 2
    err = capsys.readouterr().err
    last = err.splitlines()[-1]
    assert last.startswith('python benchmarks/benchmark.py: error: ')
    assert message in last
    assert 'Traceback' not in err
    # The same lines as a bad --repeats: argparse's usage, then the error.
    with pytest.raises(SystemExit):
        benchmark.main(['--repeats', '0'])
    assert capsys.readouterr().err.count('\n') == err.count('\n')


def test_run_benchmark_refuses_a_dtype_it_cannot_time():
    with pytest.raises(ValueError, match="expected float16, float32 or float64, got 'int32'"):
        benchmark.run_benchmark(TINY_CASES, dtype='int32')
    assert benchmark.get_dtype('f4') == np.float32


@pytest.mark.parametrize('option', ['--json', '--plot'])
@pytest.mark.parametrize('where', ['under a link to nowhere', 'a folder'])
def test_an_output_it_cannot_write_is_refused_before_the_timing(tmp_path, capsys, monkeypatch,
                                                               option, where):
    (tmp_path / 'out').symlink_to(tmp_path / 'nowhere')
    (tmp_path / 'folder').mkdir()
    path = tmp_path / ('out/report' if where == 'under a link to nowhere' else 'folder')
    monkeypatch.setattr(benchmark, 'run_benchmark', lambda *args, **kwargs: pytest.fail(
        'the benchmark started'))
    with pytest.raises(SystemExit) as exit:
        benchmark.main(['--cases', 'example', option, str(path)])
    assert exit.value.code == 2
    assert 'error: {} {}: cannot write there ('.format(option, path) in (
        capsys.readouterr().err.splitlines()[-1])
