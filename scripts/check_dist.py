"""Checks the files of a built wheel and sdist against what belongs in them.

Usage: python scripts/check_dist.py DIST.whl DIST.tar.gz

What belongs: the package's files that git tracks (its modules and py.typed), the
metadata the build writes, the LICENSE, and in the sdist also what a build from
it reads (pyproject.toml, README.md, MANIFEST.in) and CHANGELOG.md. Anything
else (caches, compiled files, tests, a virtual environment, results, a file git
does not track) fails the check, and so does a missing file that belongs. Prints
each artefact's files; exits with 1 and the reasons on a failure.
"""

import pathlib
import subprocess
import sys
import tarfile
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = 'chainer_sharedlinear'


def package_files():
    """The package's files as git tracks them, e.g. ``chainer_sharedlinear/__init__.py``."""
    listed = subprocess.run(['git', 'ls-files', '--', PACKAGE], cwd=str(ROOT), check=True,
                            stdout=subprocess.PIPE, universal_newlines=True).stdout
    return set(listed.split())


def wheel_problems(wheel_name, names, package):
    """What is wrong with a wheel called ``wheel_name`` holding the files ``names``."""
    dist_info = '-'.join(wheel_name.split('-')[:2]) + '.dist-info/'
    required = package | {dist_info + name for name in ('METADATA', 'WHEEL', 'RECORD')}
    licences = {dist_info + 'licenses/LICENSE', dist_info + 'LICENSE'}
    optional = {dist_info + 'top_level.txt'}
    return _problems(names, required, licences, optional)


def sdist_problems(sdist_name, names, package):
    """What is wrong with an sdist called ``sdist_name`` holding the files ``names``."""
    top = sdist_name[:-len('.tar.gz')] + '/'
    egg_info = top + PACKAGE + '.egg-info/'
    required = {top + name for name in package} | {
        top + name for name in ('PKG-INFO', 'pyproject.toml', 'README.md', 'CHANGELOG.md')}
    licences = {top + 'LICENSE'}
    optional = {top + name for name in ('setup.cfg', 'MANIFEST.in')} | {
        egg_info + name for name in (
            'PKG-INFO', 'SOURCES.txt', 'dependency_links.txt', 'requires.txt', 'top_level.txt')}
    return _problems(names, required, licences, optional)


def _problems(names, required, licences, optional):
    names = set(names)
    problems = ['missing: ' + name for name in sorted(required - names)]
    if not names & licences:
        problems.append('missing: the licence, one of ' + ', '.join(sorted(licences)))
    problems += ['does not belong: ' + name
                 for name in sorted(names - required - licences - optional)]
    return problems


def files_of(path):
    if path.name.endswith('.whl'):
        with zipfile.ZipFile(str(path)) as archive:
            return [name for name in archive.namelist() if not name.endswith('/')]
    with tarfile.open(str(path)) as archive:
        return [member.name for member in archive.getmembers() if not member.isdir()]


def main(paths):
    if not paths:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    package = package_files()
    failed = False
    for path in map(pathlib.Path, paths):
        names = files_of(path)
        check = wheel_problems if path.name.endswith('.whl') else sdist_problems
        problems = check(path.name, names, package)
        print('{}: {} files'.format(path.name, len(names)))
        for name in sorted(names):
            print('  ' + name)
        for problem in problems:
            print('  error: ' + problem)
        failed = failed or bool(problems)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
