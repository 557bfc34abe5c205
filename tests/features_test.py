"""Tests of the feature maps: shapes, scale, reuse of the evaluators' layers,
determinism and config errors."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from distillation import errors
from distillation import features
from distillation import networks


def _model_config(**overrides):
  config = ml_collections.ConfigDict(dict(
      features='conv', width=4, depth=2, norm='instance', nets_per_step=2))
  config.update(overrides)
  return config


class FeaturesTest(parameterized.TestCase):

  def test_pixels_has_no_feature_map(self):
    self.assertIsNone(features.make(_model_config(features='pixels'),
                                    (8, 8, 1)))
    self.assertIsNone(features.make(None, (8, 8, 1)))

  @parameterized.parameters(('conv', (28, 28, 1), 3, 8, 3 * 3 * 8),
                            ('conv', (8, 8, 1), 3, 8, 8),
                            ('mlp', (8, 8, 1), 2, 16, 16))
  def test_num_features(self, name, image_shape, depth, width, expected):
    feature_map = features.make(
        _model_config(features=name, depth=depth, width=width), image_shape)
    self.assertEqual(feature_map.num_features, expected)
    images = jnp.ones((5, int(np.prod(image_shape))))
    phi = feature_map(feature_map.init(jax.random.PRNGKey(0)), images)
    self.assertEqual(phi.shape, (5, expected))

  def test_conv_features_are_the_convnet_before_its_dense_layer(self):
    feature_map = features.make(_model_config(width=8), (8, 8, 1))
    net = networks.ConvNet(num_classes=10, width=8, depth=2)
    images = jax.random.normal(jax.random.PRNGKey(1), (6, 64))
    params = feature_map.init(jax.random.PRNGKey(0))
    head = {'kernel': jax.random.normal(jax.random.PRNGKey(2), (32, 10)),
            'bias': jnp.zeros(10)}
    net_params = {'params': {**params['params'], 'Dense_0': head}}
    expected = net.apply(net_params, images.reshape(6, 8, 8, 1))
    phi = feature_map(params, images) * np.sqrt(feature_map.num_features)
    np.testing.assert_allclose(phi @ head['kernel'], expected, rtol=1e-4,
                               atol=1e-5)

  def test_draws_are_a_function_of_the_key(self):
    feature_map = features.make(_model_config(nets_per_step=3), (8, 8, 1))
    first = feature_map.draw(jax.random.PRNGKey(0))
    again = feature_map.draw(jax.random.PRNGKey(0))
    self.assertLen(first, 3)
    kernel = lambda p: np.asarray(p['params']['Conv_0']['kernel'])
    np.testing.assert_array_equal(kernel(first[0]), kernel(again[0]))
    self.assertFalse(np.array_equal(kernel(first[0]), kernel(first[1])))

  def test_features_are_scaled_to_unit_order(self):
    # Gram entries of order one whatever the width.
    for width in (8, 128):
      feature_map = features.make(_model_config(width=width), (8, 8, 1))
      phi = feature_map(feature_map.init(jax.random.PRNGKey(0)),
                        jax.random.uniform(jax.random.PRNGKey(1), (20, 64)))
      diagonal = np.sum(np.square(phi), -1)
      self.assertTrue(np.all((diagonal > 0.05) & (diagonal < 5)), diagonal)

  @parameterized.named_parameters(
      ('features', 'features', 'resnet?'),
      ('width', 'width', 0),
      ('depth', 'depth', 0),
      ('nets_per_step', 'nets_per_step', 0),
      ('norm', 'norm', 'batch?'))
  def test_bad_config_is_reported_by_field(self, field, value):
    with self.assertRaisesRegex(errors.UserError,
                                f'^config.model.{field}=[^\n]*$'):
      features.make(_model_config(**{field: value}), (8, 8, 1))


if __name__ == '__main__':
  absltest.main()
