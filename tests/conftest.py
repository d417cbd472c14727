import os

import pytest
from chainer.dataset import download
from hypothesis import HealthCheck, settings

# Chainer's first calls are slow (lazy imports), so no per-example deadline.
settings.register_profile(
    'default', deadline=None, max_examples=80,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile('thorough', parent=settings.get_profile('default'), max_examples=1000)
settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'default'))


def _why_no_gpu():
    from chainer.backends import cuda
    if not cuda.available:
        return ('needs CuPy and a CUDA device: pip install ".[cuda12x]" on a machine '
                'with an NVIDIA GPU, then run scripts/test.sh -m gpu')
    return None


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if 'gpu' in item.keywords]
    reason = _why_no_gpu() if gpu_items else None
    if reason:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def dataset_root(tmp_path, monkeypatch):
    """Chainer's dataset root in a temporary folder, for this process and those it starts.

    No test touches the user's cache of MNIST.
    """
    root = tmp_path / 'dataset_root'
    monkeypatch.setattr(download, '_dataset_root', str(root))
    monkeypatch.setenv('CHAINER_DATASET_ROOT', str(root))
    return root
