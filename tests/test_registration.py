import subprocess
import sys
import textwrap

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
import pytest

import chainer_sharedlinear
from chainer_sharedlinear import SharedLinear, register, registration, shared_linear

_NAMES = tuple((module, name) for module, name, _ in registration._REGISTRY)
_MISSING = object()


@pytest.fixture
def unregistered():
    """Chainer's namespaces without the two names, and as they were afterwards.

    A doctest or another test may have called register() already in this process.
    """
    saved = [(module, name, getattr(module, name, _MISSING)) for module, name in _NAMES]
    for module, name, _ in saved:
        if hasattr(module, name):
            delattr(module, name)
    yield
    for module, name, value in saved:
        if value is _MISSING:
            if hasattr(module, name):
                delattr(module, name)
        else:
            setattr(module, name, value)


def test_importing_the_package_changes_nothing_in_chainer():
    # A fresh interpreter: in this one, register() may have run already.
    script = textwrap.dedent('''
        import sys
        import chainer, chainer.functions, chainer.links
        before = {m.__name__: dict(vars(m)) for m in (chainer, chainer.functions, chainer.links)}
        import chainer_sharedlinear
        import chainer_sharedlinear.onnx_export
        for m in (chainer, chainer.functions, chainer.links):
            after = vars(m)
            added = sorted(set(after) - set(before[m.__name__]))
            changed = sorted(k for k in before[m.__name__]
                             if k in after and after[k] is not before[m.__name__][k])
            assert not added and not changed, (m.__name__, added, changed)
        assert 'onnx' not in sys.modules and 'onnx_chainer' not in sys.modules
        print('unchanged')
    ''')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == 'unchanged'


def test_register_adds_the_links_and_the_functions(unregistered):
    assert not any(hasattr(module, name) for module, name in _NAMES)
    assert register() is None
    assert L.SharedLinear is SharedLinear
    assert F.shared_linear is shared_linear
    for module, name in _NAMES:
        assert getattr(module, name) is getattr(chainer_sharedlinear, name)
    assert {name for _, name in _NAMES} == {
        'SharedLinear', 'HashedLinear', 'KroneckerLinear', 'MonarchLinear', 'shared_linear',
        'hashed_linear', 'kronecker_linear', 'monarch_linear', 'tied_linear'}
    assert chainer_sharedlinear.register is register

    # Code written in the L./F. style.
    layer = L.SharedLinear(12, 3, n_shared=4)
    x = np.random.default_rng(0).standard_normal((2, 12)).astype(np.float32)
    np.testing.assert_array_equal(F.shared_linear(x, layer.W, layer.b).array, layer(x).array)


def test_register_twice_is_harmless(unregistered):
    register()
    register()
    assert L.SharedLinear is SharedLinear
    assert F.shared_linear is shared_linear


@pytest.mark.parametrize('module, name, other', [
    (chainer.links, 'SharedLinear', L.Linear),
    (chainer.links, 'SharedLinear', None),
    (chainer.functions, 'shared_linear', F.linear),
    (chainer.functions, 'tied_linear', F.linear),
])
def test_register_never_replaces_another_object(unregistered, module, name, other):
    setattr(module, name, other)
    with pytest.raises(
            RuntimeError,
            match=r'cannot register {0}\.{1}: {0} already has a {1} \(.*\) that is not '
                  r"chainer_sharedlinear's .*never replaces it".format(
                      module.__name__.replace('.', r'\.'), name)):
        register()
    assert getattr(module, name) is other
    # All or nothing: no other name was added either.
    for other_module, other_name in _NAMES:
        if other_name != name:
            assert not hasattr(other_module, other_name)
