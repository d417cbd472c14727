"""examples/compress_trained.py: the recipe's records, resumed, and its table."""

import json

import pytest

from tests.examples_tests import import_script

utils, compress_trained = import_script('examples', 'mnist3_utils', 'compress_trained')

QUICK = ['--train-size', '200', '--val-size', '100', '--dense-epochs', '1',
         '--finetune-epochs', '1', '--budgets', '1/8', '--patterns', 'hashed', 'lowrank']


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
    assert '   1/8     hashed    scratch      1' in table

    assert _run(QUICK + ['--out', str(out)]) == 0
    assert _records(out) == records  # nothing measured twice
    assert _run(QUICK + ['--out', str(out), '--table']) == 0
    assert '1/8    lowrank    distill' in capsys.readouterr().out


def test_a_folder_of_other_settings_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / 'out'
    assert _run(QUICK + ['--out', str(out), '--no-scratch']) == 0
    capsys.readouterr()
    assert _run(QUICK + ['--out', str(out), '--finetune-lr', '1e-3']) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert 'holds records of other settings' in error and 'choose another --out' in error


@pytest.mark.parametrize('text', ['0', '2', '1/0', 'an eighth'])
def test_a_budget_that_is_no_fraction_in_0_1_is_refused(text, capsys):
    with pytest.raises(SystemExit):
        compress_trained.parse_args(['--budgets', text])
    assert 'expected a fraction' in capsys.readouterr().err
