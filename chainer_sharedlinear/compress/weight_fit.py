"""The error of a layer against the trained weight, ``‖V − W‖ / ‖W‖``, computed without
float64 copies of the weight: from a Kronecker setting's singular values, or a slice of rows
at a time."""

import math
import typing as tp

import numpy
from chainer import backend

from chainer_sharedlinear.links.kronecker_linear import Rearrangement

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
            gram = Rearrangement(weight, *factors).gram()
            total = float(numpy.trace(gram))  # the squared norm of the weight, for every pair
            eigenvalues[factors] = numpy.linalg.eigvalsh(gram)  # ascending
            del gram
        values = eigenvalues[factors]
        tail = max(0.0, float(values[:len(values) - knobs['n_terms']].sum()))
        errors.append(math.sqrt(tail / total) if total else 0.0)
    return errors


def _relative_error(layer, weight) -> float:
    """``‖V − W‖ / ‖W‖`` of the layer's dense weight ``V``, in float64 a slice of rows at a
    time, so that no float64 copy of either is made, nor ``V`` whole where the layer
    makes it a slice at a time."""
    return _relative_error_of_slices(weight, layer._dense_weight_slices())


def _relative_error_of_slices(weight, slices) -> float:
    """``‖V − W‖ / ‖W‖`` of the matrix ``V`` given as ``(rows, V[rows])`` slices, in float64
    a slice at a time."""
    cpu = backend.CpuDevice()
    weight = cpu.send(weight)
    squares = differences = 0.0
    for rows, dense in slices:
        target = weight[rows].astype(numpy.float64)
        difference = cpu.send(dense) - target
        squares += float(numpy.vdot(target, target))
        differences += float(numpy.vdot(difference, difference))
    norm, difference = math.sqrt(squares), math.sqrt(differences)
    return difference / norm if norm else (0.0 if difference == 0 else math.inf)
