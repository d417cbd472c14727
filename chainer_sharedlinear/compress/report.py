"""What :func:`compress_linears` did: a row per layer, and the whole model's bytes."""

import dataclasses
import fractions
import math
import typing as tp

from chainer_sharedlinear.compress.patterns import Knobs
from chainer_sharedlinear.convert import ConversionReport


@dataclasses.dataclass(frozen=True)
class CompressedLayer:
    """A layer of the family in the model after :func:`compress_linears`: a row of its report.

    One that this call compressed, or one the model had already
    (``pattern`` ``None``: from an earlier call or written by hand, the
    pattern it was made with is not known).

    Attributes:
        path (str): The layer's path in the model (its first, for a tied layer).
        pattern (str): The pattern's name, the name of the function given, or
            ``None`` for a layer already of the family.
        knobs (dict): The pattern's knobs (for a function, and for a layer
            already of the family, the layer's options).
        stored_bytes (int): What the layer stores (:func:`stored_bytes`).
        dense_bytes (int): What the ``L.Linear`` it stands for stores.
        output_error (float): With calibration data, the relative output error
            ``‖X (W − V)ᵀ − 1 δᵀ‖ / ‖X Wᵀ‖`` on them (``δ`` the bias's change);
            else NaN.
        multiply_adds (int): The multiply-adds of one input through the layer
            (``None`` where the pattern is not known).
        dense_multiply_adds (int): The dense layer's, ``in_size · out_size``.
        error (float): The relative Frobenius error of the new layer's
            ``dense_weight()`` against the trained weight, ``‖V - W‖ / ‖W‖``,
            where ``W`` is the weight the ``L.Linear`` computed with in test
            mode (through ``weight_hooks``); NaN for a layer already of the
            family, whose trained weight is not known.
        errors (dict): The least error of each pattern tried (with
            ``pattern='auto'``, or with ``allocation='model'``), on the outputs
            with calibration data.
        refused (dict): With ``pattern='auto'``, each pattern that did not fit, and why.
        weight_hooks (tuple of str): The link hooks that made the weight fitted
            (``SpectralNormalization``, ``WeightStandardization``), applied as in
            test mode; :attr:`CompressionReport.conversion` says whether the
            new layer took them again or dropped them.
        link (str): The layer's class (``'SharedLinear'``).
    """

    path: str
    pattern: tp.Optional[str]
    knobs: Knobs
    stored_bytes: int
    dense_bytes: int
    error: float
    errors: tp.Dict[str, float] = dataclasses.field(default_factory=dict)
    refused: tp.Dict[str, str] = dataclasses.field(default_factory=dict)
    weight_hooks: tp.Tuple[str, ...] = ()
    link: str = ''
    output_error: float = math.nan
    multiply_adds: tp.Optional[int] = None
    dense_multiply_adds: tp.Optional[int] = None

    @property
    def ratio(self) -> float:
        """float: ``stored_bytes / dense_bytes``."""
        return self.stored_bytes / self.dense_bytes

    def __str__(self) -> str:
        knobs = ', '.join('{}={}'.format(key, value) for key, value in self.knobs.items())
        bytes_ = '{:,} of {:,} bytes ({:.4f})'.format(
            self.stored_bytes, self.dense_bytes, self.ratio)
        if self.pattern is None:
            return '{}: {} {}, already of the family (its pattern unknown), {}'.format(
                self.path, self.link, knobs, bytes_)
        hooks = ''.join(', fitted to the weight {} makes'.format(name)
                        for name in self.weight_hooks)
        if self.multiply_adds is not None:
            bytes_ += ', {:,} of {:,} multiply-adds'.format(self.multiply_adds,
                                                            self.dense_multiply_adds)
        output = '' if math.isnan(self.output_error) else ', output error {:.4f}'.format(
            self.output_error)
        return '{}: {} {}, {}, error {:.4f}{}{}'.format(
            self.path, self.pattern, knobs, bytes_, self.error, output, hooks)


@dataclasses.dataclass(frozen=True)
class CompressionReport:
    """What :func:`compress_linears` did, and the bytes of the whole model after it.

    Attributes:
        budget (fractions.Fraction): The fraction of the dense bytes asked for.
        allocation (str): ``'model'``: the budget was the selected layers'
            together; ``'layer'``: each layer's.
        layers (tuple of CompressedLayer): The layers this call compressed, in
            the model's order.
        skipped (dict): The ``L.Linear`` links left as they were, by path, each
            with the reason (those ``include`` left out among them).
        plan (dict): What :func:`apply_plan` needs to build the model's layers
            of the family on a fresh model, those of ``already`` included:
            plain data, which :func:`json.dumps` takes.
        conversion (ConversionReport): The conversion's own report: tied
            links, the hooks carried over and those dropped, parameter counts.
        already (tuple of CompressedLayer): The layers of the family the model
            had before this call (``pattern`` ``None``), in its order.
        stored_bytes (int): The bytes the whole model stores now
            (:func:`stored_bytes` of it): the compressed layers, the
            ``L.Linear`` links left dense, the layers already of the family,
            and every other parameter.
        dense_bytes (int): The same with each layer of the family counted as
            the ``L.Linear`` it stands for: the model before any compression.
        uncounted (tuple of str): The paths of the parts not initialised yet
            (a lazy layer before its first forward pass), which neither total counts.
    """

    budget: fractions.Fraction
    layers: tp.Tuple[CompressedLayer, ...]
    skipped: tp.Dict[str, str]
    plan: tp.Dict[str, tp.Any]
    conversion: ConversionReport
    already: tp.Tuple[CompressedLayer, ...] = ()
    stored_bytes: int = 0
    dense_bytes: int = 0
    uncounted: tp.Tuple[str, ...] = ()
    allocation: str = 'layer'

    @property
    def ratio(self) -> float:
        """float: ``stored_bytes / dense_bytes``: the whole model's, skipped layers included."""
        return self.stored_bytes / self.dense_bytes if self.dense_bytes else 1.0

    def __str__(self) -> str:
        of = ("the selected layers' bytes together" if self.allocation == 'model'
              else "each layer's bytes")
        if self.layers:
            lines = ['{} compressed, {} skipped, at a budget of {} of {}'.format(
                len(self.layers), len(self.skipped), self.budget, of)]
        else:
            lines = ['NOTHING WAS COMPRESSED at a budget of {} of {}: {} skipped (why '
                     'below)'.format(self.budget, of, len(self.skipped) or 'no L.Linear')]
        lines += ['  {}'.format(row) for row in self.already + self.layers]
        lines += ['  skipped {}: {}'.format(path, why) for path, why in self.skipped.items()]
        lines += ['  hook {} of {}: dropped, {}'.format(name, path, why)
                  for path, dropped in self.conversion.dropped_hooks.items()
                  for name, why in dropped.items()]
        lines += ['  hooks carried over to {}: {}'.format(path, ', '.join(names))
                  for path, names in self.conversion.hooks.items()]
        lines.append('  whole model: {:,} of {:,} bytes ({:.4f}, 1/{:.1f}), every layer '
                     'counted'.format(
                         self.stored_bytes, self.dense_bytes, self.ratio,
                         1 / self.ratio if self.ratio else math.inf))
        if self.uncounted:
            lines.append('  not counted (not initialised yet): {}'.format(
                ', '.join(self.uncounted)))
        return '\n'.join(lines)
