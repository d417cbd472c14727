"""A short run of the installed package, as a user starts with it.

scripts/check_release.sh runs this in a fresh virtual environment outside the
repository, once with the wheel installed and once with the sdist. It checks that
the package imports from that environment with its metadata, that it is the
library and only that (its exports, and every module of it importing there,
where nothing of the repository is), trains one step of each link of the family
against the dense layer it stands for, registers the package with Chainer, and
converts a model to shared and Kronecker layers and back. Any failure raises, so
the exit status says whether all of it held.
"""

import importlib
import importlib.metadata
import os
import pkgutil
import sys
import tempfile

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np

import chainer_sharedlinear as csl

DISTRIBUTION = 'chainer-sharedlinear'
# What the package exports: the links, the functions, converting, compressing and registering.
EXPORTS = ('ClusteredLinear', 'ClusteredLowRankLinear', 'CompressedLayer', 'CompressionReport',
           'ConversionReport', 'DistillationClassifier', 'HashedLinear', 'KroneckerLinear',
           'LowRankLinear', 'MonarchLinear', 'SharedLinear', 'apply_plan', 'bcast_model',
           'compress_linears', 'convert_linears', 'hashed_linear', 'knobs_at_budget',
           'kronecker_linear', 'load_compressed', 'low_rank_linear', 'monarch_linear',
           'multiply_adds', 'pattern_names', 'read_plan', 'register', 'save_compressed',
           'share_linears', 'shared_linear', 'stored_bytes', 'tied_linear', 'unshare_linears')
FUNCTIONS = ('hashed_index', 'hashed_linear', 'kronecker_linear', 'low_rank_linear',
             'monarch_linear', 'shared_linear', 'tied_linear')
# The nodes stay in their modules, as chainer.functions.connection.linear.LinearFunction does.
NODES = (
    ('chainer_sharedlinear.functions.shared_linear',
     ('SharedLinearFunction', 'SharedLinearGradData', 'SharedLinearGradWeight')),
    ('chainer_sharedlinear.functions.tied_linear',
     ('TiedLinearFunction', 'TiedWeight', 'TiedWeightGrad')),
    ('chainer_sharedlinear.functions.kronecker_linear', ('KroneckerLinearFunction',)),
    ('chainer_sharedlinear.functions.hashed_linear', ('HashedLinearFunction',)),
    ('chainer_sharedlinear.functions.clustered_linear', ('ClusteredLinearFunction',)),
    ('chainer_sharedlinear.functions.monarch_linear', ('MonarchLinearFunction',)),
    ('chainer_sharedlinear.functions.fold', ('fold', 'unfold')),
)
# Links of the family with the arguments of a small layer, 12 -> 6, for each.
FAMILY = (
    ('SharedLinear', dict(n_shared=3)),
    ('HashedLinear', dict(n_weights=20, seed=1)),
    ('KroneckerLinear', dict()),
    ('LowRankLinear', dict(rank=2)),
    ('ClusteredLinear', dict(n_clusters=5)),
    ('ClusteredLowRankLinear', dict(rank=2, n_clusters=5)),
    ('MonarchLinear', dict(n_blocks=3)),
)
# What register() adds to chainer.links and chainer.functions.
REGISTERED_LINKS = ('SharedLinear', 'HashedLinear', 'KroneckerLinear', 'LowRankLinear',
                    'ClusteredLinear', 'ClusteredLowRankLinear', 'MonarchLinear')
REGISTERED_FUNCTIONS = ('shared_linear', 'hashed_linear', 'kronecker_linear', 'low_rank_linear',
                        'monarch_linear', 'tied_linear')


def check_installation():
    package_dir = os.path.dirname(os.path.abspath(csl.__file__))
    prefix = os.path.abspath(sys.prefix)
    assert os.path.commonpath([package_dir, prefix]) == prefix, (
        'imported {} from {}, not from the environment {}'.format(csl.__name__, package_dir,
                                                                  prefix))
    assert csl.__version__ == importlib.metadata.version(DISTRIBUTION), (
        csl.__version__, importlib.metadata.version(DISTRIBUTION))
    assert os.path.isfile(os.path.join(package_dir, 'py.typed'))
    licence = [f for f in importlib.metadata.files(DISTRIBUTION) if f.name == 'LICENSE']
    assert licence, 'no LICENSE among the installed files'
    assert 'MIT License' in licence[0].read_text()
    print('{} {} imported from {}'.format(DISTRIBUTION, csl.__version__, package_dir))


def check_library():
    assert sorted(csl.__all__) == sorted(EXPORTS), csl.__all__
    assert sorted(csl.functions.__all__) == sorted(FUNCTIONS), csl.functions.__all__
    for module_name, names in NODES:
        module = importlib.import_module(module_name)
        for name in names:
            assert hasattr(module, name), module_name + '.' + name
    # Every module, so that one needing a file the artefact lacks fails here.
    modules = [info.name for info in pkgutil.walk_packages(csl.__path__, csl.__name__ + '.')]
    for name in modules:
        importlib.import_module(name)
    print('the library: {} names exported, {} modules import'.format(
        len(csl.__all__), len(modules) + 1))


def check_training_step(link):
    """One step of ``link`` agrees with its dense twin ``link.to_linear()``, then updates."""
    rng = np.random.RandomState(0)
    x = rng.standard_normal((4, 12)).astype(np.float32)
    gy = rng.standard_normal((4, 6)).astype(np.float32)
    dense = link.to_linear()
    grads = []
    for layer in (link, dense):
        layer.cleargrads()  # a new parameter's grad is NaN until cleared
        x_var = chainer.Variable(x)
        y = layer(x_var)
        y.grad = gy
        y.backward()
        grads.append((y.array, x_var.grad))
    (y, gx), (y_dense, gx_dense) = grads
    np.testing.assert_allclose(y, y_dense, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gx, gx_dense, rtol=1e-4, atol=1e-5)
    before = {name: param.array.copy() for name, param in link.namedparams()}
    optimizer = chainer.optimizers.SGD(lr=0.1)
    optimizer.setup(link)
    optimizer.update()
    for name, param in link.namedparams():
        assert np.isfinite(param.grad).all(), name
        assert not np.array_equal(param.array, before[name]), name + ' did not change'
    print('{}: a training step agrees with its dense layer'.format(type(link).__name__))


def check_register():
    csl.register()
    checked = []
    for namespace, prefix, names in ((L, 'L.', REGISTERED_LINKS), (F, 'F.', REGISTERED_FUNCTIONS)):
        for name in names:
            assert getattr(namespace, name) is getattr(csl, name), prefix + name
            checked.append(prefix + name)
    print('register(): {} are the package\'s'.format(', '.join(checked)))


def check_conversion():
    model = chainer.Sequential(L.Linear(12, 6), F.relu, L.Linear(6, 4))
    linears = tuple(path for path, _ in model.namedlinks(skipself=True))
    x = np.random.RandomState(1).standard_normal((2, 12)).astype(np.float32)
    report = csl.share_linears(model, n_shared=3)
    assert report.changed == linears, report
    assert all(isinstance(link, csl.SharedLinear) for link in model.children())
    y_shared = model(x).array
    report = csl.unshare_linears(model)
    assert report.changed == linears, report
    assert all(type(link) is L.Linear for link in model.children())
    np.testing.assert_allclose(model(x).array, y_shared, rtol=1e-4, atol=1e-5)
    report = csl.convert_linears(model, csl.KroneckerLinear.from_linear)
    assert report.changed == linears, report
    assert all(isinstance(link, csl.KroneckerLinear) for link in model.children())
    print('share_linears, convert_linears and unshare_linears: converted, same outputs back')


def check_compression(tmp):
    model = chainer.Sequential(L.Linear(48, 24), F.relu, L.Linear(24, 8))
    x = np.random.RandomState(2).standard_normal((3, 48)).astype(np.float32)
    report = csl.compress_linears(model, 1 / 4)
    assert report.stored_bytes <= report.dense_bytes / 4, report
    path = os.path.join(tmp, 'compressed.npz')
    csl.save_compressed(path, model, report.plan)
    fresh = chainer.Sequential(L.Linear(None, 24), F.relu, L.Linear(None, 8))
    csl.load_compressed(path, fresh)
    np.testing.assert_array_equal(fresh(x).array, model(x).array)
    print('compress_linears at 1/4, save_compressed and load_compressed: the same outputs')


def main():
    check_installation()
    check_library()
    for name, kwargs in FAMILY:
        check_training_step(getattr(csl, name)(12, 6, **kwargs))
    check_register()
    check_conversion()
    with tempfile.TemporaryDirectory() as tmp:
        check_compression(tmp)
    print('smoke run: every check held')


if __name__ == '__main__':
    main()
