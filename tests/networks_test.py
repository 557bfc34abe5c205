"""Tests of the evaluation networks: shapes and the instance norm's math."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from distillation import networks


class NetworksTest(parameterized.TestCase):

  @parameterized.parameters(((8, 8, 1), 3, 'instance', 32),
                            ((28, 28, 1), 3, 'none', 3 * 3 * 4),
                            ((32, 32, 3), 2, 'instance', 8 * 8 * 4))
  def test_convnet_shapes(self, image_shape, depth, norm, features):
    model = networks.ConvNet(num_classes=10, width=4, depth=depth, norm=norm)
    images = np.zeros((2,) + image_shape, np.float32)
    params = model.init(jax.random.PRNGKey(0), images)['params']
    self.assertEqual(model.apply({'params': params}, images).shape, (2, 10))
    # 8x8 digits pool to one pixel at depth 3; 28 -> 14 -> 7 -> 3.
    self.assertEqual(params['Dense_0']['kernel'].shape[0],
                     4 if image_shape[0] == 8 else features)
    self.assertEqual(params['Conv_0']['kernel'].shape,
                     (3, 3, image_shape[-1], 4))
    self.assertEqual('InstanceNorm_0' in params, norm == 'instance')

  def test_mlp_shapes(self):
    model = networks.MLP(num_classes=3, width=5, depth=2)
    params = model.init(jax.random.PRNGKey(0), np.zeros((1, 4, 4, 1)))
    self.assertEqual([p['kernel'].shape for p in params['params'].values()],
                     [(16, 5), (5, 5), (5, 3)])

  def test_instance_norm_matches_numpy(self):
    x = np.random.default_rng(0).normal(2., 3., (3, 5, 4, 2))
    norm = networks.InstanceNorm()
    params = {'params': {'scale': np.array([2., 0.5]),
                         'bias': np.array([1., -1.])}}
    with jax.enable_x64(True):
      out = np.asarray(norm.apply(params, x))
    mean = x.mean(axis=(1, 2), keepdims=True)
    var = x.var(axis=(1, 2), keepdims=True)
    expected = (x - mean) / np.sqrt(var + 1e-5) * [2., 0.5] + [1., -1.]
    np.testing.assert_allclose(out, expected, rtol=1e-10)

  def test_softplus_beta_matches_numpy_and_approaches_relu(self):
    x = np.linspace(-3., 3., 61)
    with jax.enable_x64(True):
      for beta in (1., 60.):
        np.testing.assert_allclose(
            networks.activate(x, 'softplus', beta),
            np.logaddexp(0., beta * x) / beta, rtol=1e-12)
      # Within log(2) / beta of ReLU, everywhere.
      gap = (np.asarray(networks.activate(x, 'softplus', 60.))
             - np.maximum(x, 0.))
      self.assertLessEqual(gap.max(), np.log(2.) / 60. + 1e-12)
      self.assertGreaterEqual(gap.min(), 0.)
    # beta = 1 is flax's softplus itself, to the bit (older configs).
    x32 = x.astype(np.float32)
    np.testing.assert_array_equal(networks.activate(x32, 'softplus'),
                                  jax.nn.softplus(x32))

  def test_avg_pool_drops_the_odd_edge(self):
    x = np.arange(2 * 5 * 4 * 1, dtype=np.float64).reshape(2, 5, 4, 1)
    out = networks.avg_pool(x)
    self.assertEqual(out.shape, (2, 2, 2, 1))
    np.testing.assert_allclose(out[0, 1, 0, 0], x[0, 2:4, 0:2, 0].mean())


if __name__ == '__main__':
  absltest.main()
