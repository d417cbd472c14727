"""What the benchmark times: the layer shapes, and each one's implementations and floor.

For each layer shape (a :class:`Case`), the same step, forward and backward
with a fixed output gradient, in several implementations (:data:`IMPLEMENTATIONS`):

``layer``
    The case's layer of this package: ``SharedLinear``, ``HashedLinear``,
    ``KroneckerLinear`` or ``MonarchLinear``.
``dense``
    :class:`chainer.links.Linear` with the same ``in_size`` and ``out_size``.
``tiled2016``
    For ``SharedLinear`` only: :class:`~benchmarks.tiled_linear.TiledLinearFunction`,
    the 2016 algorithm, on the shared link's own ``W`` and ``b``.
``floor``
    The layer's own array code in plain NumPy or CuPy, with no Chainer around
    it; the bar Chainer's bookkeeping cannot beat. For ``MonarchLinear``, its
    block products alone (:func:`monarch_block_products`): the bar its layout
    cannot beat either.
"""

import collections
import typing as tp

import chainer
import chainer.links as L
import numpy

from benchmarks.tiled_linear import TiledLinearFunction
from chainer_sharedlinear.functions._ops import ArrayOps
from chainer_sharedlinear.functions.fold import fold, unfold
from chainer_sharedlinear.functions.kronecker_linear import KroneckerLinearFunction, _Products
from chainer_sharedlinear.functions.monarch_linear import _Layout
from chainer_sharedlinear.functions.tied_linear import TiedWeight, TiedWeightGrad
from chainer_sharedlinear.links import HashedLinear, KroneckerLinear, MonarchLinear, SharedLinear

IMPLEMENTATIONS = ('layer', 'dense', 'tiled2016', 'floor')
LAYERS = {'SharedLinear': SharedLinear, 'HashedLinear': HashedLinear,
          'KroneckerLinear': KroneckerLinear, 'MonarchLinear': MonarchLinear}


class Case(tp.NamedTuple):
    """One layer: ``batch`` rows of ``in_size`` features to ``out_size``, and its pattern.

    ``options`` are the keyword arguments of ``layer`` besides the sizes and
    ``nobias``, as ``(name, value)`` pairs.

    >>> Case(100, 1000, 900, 'SharedLinear', (('n_shared', 10),), nobias=True).label
    'SharedLinear 100x1000->900 n_shared=10 nobias'
    """

    batch: int
    in_size: int
    out_size: int
    layer: str = 'SharedLinear'
    options: tp.Tuple[tp.Tuple[str, tp.Any], ...] = ()
    nobias: bool = False

    @property
    def label(self) -> str:
        label = '{} {}x{}->{}'.format(self.layer, self.batch, self.in_size, self.out_size)
        for name, value in self.options:
            if isinstance(value, tuple):
                value = 'x'.join(str(v) for v in value)
            label += ' {}={}'.format(name, value)
        return label + ' nobias' if self.nobias else label

    def make_layer(self) -> chainer.Link:
        """The case's layer, with its default initial weights."""
        return LAYERS[self.layer](self.in_size, self.out_size, nobias=self.nobias,
                                  **dict(self.options))

    def to_json(self) -> dict:
        case = self._asdict()
        case['options'] = {name: list(value) if isinstance(value, tuple) else value
                           for name, value in self.options}
        return case

    @classmethod
    def from_json(cls, case: dict) -> 'Case':
        options = tuple((name, tuple(value) if isinstance(value, list) else value)
                        for name, value in case['options'].items())
        return cls(case['batch'], case['in_size'], case['out_size'], case['layer'], options,
                   case['nobias'])


def shared(batch, in_size, out_size, n_shared, nobias=False) -> Case:
    return Case(batch, in_size, out_size, 'SharedLinear', (('n_shared', n_shared),), nobias)


def hashed(batch, in_size, out_size, compression, nobias=False) -> Case:
    """A ``HashedLinear`` storing ``1 / compression`` of the dense weights."""
    return Case(batch, in_size, out_size, 'HashedLinear',
                (('n_weights', in_size * out_size // compression),), nobias)


def kronecker(batch, in_size, out_size, in_factors, out_factors, n_terms=1,
              nobias=False) -> Case:
    return Case(batch, in_size, out_size, 'KroneckerLinear',
                (('in_factors', in_factors), ('out_factors', out_factors),
                 ('n_terms', n_terms)), nobias)


def monarch(batch, in_size, out_size, n_blocks, nobias=False) -> Case:
    return Case(batch, in_size, out_size, 'MonarchLinear', (('n_blocks', n_blocks),), nobias)


def _large(batch=256, n_shared=8):
    return shared(batch, 4096, 4096, n_shared)


# The example's l2 (examples/train_mnist3.py) and the large layer of the issues, in
# each pattern. A shape in several groups is timed once.
CASE_GROUPS = collections.OrderedDict([
    ('example', (shared(100, 1000, 900, 10, nobias=True),)),
    ('large', (_large(),)),
    ('sweep', tuple(_large(n_shared=n) for n in (1, 2, 4, 8, 16))),
    ('batch', tuple(_large(batch=b) for b in (1, 32, 256))),
    ('hashed', (hashed(100, 1000, 900, 8, nobias=True), hashed(256, 4096, 4096, 8))),
    ('kronecker', (kronecker(100, 1000, 900, (25, 40), (30, 30), nobias=True),
                   kronecker(100, 1000, 900, (4, 250), (4, 225), n_terms=4, nobias=True),
                   kronecker(256, 4096, 4096, (64, 64), (64, 64)))),
    # 16 blocks: the fewest that store at most 1/8 of l2 (knobs_at_budget); 64 blocks of
    # 4096 -> 4096 store 1/32.
    ('monarch', (monarch(100, 1000, 900, 16, nobias=True), monarch(256, 4096, 4096, 64))),
])


def select_cases(group_names) -> 'collections.OrderedDict[Case, tp.List[str]]':
    """Maps each case of the named groups (or ``'all'``) to the groups it is in.

    >>> [dict(case.options)['n_shared'] for case in select_cases(['sweep'])]
    [1, 2, 4, 8, 16]
    """
    names = list(CASE_GROUPS) if 'all' in group_names else list(group_names)
    unknown = [name for name in names if name not in CASE_GROUPS]
    if unknown:
        raise ValueError('unknown case group(s) {}; choose from {} or all'.format(
            ', '.join(unknown), ', '.join(CASE_GROUPS)))
    selected = collections.OrderedDict()
    for name in names:
        for case in CASE_GROUPS[name]:
            selected.setdefault(case, []).append(name)
    return selected


# --- floors: each layer's array code, without Chainer ------------------------------------

def floor_forward_backward(x, W, b, gy, n_shared):
    """Forward and backward of the shared-weight layer in plain NumPy or CuPy.

    The arithmetic of :func:`chainer_sharedlinear.shared_linear`, with the same
    array functions (``fold`` and ``unfold`` of
    :mod:`chainer_sharedlinear.functions.fold`, ``dot``) and nothing of
    Chainer: no graph, no type checks, no variables. The layer's time over
    this one is what Chainer's bookkeeping costs. It returns freshly
    allocated arrays, as any layer must.

    Args:
        x: Input, ``(B, n_shared * k)``.
        W: Shared weight, ``(out_size, k)``.
        b: Bias, ``(out_size,)``, or ``None``.
        gy: Gradient of the output, ``(B, out_size)``.
        n_shared (int): The number of blocks of ``x``.

    Returns:
        tuple: ``y``, ``gx``, ``gW`` and ``gb`` (``None`` without a bias).

    >>> x = numpy.ones((1, 4), numpy.float32)
    >>> W = numpy.array([[1, 2]], numpy.float32)
    >>> gy = numpy.ones((1, 1), numpy.float32)
    >>> y, gx, gW, gb = floor_forward_backward(x, W, None, gy, 2)
    >>> y, gx, gW
    (array([[6.]], dtype=float32), array([[1., 2., 1., 2.]], dtype=float32), \
array([[2., 2.]], dtype=float32))
    """
    x_fold = fold(x, n_shared)
    y = x_fold.dot(W.T).astype(x.dtype, copy=False)
    if b is not None:
        y += b
    gW = gy.T.dot(x_fold).astype(W.dtype, copy=False)
    gx = unfold(gy.dot(W), n_shared)
    gb = None if b is None else gy.sum(axis=0)
    return y, gx, gW, gb


def hashed_floor_forward_backward(x, W, b, gy, bucket, sign):
    """Forward and backward of a hashed layer in plain arrays: gather, three products, scatter.

    ``bucket`` and ``sign`` are the layer's index map (``HashedLinear.index_map()``).
    Returns ``y``, ``gx``, ``gW`` and ``gb`` as :func:`floor_forward_backward` does.
    """
    V, = TiedWeight(bucket, sign).forward((W,))
    y = x.dot(V.T)
    if b is not None:
        y += b
    gx = gy.dot(V)
    gW, = TiedWeightGrad(bucket, sign, W.shape).forward((gy.T.dot(x),))
    gb = None if b is None else gy.sum(axis=0)
    return y, gx, gW, gb


def kronecker_floor_forward_backward(x, A, B, b, gy):
    """Forward and backward of a Kronecker layer in plain arrays, its node's own code.

    Returns ``y``, ``gx``, ``gA``, ``gB`` and ``gb`` (``None`` without a bias).
    """
    node = KroneckerLinearFunction()
    y, = node.forward((x, A, B) if b is None else (x, A, B, b))
    products = _Products(ArrayOps.of(x), x, A, B)
    gx, gA, gB = products.gradients((0, 1, 2), gy, node._T, (x.dtype, A.dtype, B.dtype))
    gb = None if b is None else gy.sum(axis=0)
    return y, gx, gA, gB, gb


def monarch_block_products(layout, gY):
    """The six batched products of a Monarch layer's step, alone: its floor.

    ``layout`` is the layer's ``_Layout`` of ``x``, ``R`` and ``L``, and
    ``gY`` the output's gradient by output block
    (``layout.output_gradient_blocks(gy)``), both made before the step: what is
    timed is the two products of the forward pass and the four of the
    backward, on operands already laid out as they need. The layer's time
    over this one is what its layout (the padding and the permutation of the
    output and of its gradient) and Chainer cost together.

    Returns:
        tuple: The output by output block, ``(n_blocks, N, s)``, and the
        gradients of the input blocks ``(n_blocks, N, p)``, of ``R`` and of ``L``.
    """
    Z = layout.z()
    block_grads = layout.block_gradients((0, 1, 2), gY, Z)
    return (layout.output_blocks(Z),) + tuple(block_grads[i] for i in (0, 1, 2))


def _floor_step(case, layer, x, gy):
    """The zero-argument floor of ``layer`` on ``x`` and ``gy``."""
    b = None if layer.b is None else layer.b.array
    if case.layer == 'SharedLinear':
        W = layer.W.array
        return lambda: floor_forward_backward(x, W, b, gy, layer.n_shared)
    if case.layer == 'HashedLinear':
        W = layer.W.array
        bucket, sign = layer.index_map()
        return lambda: hashed_floor_forward_backward(x, W, b, gy, bucket, sign)
    if case.layer == 'MonarchLinear':
        layout = _Layout(ArrayOps.of(x), x, layer.R.array, layer.L.array, case.out_size)
        gY = layout.output_gradient_blocks(gy)
        return lambda: monarch_block_products(layout, gY)
    A, B = layer.A.array, layer.B.array
    return lambda: kronecker_floor_forward_backward(x, A, B, b, gy)


def make_steps(case: Case, device, dtype, seed: int = 0) -> 'collections.OrderedDict':
    """Makes one zero-argument function per implementation, each a forward + backward.

    The Chainer ones take the input as a :class:`chainer.Variable`, so the
    gradient of the input is computed as it is inside a network, and clear
    the gradients they leave before each step.
    """
    rng = numpy.random.default_rng(seed)
    x = device.send(rng.standard_normal((case.batch, case.in_size)).astype(dtype))
    gy = device.send(rng.standard_normal((case.batch, case.out_size)).astype(dtype))
    with chainer.using_config('dtype', dtype):
        layer = case.make_layer()
        dense = L.Linear(case.in_size, case.out_size, nobias=case.nobias)
    layer.to_device(device)
    dense.to_device(device)
    x_var = chainer.Variable(x)

    def backward(y):
        y.grad = gy
        y.backward()

    def link_step(link):
        def step():
            link.cleargrads()
            x_var.cleargrad()
            backward(link(x_var))
        return step

    steps = collections.OrderedDict([('layer', link_step(layer)), ('dense', link_step(dense))])
    if case.layer == 'SharedLinear':
        params = (layer.W,) if case.nobias else (layer.W, layer.b)

        def tiled_step():
            layer.cleargrads()
            x_var.cleargrad()
            backward(TiledLinearFunction()(x_var, *params))
        steps['tiled2016'] = tiled_step
    link_step(layer)()  # a hashed layer makes its index map on its first call
    steps['floor'] = _floor_step(case, layer, x, gy)
    return steps
