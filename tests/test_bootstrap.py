"""scripts/bootstrap.sh on a machine whose only Python is 3.12: the uv route.

Each test runs bootstrap.sh on a copy of the files it reads, with a PATH that holds
only the few commands it needs and the interpreters the test puts there, so the
machine's own Pythons stay hidden. The interpreters and uv are small shell fakes
that write what they are asked to do to a log, except in the last test, where the
real uv (from the test extra) runs until the download of the interpreter, which a
mirror folder with nothing in it turns into an immediate failure, on any machine.
Nothing here creates a real virtual environment or reaches the network.
"""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BASH = shutil.which('bash')
# What bootstrap.sh and the fakes below run, besides the interpreters and uv.
COMMANDS = ('bash', 'cat', 'cksum', 'cp', 'dirname', 'mkdir', 'rm')

# A virtual environment's python: records pip's arguments; pip install uv puts a fake uv
# beside it.
VENV_PYTHON = r'''#!{bash}
echo "$0 $* PIP_CONSTRAINT=${{PIP_CONSTRAINT:-}}" >> "$FAKE_LOG"
case "$*" in
  *"pip install"*"uv>="*) cp "$FAKES/uv" "$(dirname "$0")/uv" ;;
esac
'''

# An interpreter that is Python 3.$minor: answers the version check and makes venvs.
PYTHON = r'''#!{bash}
echo "$0 $*" >> "$FAKE_LOG"
case "$1" in
  -c) [ {minor} -ge 8 ] && [ {minor} -le 11 ] ;;
  --version) echo "Python 3.{minor}.0" ;;
  -m) [ "$2" = venv ] && mkdir -p "$3/bin" && cp "$FAKES/venv-python" "$3/bin/python" ;;
esac
'''

# uv: "python install" puts a fake Python 3.11 into $UV_PYTHON_INSTALL_DIR, or fails as
# an offline uv does when FAKE_DOWNLOAD=fail; "python find" prints its path.
UV = r'''#!{bash}
echo "uv $* UV_PYTHON_INSTALL_DIR=${{UV_PYTHON_INSTALL_DIR:-}}" \
  "UV_PYTHON_BIN_DIR=${{UV_PYTHON_BIN_DIR:-}}" >> "$FAKE_LOG"
python311="$UV_PYTHON_INSTALL_DIR/cpython-3.11/bin/python3.11"
case "$1 $2" in
  "python install")
    if [ "${{FAKE_DOWNLOAD:-}}" = fail ]; then
      echo "error: Failed to download cpython-3.11" >&2
      exit 1
    fi
    mkdir -p "$(dirname "$python311")" && cp "$FAKES/python3.11" "$python311" ;;
  "python find") echo "$python311" ;;
esac
'''


class Sandbox:
    """A copy of what bootstrap.sh reads, a PATH without Python, and the fakes."""

    def __init__(self, tmp_path):
        self.repo = tmp_path / 'repo'
        (self.repo / 'scripts').mkdir(parents=True)
        for name in ('scripts/bootstrap.sh', 'pyproject.toml', 'constraints.txt'):
            shutil.copy(ROOT / name, self.repo / name)
        self.bin = tmp_path / 'bin'
        self.bin.mkdir()
        for command in COMMANDS:
            (self.bin / command).symlink_to(shutil.which(command))
        self.fakes = tmp_path / 'fakes'
        self.fakes.mkdir()
        self._write(self.fakes / 'venv-python', VENV_PYTHON)
        self._write(self.fakes / 'python3.11', PYTHON, minor=11)
        self._write(self.fakes / 'uv', UV)
        self.log = tmp_path / 'log'
        self.log.touch()
        self.env = {'PATH': str(self.bin), 'HOME': str(tmp_path), 'FAKES': str(self.fakes),
                    'FAKE_LOG': str(self.log)}

    @staticmethod
    def _write(path, template, **fields):
        path.write_text(template.format(bash=BASH, **fields))
        path.chmod(0o755)

    def add_python(self, name, minor):
        self._write(self.bin / name, PYTHON, minor=minor)

    def add_fake_uv(self):
        shutil.copy(self.fakes / 'uv', self.bin / 'uv')

    def run(self, **env):
        return subprocess.run(
            [BASH, str(self.repo / 'scripts' / 'bootstrap.sh')], env=dict(self.env, **env),
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)

    def calls(self):
        return self.log.read_text().splitlines()


@pytest.fixture
def sandbox(tmp_path):
    return Sandbox(tmp_path)


def test_without_python_3_8_to_3_11_uv_installs_python_3_11_for_the_venv(sandbox):
    sandbox.add_python('python3', minor=12)
    result = sandbox.run()
    assert result.returncode == 0, result.stderr
    repo, tools = sandbox.repo, sandbox.repo / '.tools'
    python311 = tools / 'python' / 'cpython-3.11' / 'bin' / 'python3.11'
    assert sandbox.calls() == [
        '{} -c import sys; sys.exit(not ((3, 8) <= sys.version_info[:2] <= (3, 11)))'.format(
            sandbox.bin / 'python3'),
        '{} --version'.format(sandbox.bin / 'python3'),
        '{} -m venv {}'.format(sandbox.bin / 'python3', tools / 'uv'),
        '{} -m pip install --quiet uv>=0.4 PIP_CONSTRAINT='.format(
            tools / 'uv' / 'bin' / 'python'),
        # Nothing goes outside the repo: uv would link python3.11 into ~/.local/bin.
        'uv python install 3.11 UV_PYTHON_INSTALL_DIR={} UV_PYTHON_BIN_DIR={}'.format(
            tools / 'python', tools / 'bin'),
        'uv python find 3.11 UV_PYTHON_INSTALL_DIR={} UV_PYTHON_BIN_DIR={}'.format(
            tools / 'python', tools / 'bin'),
        '{} --version'.format(python311),
        '{} -m venv {}'.format(python311, repo / '.venv'),
        '{} -m pip install --quiet --editable {} PIP_CONSTRAINT={}'.format(
            repo / '.venv' / 'bin' / 'python', repo, repo / 'constraints.txt'),
    ]
    assert 'No Python 3.8 to 3.11 on PATH' in result.stderr
    assert 'Creating {} with Python 3.11.0'.format(repo / '.venv') in result.stderr
    assert (repo / '.venv' / '.installed-none').is_file()


def test_a_uv_on_path_is_used_rather_than_installed(sandbox):
    sandbox.add_python('python3', minor=12)
    sandbox.add_fake_uv()
    result = sandbox.run()
    assert result.returncode == 0, result.stderr
    assert not (sandbox.repo / '.tools' / 'uv').exists()
    assert [call.split(' UV_')[0] for call in sandbox.calls() if call.startswith('uv ')] == [
        'uv python install 3.11', 'uv python find 3.11']


def test_a_failed_download_stops_with_an_error_that_names_the_way_out(sandbox):
    sandbox.add_python('python3', minor=12)
    sandbox.add_fake_uv()
    result = sandbox.run(FAKE_DOWNLOAD='fail')
    assert result.returncode == 2
    assert 'error: uv could not install Python 3.11' in result.stderr
    assert 'set PYTHON to a Python 3.8 to 3.11' in result.stderr
    assert not (sandbox.repo / '.venv').exists()


def test_without_any_python_or_uv_the_error_says_what_to_install(sandbox):
    result = sandbox.run()
    assert result.returncode == 2
    assert 'error: no python3 to install uv with' in result.stderr
    assert sandbox.calls() == []


def test_a_python_3_8_to_3_11_on_path_is_used_without_uv(sandbox):
    sandbox.add_python('python3', minor=12)
    sandbox.add_python('python3.10', minor=10)
    sandbox.add_fake_uv()
    result = sandbox.run()
    assert result.returncode == 0, result.stderr
    assert '{} -m venv {}'.format(sandbox.bin / 'python3.10', sandbox.repo / '.venv') in (
        sandbox.calls())
    assert not [call for call in sandbox.calls() if call.startswith('uv ')]


def test_python_picks_the_interpreter_and_is_never_replaced(sandbox):
    sandbox.add_python('python3.11', minor=11)
    sandbox.add_python('python3.9', minor=9)
    sandbox.add_python('python3.12', minor=12)
    sandbox.add_fake_uv()

    result = sandbox.run(PYTHON='python3.12')
    assert result.returncode == 2
    assert 'error: PYTHON=python3.12 is not a Python 3.8 to 3.11' in result.stderr
    assert not (sandbox.repo / '.venv').exists()

    result = sandbox.run(PYTHON='python3.9')
    assert result.returncode == 0, result.stderr
    assert '{} -m venv {}'.format(sandbox.bin / 'python3.9', sandbox.repo / '.venv') in (
        sandbox.calls())
    assert not [call for call in sandbox.calls() if call.startswith('uv ')]


def test_the_real_uv_gets_as_far_as_downloading_python_3_11(sandbox, tmp_path):
    uv = shutil.which('uv', path=os.path.dirname(sys.executable))
    assert uv, 'uv comes with the test extra'
    (sandbox.bin / 'uv').symlink_to(uv)
    sandbox.add_python('python3', minor=12)
    mirror = tmp_path / 'empty-mirror'
    mirror.mkdir()
    result = sandbox.run(UV_PYTHON_INSTALL_MIRROR=mirror.as_uri(), UV_NO_CONFIG='1',
                         UV_CACHE_DIR=str(tmp_path / 'uv-cache'))
    assert result.returncode == 2
    # uv chose a CPython 3.11 build and looked for its archive where downloads come from.
    assert str(mirror) in result.stderr
    assert 'cpython-3.11' in result.stderr
    assert 'error: uv could not install Python 3.11' in result.stderr
    assert not list((sandbox.repo / '.tools' / 'python').glob('cpython-3.11*'))
    assert not (sandbox.repo / '.venv').exists()
