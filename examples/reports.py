"""What the examples print and draw from the logs of Chainer's ``LogReport``.

A log is the list of dictionaries that ``LogReport`` keeps and writes to
``log``: one per epoch (and one before training with
``call_before_training=True``), with ``epoch``, ``iteration``,
``elapsed_time`` and the means of what was reported, such as ``main/loss``
and ``validation/main/accuracy``.
"""

import sys

#: The columns of :func:`comparison_table` after the parameters and s/epoch.
FIGURES = ('main/loss', 'main/accuracy', 'validation/main/loss', 'validation/main/accuracy')


def plots_available():
    """Whether matplotlib can draw (to files); says why not on the standard error."""
    try:
        import matplotlib
    except ImportError:
        print('matplotlib is not installed, so there will be no plots: '
              "pip install -e '.[examples]'", file=sys.stderr)
        return False
    matplotlib.use('Agg')  # files only, no display needed
    return True


def seconds_per_epoch(log):
    """Wall-clock seconds per epoch from the first entry of ``log`` to the last.

    Training, validation and every extension count. ``nan`` if the log
    spans no epoch.
    """
    first, last = log[0], log[-1]
    if last['epoch'] == first['epoch']:
        return float('nan')
    return (last['elapsed_time'] - first['elapsed_time']) / (last['epoch'] - first['epoch'])


def final_figures(log):
    """One line of the last epoch's validation accuracy and loss, and the seconds per epoch."""
    last = log[-1]
    return ('Final validation accuracy: {:.4f} (epoch {}, validation loss {:.4f}; {:.2f} s '
            'per epoch)'.format(last['validation/main/accuracy'], last['epoch'],
                                last['validation/main/loss'], seconds_per_epoch(log)))


def comparison_table(rows):
    """A Markdown table of ``(name, l2, n_params, log)`` rows: the last epoch of each."""
    lines = ['| model | l2 | parameters | s/epoch | train loss | train acc. '
             '| val. loss | val. acc. |',
             '|---|---|---:|---:|---:|---:|---:|---:|']
    for name, l2, n_params, log in rows:
        figures = ' | '.join('{:.4f}'.format(log[-1][key]) for key in FIGURES)
        lines.append('| {} | `{}` | {:,} | {:.3f} | {} |'.format(
            name, l2, n_params, seconds_per_epoch(log), figures))
    return '\n'.join(lines)


def print_comparison(rows, title, plot_path=None):
    """Prints :func:`comparison_table` under ``title``; plots it into ``plot_path`` if given."""
    print('\n{}:\n{}'.format(title, comparison_table(rows)))
    print('s/epoch: training, validation, snapshot and log of one epoch (no plots).')
    if plot_path is not None:
        plot_comparison(rows, plot_path, title)
        print('Plot of the loss and accuracy curves: {}'.format(plot_path))


def plot_comparison(rows, path, title):
    """Draws loss and accuracy of every ``(name, _, _, log)`` row, train and validation."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.5))
    for index, (metric, legend_at) in enumerate((('loss', 'upper right'),
                                                 ('accuracy', 'lower right'))):
        axes = figure.add_subplot(1, 2, index + 1)
        for row_index, (name, _, _, log) in enumerate(rows):
            color = 'C{}'.format(row_index % 10)  # matplotlib's default cycle
            for key, style, what in (('validation/main/' + metric, '-', 'validation'),
                                     ('main/' + metric, '--', 'train')):
                points = [(entry['epoch'], entry[key]) for entry in log if key in entry]
                if points:
                    epochs, values = zip(*points)
                    axes.plot(epochs, values, style, color=color, marker='.',
                              label='{} ({})'.format(name, what))
        axes.set_xlabel('epoch')
        axes.set_ylabel(metric)
        axes.grid()
        axes.legend(loc=legend_at)
    figure.suptitle(title, fontsize=9)
    figure.savefig(path, bbox_inches='tight')
