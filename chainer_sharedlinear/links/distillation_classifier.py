"""Knowledge distillation: a drop-in for ``L.Classifier`` that trains a student on a teacher."""

import chainer
import chainer.functions as F
import chainer.links as L
from chainer import reporter

from chainer_sharedlinear import _checks


class DistillationClassifier(L.Classifier):
    """A classifier trained against the labels and against a teacher's softened outputs.

    Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network"
    (2015): the loss is

    .. math:: \\alpha \\, T^2 \\, \\mathrm{KL}\\big(\\mathrm{softmax}(z_t / T) \\,\\|\\,
              \\mathrm{softmax}(z_s / T)\\big) + (1 - \\alpha) \\,
              \\mathrm{lossfun}(z_s, t),

    the mean over the batch, where ``z_s`` are the student's outputs, ``z_t``
    the teacher's and ``T`` the temperature; ``T²`` keeps the soft term's
    gradients of the size of the hard term's whatever ``T``. It is called as
    ``L.Classifier`` is, ``loss = model(x, t)``, and reports ``loss``,
    ``soft_loss``, ``hard_loss`` and ``accuracy`` (of the student), so that
    a ``Trainer`` with an ``Evaluator`` and ``PrintReport`` works unchanged.

    The teacher runs in test mode (``chainer.config.train`` off: no dropout,
    batch normalisation with its running statistics), records no graph and
    gets no gradient. It is never a child link: its parameters are not among
    the model's ``params()``, so an optimizer set up on the model, its weight
    decay and its hooks never see them, whatever the optimizer; ``to_device``
    and ``copy`` take the teacher with the student. The model's snapshot and
    ``save_npz`` hold the student alone, unless ``save_teacher=True``: then
    the teacher is saved and loaded with the model (under ``teacher/``), and
    ``copyparams`` copies it too.

    Args:
        student (~chainer.Link): The network trained (``predictor``).
        teacher (~chainer.Link): The network whose outputs are the soft
            targets, of the student's shape (any function of the inputs will do).
        temperature (float): ``T``, above 0; larger spreads the soft targets.
        alpha (float): The weight of the soft term, from 0 to 1.
        save_teacher (bool): If ``True``, the teacher is a child link, saved
            and loaded with the model.
        lossfun: The hard term, a function as ``L.Classifier`` takes it.
        accfun: The accuracy, a function as ``L.Classifier`` takes it.
        label_key (int or str): Where the labels are, as ``L.Classifier`` takes it.

    Attributes:
        predictor (~chainer.Link): The student.
        teacher: The teacher.
        soft_loss (~chainer.Variable): The soft term of the last minibatch.
        hard_loss (~chainer.Variable): The hard term of the last minibatch.

    .. admonition:: Example

        >>> import chainer.links as L
        >>> import numpy as np
        >>> teacher, student = L.Linear(4, 3), L.Linear(4, 3)
        >>> model = DistillationClassifier(student, teacher, temperature=2.0)
        >>> x, t = np.ones((5, 4), np.float32), np.zeros(5, np.int32)
        >>> model(x, t).shape
        ()
        >>> sorted(name for name, _ in model.namedparams())  # the student's alone
        ['/predictor/W', '/predictor/b']
    """

    def __init__(self, student, teacher, *, temperature: float = 4.0, alpha: float = 0.5,
                 save_teacher: bool = False, lossfun=F.softmax_cross_entropy,
                 accfun=F.accuracy, label_key=-1) -> None:
        super().__init__(student, lossfun=lossfun, accfun=accfun, label_key=label_key)
        self.temperature = _checks.positive_float('temperature', temperature)
        self.alpha = _checks.fraction('alpha', alpha)
        self.save_teacher = bool(save_teacher)
        if self.save_teacher and not isinstance(teacher, chainer.Link):
            raise TypeError('save_teacher=True saves a teacher that is a chainer.Link, '
                            'got {}'.format(type(teacher).__name__))
        # Not in init_scope: a child's parameters would be the optimizer's, and
        # disabling their update rules here would not last, since optimizer.setup
        # gives every parameter a new one.
        self.teacher = teacher
        self.soft_loss = None
        self.hard_loss = None

    def forward(self, *args, **kwargs):
        """The loss of the student on a minibatch; ``args`` and ``kwargs`` as ``L.Classifier``."""
        args, kwargs, t = self._split_labels(args, kwargs)
        self.y = self.loss = self.accuracy = self.soft_loss = self.hard_loss = None
        self.y = self.predictor(*args, **kwargs)
        with chainer.using_config('train', False), chainer.no_backprop_mode():
            teacher_y = chainer.as_array(self.teacher(*args, **kwargs))
        if teacher_y.shape != self.y.shape:
            raise ValueError('the teacher gives outputs of shape {}, the student {}: they must '
                             'be alike'.format(teacher_y.shape, self.y.shape))
        T = self.temperature
        log_teacher = F.log_softmax(teacher_y.astype(self.y.dtype, copy=False) / T).array
        teacher_p = self.xp.exp(log_teacher)
        # KL(p_t || p_s) = Σ p_t log p_t - Σ p_t log p_s; the teacher's entropy term is a
        # constant, summed where p_t > 0 (0 log 0 = 0).
        cross_entropy = -F.sum(teacher_p * F.log_softmax(self.y / T))
        entropy = self.xp.where(teacher_p > 0, teacher_p * log_teacher, 0).sum()
        self.soft_loss = (cross_entropy + entropy) * (T * T / self.y.shape[0])
        self.hard_loss = self.lossfun(self.y, t)
        self.loss = self.alpha * self.soft_loss + (1 - self.alpha) * self.hard_loss
        observation = {'loss': self.loss, 'soft_loss': self.soft_loss,
                       'hard_loss': self.hard_loss}
        if self.compute_accuracy:
            self.accuracy = self.accfun(self.y, t)
            observation['accuracy'] = self.accuracy
        reporter.report(observation, self)
        return self.loss

    def _split_labels(self, args, kwargs):
        # L.Classifier's rule for where the labels are.
        if isinstance(self.label_key, int):
            if not -len(args) <= self.label_key < len(args):
                raise ValueError('Label key {} is out of bounds'.format(self.label_key))
            t = args[self.label_key]
            index = self.label_key % len(args)
            return args[:index] + args[index + 1:], kwargs, t
        if self.label_key not in kwargs:
            raise ValueError('Label key "{}" is not found'.format(self.label_key))
        kwargs = dict(kwargs)
        t = kwargs.pop(self.label_key)
        return args, kwargs, t

    def device_resident_accept(self, visitor):
        super().device_resident_accept(visitor)
        if isinstance(self.teacher, chainer.Link):
            self.teacher.device_resident_accept(visitor)

    def copy(self, mode='share'):
        """Copies the model as ``chainer.Chain.copy`` does, the teacher with it."""
        copied = super().copy(mode)
        if isinstance(self.teacher, chainer.Link):
            copied.teacher = self.teacher.copy(mode)
        return copied

    def copyparams(self, link, copy_persistent=True):
        """Copies the student's parameters, and the teacher's with ``save_teacher=True``."""
        super().copyparams(link, copy_persistent)
        if self.save_teacher:
            self.teacher.copyparams(link.teacher, copy_persistent)

    def serialize(self, serializer):
        """Saves and loads the student; with ``save_teacher``, the teacher under ``teacher/``."""
        super().serialize(serializer)
        if self.save_teacher:
            self.teacher.serialize(serializer['teacher'])
