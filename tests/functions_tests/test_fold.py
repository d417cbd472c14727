"""fold and unfold: the sum of the blocks of each row, and its adjoint."""

import numpy as np
import pytest

from chainer_sharedlinear.functions.fold import fold, unfold


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_fold_sums_the_blocks_and_unfold_repeats_the_row(dtype):
    x = np.random.default_rng(0).standard_normal((5, 12)).astype(dtype)
    folded = fold(x, 3)
    assert folded.dtype == dtype
    np.testing.assert_allclose(folded, x[:, :4] + x[:, 4:8] + x[:, 8:], rtol=1e-6)
    g = np.random.default_rng(1).standard_normal((5, 4)).astype(dtype)
    np.testing.assert_array_equal(unfold(g, 3), np.concatenate([g, g, g], axis=1))


def test_fold_and_unfold_are_adjoint():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 12))
    g = rng.standard_normal((5, 4))
    # <fold(x), g> == <x, unfold(g)>
    np.testing.assert_allclose(np.sum(fold(x, 3) * g), np.sum(x * unfold(g, 3)))


def test_one_block_is_the_input_itself():
    x = np.ones((2, 3), np.float16)
    assert fold(x, 1) is x
    assert unfold(x, 1) is x


def test_float16_blocks_are_added_in_float32():
    # 2048 blocks of 40 sum to 81920, past float16's largest value (65504).
    folded = fold(np.full((1, 2048), 40, np.float16), 2048)
    assert folded.dtype == np.float32
    np.testing.assert_array_equal(folded, [[81920]])
