"""The records of a frontier run: kept in ``frontier.json``, summarised in a table and a plot.

``frontier.json`` is a list of records, one per trained network, written anew
(atomically) after each one, so that a run stopped at any point keeps every
network it finished and a rerun skips them. Several processes may share a
folder (one per setting, say, to use more cores): each adds its records under
a lock, to what the file holds at that moment.
"""

import collections
import contextlib
import json
import math
import os
import statistics
import tempfile
import typing as tp

try:
    import fcntl
except ImportError:  # not POSIX: one process per folder
    fcntl = None

from compression import SETTINGS
from mnist3_utils import UsageError

RESULTS_FILE = 'frontier.json'
PLOT_FILE = 'frontier.png'
EXPANSION_PLOT_FILE = 'expansion.png'
#: How far below the dense network's lowest seed the expansion's accuracy axis ends.
EXPANSION_AXIS_BELOW = 0.015
#: The expansion's plot and second table average each network's last epochs: at 10 epochs
#: the final accuracy swings by more than the differences between widths.
EXPANSION_LAST_EPOCHS = 3
TABLE_FILE = 'frontier.md'
#: Where the logit axis draws an accuracy of exactly 0 or 1, which lie at infinity on it: this
#: far inside. Less than one image in the 10,000 that MNIST and Fashion-MNIST validate on, so
#: no other accuracy is drawn there.
LOGIT_EDGE = 1e-5
ACCURACY_TICKS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.96, 0.98,
                  0.99, 0.995)

#: How every network of a folder is trained: what changes a result but its setting, pattern,
#: compression and seed. ``data_dir`` is ``mnist_data.source``: ``None`` for the dataset's own
#: place; the sizes are the numbers of images trained and validated on.
TRAINING_FIELDS = ('dataset', 'data_dir', 'train_size', 'val_size', 'batchsize', 'epochs')

#: What identifies a run: a rerun with a record of the same key skips it. A record
#: without a ``width`` (written before the expansion setting) has width 1.
KEY_FIELDS = TRAINING_FIELDS + ('setting', 'pattern', 'compression', 'width', 'seed')

#: What every record holds, also one written before ``TRAINING_FIELDS`` were all recorded
#: (as those of docs/frontier-*.json).
RECORD_FIELDS = ('dataset', 'epochs', 'setting', 'pattern', 'compression', 'seed')


class FrontierError(UsageError):
    """A results folder that cannot be read or continued; the message is one line."""


def key_of(record: dict) -> tuple:
    return tuple(record.get(field, 1) if field == 'width' else record[field]
                 for field in KEY_FIELDS)


def load_records(folder: str) -> tp.List[dict]:
    """The records in ``folder``'s ``frontier.json``, or none if there is no such file."""
    path = os.path.join(folder, RESULTS_FILE)
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            records = json.load(f)
        if not isinstance(records, list) or not all(
                isinstance(r, dict) and all(k in r for k in RECORD_FIELDS) for r in records):
            raise ValueError('not a list of frontier records')
    except (OSError, ValueError) as e:
        raise FrontierError('{}: cannot continue from it ({}); move it away or choose '
                            'another --out'.format(path, e)) from None
    return records


def describe_training(training: dict) -> str:
    """The :data:`TRAINING_FIELDS` of ``training`` in words."""
    text = ('{dataset} for {epochs} epochs, {train_size} training and {val_size} validation '
            'images, batch {batchsize}'.format(**training))
    if training['data_dir'] is not None:
        text += ', read from {}'.format(training['data_dir'])
    return text


def check_same_training(records: tp.List[dict], training: dict, folder: str) -> None:
    """Refuses to add runs of ``training`` to ``folder``'s records of another training.

    ``training`` holds the :data:`TRAINING_FIELDS` of this run. Records that lack
    some of them (written before they were all recorded) are refused too: they
    may be of any training, so this says what to add to them to continue.
    """
    missing = [field for field in TRAINING_FIELDS if any(field not in r for r in records)]
    if missing:
        raise FrontierError(
            '{} holds records of an older frontier.py, which lack {}: they may be of another '
            'training than this run ({}); choose another --out, or, if they are of this '
            'training, add {} to each record of {}'.format(
                folder, ', '.join(missing), describe_training(training),
                json.dumps({field: training[field] for field in missing}),
                os.path.join(folder, RESULTS_FILE)))
    this = tuple(training[field] for field in TRAINING_FIELDS)
    others = {tuple(r[field] for field in TRAINING_FIELDS) for r in records} - {this}
    if others:
        raise FrontierError(
            '{} holds runs of {}, which this run ({}) would mix with its own: choose another '
            '--out'.format(folder, '; '.join(
                describe_training(dict(zip(TRAINING_FIELDS, other)))
                for other in sorted(others, key=repr)), describe_training(training)))


def save_records(folder: str, records: tp.List[dict]) -> None:
    """Writes ``frontier.json`` atomically: a reader sees the old file or the new one."""
    os.makedirs(folder, exist_ok=True)
    fd, part = tempfile.mkstemp(prefix=RESULTS_FILE + '.', suffix='.part', dir=folder)
    with os.fdopen(fd, 'w') as f:
        json.dump(records, f, indent=1)
        f.write('\n')
    os.replace(part, os.path.join(folder, RESULTS_FILE))


@contextlib.contextmanager
def _locked(folder: str):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, RESULTS_FILE + '.lock'), 'w') as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def add_record(folder: str, record: dict) -> None:
    """Adds ``record`` to ``folder``'s records, as they are on disk now, and saves them.

    A record of the same key (another process finished the same network) is
    kept as it was.
    """
    with _locked(folder):
        records = load_records(folder)
        if key_of(record) not in {key_of(r) for r in records}:
            records.append(record)
            save_records(folder, records)


#: The footnote of a cell that :func:`_short_of_budget` marks.
SHORT_OF_BUDGET = "† more than 1.25 × the budget: the pattern's sizes allow nothing nearer."


def width_of(record: dict) -> int:
    """How many times wider than its setting's network: 1 for a record without a width."""
    return record.get('width', 1)


def is_wide(row: dict) -> bool:
    """Whether a record or row is of a setting that grows its width (the expansion)."""
    return bool(SETTINGS.get(row['setting'], {}).get('width'))


def summarize(records: tp.List[dict]) -> tp.List[dict]:
    """One row per setting, pattern, compression and width: the mean and spread over seeds."""
    groups = collections.OrderedDict()
    for record in sorted(records, key=lambda r: (r['setting'], r['pattern'], width_of(r),
                                                 -r['params'])):
        groups.setdefault((record['setting'], record['pattern'], record['compression'],
                           width_of(record)), []).append(record)
    rows = []
    for (setting, pattern, compression, width), group in groups.items():
        accuracies = [r['accuracy'] for r in group]
        rows.append({
            'setting': setting, 'pattern': pattern, 'compression': compression,
            'width': width,
            'params': group[0]['params'], 'dense_params': group[0]['dense_params'],
            'seeds': len(group), 'accuracy': statistics.mean(accuracies),
            'std': statistics.stdev(accuracies) if len(group) > 1 else 0.0,
            'low': min(accuracies), 'high': max(accuracies),
            'seconds_per_epoch': statistics.mean(r['seconds_per_epoch'] for r in group),
            'cpu_seconds_per_epoch': statistics.mean(
                r.get('cpu_seconds_per_epoch', float('nan')) for r in group),
        })
    return rows


def format_table(records: tp.List[dict]) -> str:
    """A Markdown table of :func:`summarize`'s rows."""
    lines = ['| setting | pattern | compression | width | stored params | actual compression | '
             'seeds | accuracy (mean ± std) | min–max | s/epoch | CPU s/epoch |',
             '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
    for row in summarize(records):
        lines.append('| {} | {} | {:g} | {} | {:,} | {:.1f}x | {} | {:.4f} ± {:.4f} | '
                     '{:.4f}–{:.4f} | {:.2f} | {:.2f} |'.format(
                         row['setting'], row['pattern'], row['compression'], row['width'],
                         row['params'],
                         row['dense_params'] / row['params'], row['seeds'], row['accuracy'],
                         row['std'], row['low'], row['high'], row['seconds_per_epoch'],
                         row['cpu_seconds_per_epoch']))
    return '\n'.join(lines)


def format_short_table(records: tp.List[dict]) -> str:
    """Per setting, accuracy by pattern and compression: the mean over seeds, and what is stored.

    The short table a run ends with; :func:`format_table` has every figure. The
    expansion is in :func:`format_expansion_table`.
    """
    rows = [row for row in summarize(records) if not is_wide(row)]
    lines = []
    for setting in collections.OrderedDict.fromkeys(row['setting'] for row in rows):
        here = [row for row in rows if row['setting'] == setting]
        compressions = sorted({row['compression'] for row in here if row['pattern'] != 'dense'})
        lines += ['{} (validation accuracy, mean of the seeds; stored parameters):'.format(
                      setting),
                  '| pattern | ' + ' | '.join('1/{:g}'.format(c) for c in compressions) + ' |',
                  '|---|' + '---:|' * len(compressions)]
        short_of_budget = False
        for pattern in collections.OrderedDict.fromkeys(row['pattern'] for row in here):
            cells = {}
            for row in here:
                if row['pattern'] != pattern:
                    continue
                cell = '{:.4f} ({:,})'.format(row['accuracy'], row['params'])
                if _short_of_budget(row):
                    cell += ' †'
                    short_of_budget = True
                cells[row['compression']] = cell
            if pattern == 'dense':
                cells = {c: cells[1] for c in compressions}
            lines.append('| {} | {} |'.format(pattern, ' | '.join(
                cells.get(c, '') for c in compressions)))
        if short_of_budget:
            lines.append('')
            lines.append(SHORT_OF_BUDGET)
        lines.append('')
    return '\n'.join(lines).rstrip()


def format_expansion_table(records: tp.List[dict], last: int = 1) -> str:
    """The expansion by pattern and width: accuracy (mean ± std), stored parameters, CPU s.

    The accuracy of a network is the mean of its ``last`` epochs' validation
    accuracies (1: the final one, as elsewhere; more smooths the swings from one
    epoch to the next). Width 1 is the narrow dense network, the reference of
    every pattern.
    """
    points_of = _expansion_points(records, last)
    if not points_of:
        return ''
    widths = sorted({p['width'] for points in points_of.values() for p in points})
    lines = ['| pattern | ' + ' | '.join('×{}'.format(w) for w in widths) + ' |',
             '|---|' + '---:|' * len(widths)]
    for pattern, points in points_of.items():
        cells = {p['width']: '{:.4f} ± {:.4f} ({:,}; {:.1f} s)'.format(
                     p['accuracy'], p['std'], p['params'], p['seconds']) for p in points}
        lines.append('| {} | {} |'.format(pattern, ' | '.join(
            cells.get(w, '') for w in widths)))
    return '\n'.join(lines)


def _expansion_points(records, last):
    """The expansion by pattern: a point per width, the seeds' statistics of each network's
    mean validation accuracy over its ``last`` epochs, and the mean CPU s per epoch."""
    groups = collections.OrderedDict()
    for record in sorted((r for r in records if is_wide(r)),
                         key=lambda r: (r['pattern'], width_of(r))):
        groups.setdefault((record['pattern'], width_of(record)), []).append(record)
    points_of = collections.OrderedDict()
    for (pattern, width), group in groups.items():
        accuracies = [statistics.mean(r['curve'][-last:]) for r in group]
        points_of.setdefault(pattern, []).append({
            'width': width, 'params': group[0]['params'],
            'accuracy': statistics.mean(accuracies),
            'std': statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            'low': min(accuracies), 'high': max(accuracies),
            'seconds': statistics.mean(r['cpu_seconds_per_epoch'] for r in group)})
    return points_of


def _short_of_budget(row: dict) -> bool:
    # compression.py picks the size nearest the budget that a pattern allows; within 1.25x
    # counts as met. Some patterns allow nothing near: PHM's n must divide the layer's sizes.
    return row['dense_params'] / row['params'] < row['compression'] / 1.25


def accuracy_ticks(low: float, high: float) -> tp.List[float]:
    """The accuracies to label on an axis from ``low`` to ``high``.

    :data:`ACCURACY_TICKS` where at least three of them fall in the range, otherwise
    the finest evenly spaced ticks (steps of 1, 2 or 5 times a power of ten) of
    which at most ten fit: a panel whose points all lie between 0.88 and 0.90
    still gets its labels.
    """
    ticks = [t for t in ACCURACY_TICKS if low <= t <= high]
    if len(ticks) >= 3:
        return ticks
    for step in (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2):
        first = math.ceil(low / step - 1e-9)
        ticks = [round(i * step, 4) for i in range(first, math.floor(high / step + 1e-9) + 1)]
        if len(ticks) <= 10:
            break
    return ticks


def plot(records: tp.List[dict], path: str, title: str) -> None:
    """Accuracy against stored parameters (log x), a line per pattern, a panel per setting.

    Each point is the mean over seeds, with a bar from the lowest to the highest.
    The accuracy axis is a logit scale: it spreads out the accuracies near 1, where
    the patterns differ by little, and still shows a pattern that fails. An
    accuracy of 0 or 1 is drawn at its edge, :data:`LOGIT_EDGE` inside.
    """
    from matplotlib import ticker
    from matplotlib.figure import Figure

    rows = [row for row in summarize(records) if not is_wide(row)]
    settings = list(collections.OrderedDict.fromkeys(row['setting'] for row in rows))
    figure = Figure(figsize=(6.5 * len(settings), 5), layout='constrained')
    axes = figure.subplots(1, len(settings), squeeze=False)[0]
    for ax, setting in zip(axes, settings):
        patterns = collections.OrderedDict()
        for row in rows:
            if row['setting'] == setting:
                patterns.setdefault(row['pattern'], []).append(row)
        for pattern, points in patterns.items():
            points.sort(key=lambda row: row['params'])
            x = [row['params'] for row in points]
            y = [_on_logit_axis(row['accuracy']) for row in points]
            spread = [[mean - _on_logit_axis(row['low']) for mean, row in zip(y, points)],
                      [_on_logit_axis(row['high']) - mean for mean, row in zip(y, points)]]
            if pattern == 'dense':
                ax.axhline(y[0], color='black', linewidth=0.8, linestyle='--',
                           label='dense ({:,} params)'.format(x[0]))
                continue
            ax.errorbar(x, y, yerr=spread, marker='o', markersize=4, capsize=2,
                        label=pattern)
        ax.set_xscale('log')
        ax.set_yscale('logit')
        ax.yaxis.set_major_locator(ticker.FixedLocator(accuracy_ticks(*ax.get_ylim())))
        ax.yaxis.set_major_formatter(ticker.FormatStrFormatter('%g'))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel('stored parameters of the compressed layers')
        ax.set_ylabel('validation accuracy (logit scale)')
        ax.set_title(setting)
        ax.grid(True, which='both', linewidth=0.3)
        ax.legend(fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.savefig(path, dpi=120)


def plot_expansion(records: tp.List[dict], path: str, title: str, last: int = 1) -> None:
    """The expansion: accuracy and CPU seconds per epoch against the width, a line per pattern.

    Every line starts from the narrow dense network at width 1; each point is
    the mean over seeds of each network's mean accuracy over its ``last``
    epochs, with a bar from the lowest to the highest. The dense network's
    spread is the grey band. The accuracy axis ends :data:`EXPANSION_AXIS_BELOW`
    below the dense network's lowest seed, so that a pattern that fails does not
    flatten the others: its legend says from which width it is below the axis.
    """
    from matplotlib import ticker
    from matplotlib.figure import Figure

    points_of = _expansion_points(records, last)
    dense = next((p for p in points_of.get('dense', ()) if p['width'] == 1), None)
    everything = [p for points in points_of.values() for p in points]
    # Without the dense reference, the axis spans what there is.
    bottom = (dense['low'] - EXPANSION_AXIS_BELOW if dense else
              min(p['low'] for p in everything))
    top = max(p['high'] for p in everything)
    figure = Figure(figsize=(12, 4.8), layout='constrained')
    accuracy_ax, seconds_ax = figure.subplots(1, 2)
    if dense:
        accuracy_ax.axhspan(dense['low'], dense['high'], color='0.85')
        accuracy_ax.axhline(dense['accuracy'], color='black', linewidth=0.8, linestyle='--',
                            label='dense 784-100-100-10 ({:,} params)'.format(dense['params']))
        seconds_ax.axhline(dense['seconds'], color='black', linewidth=0.8, linestyle='--',
                           label='dense')
    for pattern, points in points_of.items():
        if pattern == 'dense':
            continue
        points = ([dense] if dense else []) + [p for p in points if p['width'] > 1]
        x = [p['width'] for p in points]
        y = [p['accuracy'] for p in points]
        below = [p['width'] for p in points if p['accuracy'] < bottom]
        label = pattern if not below else '{} (below the axis from ×{})'.format(
            pattern, below[0])
        accuracy_ax.errorbar(x, y, yerr=[[a - p['low'] for a, p in zip(y, points)],
                                         [p['high'] - a for a, p in zip(y, points)]],
                             marker='o', markersize=4, capsize=2, label=label)
        seconds_ax.plot(x, [p['seconds'] for p in points], marker='o', markersize=4,
                        label=pattern)
    for ax in (accuracy_ax, seconds_ax):
        ax.set_xscale('log', base=2)
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter('×%g'))
        ax.set_xlabel('width of the hidden layers, times 100, at the same stored parameters')
        ax.grid(True, which='both', linewidth=0.3)
        ax.legend(fontsize=8)
    accuracy_ax.set_ylim(bottom, top + max(top - bottom, 1e-3) * 0.05)
    accuracy_ax.set_ylabel('validation accuracy' if last == 1 else
                           'validation accuracy, mean of the last {} epochs'.format(last))
    seconds_ax.set_yscale('log')
    seconds_ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
    seconds_ax.yaxis.set_major_formatter(ticker.FormatStrFormatter('%g'))
    seconds_ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    seconds_ax.set_ylabel('CPU seconds per training epoch (one thread)')
    figure.suptitle(title, fontsize=9)
    figure.savefig(path, dpi=120)


def _on_logit_axis(accuracy: float) -> float:
    return min(max(accuracy, LOGIT_EDGE), 1 - LOGIT_EDGE)
