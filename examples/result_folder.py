"""Result folders: what a run writes into ``--out``, and what it may replace there.

Nothing a user saved is lost or overwritten without asking. A run names the
files it writes as glob patterns relative to ``--out`` (for one training,
:func:`training_results`); :func:`claim` finds those already there and lets the
run replace them only with ``--overwrite`` or the user's yes in a terminal, and
:meth:`Claim.take` replaces them once the run has read all it needs (the
dataset, the snapshot to resume from). Other files and folders in ``--out``
are never touched.
"""

import glob
import os
import re
import sys
import tempfile

from command_line import UsageError

#: The snapshots that ``resumable.snapshot`` writes: ``snapshot_iter_<iteration>``.
SNAPSHOT_PREFIX = 'snapshot_iter_'

#: The pattern of the snapshots among a run's results: it matches a name such as
#: ``snapshot_iter_4.bak`` too, which :func:`find_results` leaves out.
SNAPSHOTS = SNAPSHOT_PREFIX + '*'


def snapshot_iteration(name):
    """N of a snapshot's file name ``snapshot_iter_N``, or ``None`` for any other name."""
    match = re.fullmatch(re.escape(SNAPSHOT_PREFIX) + r'(\d+)', name)
    return int(match.group(1)) if match else None


def training_results(folders=('',), plots=()):
    """The patterns of what a Chainer training writes into each of ``folders`` (of ``--out``).

    Its ``log`` (``LogReport``), its ``plots`` (``PlotReport`` file names) and
    its snapshots, ``snapshot_iter_N`` (:data:`SNAPSHOTS`).
    """
    return [os.path.join(folder, name) for folder in folders
            for name in ('log',) + tuple(plots) + (SNAPSHOTS,)]


def latest_snapshot(folder):
    """The path of the ``snapshot_iter_N`` with the largest N in ``folder``, or ``None``."""
    if not os.path.isdir(folder):
        return None
    iterations = {snapshot_iteration(name): name for name in os.listdir(folder)}
    iterations.pop(None, None)
    return os.path.join(folder, iterations[max(iterations)]) if iterations else None


def find_snapshot(path):
    """The snapshot that ``--resume path`` names: ``path``, or the latest one in it."""
    if os.path.isdir(path):
        snapshot = latest_snapshot(path)
        if snapshot is None:
            raise UsageError('--resume {}: no {}N snapshot in that directory'.format(
                path, SNAPSHOT_PREFIX))
        return snapshot
    if not os.path.isfile(path):
        raise UsageError('--resume {}: no such snapshot file or directory'.format(path))
    return path


def resume_hint(out, can_resume=True):
    """``'; --resume OUT --out OUT continues from SNAPSHOT'``, or ``''`` without a snapshot."""
    snapshot = latest_snapshot(out) if can_resume else None
    return '' if snapshot is None else '; --resume {} --out {} continues from {}'.format(
        out, out, snapshot)


def check_folder(out, folder=''):
    """Raises :class:`UsageError` unless ``folder`` of ``--out out`` is, or can become, one.

    ``out`` must not be empty (as an unset ``$OUT`` in ``--out "$OUT"``
    gives), and neither it nor ``folder`` in it may be a file or lie under
    one. Nothing is created.
    """
    if not out:
        raise UsageError("--out '' is empty: expected a directory (--out . for the current "
                         'one)')
    existing = (os.path.join(out, folder) if folder else out).rstrip(os.sep) or os.sep
    while existing and not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if existing and not os.path.isdir(existing):
        if existing == out.rstrip(os.sep):
            raise UsageError('--out {} is a file, not a directory'.format(out))
        raise UsageError('--out {}: {} is a file, not a directory'.format(out, existing))


def make_folder(out, folder):
    """Creates ``folder`` (``out`` or a folder in it) if needed and checks that it is writable.

    Raises :class:`UsageError` naming ``--out out`` where it cannot be written:
    called before a run trains, so that it does not fail once it has.
    """
    try:
        os.makedirs(folder, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise UsageError('--out {}: cannot write into {} ({})'.format(
            out, folder, e.strerror or e)) from None


def find_results(out, results):
    """The paths, relative to ``out``, of the files there that match ``results`` (patterns).

    Of the names that :data:`SNAPSHOTS` matches, only the snapshots' own count.
    """
    found = set()
    for pattern in results:
        for path in glob.glob(os.path.join(glob.escape(out), pattern)):
            if (os.path.basename(pattern) == SNAPSHOTS
                    and snapshot_iteration(os.path.basename(path)) is None):
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                raise UsageError('--out {}: {} is a directory, where this run writes a '
                                 'file'.format(out, path))
            found.add(os.path.relpath(path, out))
    return sorted(found)


class Claim(object):
    """The folders a run writes into, and the earlier results there it replaces.

    ``replaced`` are removed by :meth:`take`; ``continued``, the path of the
    snapshot in ``out`` that the run continues, by the run's first snapshot.
    """

    def __init__(self, out, results, replaced, continued=None):
        self.out = out
        self.results = results
        self.folders = sorted({os.path.normpath(os.path.join(out, os.path.dirname(pattern)))
                               for pattern in results})
        self.replaced = replaced
        self.continued = continued

    def take(self):
        """Creates the folders, checks that they are writable, then removes ``replaced``."""
        for folder in self.folders:
            make_folder(self.out, folder)
        for name in self.replaced:
            try:
                os.remove(os.path.join(self.out, name))
            except OSError as e:
                raise UsageError('--out {}: cannot replace {} ({})'.format(
                    self.out, name, e.strerror or e)) from None

    def find(self):
        """The results that are in ``out`` now (see :func:`find_results`)."""
        return find_results(self.out, self.results)


def take(claim):
    """``claim.take()``, where ``claim`` is not ``None``."""
    if claim is not None:
        claim.take()


def claim(out, results, *, overwrite=False, resume_from=None, can_resume=True):
    """Checks ``out`` and finds what in it this run may replace; returns a :class:`Claim`.

    ``results`` are the glob patterns, relative to ``out``, of what the run
    writes. The earlier results among them are replaced when ``resume_from``
    (the snapshot the run resumes from) is one of them, as the run continues
    there the run that wrote them; with ``overwrite``; or when the user,
    asked in a terminal, says so. Otherwise this raises a :class:`UsageError`
    that says what to do, suggesting ``--resume out --out out`` only where
    ``can_resume`` and ``out`` holds a snapshot. Nothing is changed on disk.
    """
    for folder in sorted({os.path.dirname(pattern) for pattern in results} | {''}):
        check_folder(out, folder)
    found = find_results(out, results)
    continued = next((os.path.join(out, name) for name in found if resume_from is not None
                      and os.path.samefile(resume_from, os.path.join(out, name))), None)
    if continued is not None:
        # The run rewrites the log and plots, and its next snapshot replaces this one:
        # until then, a crash loses nothing.
        return Claim(out, results, [], continued)
    if not found or overwrite:
        return Claim(out, results, found)
    listing = ', '.join(found)
    if not sys.stdin.isatty():
        resume = ''
        if can_resume and latest_snapshot(out) is not None:
            resume = ', --resume {} --out {} to continue that run there'.format(out, out)
        raise UsageError('{} already holds the results of a run ({}): pass --overwrite to replace '
                         'them{}, or another --out'.format(out, listing, resume))
    try:
        answer = input('{} already holds the results of a run ({}). Replace them? '
                       '[y/N] '.format(out, listing))
    except EOFError:
        answer = ''
    if answer.strip().lower() not in ('y', 'yes'):
        raise UsageError('nothing done: {} is left as it was'.format(out))
    return Claim(out, results, found)
