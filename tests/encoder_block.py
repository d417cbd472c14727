"""A small Transformer encoder block written with Chainer's own functions, for the tests.

Pre-norm, as in most encoders since GPT-2: ``x + attention(norm(x))``, then
``x + mlp(norm(x))``, on inputs of shape ``(batch, sequence, width)``. The
linear layers take both leading axes as batch axes (``n_batch_axes=2``); the
attention splits the width into heads with ``F.reshape`` and ``F.transpose``
and weighs the values with ``F.matmul`` and ``F.softmax``.
``L.LayerNormalization`` takes matrices only, so the block gives it the
``(batch · sequence, width)`` rows and restores the axes after.
"""

import math

import chainer
import chainer.functions as F
import chainer.links as L


def gelu(x):
    """GELU in its tanh form, which Chainer 7.8.1 lacks as a function of its own."""
    return 0.5 * x * (1 + F.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


class EncoderBlock(chainer.Chain):
    """An encoder block: multi-head self-attention and an MLP, each with layer norm and residual.

    Args:
        width (int): The size of each position's features.
        n_heads (int): The attention heads; ``width`` is split between them.
        hidden (int): The MLP's hidden width (``4 · width`` if ``None``).
        activation: The MLP's non-linearity, ``F.relu`` or :func:`gelu`.
    """

    def __init__(self, width=16, n_heads=2, hidden=None, activation=F.relu):
        super().__init__()
        self.n_heads = n_heads
        self.activation = activation
        hidden = 4 * width if hidden is None else hidden
        with self.init_scope():
            self.attention_norm = L.LayerNormalization(width)
            self.qkv = L.Linear(width, 3 * width)
            self.attention_out = L.Linear(width, width)
            self.mlp_norm = L.LayerNormalization(width)
            self.mlp_in = L.Linear(width, hidden)
            self.mlp_out = L.Linear(hidden, width)

    def _norm(self, norm, x):
        batch, sequence, width = x.shape
        return F.reshape(norm(F.reshape(x, (batch * sequence, width))), x.shape)

    def attention(self, x):
        batch, sequence, width = x.shape
        head = width // self.n_heads
        q, k, v = F.split_axis(self.qkv(x, n_batch_axes=2), 3, axis=2)

        def heads(z):  # (batch, n_heads, sequence, head)
            return F.transpose(F.reshape(z, (batch, sequence, self.n_heads, head)), (0, 2, 1, 3))

        scores = F.matmul(heads(q), heads(k), transb=True) * (1 / math.sqrt(head))
        weighted = F.matmul(F.softmax(scores, axis=3), heads(v))
        merged = F.reshape(F.transpose(weighted, (0, 2, 1, 3)), (batch, sequence, width))
        return self.attention_out(merged, n_batch_axes=2)

    def forward(self, x):
        x = x + self.attention(self._norm(self.attention_norm, x))
        hidden = self.activation(self.mlp_in(self._norm(self.mlp_norm, x), n_batch_axes=2))
        return x + self.mlp_out(hidden, n_batch_axes=2)
