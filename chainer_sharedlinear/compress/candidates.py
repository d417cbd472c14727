"""One layer's candidates: a pattern and knobs, scored on the weight or on calibration data,
and the layer of the one chosen, fitted to the data where a data-aware fit exists.

A :class:`_LayerFit` holds what a layer's candidates share: its weight, the
statistics of its inputs (or ``None``), and one decomposition per layer (one
SVD gives every rank). Its :meth:`~_LayerFit.scores` are relative errors, on
the outputs ``‖X (W − V)ᵀ‖ / ‖X Wᵀ‖`` with statistics and on the weight
``‖W − V‖ / ‖W‖`` without; :meth:`~_LayerFit.build` makes the layer.

The data-aware fits, with statistics: ``lowrank`` is the whitened SVD
(:func:`~chainer_sharedlinear.compress.fitting.whitened_svd`, exact);
``clustered`` and ``clustered_lowrank`` round onto their codebooks with error
feedback (:func:`~chainer_sharedlinear.compress.fitting.round_to_codebook`,
:func:`~chainer_sharedlinear.compress.fitting.fit_low_rank_codebooks`).
``clustered_lowrank``'s candidates are scored as they are built (rounded with
error feedback from the one whitened SVD of the layer, with the bias correction
where the layer gets one): nearest rounding, faster, loses more at some bit
widths than at others, and so ranked the bit widths wrongly. ``clustered``'s are
scored with nearest rounding; the layer built, with error feedback, is closer
still. The other patterns are fitted to the weight and scored on the outputs.
"""

import math
import typing as tp

import chainer
import chainer.links as L
import numpy
from chainer import backend

from chainer_sharedlinear.compress import fitting
from chainer_sharedlinear.compress.patterns import (
    _PATTERNS,
    Knobs,
    _family_class,
    _from_linear,
)
from chainer_sharedlinear.compress.weight_fit import (
    _kronecker_errors,
    _relative_error,
    _relative_error_of_slices,
)
from chainer_sharedlinear.links.clustered_linear import cluster
from chainer_sharedlinear.links.kronecker_linear import nearest_terms
from chainer_sharedlinear.links.virtual_linear import row_slices


class _LayerFit:
    """The candidates of one ``L.Linear``: their errors, and the layer of one of them."""

    def __init__(self, linear: L.Linear, statistics=None, *, correct_bias: bool = False):
        self.linear = linear
        self.statistics = statistics
        self.correct_bias = correct_bias
        self.weight = backend.CpuDevice().send(linear.W.array)
        self._decomposition = None
        self._weight_gram = self._energy = None
        if statistics is not None:  # on the host, as the weight
            self.statistics = type(statistics)(
                gram=backend.CpuDevice().send(statistics.gram),
                n_samples=statistics.n_samples,
                column_sums=backend.CpuDevice().send(statistics.column_sums))

    # --- scores ---------------------------------------------------------------------------

    def scores(self, name: str, settings: tp.Sequence[Knobs]) -> tp.List[float]:
        """The relative error of each setting of pattern ``name`` (see the module)."""
        if name == 'lowrank' and self.statistics is not None:
            return [self._low_rank_error(knobs['rank']) for knobs in settings]
        if name == 'clustered_lowrank':
            if self.statistics is None:  # the decomposition of the most terms, once
                self._leading_terms(max(knobs['rank'] for knobs in settings))
            return [self._clustered_low_rank_error(knobs) for knobs in settings]
        if name == 'clustered' and self.statistics is not None:
            return [self._error_of(self._nearest_codebook(knobs['n_clusters']))
                    for knobs in settings]
        entry = _PATTERNS[name]
        if self.statistics is None and entry.as_kronecker is not None:
            return _kronecker_errors(self.weight, [entry.as_kronecker(knobs)
                                                   for knobs in settings])
        errors = []
        for knobs in settings:
            layer = _from_linear(name, self.linear, knobs)
            if self.statistics is None:
                errors.append(_relative_error(layer, self.weight))
            else:
                errors.append(self._error_of(backend.CpuDevice().send(layer.dense_weight())))
            del layer
        return errors

    def _error_of(self, replacement) -> float:
        return fitting.output_error(self.statistics, self.weight, replacement)

    def _decomposed(self):
        """``(P, σ, Qᵀ S⁻¹)`` of ``W S = P Σ Qᵀ`` with the statistics' factor ``S``, once."""
        if self._decomposition is None:
            factor, _ = fitting.cholesky_of_gram(self.statistics)
            left, values, right = numpy.linalg.svd(self.weight.astype(numpy.float64) @ factor,
                                                   full_matrices=False)
            right = numpy.linalg.solve(factor.T, right.T).T
            _flip_signs(left, right)
            self._decomposition = left, values, right
        return self._decomposition

    def _leading_terms(self, rank: int):
        """``(P √Σ, √Σ Qᵀ)`` of the ``rank`` leading terms of ``W = P Σ Qᵀ``, in the weight's
        dtype: the factors ``LowRankLinear.from_linear`` stores, and from which
        ``ClusteredLowRankLinear.from_linear`` clusters; kept for the most terms asked yet.

        They are the one symmetric eigendecomposition of the smaller Gram matrix
        (:func:`~chainer_sharedlinear.links.kronecker_linear.nearest_terms`): a float64
        singular value decomposition and its square factors would take twice its bytes.
        """
        if self._decomposition is None or self._decomposition[0].shape[1] < rank:
            out_size, in_size = self.weight.shape
            self._decomposition = None
            left, right = nearest_terms(self.weight, (1, in_size), (out_size, 1), rank)
            left = left.astype(self.weight.dtype)  # each float64 factor released in turn
            self._decomposition = left, right.astype(self.weight.dtype)
        return self._decomposition

    def _low_rank_error(self, rank: int) -> float:
        _, values, _ = self._decomposed()
        squares = values ** 2
        total = float(squares.sum())
        return math.sqrt(max(0.0, float(squares[rank:].sum())) / total) if total else 0.0

    def _clustered_low_rank_error(self, knobs: Knobs) -> float:
        if self.statistics is not None:
            fit = self._low_rank_codebooks(knobs)
            return self._factored_error(fit.u, fit.v)
        rank, n_clusters = knobs['rank'], knobs['n_clusters']
        left, right = self._leading_terms(rank)
        u = _nearest(left[:, :rank], n_clusters)
        v = _nearest(right[:rank], n_clusters)
        return _relative_error_of_slices(self.weight, (
            (rows, u[rows] @ v) for rows in row_slices(self.weight.shape[0])))

    def _low_rank_codebooks(self, knobs: Knobs) -> fitting.LowRankCodebooks:
        """The layer's factors on their codebooks, fitted to the data as they are built."""
        left, values, right = self._decomposed()
        rank = knobs['rank']
        return fitting.fit_low_rank_codebooks(
            self.statistics, self.weight, rank, knobs['n_clusters'],
            factors=(left[:, :rank], values[:rank, None] * right[:rank]))

    def _factored_error(self, u, v) -> float:
        """:func:`~chainer_sharedlinear.compress.fitting.output_error` of ``U V`` (with the
        bias correction where the layer gets one), without the ``(out_size, in_size)``
        products: ``‖X Dᵀ − 1 δᵀ‖²`` expanded, ``W G`` and ``tr(W G Wᵀ)`` once per layer."""
        if self._weight_gram is None:
            self._weight_gram = self.weight.astype(numpy.float64) @ self.statistics.gram
            self._energy = float(numpy.sum(self._weight_gram * self.weight))
        v_gram = v @ self.statistics.gram
        error = (self._energy - 2 * float(numpy.sum(u * (v @ self._weight_gram.T).T))
                 + float(numpy.sum((u @ (v_gram @ v.T)) * u)))
        if self.correct_bias and self.linear.b is not None:
            # The corrected bias's change δ = D μ removes the mean: n ‖δ‖² − 2 δ·(D Xᵀ1) = −n ‖δ‖².
            shift = (self.weight @ self.statistics.column_sums
                     - u @ (v @ self.statistics.column_sums)) / self.statistics.n_samples
            error -= self.statistics.n_samples * float(shift @ shift)
        error = max(error, 0.0)
        if self._energy == 0:
            return 0.0 if error == 0 else math.inf
        return math.sqrt(error / self._energy)

    def _nearest_codebook(self, n_clusters: int):
        centroids, labels = cluster(self.weight, n_clusters)
        return numpy.asarray(centroids, numpy.float64)[labels]

    # --- the layer ------------------------------------------------------------------------

    def build(self, name: str, knobs: Knobs) -> chainer.Link:
        """The layer of pattern ``name`` and ``knobs``, fitted to the data if there are any."""
        if self.statistics is None or name not in ('lowrank', 'clustered', 'clustered_lowrank'):
            layer = _from_linear(name, self.linear, knobs)
        else:
            layer = _family_class(_PATTERNS[name].link)._like_linear(
                self.linear, **_PATTERNS[name].options(dict(
                    knobs, in_size=self.weight.shape[1], out_size=self.weight.shape[0])))
            if name == 'lowrank':
                u, v = fitting.whitened_svd(self.statistics, self.weight, knobs['rank'])
                _set(layer, U=u, V=v)
            elif name == 'clustered':
                centroids, _ = cluster(self.weight, knobs['n_clusters'])
                layer.index = layer.xp.asarray(fitting.round_to_codebook(
                    self.weight, centroids, self.statistics.gram))
                _set(layer, W=centroids)
            else:
                fit = self._low_rank_codebooks(knobs)
                layer.U_index = layer.xp.asarray(fit.u_index)
                layer.V_index = layer.xp.asarray(fit.v_index)
                _set(layer, U=fit.u_codebook, V=fit.v_codebook)
        if self.correct_bias and self.statistics is not None and layer.b is not None:
            bias = fitting.corrected_bias(self.statistics, self.weight,
                                          backend.CpuDevice().send(layer.dense_weight()),
                                          backend.CpuDevice().send(self.linear.b.array))
            _set(layer, b=bias)
        return layer

    def output_error(self, layer) -> float:
        """The layer's relative output error on the calibration data, its bias included."""
        bias_change = None
        if layer.b is not None:
            bias_change = (backend.CpuDevice().send(layer.b.array).astype(numpy.float64)
                           - backend.CpuDevice().send(self.linear.b.array))
        return fitting.output_error(self.statistics, self.weight,
                                    backend.CpuDevice().send(layer.dense_weight()),
                                    bias_change=bias_change)


def _flip_signs(left, right) -> None:
    """Gives each term of the whitened SVD the sign rule of the layers' own fits
    (``nearest_terms``): the largest entry of its vector on the shorter side positive, so that
    the factors clustered, and so the layer built, do not depend on the sign LAPACK returns."""
    shorter = left if left.shape[0] <= right.shape[1] else right.T
    signs = numpy.sign(shorter[numpy.abs(shorter).argmax(axis=0), numpy.arange(shorter.shape[1])])
    left *= signs
    right *= signs[:, None]


def _set(layer, **arrays) -> None:
    for name, array in arrays.items():
        param = getattr(layer, name)
        param.array[...] = layer.xp.asarray(numpy.asarray(array), param.dtype)


def _nearest(matrix, n_clusters: int):
    """Each entry of ``matrix`` replaced by its cluster's centroid, in ``matrix``'s dtype."""
    centroids, labels = cluster(matrix, n_clusters)
    return centroids.astype(matrix.dtype)[labels]

