"""The packaging: metadata, one version, the licence, the changelog, and the artefact check.

scripts/check_release.sh builds and installs the real artefacts (CI runs it); these
tests check the metadata it builds from, and check that scripts/check_dist.py,
which judges the artefacts' lists of files, refuses what it should.
"""

import importlib.util
import io
import pathlib
import re
import sys
import tarfile
import zipfile

import pytest
from packaging.specifiers import SpecifierSet
from trove_classifiers import classifiers as known_classifiers

import chainer_sharedlinear

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']


def load_check_dist():
    spec = importlib.util.spec_from_file_location(
        'check_dist', str(ROOT / 'scripts' / 'check_dist.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_dist = load_check_dist()


def test_the_version_is_written_once_in_the_package():
    setuptools = tomllib.loads((ROOT / 'pyproject.toml').read_text())['tool']['setuptools']
    assert 'version' not in PROJECT
    assert 'version' in PROJECT['dynamic']
    assert setuptools['dynamic']['version'] == {'attr': 'chainer_sharedlinear.__version__'}
    assert re.fullmatch(r'\d+\.\d+\.\d+', chainer_sharedlinear.__version__)


def test_the_changelog_has_unreleased_first_and_the_current_version():
    headings = re.findall(r'^## (.+)$', (ROOT / 'CHANGELOG.md').read_text(), re.MULTILINE)
    assert headings[0] == 'Unreleased'
    versions = [heading.split()[0] for heading in headings[1:]]
    assert chainer_sharedlinear.__version__ in versions
    assert versions[-1] == '0.1.0'


def test_the_licence_is_mit_by_the_authors_as_pyproject_says():
    licence = (ROOT / 'LICENSE').read_text()
    assert PROJECT['license'] == {'text': 'MIT'}
    assert licence.startswith('MIT License\n')
    assert re.search(r'^Copyright \(c\) \d{4} the chainer-sharedlinear authors$', licence,
                     re.MULTILINE)
    assert 'License :: OSI Approved :: MIT License' in PROJECT['classifiers']


def test_the_classifiers_are_known_to_pypi():
    assert set(PROJECT['classifiers']) <= set(known_classifiers), (
        set(PROJECT['classifiers']) - set(known_classifiers))


def test_the_python_classifiers_are_the_versions_requires_python_admits():
    admitted = SpecifierSet(PROJECT['requires-python'])
    stated = {c.rsplit(' :: ', 1)[1] for c in PROJECT['classifiers']
              if re.fullmatch(r'Programming Language :: Python :: 3\.\d+', c)}
    assert stated == {'3.{}'.format(minor) for minor in range(20)
                      if '3.{}.0'.format(minor) in admitted}
    assert stated == {'3.8', '3.9', '3.10', '3.11'}


def test_chainer_is_pinned_to_7_8_1():
    assert 'chainer==7.8.1' in PROJECT['dependencies']


# check_dist.py, on made-up file lists. The package's real files, as git tracks them.
PACKAGE = check_dist.package_files()
WHEEL = 'chainer_sharedlinear-0.1.0-py3-none-any.whl'
SDIST = 'chainer_sharedlinear-0.1.0.tar.gz'
DIST_INFO = 'chainer_sharedlinear-0.1.0.dist-info/'
WHEEL_FILES = sorted(PACKAGE) + [DIST_INFO + name for name in (
    'METADATA', 'WHEEL', 'RECORD', 'top_level.txt', 'licenses/LICENSE')]
SDIST_FILES = ['chainer_sharedlinear-0.1.0/' + name for name in sorted(PACKAGE) + [
    'PKG-INFO', 'pyproject.toml', 'README.md', 'CHANGELOG.md', 'LICENSE', 'setup.cfg',
    'MANIFEST.in', 'chainer_sharedlinear.egg-info/SOURCES.txt']]


def test_git_tracks_the_package_with_py_typed():
    assert {'chainer_sharedlinear/__init__.py', 'chainer_sharedlinear/py.typed'} <= PACKAGE
    assert all(name.startswith('chainer_sharedlinear/') for name in PACKAGE)


def test_complete_artefacts_pass():
    assert check_dist.wheel_problems(WHEEL, WHEEL_FILES, PACKAGE) == []
    assert check_dist.sdist_problems(SDIST, SDIST_FILES, PACKAGE) == []
    # setuptools before 77 puts the licence at the top of .dist-info.
    old_wheel = [name.replace('licenses/LICENSE', 'LICENSE') for name in WHEEL_FILES]
    assert check_dist.wheel_problems(WHEEL, old_wheel, PACKAGE) == []


@pytest.mark.parametrize('stray', [
    'chainer_sharedlinear/__pycache__/__init__.cpython-311.pyc',
    'chainer_sharedlinear/notes.txt',
    'tests/test_link.py',
    '.venv/bin/python',
    'result/mnist-5k/log',
    'docs/_build/html/index.html',
])
def test_a_file_that_does_not_belong_fails(stray):
    assert check_dist.wheel_problems(WHEEL, WHEEL_FILES + [stray], PACKAGE) == [
        'does not belong: ' + stray]
    in_sdist = 'chainer_sharedlinear-0.1.0/' + stray
    assert check_dist.sdist_problems(SDIST, SDIST_FILES + [in_sdist], PACKAGE) == [
        'does not belong: ' + in_sdist]


def test_a_missing_licence_or_module_fails():
    without_licence = [name for name in WHEEL_FILES if not name.endswith('LICENSE')]
    assert check_dist.wheel_problems(WHEEL, without_licence, PACKAGE) == [
        'missing: the licence, one of {0}LICENSE, {0}licenses/LICENSE'.format(DIST_INFO)]
    module = 'chainer_sharedlinear/links/__init__.py'
    assert check_dist.sdist_problems(
        SDIST, [name for name in SDIST_FILES if not name.endswith(module)], PACKAGE) == [
        'missing: chainer_sharedlinear-0.1.0/' + module]
    assert check_dist.wheel_problems(
        WHEEL, [name for name in WHEEL_FILES if name != 'chainer_sharedlinear/py.typed'],
        PACKAGE) == ['missing: chainer_sharedlinear/py.typed']


def _write_artefacts(folder, wheel_files, sdist_files):
    with zipfile.ZipFile(str(folder / WHEEL), 'w') as wheel:
        for name in wheel_files:
            wheel.writestr(name, '')
    with tarfile.open(str(folder / SDIST), 'w:gz') as sdist:
        for name in sdist_files:
            sdist.addfile(tarfile.TarInfo(name), io.BytesIO(b''))


def test_the_command_reads_the_archives_and_fails_on_a_problem(tmp_path, capsys):
    _write_artefacts(tmp_path, WHEEL_FILES, SDIST_FILES)
    paths = [str(tmp_path / WHEEL), str(tmp_path / SDIST)]
    assert check_dist.main(paths) == 0
    assert 'error' not in capsys.readouterr().out

    _write_artefacts(tmp_path, WHEEL_FILES + ['chainer_sharedlinear/__pycache__/x.pyc'],
                     SDIST_FILES)
    assert check_dist.main(paths) == 1
    assert 'error: does not belong: chainer_sharedlinear/__pycache__/x.pyc' in (
        capsys.readouterr().out)
