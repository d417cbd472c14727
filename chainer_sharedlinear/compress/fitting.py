"""Fitting the replacement of a dense layer to its outputs on calibration data.

A layer ``y = x Wᵀ + b`` replaced by ``y' = x Vᵀ + c`` is judged by its
output error on the calibration inputs ``X``,
``‖X (W − V)ᵀ‖ / ‖X Wᵀ‖``, which the Gram matrix ``G = XᵀX`` gives without
the inputs: ``‖X Dᵀ‖² = tr(D G Dᵀ)``. The statistics are
:class:`~chainer_sharedlinear.compress.calibration.LayerStatistics` (any object with
``gram``, ``n_samples`` and ``column_sums`` will do). Every function here
computes in float64 on the statistics' device (NumPy or CuPy).

- :func:`output_error`: that error, with a change of the bias if one is given.
- :func:`whitened_svd`: the rank-``r`` weight of least output error (SVD-LLM,
  Wang et al., ICLR 2025, arXiv:2403.07378): the truncated SVD of ``W S``, with
  ``S`` the Cholesky factor of ``G`` (:func:`cholesky_of_gram`).
- :func:`round_to_codebook`: a matrix rounded onto given values (a k-means
  codebook) column by column, the error of each column spread onto the columns
  not yet rounded through the inverse of ``G`` (GPTQ, Frantar et al., ICLR 2023,
  after Optimal Brain Quantization).
- :func:`fit_low_rank_codebooks`: the two: a low-rank weight whose factors take
  ``n_clusters`` values each.
- :func:`corrected_bias`: the bias that removes the mean output shift
  ``E[x] (W − V)ᵀ``.
"""

import collections
import dataclasses
import hashlib
import typing as tp

import numpy
from chainer import backend

from chainer_sharedlinear import _checks
from chainer_sharedlinear.functions.clustered_linear import index_dtype
from chainer_sharedlinear.links.clustered_linear import cluster

#: The ridge of :func:`cholesky_of_gram` when the Gram matrix needs one, as a fraction of
#: the mean of its diagonal: the first tried, multiplied by 10 until the factor exists.
RIDGE = 1e-6

#: The dampening of :func:`round_to_codebook`, as a fraction of the mean of the Gram
#: matrix's diagonal: GPTQ's default, which keeps its inverse well conditioned.
DAMPING = 0.01


def output_error(statistics, weight, replacement, *, bias_change=None) -> float:
    """The relative output error of ``replacement`` for ``weight`` on the calibration data.

    ``‖X (W − V)ᵀ − 1 δᵀ‖ / ‖X Wᵀ‖`` for the calibration inputs ``X``, from
    the statistics alone: ``‖X Dᵀ‖² = tr(D G Dᵀ)``, and with a change
    ``δ = c − b`` of the bias, ``− 2 δ·(D Xᵀ1) + n ‖δ‖²`` more. 0 when both
    outputs are 0, ``inf`` when only the dense one is.

    Args:
        statistics (LayerStatistics): The statistics of the layer's inputs.
        weight: The dense weight ``W``, ``(out_size, in_size)``.
        replacement: The weight ``V`` that replaces it, of the same shape.
        bias_change: ``c − b``, ``(out_size,)``, or ``None`` for none.

    .. admonition:: Example

        >>> import numpy as np
        >>> from chainer_sharedlinear.compress.calibration import LayerStatistics
        >>> x = np.array([[1., 0.], [0., 2.]])
        >>> stats = LayerStatistics(x.T @ x, 2, x.sum(axis=0))
        >>> w = np.array([[1., 1.]])
        >>> round(output_error(stats, w, np.array([[1., 0.]])), 6)  # ‖x Dᵀ‖ = 2, ‖x Wᵀ‖ = √5
        0.894427
        >>> round(output_error(stats, w, w, bias_change=np.array([1.])), 6)  # √2 / √5
        0.632456
    """
    gram = statistics.gram
    xp = backend.get_array_module(gram)
    weight = _as_weight('weight', weight, statistics)
    difference = weight - _as_weight('replacement', replacement, statistics)
    error = float(xp.sum((difference @ gram) * difference))
    if bias_change is not None:
        shift = xp.asarray(bias_change, numpy.float64)
        if shift.shape != (weight.shape[0],):
            raise ValueError('bias_change must have the shape (out_size,) = ({},), got {}'.format(
                weight.shape[0], tuple(shift.shape)))
        error += float(statistics.n_samples * shift @ shift
                       - 2 * shift @ (difference @ statistics.column_sums))
    energy = float(xp.sum((weight @ gram) * weight))
    error = max(error, 0.0)  # a sum of squares, below 0 by rounding only
    if energy == 0:
        return 0.0 if error == 0 else float('inf')
    return (error / energy) ** 0.5


def cholesky_of_gram(statistics, *, ridge: tp.Optional[float] = None) -> tp.Tuple[tp.Any, float]:
    """The lower Cholesky factor ``S`` of the (regularised) Gram matrix: ``G + λ m I = S Sᵀ``.

    ``m`` is the mean of ``G``'s diagonal, the inputs' mean square. With
    ``ridge=None`` the rule is: ``λ = 0`` when there are at least as many
    samples as inputs and the factor of ``G`` exists; otherwise (fewer samples,
    or ``G`` singular, as an input that is always 0 makes it) ``λ`` =
    :data:`RIDGE`, times 10 until the factor exists. A ridge keeps the
    directions the data do not reach from being amplified without bound; what is
    fitted with ``S`` then minimises the output error on ``G + λ m I``. Inputs
    that are all 0 give ``S = I`` (every replacement has error 0 on them).

    Args:
        statistics (LayerStatistics): The statistics of the layer's inputs.
        ridge (float or None): ``λ`` itself, at least 0, in place of the rule.

    Returns:
        ``(S, λ)``: the factor, ``(in_size, in_size)`` float64, and the ``λ`` used.

    .. admonition:: Example

        >>> import numpy as np
        >>> from chainer_sharedlinear.compress.calibration import LayerStatistics
        >>> x = np.array([[1., 0.], [1., 0.]])  # the second input always 0
        >>> s, ridge = cholesky_of_gram(LayerStatistics(x.T @ x, 2, x.sum(axis=0)))
        >>> ridge, bool(np.allclose(s @ s.T, x.T @ x + ridge * np.eye(2)))
        (1e-06, True)
    """
    return _regularised_cholesky(statistics.gram, statistics.n_samples, ridge)


def _regularised_cholesky(gram, n_samples: int, ridge: tp.Optional[float]):
    """:func:`cholesky_of_gram` of a Gram matrix of ``n_samples`` samples."""
    xp = backend.get_array_module(gram)
    scale = float(xp.trace(gram)) / gram.shape[0]
    if ridge is not None:
        if not ridge >= 0:
            raise ValueError('ridge must be a number of at least 0, got {!r}'.format(ridge))
        ridges = [float(ridge)]
    else:
        ridges = [] if n_samples < gram.shape[0] else [0.0]
        ridges += [RIDGE * 10 ** k for k in range(7)]
    if scale == 0:
        return xp.eye(gram.shape[0]), ridges[0]
    eye = xp.eye(gram.shape[0])
    for lam in ridges:
        factor = _cholesky(gram + (lam * scale) * eye)
        if factor is not None:
            return factor, lam
    raise ValueError(
        'the Gram matrix of the calibration inputs has no Cholesky factor with a ridge of {} '
        'times the mean of its diagonal: it is not positive semidefinite; are its statistics '
        'finite and gathered as XᵀX?'.format(ridges[-1]))


def whitened_svd(statistics, weight, rank: int, *,
                 ridge: tp.Optional[float] = None) -> tp.Tuple[tp.Any, tp.Any]:
    """The rank-``rank`` factors ``U · V`` of least output error for ``weight`` (SVD-LLM).

    With ``G = S Sᵀ`` (:func:`cholesky_of_gram`), ``‖X Dᵀ‖ = ‖D S‖``: the
    best rank-``r`` ``M`` makes ``M S`` the truncated SVD ``P_r Σ_r Q_rᵀ`` of
    ``W S`` (Eckart and Young), so ``U = P_r`` and ``V = Σ_r Q_rᵀ S⁻¹``. Its
    squared output error is the sum of the squared singular values of ``W S``
    after the ``r``-th over their total; at full rank it is 0. No other weight
    of rank ``r`` has less (on ``G`` plus the ridge, if one was needed).

    Args:
        statistics (LayerStatistics): The statistics of the layer's inputs.
        weight: The dense weight ``W``, ``(out_size, in_size)``.
        rank (int): ``r``, at most ``min(in_size, out_size)``.
        ridge (float or None): As in :func:`cholesky_of_gram`.

    Returns:
        ``(U, V)``: ``(out_size, r)`` with orthonormal columns, and ``(r, in_size)``;
        float64, on the statistics' device.

    .. admonition:: Example

        >>> import numpy as np
        >>> from chainer_sharedlinear.compress.calibration import LayerStatistics
        >>> x = np.random.RandomState(0).randn(50, 4) * [10., 1., 1., 1.]  # one large input
        >>> stats = LayerStatistics(x.T @ x, 50, x.sum(axis=0))
        >>> w = np.array([[1., 2., 0., 0.], [0., 0., 3., 1.]])
        >>> u, v = whitened_svd(stats, w, 1)
        >>> round(output_error(stats, w, u @ v), 3)  # the row that reads the large input kept
        0.216
        >>> p, s, q = np.linalg.svd(w)  # the nearest weight keeps the larger row instead
        >>> round(output_error(stats, w, p[:, :1] * s[:1] @ q[:1]), 3)
        0.974
    """
    weight = _as_weight('weight', weight, statistics)
    rank = _checks.rank(_checks.positive_int('rank', rank), weight.shape[1], weight.shape[0])
    xp = backend.get_array_module(weight)
    factor, _ = cholesky_of_gram(statistics, ridge=ridge)
    left, values, right = xp.linalg.svd(weight @ factor, full_matrices=False)
    # Q_rᵀ S⁻¹ = (S⁻ᵀ Q_r)ᵀ
    v = xp.linalg.solve(factor.T, right[:rank].T).T * values[:rank, None]
    return left[:, :rank], v


def round_to_codebook(matrix, codebook, gram, *, error_feedback: bool = True,
                      damping: float = DAMPING, block_size: int = 128) -> tp.Any:
    """``matrix`` rounded onto the values of ``codebook``: the index of each entry's value.

    ``matrix`` is ``(out_size, in_size)`` and its outputs on the inputs of Gram
    matrix ``gram`` (``in_size`` square) are what the rounding keeps.
    Without error feedback each entry takes the nearest value. With it (GPTQ),
    columns are rounded one at a time, those of the largest inputs (the
    largest diagonal of ``gram``) first, and the error of each is spread onto the
    columns not rounded yet so that the outputs change least: with ``H = G + d m
    I`` (``m`` the mean of the diagonal, ``d`` = ``damping``) and ``R`` the upper
    Cholesky factor of ``H⁻¹``, column ``i``'s error ``e`` moves the later columns
    by ``− e R[i, i:] / R[i, i]``. The columns are taken ``block_size`` at a
    time, the later ones updated once per block.

    Args:
        matrix: The matrix, NumPy or CuPy.
        codebook: The values, ``(n_clusters,)``, any order (such as the
            centroids of ``chainer_sharedlinear.links.clustered_linear.cluster``).
        gram: ``XᵀX`` of the inputs the matrix multiplies, ``(in_size, in_size)``.
        error_feedback (bool): ``False`` for the nearest value of each entry.
        damping (float): ``d``, above 0.
        block_size (int): The columns rounded before the later ones are updated.

    Returns:
        The index of each entry's value in ``codebook``, ``matrix``'s shape, in the
        smallest unsigned type that holds it; ``codebook[index]`` is the rounded matrix.

    .. admonition:: Example

        >>> import numpy as np
        >>> x = np.random.RandomState(0).randn(200, 3) @ [[1., .9, .9], [0., .4, 0.], [0., 0., .4]]
        >>> w = np.array([[.3, .3, .3]])
        >>> codebook = np.array([0., 1.])
        >>> near = round_to_codebook(w, codebook, x.T @ x, error_feedback=False)
        >>> fed = round_to_codebook(w, codebook, x.T @ x)
        >>> near, fed  # nearest is all 0; with feedback one column carries the others
        (array([[0, 0, 0]], dtype=uint8), array([[1, 0, 0]], dtype=uint8))
    """
    xp = backend.get_array_module(matrix)
    work = xp.array(matrix, dtype=numpy.float64)
    if work.ndim != 2:
        raise ValueError('matrix must be 2-dimensional, (out_size, in_size), got shape {}'.format(
            tuple(work.shape)))
    values = xp.asarray(codebook, numpy.float64).ravel()
    _checks.n_clusters(values.size)
    order = xp.argsort(values)
    values = values[order]
    cuts = (values[1:] + values[:-1]) / 2
    dtype = index_dtype(values.size)

    def nearest(columns):
        return xp.searchsorted(cuts, columns)

    gram = xp.asarray(gram, numpy.float64)
    if gram.shape != (work.shape[1],) * 2:
        raise ValueError('gram must be (in_size, in_size) = {}, the inputs of the matrix\'s '
                         'columns, got shape {}'.format((work.shape[1],) * 2, tuple(gram.shape)))
    if not error_feedback:
        return order[nearest(work)].astype(dtype)
    damping = _checks.positive_float('damping', damping)
    block_size = _checks.positive_int('block_size', block_size)
    permutation, inverse_factor = _feedback_order_and_factor(gram, damping)
    work = work[:, permutation]
    index = xp.empty(work.shape, numpy.int64)
    n_columns = work.shape[1]
    for start in range(0, n_columns, block_size):
        stop = min(start + block_size, n_columns)
        block = work[:, start:stop]
        errors = xp.empty_like(block)
        within = inverse_factor[start:stop, start:stop]
        for i in range(stop - start):
            index[:, start + i] = nearest(block[:, i])
            errors[:, i] = (block[:, i] - values[index[:, start + i]]) / within[i, i]
            block[:, i:] -= xp.outer(errors[:, i], within[i, i:])
        work[:, stop:] -= errors @ inverse_factor[start:stop, stop:]
    unpermuted = xp.empty_like(index)
    unpermuted[:, permutation] = index
    return order[unpermuted].astype(dtype)


#: The orders and factors of the latest Gram matrices rounded on, by their contents: the
#: candidates of a layer round many matrices on its one Gram matrix, whose inverse would
#: otherwise cost more than the rounding.
_FEEDBACK_CACHE: 'collections.OrderedDict[tp.Any, tp.Tuple[tp.Any, tp.Any]]' = (
    collections.OrderedDict())
_FEEDBACK_CACHE_SIZE = 4


def _feedback_order_and_factor(gram, damping: float):
    """The columns' order of :func:`round_to_codebook` and the upper Cholesky factor of ``H⁻¹``."""
    xp = backend.get_array_module(gram)
    key = None
    if xp is numpy:
        key = (gram.shape, damping, hashlib.blake2b(
            numpy.ascontiguousarray(gram).data, digest_size=16).digest())
        if key in _FEEDBACK_CACHE:
            _FEEDBACK_CACHE.move_to_end(key)
            return _FEEDBACK_CACHE[key]
    diagonal = xp.diagonal(gram)
    scale = float(diagonal.mean()) or 1.0
    # On the host: CuPy's argsort has no stable kind, and ties must not reorder columns.
    permutation = xp.asarray(numpy.argsort(-backend.CpuDevice().send(diagonal), kind='stable'))
    hessian = gram[permutation][:, permutation] + damping * scale * xp.eye(gram.shape[0])
    inverse_factor = _cholesky(xp.linalg.inv(hessian))
    if inverse_factor is None:
        raise ValueError('gram is not positive semidefinite: its inverse, damped, has no '
                         'Cholesky factor; is it XᵀX of finite inputs?')
    found = permutation, inverse_factor.T
    if key is not None:
        _FEEDBACK_CACHE[key] = found
        while len(_FEEDBACK_CACHE) > _FEEDBACK_CACHE_SIZE:
            _FEEDBACK_CACHE.popitem(last=False)
    return found


@dataclasses.dataclass(frozen=True)
class LowRankCodebooks:
    """A rank-``r`` weight ``U · V`` whose factors take values from codebooks.

    Attributes:
        u_codebook: ``U``'s values, ``(n_clusters,)``.
        u_index: The index of each entry of ``U`` in ``u_codebook``, ``(out_size, r)``.
        v_codebook: ``V``'s values, ``(n_clusters,)``.
        v_index: The index of each entry of ``V`` in ``v_codebook``, ``(r, in_size)``.
    """

    u_codebook: tp.Any
    u_index: tp.Any
    v_codebook: tp.Any
    v_index: tp.Any

    @property
    def u(self):
        """The factor ``U``, decoded."""
        return self.u_codebook[self.u_index]

    @property
    def v(self):
        """The factor ``V``, decoded."""
        return self.v_codebook[self.v_index]

    def weight(self):
        """The weight ``U · V``."""
        return self.u @ self.v


def fit_low_rank_codebooks(statistics, weight, rank: int, n_clusters: int, *,
                           error_feedback: bool = True, ridge: tp.Optional[float] = None,
                           damping: float = DAMPING, factors=None) -> LowRankCodebooks:
    """A rank-``rank`` weight of least output error whose factors take ``n_clusters`` values.

    The factors of :func:`whitened_svd`, each given the k-means codebook of its
    entries (``chainer_sharedlinear.links.clustered_linear.cluster``). Without
    error feedback, each entry takes its nearest value. With it, ``V`` is
    rounded by :func:`round_to_codebook` on the layer's inputs; ``U`` is then
    fitted again to the dense outputs through the rounded ``V`` (least squares on
    the inputs ``X V̂ᵀ``, whose Gram matrix is ``V̂ G V̂ᵀ``), clustered, and rounded
    the same way on those inputs.

    Args:
        statistics (LayerStatistics): The statistics of the layer's inputs.
        weight: The dense weight ``W``, ``(out_size, in_size)``.
        rank (int): ``r``, at most ``min(in_size, out_size)``.
        n_clusters (int): The values of each codebook (``2 ** bits``).
        error_feedback (bool): Round with error feedback and refit ``U``.
        ridge (float or None): As in :func:`cholesky_of_gram`.
        damping (float): As in :func:`round_to_codebook`.
        factors: ``(U, V)`` of :func:`whitened_svd` at ``rank``, where they are
            at hand (one SVD gives every rank); ``None`` computes them.

    .. admonition:: Example

        >>> import numpy as np
        >>> from chainer_sharedlinear.compress.calibration import LayerStatistics
        >>> rng = np.random.RandomState(0)
        >>> x = rng.randn(300, 20) @ rng.randn(20, 20)
        >>> stats = LayerStatistics(x.T @ x, 300, x.sum(axis=0))
        >>> w = rng.randn(10, 20)
        >>> fits = [fit_low_rank_codebooks(stats, w, 8, 4, error_feedback=feedback)
        ...         for feedback in (False, True)]
        >>> fits[1].u_index.shape, fits[1].v_index.shape, fits[1].v_codebook.shape
        ((10, 8), (8, 20), (4,))
        >>> near, fed = (output_error(stats, w, fit.weight()) for fit in fits)
        >>> bool(fed < near)
        True
    """
    xp = backend.get_array_module(statistics.gram)
    n_clusters = _checks.n_clusters(n_clusters)
    if factors is None:
        u, v = whitened_svd(statistics, weight, rank, ridge=ridge)
    else:
        u, v = (xp.asarray(factor, numpy.float64) for factor in factors)
        if u.shape[1] != rank or v.shape[0] != rank:
            raise ValueError('factors must be (U, V) of rank {}, got shapes {} and {}'.format(
                rank, tuple(u.shape), tuple(v.shape)))
    v_codebook, v_index = _codebook(v, n_clusters, xp)
    if not error_feedback:
        u_codebook, u_index = _codebook(u, n_clusters, xp)
        return LowRankCodebooks(u_codebook, u_index, v_codebook, v_index)
    v_index = round_to_codebook(v, v_codebook, statistics.gram, damping=damping)
    v = v_codebook[v_index]
    gram = statistics.gram
    projected = v @ gram @ v.T  # the Gram matrix of X V̂ᵀ
    # argmin_U ‖X Wᵀ − X V̂ᵀ Uᵀ‖: U (V̂ G V̂ᵀ) = W G V̂ᵀ. Its diagonal is about Σ²,
    # which the rounding's damping would shrink: the ridge of the rule, as for S.
    factor, _ = _regularised_cholesky(projected, statistics.n_samples, None)
    target = v @ gram @ _as_weight('weight', weight, statistics).T
    u = xp.linalg.solve(factor.T, xp.linalg.solve(factor, target)).T
    u_codebook, _ = _codebook(u, n_clusters, xp)
    u_index = round_to_codebook(u, u_codebook, projected, damping=damping)
    return LowRankCodebooks(u_codebook, u_index, v_codebook, v_index)


def corrected_bias(statistics, weight, replacement, bias=None):
    """The bias that keeps the mean output: ``b + E[x] (W − V)ᵀ``.

    Of all biases of the layer with weight ``V``, the one of least output error
    on the calibration data (:func:`output_error` with ``bias_change``): the
    error left is the centred inputs'.

    Args:
        statistics (LayerStatistics): The statistics of the layer's inputs.
        weight: The dense weight ``W``, ``(out_size, in_size)``.
        replacement: The weight ``V`` that replaces it.
        bias: The dense layer's bias ``b``, or ``None`` for 0.

    Returns:
        The bias, ``(out_size,)`` float64, on the statistics' device.

    .. admonition:: Example

        >>> import numpy as np
        >>> from chainer_sharedlinear.compress.calibration import LayerStatistics
        >>> x = np.array([[1., 2.], [3., 2.]])
        >>> stats = LayerStatistics(x.T @ x, 2, x.sum(axis=0))
        >>> corrected_bias(stats, np.array([[1., 1.]]), np.array([[1., 0.]]), np.array([0.5]))
        array([2.5])
    """
    weight = _as_weight('weight', weight, statistics)
    shift = (weight - _as_weight('replacement', replacement, statistics)) @ statistics.mean()
    if bias is None:
        return shift
    xp = backend.get_array_module(shift)
    bias = xp.asarray(bias, numpy.float64)
    if bias.shape != shift.shape:
        raise ValueError('bias must have the shape (out_size,) = {}, got {}'.format(
            shift.shape, tuple(bias.shape)))
    return bias + shift


def _as_weight(name: str, weight, statistics):
    """``weight`` in float64 on the statistics' device; ``ValueError`` unless it fits them."""
    xp = backend.get_array_module(statistics.gram)
    weight = xp.asarray(weight, numpy.float64)
    if weight.ndim != 2 or weight.shape[1] != statistics.in_size:
        raise ValueError('{} must be (out_size, in_size) with in_size = {}, the size of the '
                         'inputs of the statistics, got shape {}'.format(
                             name, statistics.in_size, tuple(weight.shape)))
    return weight


def _cholesky(matrix):
    """The lower Cholesky factor, or ``None`` if there is none (NumPy raises, CuPy gives NaN)."""
    xp = backend.get_array_module(matrix)
    try:
        factor = xp.linalg.cholesky(matrix)
    except numpy.linalg.LinAlgError:
        return None
    return factor if bool(xp.isfinite(factor).all()) else None


def _codebook(matrix, n_clusters: int, xp) -> tp.Tuple[tp.Any, tp.Any]:
    """The k-means codebook of the entries of ``matrix``, and the index of each, on ``xp``."""
    centroids, labels = cluster(matrix, n_clusters)
    return xp.asarray(centroids), xp.asarray(labels)
