"""Tests of the DSA augmentation: determinism, gradients, each transform."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
from jax import test_util as jtu
import jax.numpy as jnp
import numpy as np

from distillation import augment
from distillation import errors

_IMAGES = np.random.default_rng(0).uniform(size=(4, 8, 8, 3)).astype(
    np.float32)


class AugmentTest(parameterized.TestCase):

  def test_deterministic_given_the_key(self):
    transforms = augment.parse_strategy(augment.DSA_STRATEGY, 3, 'strategy')
    key = jax.random.PRNGKey(3)
    first = augment.augment(key, _IMAGES, transforms)
    np.testing.assert_array_equal(first, augment.augment(key, _IMAGES,
                                                         transforms))
    others = [augment.augment(jax.random.PRNGKey(k), _IMAGES, transforms)
              for k in range(4)]
    self.assertTrue(any(np.abs(o - first).max() > 1e-3 for o in others))

  def test_identity_when_switched_off(self):
    for strategy in ('', 'none'):
      self.assertEqual(augment.parse_strategy(strategy, 3, 'f'), ())
    np.testing.assert_array_equal(
        augment.augment(jax.random.PRNGKey(0), _IMAGES, ()), _IMAGES)

  def test_auto_is_every_transform_without_flip_on_one_channel(self):
    self.assertEqual(augment.parse_strategy('auto', 3, 'f'),
                     augment.TRANSFORMS)
    self.assertEqual(augment.parse_strategy('auto', 1, 'f'),
                     ('color', 'crop', 'cutout', 'scale', 'rotate'))

  def test_unknown_transform_names_the_field(self):
    with self.assertRaisesRegex(errors.UserError,
                                r"config.eval.net_augment='crop_blur'"):
      augment.parse_strategy('crop_blur', 3, 'config.eval.net_augment')

  @parameterized.parameters(*augment.TRANSFORMS)
  def test_differentiable_in_float64(self, name):
    transform = getattr(augment, name)
    with jax.enable_x64(True):
      images = jnp.asarray(_IMAGES[:2, :6, :6], jnp.float64)
      weights = jnp.asarray(np.random.default_rng(1).normal(
          size=images.shape))
      key = jax.random.PRNGKey(5)
      f = lambda x: jnp.sum(weights * transform(key, x))
      self.assertTrue(np.all(np.isfinite(jax.grad(f)(images))))
      jtu.check_grads(f, (images,), order=1, modes=('rev',), eps=1e-6)

  def test_affine_identity_and_a_whole_pixel_shift(self):
    with jax.enable_x64(True):
      x = jnp.asarray(_IMAGES, jnp.float64)
      eye = jnp.tile(jnp.array([[1., 0., 0.], [0., 1., 0.]]), (4, 1, 1))
      np.testing.assert_allclose(augment.affine(x, eye), x, atol=1e-12)
      # Sampling one pixel to the right (2 / (width - 1) in [-1, 1]).
      shift = eye.at[:, 0, 2].set(2 / 7)
      out = augment.affine(x, shift)
      np.testing.assert_allclose(out[:, :, :-1], x[:, :, 1:], atol=1e-12)
      np.testing.assert_allclose(out[:, :, -1], 0, atol=1e-12)

  def test_crop_shifts_whole_pixels_with_zeros(self):
    out = np.asarray(augment.crop(jax.random.PRNGKey(1), _IMAGES))
    for image, shifted in zip(_IMAGES, out):
      matches = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                 if np.array_equal(np.roll(image, (dy, dx), (0, 1))[
                     1:-1, 1:-1], shifted[1:-1, 1:-1])]
      self.assertLen(matches, 1)

  def test_cutout_zeroes_a_square_of_half_the_side(self):
    ones = np.ones((64, 8, 8, 1), np.float32)
    out = np.asarray(augment.cutout(jax.random.PRNGKey(2), ones))
    zeros = (out == 0).sum(axis=(1, 2, 3))
    self.assertEqual(zeros.max(), 16)  # 4x4 where it lies inside.
    self.assertGreater(zeros.min(), 0)
    self.assertTrue(np.all((out == 0) | (out == 1)))

  def test_color_keeps_one_channel_images_one_channel(self):
    gray = _IMAGES[..., :1]
    out = augment.color(jax.random.PRNGKey(0), gray)
    self.assertEqual(out.shape, gray.shape)
    # Brightness and contrast are affine per image: corr stays 1.
    for a, b in zip(gray, np.asarray(out)):
      self.assertAlmostEqual(np.corrcoef(a.ravel(), b.ravel())[0, 1], 1., 5)


if __name__ == '__main__':
  absltest.main()
