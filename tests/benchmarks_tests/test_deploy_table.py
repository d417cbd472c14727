"""The deployment table of ``benchmarks/onnx_deploy.py``: its rows and columns, for a tiny MLP.

What does not depend on time: which rows and columns there are, and the sizes
and memory they show. The times are the benchmark's (docs/family.md).
"""

import os

import numpy as np
import pytest
from chainer import serializers

from benchmarks import chainer_deploy, onnx_deploy
from tests.helpers import onnxruntime_or_skip, param_arrays

SIZES = ('32', '24', '8')
QUICK = ['--sizes', *SIZES, '--budget', '0.5', '--rounds', '5', '--seconds', '0', '--loads', '1']


def table_rows(text):
    """``{pattern: [cells]}`` of the Markdown table that ends ``text``, and its headings."""
    lines = [line for line in text.splitlines() if line.startswith('|')]
    headings = [cell.strip() for cell in lines[0].strip('|').split('|')]
    rows = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip('|').split('|')]
        rows[cells[0]] = cells[1:]
    return headings, rows


def test_chainer_columns_has_each_column_and_the_file_s_bytes(tmp_path):
    model = onnx_deploy.model_of('clustered', 1 / 4, (12, 8, 4))
    row = chainer_deploy.chainer_columns(model, onnx_deploy.mlp((12, 8, 4)), 12, (1, 3),
                                         rounds=5, seconds=0)
    assert set(row) == {'npz', 'chainer_b1', 'chainer_b1_range', 'chainer_b3',
                        'chainer_b3_range', 'step', 'step_range', 'step_memory'}
    path = str(tmp_path / 'model.npz')
    serializers.save_npz(path, model)
    assert row['npz'] == os.path.getsize(path)
    # A step of batch 256 holds at least its input and the first layer's activations.
    assert row['step_memory'] >= chainer_deploy.TRAIN_BATCH * (12 + 8) * 4
    for key in ('chainer_b1', 'chainer_b3', 'step'):
        low, high = row[key + '_range']
        assert 0 < low <= row[key] <= high


def test_a_training_step_leaves_the_measured_model_as_it_was():
    model = onnx_deploy.mlp((12, 8, 4))
    before = param_arrays(model)
    chainer_deploy.training_step(model, np.ones((3, 12), np.float32))()
    after = param_arrays(model)
    assert all(np.array_equal(before[name], after[name]) for name in before)


def test_the_chainer_only_table_has_a_row_per_pattern_and_every_column(capsys):
    assert onnx_deploy.main(QUICK + ['--chainer-only']) == 0
    out = capsys.readouterr().out
    headings, rows = table_rows(out)
    assert headings == ['pattern'] + [name for name, _ in onnx_deploy.COLUMNS]
    assert list(rows) == ['dense'] + list(onnx_deploy.PATTERNS)
    onnx_columns = [i for i, (name, _) in enumerate(onnx_deploy.COLUMNS)
                    if name == 'ONNX' or name.startswith('ORT')]
    for cells in rows.values():
        assert len(cells) == len(onnx_deploy.COLUMNS)
        assert [i for i, cell in enumerate(cells) if cell == '—'] == onnx_columns
    assert 'MLP 32-24-8' in out and onnx_deploy.cpu_name() in out


def test_the_whole_table_fills_every_column(capsys):
    onnxruntime_or_skip()
    if not os.path.exists('/proc/self/status'):
        pytest.skip('reads /proc/self/status')
    assert onnx_deploy.main(QUICK + ['--patterns', 'hashed']) == 0
    _, rows = table_rows(capsys.readouterr().out)
    assert list(rows) == ['dense', 'hashed']
    assert all('—' not in cells for cells in rows.values())


def test_a_session_process_that_fails_says_why(tmp_path):
    onnxruntime_or_skip()
    with onnx_deploy._SessionProcess(str(tmp_path / 'missing.onnx'), 1, 3) as session:
        with pytest.raises(RuntimeError, match='(?s)session process ended: .*missing.onnx'):
            session.seconds(1)


def test_cpu_name_is_read_from_proc_cpuinfo():
    if not os.path.exists('/proc/cpuinfo'):
        pytest.skip('reads /proc/cpuinfo')
    with open('/proc/cpuinfo') as f:
        assert onnx_deploy.cpu_name() in f.read()
