import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
import pytest
from chainer import training
from chainer.training import extensions

from chainer_sharedlinear import DistillationClassifier, SharedLinear


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _oracle_loss(ys, yt, t, T, alpha):
    """The loss in float64, by the formula of Hinton et al."""
    ps, pt = _softmax(ys / T), _softmax(yt / T)
    kl = (pt * (np.log(pt) - np.log(ps))).sum(axis=1).mean()
    hard = -np.log(_softmax(ys)[np.arange(len(t)), t]).mean()
    return alpha * T * T * kl + (1 - alpha) * hard, T * T * kl, hard


def _problem(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((6, 5)).astype(dtype)
    t = rng.integers(0, 4, 6).astype(np.int32)
    return x, t


class WithDropout(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.l = L.Linear(5, 4, initialW=np.random.default_rng(3).standard_normal((4, 5)))

    def forward(self, x):
        return self.l(F.dropout(x, 0.5))


@pytest.mark.parametrize('T, alpha', [(1.0, 0.5), (4.0, 0.9), (2.5, 0.0), (3.0, 1.0)])
def test_the_loss_is_the_softened_kl_times_t_squared_plus_the_hard_loss(T, alpha):
    x, t = _problem()
    with chainer.using_config('dtype', np.float64):
        student = L.Linear(5, 4, initialW=np.random.default_rng(1).standard_normal((4, 5)))
        teacher = L.Linear(5, 4, initialW=np.random.default_rng(2).standard_normal((4, 5)))
    model = DistillationClassifier(student, teacher, temperature=T, alpha=alpha)
    loss = model(x, t)
    expected, soft, hard = _oracle_loss(student(x).array, teacher(x).array, t, T, alpha)
    np.testing.assert_allclose(float(loss.array), expected, rtol=1e-6)
    np.testing.assert_allclose(float(model.soft_loss.array), soft, rtol=1e-6)
    np.testing.assert_allclose(float(model.hard_loss.array), hard, rtol=1e-6)
    assert model.y is not None and model.accuracy is not None


def test_alpha_0_is_the_classifier_of_the_student():
    x, t = _problem(dtype=np.float32)
    student = L.Linear(5, 4)
    model = DistillationClassifier(student, L.Linear(5, 4), alpha=0.0)
    classifier = L.Classifier(student)
    np.testing.assert_array_equal(model(x, t).array, classifier(x, t).array)


def test_gradients_reach_the_student_only():
    x, t = _problem(dtype=np.float32)
    student, teacher = L.Linear(5, 4), L.Linear(5, 4)
    model = DistillationClassifier(student, teacher, temperature=3.0, alpha=0.7)
    model.cleargrads()
    teacher.cleargrads()
    model(x, t).backward()
    assert student.W.grad is not None and np.abs(student.W.grad).sum() > 0
    assert teacher.W.grad is None and teacher.b.grad is None
    # The student's gradient is that of the loss written out with the teacher as a constant.
    y_teacher = teacher(x).array
    W = chainer.Variable(student.W.array.copy())
    b = chainer.Variable(student.b.array.copy())
    ys = F.linear(x, W, b)
    soft = F.sum(_softmax(y_teacher / 3.0) * -F.log_softmax(ys / 3.0)) * (9.0 / 6)
    loss = 0.7 * soft + 0.3 * F.softmax_cross_entropy(ys, t)
    loss.backward()
    np.testing.assert_allclose(student.W.grad, W.grad, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(student.b.grad, b.grad, rtol=1e-5, atol=1e-6)


def test_the_teacher_runs_in_test_mode():
    x, t = _problem(dtype=np.float32)
    teacher = WithDropout()
    model = DistillationClassifier(L.Linear(5, 4), teacher)
    with chainer.using_config('train', True):
        first = float(model(x, t).array)
        second = float(model(x, t).array)
    assert first == second  # dropout off in the teacher; the student has none


def test_the_teacher_is_not_saved_nor_optimised_unless_asked(tmp_path):
    x, t = _problem(dtype=np.float32)
    student, teacher = L.Linear(5, 4), L.Linear(5, 4)
    model = DistillationClassifier(student, teacher)
    path = str(tmp_path / 'student.npz')
    chainer.serializers.save_npz(path, model)
    with np.load(path) as f:
        assert sorted(f.files) == ['predictor/W', 'predictor/b']
    optimizer = chainer.optimizers.SGD(lr=0.1)
    optimizer.setup(model)
    before = teacher.W.array.copy()
    optimizer.update(model, x, t)
    np.testing.assert_array_equal(teacher.W.array, before)

    saved = DistillationClassifier(L.Linear(5, 4), teacher, save_teacher=True)
    path = str(tmp_path / 'both.npz')
    chainer.serializers.save_npz(path, saved)
    with np.load(path) as f:
        assert sorted(f.files) == ['predictor/W', 'predictor/b', 'teacher/W', 'teacher/b']
    optimizer = chainer.optimizers.SGD(lr=0.1)
    optimizer.setup(saved)
    optimizer.update(saved, x, t)
    np.testing.assert_array_equal(teacher.W.array, before)


@pytest.mark.parametrize('optimizer, hooks', [
    (lambda: chainer.optimizers.Adam(weight_decay_rate=0.01), lambda: []),
    (lambda: chainer.optimizers.SGD(lr=0.1),
     lambda: [chainer.optimizer_hooks.WeightDecay(0.01)]),
    (lambda: chainer.optimizers.MomentumSGD(lr=0.1),
     lambda: [chainer.optimizer_hooks.Lasso(0.01), chainer.optimizer_hooks.GradientClipping(0.1),
              chainer.optimizer_hooks.GradientHardClipping(-0.01, 0.01)]),
])
@pytest.mark.parametrize('save_teacher', [False, True])
def test_no_optimizer_nor_hook_moves_the_teacher(optimizer, hooks, save_teacher):
    x, t = _problem(dtype=np.float32)
    student, teacher = L.Linear(5, 4), L.Linear(5, 4)
    model = DistillationClassifier(student, teacher, save_teacher=save_teacher)
    assert sorted(name for name, _ in model.namedparams()) == ['/predictor/W', '/predictor/b']
    before = {name: param.array.copy() for name, param in teacher.namedparams()}
    student_before = student.W.array.copy()
    optimizer = optimizer().setup(model)
    for hook in hooks():
        optimizer.add_hook(hook)
    for _ in range(10):
        optimizer.update(model, x, t)
    for name, param in teacher.namedparams():
        np.testing.assert_array_equal(param.array, before[name], err_msg=name)
    assert not np.array_equal(student.W.array, student_before)  # the student did train


def test_a_saved_teacher_loads_back_and_copies_with_the_model(tmp_path):
    rng = np.random.default_rng(5)
    teacher = L.Linear(5, 4, initialW=rng.standard_normal((4, 5)))
    model = DistillationClassifier(L.Linear(5, 4), teacher, save_teacher=True)
    path = str(tmp_path / 'both.npz')
    chainer.serializers.save_npz(path, model)
    loaded = DistillationClassifier(L.Linear(5, 4), L.Linear(5, 4), save_teacher=True)
    chainer.serializers.load_npz(path, loaded)
    np.testing.assert_array_equal(loaded.teacher.W.array, teacher.W.array)
    copied = DistillationClassifier(L.Linear(5, 4), L.Linear(5, 4), save_teacher=True)
    copied.copyparams(model)
    np.testing.assert_array_equal(copied.teacher.W.array, teacher.W.array)
    alone = DistillationClassifier(L.Linear(5, 4), L.Linear(5, 4))
    alone_teacher = alone.teacher.W.array.copy()
    alone.copyparams(model)
    np.testing.assert_array_equal(alone.teacher.W.array, alone_teacher)
    # Chain.copy copies the children; the teacher goes with them, so that a copy
    # sent to another device (ParallelUpdater) does not take the original's teacher.
    for save_teacher in (False, True):
        shared = DistillationClassifier(L.Linear(5, 4), teacher, save_teacher=save_teacher)
        copy = shared.copy()
        assert copy.teacher is not teacher and copy.teacher.W.array is teacher.W.array
        assert shared.copy(mode='copy').teacher.W.array is not teacher.W.array


def test_a_trainer_reports_both_terms():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 12)).astype(np.float32)
    t = (x[:, 0] > 0).astype(np.int32)
    dataset = chainer.datasets.TupleDataset(x, t)
    teacher = L.Classifier(L.Linear(12, 2))
    model = DistillationClassifier(SharedLinear(12, 2, n_shared=3), teacher.predictor)
    optimizer = chainer.optimizers.Adam()
    optimizer.setup(model)
    iterator = chainer.iterators.SerialIterator(dataset, 10, shuffle=False)
    trainer = training.Trainer(training.updaters.StandardUpdater(iterator, optimizer),
                               (2, 'epoch'), out='/tmp/unused-distillation')
    trainer.extend(extensions.LogReport(), trigger=(1, 'epoch'))
    trainer.run()
    log = trainer.get_extension('LogReport').log
    assert {'main/loss', 'main/soft_loss', 'main/hard_loss', 'main/accuracy'} <= set(log[-1])


@pytest.mark.parametrize('kwargs, message', [
    ({'temperature': 0}, r'temperature must be a number above 0, got 0'),
    ({'temperature': '2'}, r"temperature must be a number above 0, got '2'"),
    ({'alpha': 1.5}, r'alpha must be a number from 0 to 1, got 1.5'),
    ({'alpha': -0.1}, r'alpha must be a number from 0 to 1, got -0.1'),
])
def test_bad_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DistillationClassifier(L.Linear(5, 4), L.Linear(5, 4), **kwargs)


def test_a_teacher_of_other_outputs_is_refused():
    x, t = _problem(dtype=np.float32)
    model = DistillationClassifier(L.Linear(5, 4), L.Linear(5, 3))
    with pytest.raises(ValueError, match=r'the teacher gives outputs of shape \(6, 3\), the '
                                         r'student \(6, 4\)'):
        model(x, t)
