"""A model's budget of bytes shared among its layers: one candidate per layer, least error in all.

Each layer offers candidates, ``(bytes, error)`` pairs: its layers of each
pattern and knobs, with ``error`` the relative output error
``‖X (W − V)ᵀ‖ / ‖X Wᵀ‖`` on calibration data
(:func:`chainer_sharedlinear.compress.fitting.output_error`) or on the weight, and the
dense layer itself (error 0) if it may stay. :func:`allocate` takes one per
layer so that the bytes add up to at most the budget and the model's error is
least; :func:`allocate_per_layer` gives each layer its own budget instead.

**The objective** is the weighted sum of the squared relative output errors,
``Σ s_l e_l²``, with ``s_l = 1`` unless the caller gives sensitivities. A
relative error ``e_l`` at layer ``l`` is, to first order, a perturbation of
that relative size of the signal that the later layers carry, which they scale
as they scale the signal; independent perturbations add in their squares, so
the model's relative output error is about ``√Σ e_l²``. Weighting by each
layer's output energy instead would depend on how the layers are scaled
(which a ReLU network leaves free), and squared errors, unlike errors, reward
spending bytes where a layer is far off. ``s_l`` is where a measured
sensitivity goes: HAWQ-V2's (Dong et al., NeurIPS 2020) Hessian trace, or the
change of the loss when the layer alone is replaced.

**The solver** is exact: a dynamic programme over the layers that keeps, of the
partial choices of the layers so far, only those no other beats on both
bytes and error (the Pareto front; a dominated partial choice can be swapped
for the one dominating it in any complete one, at no loss). It is the
multiple-choice knapsack solved without rounding bytes, so it has no
optimality gap, unlike the Lagrangian relaxation over each layer's convex hull
(HAQ, HAWQ-V3 use relaxations or integer programmes), whose gap is up to one
layer's jump between neighbouring candidates. The front holds at most one
partial choice per number of bytes up to the budget, and in practice far fewer:
its work is the front's size times the candidates of a layer, per layer.
"""

import dataclasses
import math
import numbers
import typing as tp

import numpy

Candidates = tp.Sequence[tp.Sequence[tp.Tuple[int, float]]]


@dataclasses.dataclass(frozen=True)
class Allocation:
    """One candidate per layer, and what they cost and give together.

    Attributes:
        choices (tuple of int): The index of each layer's candidate in its list.
        bytes (int): Their bytes together.
        objective (float): ``Σ s_l e_l²`` over the layers.
    """

    choices: tp.Tuple[int, ...]
    bytes: int
    objective: float


def allocate(candidates: Candidates, budget: int, *,
             sensitivities: tp.Optional[tp.Sequence[float]] = None) -> Allocation:
    """The candidate of each layer that together fit ``budget`` bytes with the least error.

    Minimises ``Σ s_l e_l²`` over one candidate per layer, their bytes adding up
    to at most ``budget``; exact (see the module). Of choices with the same
    least objective, one of the fewest bytes.

    Args:
        candidates: For each layer, its candidates: ``(bytes, error)`` pairs,
            ``bytes`` an integer of at least 0 and ``error`` a finite number of
            at least 0. Keeping a layer dense is a candidate like any other.
        budget (int): The most bytes the layers may take together.
        sensitivities: ``s_l`` for each layer, above 0; 1 each by default.

    Returns:
        Allocation: The choices, their bytes and objective.

    .. admonition:: Example

        Two layers of 1,000 bytes each in 1,000 bytes: the first loses little
        at a quarter, the second much, so the second stays nearly whole.

        >>> first = [(1000, 0.0), (500, 0.125), (250, 0.25)]
        >>> second = [(1000, 0.0), (750, 0.25), (500, 0.5), (250, 1.0)]
        >>> allocate([first, second], 1000)
        Allocation(choices=(2, 1), bytes=1000, objective=0.125)
        >>> allocate_per_layer([first, second], [500, 500]).objective  # half of each
        0.265625
    """
    layers, objectives = _checked(candidates, sensitivities)
    budget = _bytes('budget', budget)
    least = sum(min(b for b, _ in layer) for layer in layers)
    if least > budget:
        raise ValueError('no choice of candidates fits the budget of {:,} bytes: the smallest '
                         'of each layer take {:,} together'.format(budget, least))
    totals = numpy.zeros(1, numpy.int64)
    errors = numpy.zeros(1)
    steps = []  # per layer: (the partial choice each state extends, the candidate it adds)
    for layer, objective in zip(layers, objectives):
        sizes = numpy.array([b for b, _ in layer], numpy.int64)
        new_totals = (totals[:, None] + sizes).ravel()
        new_errors = (errors[:, None] + objective).ravel()
        fits = numpy.flatnonzero(new_totals <= budget)
        order = fits[numpy.lexsort((new_errors[fits], new_totals[fits]))]
        best_before = numpy.minimum.accumulate(new_errors[order])
        kept = order[numpy.concatenate([[True], new_errors[order][1:] < best_before[:-1]])]
        totals, errors = new_totals[kept], new_errors[kept]
        steps.append((kept // len(layer), kept % len(layer)))
    state = int(numpy.argmin(errors))  # the front's errors fall: the first least
    best_bytes, best_objective = int(totals[state]), float(errors[state])
    choices = []
    for parents, picks in reversed(steps):
        choices.append(int(picks[state]))
        state = int(parents[state])
    return Allocation(tuple(reversed(choices)), best_bytes, best_objective)


def allocate_per_layer(candidates: Candidates, budgets: tp.Sequence[int], *,
                       sensitivities: tp.Optional[tp.Sequence[float]] = None) -> Allocation:
    """Each layer's least-error candidate within its own budget of bytes.

    The split of a model's budget fixed in advance (such as each layer's
    share of the dense bytes), for comparison with :func:`allocate`: the
    candidates and sensitivities are as there, and ``budgets`` has one number
    of bytes per layer. A layer with no candidate within its budget is a
    ``ValueError``.

    .. admonition:: Example

        >>> allocate_per_layer([[(100, 0.0), (10, 0.5)]], [50])
        Allocation(choices=(1,), bytes=10, objective=0.25)
    """
    layers, objectives = _checked(candidates, sensitivities)
    if len(budgets) != len(layers):
        raise ValueError('budgets must have one number of bytes per layer ({}), got {}'.format(
            len(layers), len(budgets)))
    choices = []
    for i, (layer, objective, budget) in enumerate(zip(layers, objectives, budgets)):
        budget = _bytes('budgets[{}]'.format(i), budget)
        fits = [j for j, (size, _) in enumerate(layer) if size <= budget]
        if not fits:
            raise ValueError('layer {} has no candidate within its budget of {:,} bytes: its '
                             'smallest takes {:,}'.format(i, budget, min(b for b, _ in layer)))
        choices.append(min(fits, key=lambda j: (objective[j], layer[j][0])))
    return Allocation(tuple(choices), sum(layer[j][0] for layer, j in zip(layers, choices)),
                      float(sum(o[j] for o, j in zip(objectives, choices))))


def _bytes(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError('{} must be a number of bytes, an integer of at least 0, got '
                         '{!r}'.format(name, value))
    return int(value)


def _checked(candidates: Candidates, sensitivities) -> tp.Tuple[tp.List, tp.List]:
    """The candidates as lists of ``(bytes, error)``, and each layer's ``s e²``; checked."""
    layers = [list(layer) for layer in candidates]
    if not layers:
        raise ValueError('candidates must have a list of candidates per layer, got none')
    if sensitivities is None:
        sensitivities = [1.0] * len(layers)
    elif len(sensitivities) != len(layers):
        raise ValueError('sensitivities must have one number per layer ({}), got {}'.format(
            len(layers), len(sensitivities)))
    objectives = []
    for i, (layer, sensitivity) in enumerate(zip(layers, sensitivities)):
        if not (isinstance(sensitivity, numbers.Real) and math.isfinite(sensitivity)
                and sensitivity > 0):
            raise ValueError('sensitivities[{}] must be a finite number above 0, got '
                             '{!r}'.format(i, sensitivity))
        if not layer:
            raise ValueError('layer {} has no candidate: keeping it dense is one'.format(i))
        for j, candidate in enumerate(layer):
            try:
                size, error = candidate
            except (TypeError, ValueError):
                raise ValueError('candidates[{}][{}] must be a pair (bytes, error), got '
                                 '{!r}'.format(i, j, candidate)) from None
            _bytes('the bytes of candidates[{}][{}]'.format(i, j), size)
            if not (isinstance(error, numbers.Real) and math.isfinite(error) and error >= 0):
                raise ValueError('the error of candidates[{}][{}] must be a finite number of '
                                 'at least 0, got {!r}'.format(i, j, error))
        objectives.append(numpy.array([sensitivity * float(e) ** 2 for _, e in layer]))
    return layers, objectives
