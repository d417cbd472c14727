"""Compressing the ``L.Linear`` layers of a trained model to a budget of bytes, and rebuilding it.

:func:`compress_linears` replaces each selected ``L.Linear`` by a layer of the
family that stores at most a fraction ``budget`` of its bytes, with the knobs
of its pattern chosen by :func:`knobs_at_budget` and the layer the closest to
the trained weight (:meth:`from_linear`); ``pattern='auto'`` takes, per layer,
the pattern whose layer is closest. Bytes are counted by :func:`stored_bytes`.
The report's plan is plain data: :func:`apply_plan` builds the same layers on
a fresh model, which ``chainer.serializers.load_npz`` then fills, and
:func:`save_compressed` and :func:`load_compressed` keep the plan in the file.

One module per concern:

- :mod:`~chainer_sharedlinear.compress.patterns`: each pattern's link, the
  settings that fit a budget and their bytes (``_PATTERNS``: adding a pattern
  is adding an entry there), and :func:`knobs_at_budget`;
- :mod:`~chainer_sharedlinear.compress.weight_fit`: a layer's error against
  the trained weight;
- :mod:`~chainer_sharedlinear.compress.counting`: :func:`stored_bytes`;
- :mod:`~chainer_sharedlinear.compress.calibration`: the statistics of the
  layers' inputs on calibration data;
- :mod:`~chainer_sharedlinear.compress.fitting`: layers fitted to their outputs
  on those statistics;
- :mod:`~chainer_sharedlinear.compress.allocation`: a model's bytes shared
  among its layers;
- :mod:`~chainer_sharedlinear.compress.report`: what a call did;
- :mod:`~chainer_sharedlinear.compress.plan`: the plan and the files that keep it;
- :mod:`~chainer_sharedlinear.compress.compressing`: :func:`compress_linears` itself.
"""

from chainer_sharedlinear.compress.compressing import compress_linears  # NOQA
from chainer_sharedlinear.compress.counting import stored_bytes  # NOQA
from chainer_sharedlinear.compress.patterns import (  # NOQA
    Knobs,
    _from_linear,
    _kronecker_pairs,
    knobs_at_budget,
    multiply_adds,
    pattern_names,
)
from chainer_sharedlinear.compress.plan import (  # NOQA
    PLAN_FORMAT,
    PLAN_KEY,
    apply_plan,
    load_compressed,
    read_plan,
    save_compressed,
)
from chainer_sharedlinear.compress.report import CompressedLayer, CompressionReport  # NOQA

__all__ = [
    'CompressedLayer', 'CompressionReport', 'Knobs', 'PLAN_FORMAT', 'PLAN_KEY', 'apply_plan',
    'compress_linears', 'knobs_at_budget', 'load_compressed', 'multiply_adds', 'pattern_names',
    'read_plan', 'save_compressed', 'stored_bytes',
]
