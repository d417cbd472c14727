"""The error of a layer against the trained weight, ``‖V − W‖ / ‖W‖``, computed without
float64 copies of the weight: from a Kronecker setting's singular values, or a slice of rows
at a time."""

import math
import typing as tp

import numpy
from chainer import backend

Knobs = tp.Dict[str, tp.Any]


def _kronecker_errors(weight, options: tp.Sequence[Knobs]) -> tp.List[float]:
    """The relative Frobenius error of the nearest layer of each Kronecker setting.

    Van Loan and Pitsianis' rearrangement (see ``KroneckerLinear.from_linear``):
    the error of ``r`` terms is the norm of the singular values after the
    ``r``-th. Their squares are the eigenvalues of the rearrangement's Gram
    matrix, the smaller of its two: one symmetric eigenvalue problem per pair
    of factors, which is several times faster than its singular values and as
    accurate for the sum of their squares.
    """
    eigenvalues: tp.Dict[tp.Any, numpy.ndarray] = {}
    total = 0.0
    errors = []
    for knobs in options:
        factors = tuple(knobs['in_factors']), tuple(knobs['out_factors'])
        if factors not in eigenvalues:
            gram = _rearranged_gram(weight, *factors)
            total = float(numpy.trace(gram))  # the squared norm of the weight, for every pair
            eigenvalues[factors] = numpy.linalg.eigvalsh(gram)  # ascending
            del gram
        values = eigenvalues[factors]
        tail = max(0.0, float(values[:len(values) - knobs['n_terms']].sum()))
        errors.append(math.sqrt(tail / total) if total else 0.0)
    return errors


def _rearranged_gram(weight, in_factors, out_factors) -> numpy.ndarray:
    """The smaller Gram matrix of the weight's rearrangement, in float64.

    The rearrangement ``R[(a, i), (b, j)] = W[a·m2 + b, i·n2 + j]`` is summed
    a slice of its columns at a time, each slice taken from the weight as it
    is: neither ``R`` nor a float64 copy of the weight is ever made.
    """
    (n1, n2), (m1, m2) = in_factors, out_factors
    blocks = weight.reshape(m1, m2, n1, n2)  # R[(a, i), (b, j)] = blocks[a, b, i, j]
    if m1 * n1 > m2 * n2:  # Rᵀ R is R R' of the rearrangement with the factors' roles swapped
        blocks, (m1, m2), (n1, n2) = blocks.transpose(1, 0, 3, 2), (m2, m1), (n2, n1)
    rows = m1 * n1
    gram = numpy.zeros((rows, rows))
    columns = max(1, weight.size // (8 * rows))  # a slice: an eighth of the weight
    per_b, per_j = max(1, columns // n2), min(n2, columns)
    for b in range(0, m2, per_b):
        for j in range(0, n2, per_j):
            piece = numpy.ascontiguousarray(
                blocks[:, b:b + per_b, :, j:j + per_j].transpose(0, 2, 1, 3),
                numpy.float64).reshape(rows, -1)
            gram += piece @ piece.T
    return gram


def _relative_error(layer, weight) -> float:
    """``‖V − W‖ / ‖W‖`` of the layer's dense weight ``V``, in float64 a slice of rows at a
    time, so that no float64 copy of either is made."""
    cpu = backend.CpuDevice()
    dense, weight = cpu.send(layer.dense_weight()), cpu.send(weight)
    squares = differences = 0.0
    step = max(1, weight.shape[0] // 8)
    for start in range(0, weight.shape[0], step):
        target = weight[start:start + step].astype(numpy.float64)
        difference = dense[start:start + step] - target
        squares += float(numpy.vdot(target, target))
        differences += float(numpy.vdot(difference, difference))
    norm, difference = math.sqrt(squares), math.sqrt(differences)
    return difference / norm if norm else (0.0 if difference == 0 else math.inf)
