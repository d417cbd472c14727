"""SharedLinear with the rest of Chainer: trainers, optimizer hooks, function hooks, graphs."""

import io

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
from chainer import computational_graph, function_hooks, link_hooks, optimizer_hooks, training
from chainer.training import extensions

from chainer_sharedlinear import SharedLinear
from chainer_sharedlinear.functions.shared_linear import SharedLinearFunction


class MLP(chainer.Chain):

    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.l1 = SharedLinear(16, 12, n_shared=4)
            self.l2 = SharedLinear(12, 3, n_shared=3, nobias=True)

    def forward(self, x):
        return self.l2(F.dropout(F.relu(self.l1(x)), ratio=0.5))


def _data(size=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((size, 16)).astype(np.float32)
    t = (x[:, :4] + x[:, 4:8] + x[:, 8:12] + x[:, 12:]).argmax(axis=1)[:, None] % 3
    return x, t.ravel().astype(np.int32)


def test_classifier_trainer_standard_updater_and_evaluator(tmp_path):
    np.random.seed(0)
    x, t = _data()
    dataset = chainer.datasets.TupleDataset(x, t)
    model = L.Classifier(MLP())
    optimizer = chainer.optimizers.Adam(alpha=0.02)
    optimizer.setup(model)
    with chainer.using_config('train', False):
        loss_before = float(model(x, t).array)

    train_iter = chainer.iterators.SerialIterator(dataset, 16, shuffle=False)
    test_iter = chainer.iterators.SerialIterator(dataset, 32, repeat=False, shuffle=False)
    updater = training.updaters.StandardUpdater(train_iter, optimizer)
    trainer = training.Trainer(updater, (10, 'epoch'), out=str(tmp_path))
    # The Evaluator runs the model with train=False and without backprop.
    trainer.extend(extensions.Evaluator(test_iter, model), trigger=(10, 'epoch'))
    trainer.run()

    assert updater.iteration == 40
    observation = trainer.observation
    assert set(observation) >= {'main/loss', 'main/accuracy',
                                'validation/main/loss', 'validation/main/accuracy'}
    loss_after = float(observation['validation/main/loss'])
    assert loss_after < 0.8 * loss_before
    assert float(observation['validation/main/accuracy']) > 0.6


def _one_sgd_step(hook, lr=0.1):
    np.random.seed(0)
    layer = SharedLinear(8, 3, n_shared=2, initial_bias=0.5)
    optimizer = chainer.optimizers.SGD(lr=lr)
    optimizer.setup(layer)
    optimizer.add_hook(hook)
    x = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    layer.cleargrads()
    F.sum(layer(x) ** 2).backward()
    before = {name: (p.array.copy(), p.grad.copy()) for name, p in layer.namedparams()}
    optimizer.update()
    return before, {name: p.array for name, p in layer.namedparams()}


def test_weight_decay():
    rate, lr = 0.1, 0.1
    before, after = _one_sgd_step(optimizer_hooks.WeightDecay(rate), lr)
    for name, (value, grad) in before.items():
        np.testing.assert_allclose(after[name], value - lr * (grad + rate * value), rtol=1e-6)


def test_lasso():
    rate, lr = 0.1, 0.1
    before, after = _one_sgd_step(optimizer_hooks.Lasso(rate), lr)
    for name, (value, grad) in before.items():
        np.testing.assert_allclose(
            after[name], value - lr * (grad + rate * np.sign(value)), rtol=1e-6)


def test_gradient_clipping():
    threshold, lr = 0.5, 0.1
    before, after = _one_sgd_step(optimizer_hooks.GradientClipping(threshold), lr)
    norm = np.sqrt(sum(np.sum(grad.astype(np.float64) ** 2) for _, grad in before.values()))
    assert norm > threshold  # so that clipping happened
    for name, (value, grad) in before.items():
        np.testing.assert_allclose(
            after[name], value - lr * grad * (threshold / norm), rtol=1e-6)


def test_timer_hook_names_the_function_forward_and_backward():
    layer = SharedLinear(12, 3, n_shared=3)
    x = chainer.Variable(np.ones((2, 12), np.float32))
    with function_hooks.TimerHook() as hook:
        y = layer(x)
        y.grad = np.ones_like(y.array)
        y.backward()
    names = [name for name, _ in hook.call_history]
    assert names.count('SharedLinearFunction') == 2  # its forward and its backward
    assert hook.summary()['SharedLinearFunction']['occurrence'] == 2
    report = io.StringIO()
    hook.print_report(file=report)
    assert 'SharedLinearFunction' in report.getvalue()


def test_link_timer_hook_names_the_link():
    layer = SharedLinear(12, 3, n_shared=3)
    with link_hooks.TimerHook() as hook:
        layer(np.ones((2, 12), np.float32))
    assert [name for name, _ in hook.call_history] == ['SharedLinear']


def test_print_hook_names_the_function():
    layer = SharedLinear(12, 3, n_shared=3)
    x = chainer.Variable(np.ones((2, 12), np.float32))
    out = io.StringIO()
    with function_hooks.PrintHook(file=out):
        y = layer(x)
        y.grad = np.ones_like(y.array)
        y.backward()
    lines = out.getvalue().splitlines()
    assert lines.count('function\tSharedLinearFunction') == 2
    assert 'output gradient' in lines


def test_computational_graph():
    layer = SharedLinear(12, 3, n_shared=3)
    x = chainer.Variable(np.ones((2, 12), np.float32))
    y = F.relu(layer(x))
    graph = computational_graph.build_computational_graph([y])
    functions = [node for node in graph.nodes if isinstance(node, chainer.FunctionNode)]
    assert sorted(type(node).__name__ for node in functions) == ['ReLU', 'SharedLinearFunction']
    shared, = [node for node in functions if isinstance(node, SharedLinearFunction)]
    assert shared.label == 'SharedLinearFunction'
    assert [edge for edge in graph.edges if edge[1] is shared]  # x, W and b feed it
    dump = graph.dump()
    assert 'label="SharedLinearFunction"' in dump
    assert 'label="W: (3, 4), float32"' in dump
    assert 'label="b: (3), float32"' in dump


def test_test_mode_gives_the_same_layer_output():
    layer = SharedLinear(12, 3, n_shared=3)
    x = np.random.default_rng(0).standard_normal((2, 12)).astype(np.float32)
    y_train = layer(x).array
    with chainer.using_config('train', False):
        y_test = layer(x)
    np.testing.assert_array_equal(y_test.array, y_train)
    assert y_test.creator is not None

    model = MLP()  # its dropout is off in test mode, so repeated calls agree
    with chainer.using_config('train', False):
        np.testing.assert_array_equal(model(np.ones((2, 16), np.float32)).array,
                                      model(np.ones((2, 16), np.float32)).array)


def test_no_backprop_mode_builds_no_graph():
    layer = SharedLinear(12, 3, n_shared=3)
    x = chainer.Variable(np.random.default_rng(0).standard_normal((2, 12)).astype(np.float32))
    expected = layer(x).array
    with chainer.no_backprop_mode():
        y = layer(x)
    assert y.creator is None
    np.testing.assert_array_equal(y.array, expected)
    # No path leads back to the weight.
    assert chainer.grad([F.sum(y)], [layer.W]) == [None]
