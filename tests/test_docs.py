"""The documentation site: it builds without warnings, and every public name has an API entry.

The site is built once, into a temporary folder, as scripts/docs.sh builds it.
"""

import inspect
import pathlib
import posixpath
import re
import subprocess
import sys

import numpy
import pytest
from sphinx.util.inventory import InventoryFile

import chainer_sharedlinear
import chainer_sharedlinear.functions
import chainer_sharedlinear.links
import chainer_sharedlinear.onnx_export

ROOT = pathlib.Path(__file__).resolve().parents[1]
PUBLIC_MODULES = (
    chainer_sharedlinear,
    chainer_sharedlinear.functions,
    chainer_sharedlinear.links,
    chainer_sharedlinear.onnx_export,
)


def public_names(module):
    """``__all__``, or else what the module defines without a leading underscore."""
    if hasattr(module, '__all__'):
        return list(module.__all__)
    return [name for name, obj in vars(module).items()
            if not name.startswith('_') and not inspect.ismodule(obj)
            and getattr(obj, '__module__', module.__name__) == module.__name__]


def inventory_types(obj):
    if inspect.isclass(obj):
        return {'py:class', 'py:exception'}
    if callable(obj):
        return {'py:function'}
    return {'py:data'}


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp('site')
    build = subprocess.run(
        [sys.executable, '-m', 'sphinx', '-W', '--keep-going', '-q', '-b', 'html',
         str(ROOT / 'docs'), str(out)],
        cwd=str(ROOT), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    return build, out


def test_the_site_builds_without_warnings(site):
    build, out = site
    assert build.returncode == 0, build.stdout + build.stderr
    assert (out / 'index.html').is_file()


def test_the_public_modules_have_names():
    # Guards the parametrization below against an empty list.
    assert {'SharedLinear', 'shared_linear', 'register'} <= set(public_names(chainer_sharedlinear))
    assert {'export', 'converters'} <= set(public_names(chainer_sharedlinear.onnx_export))


@pytest.mark.parametrize('module, name', [
    pytest.param(module, name, id='{}.{}'.format(module.__name__, name))
    for module in PUBLIC_MODULES for name in public_names(module)])
def test_every_public_name_has_an_api_entry(site, module, name):
    _, out = site
    with open(str(out / 'objects.inv'), 'rb') as f:
        inventory = InventoryFile.load(f, '', posixpath.join)
    full_name = '{}.{}'.format(module.__name__, name)
    types = inventory_types(getattr(module, name))
    found = sorted(type_ for type_, entries in inventory.items() if full_name in entries)
    matching = sorted(set(found) & types)
    assert matching, '{} has no {} entry in the API reference (found: {})'.format(
        full_name, ' or '.join(sorted(types)), found or 'none')
    _, _, page, _ = inventory[matching[0]][full_name]
    assert page.startswith('api.html#')


def test_git_ignores_the_built_site():
    ignored = subprocess.run(
        ['git', 'check-ignore', '--quiet', 'docs/_build/html/index.html'], cwd=str(ROOT))
    assert ignored.returncode == 0


def test_pytest_runs_the_pages_doctests_but_not_the_built_sites_nor_conf_py(tmp_path):
    (tmp_path / 'docs' / '_build' / 'html').mkdir(parents=True)
    (tmp_path / 'pyproject.toml').write_text((ROOT / 'pyproject.toml').read_text())
    (tmp_path / 'docs' / 'page.md').write_text('```python\n>>> 1 + 1\n2\n\n```\n')
    (tmp_path / 'docs' / '_build' / 'html' / 'page.md').write_text('>>> 1 + 1\n3\n')
    (tmp_path / 'docs' / 'conf.py').write_text('raise RuntimeError("conf.py was imported")\n')
    run = subprocess.run(
        [sys.executable, '-m', 'pytest', '-p', 'no:cacheprovider', '-q', 'docs'],
        cwd=str(tmp_path), stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert '1 passed' in run.stdout


def python_samples(path):
    """The ```` ```python ```` blocks of a Markdown page, in order."""
    return re.findall(r'^```python\n(.*?)^```$', path.read_text(), flags=re.M | re.S)


def test_every_python_sample_of_the_readme_runs_as_written(tmp_path, monkeypatch):
    # Each on its own, in a fresh namespace: nothing is defined by a sample before it.
    monkeypatch.chdir(tmp_path)
    samples = python_samples(ROOT / 'README.md')
    assert len(samples) == 2
    namespaces = []
    for number, sample in enumerate(samples, 1):
        namespace = {'__name__': 'readme_sample_{}'.format(number)}
        exec(compile(sample, 'README.md, sample {}'.format(number), 'exec'), namespace)
        namespaces.append(namespace)
    compressed = namespaces[0]
    x = numpy.random.RandomState(0).rand(2, 784).astype(numpy.float32)
    numpy.testing.assert_array_equal(compressed['fresh'](x).array,
                                     compressed['model'].predictor(x).array)


def test_the_readmes_install_has_the_repos_constraints_and_overwrites_none_of_its_files():
    readme = (ROOT / 'README.md').read_text()
    written = re.findall(r"printf '([^']*)' > (\S+)", readme)
    assert len(written) == 1
    constraints, path = written[0]
    assert not (ROOT / path).exists(), 'the snippet overwrites the repo\'s ' + path
    repos = [line for line in (ROOT / 'constraints.txt').read_text().splitlines()
             if line and not line.startswith('#')]
    assert constraints.split('\\n') == repos + ['']
