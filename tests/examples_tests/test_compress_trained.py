"""examples/compress_trained.py: the recipe's records, resumed, and its table."""

import json
import pathlib

import chainer
import numpy as np
import pytest

from tests.examples_tests import import_script

utils, compress_trained = import_script('examples', 'mnist3_utils', 'compress_trained')
DOCS = pathlib.Path(__file__).resolve().parents[2] / 'docs'

SMALL = ['--train-size', '200', '--val-size', '100', '--dense-epochs', '1',
         '--finetune-epochs', '1']
QUICK = SMALL + ['--budgets', '1/8', '--patterns', 'hashed', 'lowrank']


def _run(argv):
    return utils.exit_status(compress_trained.run, compress_trained.parse_args(argv))


def _records(out):
    with open(str(out / 'records.json')) as f:
        return json.load(f)


def test_every_measurement_is_a_record_and_a_rerun_measures_nothing_again(tmp_path, capsys):
    out = tmp_path / 'out'
    assert _run(QUICK + ['--out', str(out)]) == 0
    records = _records(out)
    kinds = sorted((r['budget'], r['pattern'], r['variant']) for r in records)
    assert kinds == [('1', 'dense', 'dense')] + sorted(
        ('1/8', pattern, variant) for pattern in ('hashed', 'lowrank')
        for variant in ('compressed', 'finetune', 'distill', 'scratch'))
    by_kind = {(r['pattern'], r['variant']): r for r in records}
    assert len(by_kind['hashed', 'finetune']['accuracy']) == 1
    assert len(by_kind['hashed', 'scratch']['accuracy']) == 2  # dense + fine-tuning epochs
    for record in records:
        assert all(0 <= a <= 1 for a in record['accuracy'])
        if record['variant'] != 'dense':
            assert record['stored_bytes'] <= record['dense_bytes'] / 8
    assert (out / 'dense-seed0.npz').exists()
    table = capsys.readouterr().out
    assert '   1/8     hashed      0  model    scratch      1' in table
    assert '\x1b' not in table  # not a terminal: no progress bar, plain lines per epoch

    assert _run(QUICK + ['--out', str(out)]) == 0
    assert _records(out) == records  # nothing measured twice
    assert _run(QUICK + ['--out', str(out), '--table']) == 0
    assert '1/8    lowrank      0  model    distill' in capsys.readouterr().out


def test_a_folder_of_other_settings_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / 'out'
    assert _run(QUICK + ['--out', str(out), '--no-scratch']) == 0
    capsys.readouterr()
    assert _run(QUICK + ['--out', str(out), '--finetune-lr', '1e-3']) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert 'holds records of other settings' in error and 'choose another --out' in error


def test_calibration_and_allocation_are_part_of_a_records_key(tmp_path, capsys):
    out = tmp_path / 'out'
    argv = QUICK + ['--no-scratch', '--out', str(out), '--patterns', 'lowrank']
    assert _run(argv + ['--calibration', '50', '--allocation', 'layer']) == 0
    calibrated = [r for r in _records(out) if r['variant'] != 'dense']
    assert sorted(r['variant'] for r in calibrated) == ['compressed', 'distill', 'finetune']
    for record in calibrated:
        assert (record['calibration'], record['allocation']) == (50, 'layer')
        assert record['compress_cpu_seconds'] >= 0
        assert all(0 <= layer['output_error'] < 1 for layer in record['layers'])
    assert _run(argv + ['--calibration', '50', '--allocation', 'layer']) == 0
    assert len(_records(out)) == 1 + len(calibrated)  # measured once
    assert _run(argv) == 0  # no images, the whole model's budget: records of their own
    records = _records(out)
    assert len(records) == 1 + 2 * len(calibrated)
    weights_only = [r for r in records if r['variant'] != 'dense' and r not in calibrated]
    for record in weights_only:
        assert (record['calibration'], record['allocation']) == (0, 'model')
        assert all(layer['output_error'] != layer['output_error']  # NaN: no data
                   for layer in record['layers'])
    capsys.readouterr()
    assert _run(['--out', str(out), '--table']) == 0
    table = capsys.readouterr().out
    assert '   1/8    lowrank     50  layer compressed      1' in table
    assert '   1/8    lowrank      0  model compressed      1' in table


def test_the_calibration_images_are_drawn_with_the_seed():
    images = chainer.datasets.TupleDataset(np.arange(40.).reshape(20, 2), np.arange(20))
    drawn = compress_trained.calibration_images(images, 5, 3, None)
    picks = np.random.RandomState(3).permutation(20)[:5]
    np.testing.assert_array_equal(drawn, np.arange(40.).reshape(20, 2)[picks])
    assert not np.array_equal(compress_trained.calibration_images(images, 5, 4, None), drawn)
    assert compress_trained.calibration_images(images, 0, 3, None) is None


@pytest.mark.parametrize('text', ['-1', '1.5', 'all'])
def test_a_calibration_that_is_no_number_of_images_is_refused(text, capsys):
    with pytest.raises(SystemExit):
        compress_trained.parse_args(['--calibration', text])
    assert 'expected a number of images' in capsys.readouterr().err


@pytest.mark.parametrize('text', ['0', '2', '1/0', 'an eighth'])
def test_a_budget_that_is_no_fraction_in_0_1_is_refused(text, capsys):
    with pytest.raises(SystemExit):
        compress_trained.parse_args(['--budgets', text])
    assert 'expected a fraction' in capsys.readouterr().err


def test_a_layer_that_no_pattern_fits_counts_whole_in_the_table(tmp_path, capsys):
    # lowrank cannot store /l3 (1000 -> 10) in 1/32 of its bytes: it stays dense in every
    # record, and the table, at the end of the run and later, counts its dense bytes.
    out = tmp_path / 'out'
    argv = SMALL + ['--budgets', '1/32', '--patterns', 'lowrank', '--no-scratch',
                         '--out', str(out)]
    assert _run(argv) == 0, capsys.readouterr().err
    records = [r for r in _records(out) if r['variant'] != 'dense']
    assert {tuple(r['skipped']) for r in records} == {('/l3',)}
    layers = (784 * 1000 + 1000) * 4, (1000 * 1000 + 1000) * 4, (1000 * 10 + 10) * 4
    for record in records:
        assert record['dense_model_bytes'] == sum(layers)
        assert record['model_bytes'] == record['stored_bytes'] + layers[2]
    ratio = records[0]['model_bytes'] / sum(layers)
    line = '  1/32    lowrank      0  model   finetune      1   {:.4f}'.format(ratio)
    assert line in capsys.readouterr().out
    assert _run(['--out', str(out), '--table']) == 0
    assert line in capsys.readouterr().out


def test_records_without_the_model_bytes_print_a_dash_for_a_ratio_they_cannot_tell(
        tmp_path, capsys):
    # Written before the whole model's bytes were recorded; /l3 is in no record's layers.
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'records.json').write_text(json.dumps([
        dict(seed=0, budget='1/32', pattern='lowrank', variant='compressed', accuracy=[0.5],
             layers=[dict(path='/l1', dense_bytes=3140000, stored_bytes=98000)],
             stored_bytes=98000, dense_bytes=3140000, skipped={'/l3': 'no pattern fits'})]))
    assert _run(['--out', str(out), '--table']) == 0
    line = '  1/32    lowrank      0      - compressed      1        -   0.5000'
    assert line in capsys.readouterr().out


@pytest.mark.parametrize('where', ['file', 'folder'])
def test_the_table_prints_any_records_whatever_settings_made_them(tmp_path, capsys, where):
    # The docs' records: full Fashion-MNIST, none of this command line's settings.
    records = DOCS / 'compress-fashion.json'
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'records.json').write_bytes(records.read_bytes())
    before = sorted(out.iterdir())
    assert _run(['--out', str(records if where == 'file' else out), '--table']) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ['budget', 'pattern', 'calib', 'alloc', 'variant', 'seeds',
                                'ratio', 'epoch', '1', 'last']
    # Written before calibration and the allocation were keys: no images, allocation unknown.
    assert '     1      dense      -      -      dense      3   1.0000   0.8506   0.8762' in table
    assert '  1/32    lowrank      0      -   finetune      1   0.0363   0.8583   0.8694' in table
    assert len(table) == 1 + len({(r['budget'], r['pattern'], r['variant'])
                                  for r in json.loads(records.read_text())})
    assert sorted(out.iterdir()) == before  # nothing written, not even a lock


def test_a_table_of_no_records_is_one_line_and_creates_nothing(tmp_path, capsys):
    out = tmp_path / 'out'
    assert _run(['--out', str(out), '--table']) == 2
    error = capsys.readouterr().err
    assert error.count('\n') == 1 and 'holds no records' in error
    assert not out.exists()


def test_a_file_that_is_not_records_is_one_line(tmp_path, capsys):
    path = tmp_path / 'records.json'
    path.write_text('{"a": 1}')
    assert _run(['--out', str(path), '--table']) == 2
    error = capsys.readouterr().err
    assert error.count('\n') == 1 and 'is not a file of records' in error
    assert _run(['--out', str(path)]) == 2
    assert 'is a file' in capsys.readouterr().err
