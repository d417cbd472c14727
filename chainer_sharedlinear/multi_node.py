"""Data-parallel training with ChainerMN: what its multi-node optimizer does not broadcast.

ChainerMN's multi-node optimizer makes the ranks' models alike by broadcasting
rank 0's parameters at its first update, and nothing else. What a link keeps
beside its parameters stays each rank's own: the index of a
:class:`~chainer_sharedlinear.ClusteredLinear`, the statistics of
``L.BatchNormalization``, the teacher of a
:class:`~chainer_sharedlinear.DistillationClassifier` with ``save_teacher=True``.
:func:`bcast_model` sends all of it. This module imports neither ChainerMN nor
mpi4py.
"""

import chainer


def bcast_model(comm, model: chainer.Link) -> None:
    """Makes every rank's ``model`` rank 0's: all that ``save_npz`` saves, not parameters alone.

    Call it on every rank once the model is built (and compressed), before
    training. Rank 0 serializes the model as ``chainer.serializers.save_npz``
    does and sends it (``comm.bcast_obj``); every other rank loads it, with
    the checks of loading a file: where a layer's options differ from rank
    0's (``HashedLinear``'s ``seed``, ``n_clusters``, the sizes), or a
    parameter is missing there, that rank raises ``ValueError`` instead of
    computing another function. The optimizer's state is not sent: set the
    optimizer up after this call.

    Args:
        comm: A ChainerMN communicator (``chainermn.create_communicator``),
            or any object with its ``rank`` and ``bcast_obj``.
        model (~chainer.Link): The model, built by the same code on every rank.

    Raises:
        ValueError: On a rank other than 0, the model is not built as rank 0's;
            the message says where.

    .. admonition:: Example

        Two ranks seeded differently, each compressing its own model: the
        indices of their ``ClusteredLinear`` differ until ``bcast_model``
        sends rank 0's (here the two ranks are one process, and ``Rank``
        stands for ChainerMN's communicator).

        >>> import chainer.links as L
        >>> import numpy as np
        >>> from chainer_sharedlinear import ClusteredLinear
        >>> class Rank:
        ...     sent = None
        ...     def __init__(self, rank):
        ...         self.rank = rank
        ...     def bcast_obj(self, obj, root=0):
        ...         Rank.sent = obj if self.rank == root else Rank.sent
        ...         return Rank.sent
        >>> models = [ClusteredLinear.from_linear(L.Linear(
        ...     6, 4, initialW=np.random.RandomState(rank).normal(size=(4, 6))), n_clusters=4)
        ...     for rank in (0, 1)]
        >>> np.array_equal(models[0].index, models[1].index)
        False
        >>> for rank, model in enumerate(models):
        ...     bcast_model(Rank(rank), model)
        >>> np.array_equal(models[0].index, models[1].index)
        True
    """
    if comm.rank == 0:
        saved = chainer.serializers.DictionarySerializer()
        saved.save(model)
        comm.bcast_obj(saved.target)
        return
    saved = comm.bcast_obj(None)
    try:
        chainer.serializers.NpzDeserializer(saved).load(model)
    except (KeyError, ValueError) as error:
        # A KeyError names what this rank's model has and rank 0's has not.
        reason = ("rank 0's has no {}".format(error.args[0]) if isinstance(error, KeyError)
                  else error)
        raise ValueError("rank {} cannot take rank 0's model, which is built otherwise: {}"
                         .format(comm.rank, reason)) from error
