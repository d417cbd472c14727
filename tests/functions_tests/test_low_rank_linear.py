import numpy as np
from chainer import testing

from chainer_sharedlinear import low_rank_linear
from tests.helpers import BACKENDS, FamilyFunction


@testing.parameterize(*testing.product({
    'dtypes': [(np.float32, np.float32), (np.float64, np.float64), (np.float16, np.float16)],
    'nobias': [True, False],
    'n_batch_axes': [1, 2],
}))
@testing.inject_backend_tests(None, BACKENDS)
class TestLowRankLinearFunction(FamilyFunction, testing.FunctionTestCase):

    def generate_inputs(self):
        x_dtype, w_dtype = self.dtypes
        rng = np.random.default_rng(0)
        x = rng.uniform(-1, 1, self.batch_shape + (6,)).astype(x_dtype)
        U = rng.uniform(-1, 1, (5, 2)).astype(w_dtype)
        V = rng.uniform(-1, 1, (2, 6)).astype(w_dtype)
        b = rng.uniform(-1, 1, 5).astype(x_dtype)
        return (x, U, V) if self.nobias else (x, U, V, b)

    def forward(self, inputs, device):
        return low_rank_linear(*inputs, n_batch_axes=self.n_batch_axes),

    def forward_expected(self, inputs):
        x, U, V = (a.astype(np.float64) for a in inputs[:3])
        y = x.reshape(-1, 6).dot(U.dot(V).T)
        if len(inputs) == 4:
            y += inputs[3]
        return y.reshape(x.shape[:-1] + (5,)).astype(inputs[0].dtype),
