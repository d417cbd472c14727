"""The Chainer columns of ``benchmarks/onnx_deploy.py``: a compressed model in Chainer itself.

For a model and the dense model it was compressed from (:func:`chainer_columns`):

- ``npz``: the bytes of its file (``chainer.serializers.save_npz``, compressed);
- ``chainer_b1``, ``chainer_b256``: the latency of a call in test mode without a
  graph (``chainer.using_config('train', False)`` and
  ``chainer.no_backprop_mode()``), over the dense model's, the two called
  alternately in one process (:func:`benchmarks.measure.time_round_robin`): the
  median of the rounds' ratios, and their quartiles;
- ``step``: the time of a training step (forward, backward and an SGD update at
  ``TRAIN_BATCH``) over the dense model's, measured alike;
- ``step_memory``: the most memory a training step holds at once
  (:func:`benchmarks.measure.peak_allocated_bytes`, after a first step), in bytes.
"""

import copy
import os
import statistics
import tempfile
import typing as tp

import chainer
import chainer.functions as F
import numpy
from chainer import optimizers, serializers

from benchmarks.measure import peak_allocated_bytes, time_round_robin

#: The batch of a training step.
TRAIN_BATCH = 256


def npz_bytes(model: chainer.Link) -> int:
    """The bytes of ``model``'s file, as ``chainer.serializers.save_npz`` writes it."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'model.npz')
        serializers.save_npz(path, model)
        return os.path.getsize(path)


def inference(model: chainer.Link, x) -> tp.Callable[[], tp.Any]:
    """A call of ``model`` on ``x`` in test mode without a graph."""
    def call():
        with chainer.using_config('train', False), chainer.no_backprop_mode():
            return model(x)
    return call


def training_step(model: chainer.Link, x) -> tp.Callable[[], None]:
    """A step of SGD on ``sum(model(x) ** 2) / len(x)``, on a copy of ``model``."""
    model = copy.deepcopy(model)
    optimizer = optimizers.SGD(lr=1e-6)  # small: the weights stay about where they were
    optimizer.setup(model)

    def step():
        y = model(x)
        loss = F.sum(y * y) / len(x)
        model.cleargrads()
        loss.backward()
        optimizer.update()
    return step


def ratios(step, dense_step, rounds: int, seconds: float) -> tp.List[float]:
    """Per round, the time of ``step()`` over ``dense_step()``'s, the two alternated."""
    samples = time_round_robin({'model': step, 'dense': dense_step}, repeats=rounds, warmup=3,
                               seconds=seconds, synchronize=lambda: None)
    return [t / d for t, d in zip(samples['model'], samples['dense'])]


def median_and_quartiles(values) -> tp.Tuple[float, tp.Tuple[float, float]]:
    if len(values) == 1:
        return values[0], (values[0], values[0])
    low, median, high = statistics.quantiles(values, n=4)
    return median, (low, high)


def chainer_columns(model: chainer.Link, dense: chainer.Link, in_size: int,
                    batches: tp.Sequence[int], rounds: int, seconds: float) -> dict:
    """The Chainer columns of ``model`` against ``dense``, which takes the same inputs."""
    rng = numpy.random.default_rng(0)
    row = {'npz': npz_bytes(model)}
    for batch in batches:
        x = rng.standard_normal((batch, in_size)).astype(numpy.float32)
        key = 'chainer_b{}'.format(batch)
        row[key], row[key + '_range'] = median_and_quartiles(
            ratios(inference(model, x), inference(dense, x), rounds, seconds))
    x = rng.standard_normal((TRAIN_BATCH, in_size)).astype(numpy.float32)
    step = training_step(model, x)
    row['step'], row['step_range'] = median_and_quartiles(
        ratios(step, training_step(dense, x), rounds, seconds))
    step()  # the gradients and the optimizer's state exist from the first step on
    row['step_memory'] = peak_allocated_bytes(step)
    return row
