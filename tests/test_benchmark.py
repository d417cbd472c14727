"""The benchmark runs, times what it claims, and writes its table, JSON and plot.

No timing is asserted here: the speed targets are reported by the benchmark.
"""

import collections
import json

import chainer
import numpy as np
import pytest

from chainer_sharedlinear import SharedLinear, benchmark
from chainer_sharedlinear.benchmark import Case

TINY_CASES = collections.OrderedDict([
    (Case(3, 8, 5, 2, nobias=True), ['example']),
    (Case(3, 8, 5, 1), ['sweep']),
    (Case(3, 8, 5, 4), ['sweep', 'batch']),
])


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
    y_floor, gx, gW, gb = benchmark.floor_forward_backward(x, link.W.array, b, gy, n_shared)

    np.testing.assert_allclose(y_floor, y.array, rtol=1e-12)
    np.testing.assert_allclose(gx, x_var.grad, rtol=1e-12)
    np.testing.assert_allclose(gW, link.W.grad, rtol=1e-12)
    if nobias:
        assert gb is None
    else:
        np.testing.assert_allclose(gb, link.b.grad, rtol=1e-12)


def test_floor_takes_a_float32_layer():
    x = np.ones((2, 6), np.float32)
    W = np.ones((4, 3), np.float32)
    outputs = benchmark.floor_forward_backward(x, W, np.zeros(4, np.float32),
                                               np.ones((2, 4), np.float32), 2)
    assert [a.shape for a in outputs] == [(2, 4), (2, 6), (4, 3), (4,)]
    assert all(a.dtype == np.float32 for a in outputs)


def test_all_times_each_shape_once_and_keeps_its_groups():
    cases = benchmark.select_cases(['all'])
    assert len(cases) == len(set(cases)) == 8
    assert cases[Case(256, 4096, 4096, 8)] == ['large', 'sweep', 'batch']
    assert cases[Case(100, 1000, 900, 10, nobias=True)] == ['example']


def test_an_unknown_group_is_refused():
    with pytest.raises(ValueError, match='bogus'):
        benchmark.select_cases(['sweep', 'bogus'])
    with pytest.raises(SystemExit):
        benchmark.main(['--cases', 'bogus'])


def test_steps_are_interleaved_and_stop_when_time_is_up():
    calls = []
    steps = collections.OrderedDict(
        (name, (lambda name=name: calls.append(name))) for name in 'abc')
    samples = benchmark.time_round_robin(steps, repeats=100, warmup=1, seconds=0.0,
                                         synchronize=lambda: None)
    assert [len(times) for times in samples.values()] == [benchmark.MIN_REPEATS] * 3
    rounds = calls[3:]
    assert rounds[:9] == list('abc' 'bca' 'cab')  # each round starts one further on


def test_targets_pass_and_miss_at_their_goals():
    def result(case, shared_speedup, over_floor):
        return {'case': case._asdict(), 'speedup_over_dense': {'shared': shared_speedup},
                'shared_over_floor': over_floor}

    example = benchmark.CASE_GROUPS['example'][0]
    large = benchmark.CASE_GROUPS['large'][0]
    targets = benchmark.evaluate_targets(
        [result(example, 6.0, 1.26), result(large, 6.99, 1.0)], itemsize=4)
    status = {t['target']: t['status'] for t in targets}
    assert [status[t.description] for t in benchmark.TARGETS] == ['PASS', 'MISS', 'n/a', 'MISS']


def test_a_wide_spread_of_times_is_flagged():
    def result(label, q1, q3):
        return {'label': label, 'median_ms': {'shared': 1.0, 'dense': 1.0},
                'quartiles_ms': {'shared': [0.99, 1.01], 'dense': [q1, q3]}}

    report = {'results': [result('quiet', 0.96, 1.05), result('busy', 0.9, 1.5)]}
    assert benchmark.noisy_cases(report) == ['busy']


def test_run_benchmark_reports_every_implementation(tmp_path):
    report = benchmark.run_benchmark(TINY_CASES, repeats=6, warmup=1, seconds=60)
    json.dumps(report)  # all of it can be written
    assert {'cpu', 'cpu_count', 'numpy', 'chainer', 'date', 'device'} <= set(report['machine'])
    assert [r['label'] for r in report['results']] == [c.label for c in TINY_CASES]
    for result in report['results']:
        assert result['repeats'] == 6
        assert list(result['median_ms']) == list(benchmark.IMPLEMENTATIONS)
        assert all(t > 0 for t in result['median_ms'].values())
        assert result['speedup_over_dense']['dense'] == 1.0
        assert result['speedup_over_dense_of_min']['dense'] == 1.0
        assert all(q1 <= q3 for q1, q3 in result['quartiles_ms'].values())
        assert all(len(times) == 6 for times in result['samples_ms'].values())
        assert set(result['peak_mib']) == set(benchmark.IMPLEMENTATIONS)
    assert {t['status'] for t in report['targets']} <= {'PASS', 'MISS', 'n/a'}
    table = benchmark.format_table(report)
    assert all(c.label in table for c in TINY_CASES)

    pytest.importorskip('matplotlib')
    benchmark.plot(report, str(tmp_path / 'plots' / 'tiny.png'))
    assert (tmp_path / 'plots' / 'tiny.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_command_line_writes_table_json_and_plot(tmp_path, capsys):
    pytest.importorskip('matplotlib')
    json_path, plot_path = tmp_path / 'out' / 'bench.json', tmp_path / 'out' / 'bench.png'
    status = benchmark.main(['--cases', 'example', '--repeats', '3', '--warmup', '1',
                             '--json', str(json_path), '--plot', str(plot_path)])
    assert status == 0

    printed = capsys.readouterr().out
    assert '100x1000->900 n=10 nobias' in printed
    assert 'example layer: SharedLinear >= 6.0x faster than L.Linear' in printed
    report = json.loads(json_path.read_text())
    assert set(report) == {'machine', 'settings', 'results', 'targets'}
    assert report['settings']['dtype'] == 'float32'
    result, = report['results']
    assert result['case'] == {'batch': 100, 'in_size': 1000, 'out_size': 900,
                              'n_shared': 10, 'nobias': True}
    assert set(result['speedup_over_dense']) == set(benchmark.IMPLEMENTATIONS)
    assert result['shared_over_floor'] == pytest.approx(
        result['median_ms']['shared'] / result['median_ms']['floor'])
    assert plot_path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
