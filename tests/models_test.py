"""Tests of the linear model."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from distillation import models


class LinearClassifierTest(absltest.TestCase):

  def test_is_flattened_matrix_product(self):
    model = models.LinearClassifier(num_classes=3)
    images = np.random.default_rng(0).normal(size=(4, 2, 5, 1))
    params = model.init(jax.random.PRNGKey(0), images)
    kernel = params['params']['Dense_0']['kernel']
    self.assertEqual(kernel.shape, (10, 3))
    self.assertEqual(jax.tree.leaves(params), [kernel])  # No bias.
    np.testing.assert_allclose(model.apply(params, images),
                               images.reshape(4, 10) @ kernel, rtol=1e-5)
    self.assertEqual(model.apply(params, jnp.zeros((7, 10))).shape, (7, 3))


if __name__ == '__main__':
  absltest.main()
