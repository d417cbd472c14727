"""A dense oracle of Monarch layers, written from the definition with 0/1 matrices."""

import numpy as np


def block_lengths(size, n_blocks):
    """The features of each block: ``⌈size / n_blocks⌉`` or one fewer, the shorter ones last."""
    longest = -(-size // n_blocks)
    n_short = n_blocks * longest - size
    return [longest] * (n_blocks - n_short) + [longest - 1] * n_short


def factors(in_size, out_size, n_blocks, middle=None):
    """The 0/1 matrices and shapes of ``M = cut · P_out · L · P_mid · R · blocks``.

    ``middle`` is the middle block size ``q``; ``min(p, s)`` by default.
    """
    b = n_blocks
    p, s = -(-in_size // b), -(-out_size // b)
    q = min(p, s) if middle is None else middle
    blocks = np.zeros((b * p, in_size))       # each input block padded to p
    start = 0
    for k, length in enumerate(block_lengths(in_size, b)):
        for i in range(length):
            blocks[k * p + i, start + i] = 1
        start += length
    # Middle feature k·q + j (row j of R's block k) is column r of L's block l,
    # for k·q + j = r·b + l.
    middle = np.zeros((b * q, b * q))
    for f in range(b * q):
        middle[(f % b) * q + f // b, f] = 1
    # Row t of L's block l is output t·b + l; outputs from out_size on are cut.
    outputs = np.zeros((out_size, b * s))
    for l in range(b):  # noqa: E741
        for t in range(s):
            if t * b + l < out_size:
                outputs[t * b + l, l * s + t] = 1
    return blocks, middle, outputs, (p, q, s)


def block_diagonal(blocks):
    n, rows, cols = blocks.shape
    dense = np.zeros((n * rows, n * cols))
    for k in range(n):
        dense[k * rows:(k + 1) * rows, k * cols:(k + 1) * cols] = blocks[k]
    return dense


def monarch_weight(R, L, in_size, out_size):
    """The ``(out_size, in_size)`` Monarch matrix of ``R`` and ``L``, in float64."""
    blocks, middle, outputs, _ = factors(in_size, out_size, R.shape[0], R.shape[1])
    R, L = np.asarray(R, np.float64), np.asarray(L, np.float64)
    return outputs @ block_diagonal(L) @ middle @ block_diagonal(R) @ blocks


def monarch_oracle(x, R, L, b=None, n_batch_axes=1, out_size=None):
    """``x · Mᵀ + b`` in float64, with the batch axes of ``x`` kept."""
    out_size = L.shape[0] * L.shape[1] if out_size is None else out_size
    batch_shape = x.shape[:n_batch_axes]
    x = x.reshape(int(np.prod(batch_shape)), int(np.prod(x.shape[n_batch_axes:])))
    x = x.astype(np.float64)
    y = x @ monarch_weight(R, L, x.shape[1], out_size).T
    if b is not None:
        y += b.astype(np.float64)
    return y.reshape(batch_shape + (out_size,))
