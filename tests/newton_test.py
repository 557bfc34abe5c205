"""Tests of Newton's representer solver: convergence, its stopping test and
its full-precision products."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from distillation import inner
from distillation import models
from distillation import newton


def _config(tol=1e-6):
  return ml_collections.ConfigDict(dict(
      solver='newton', tol=tol, maxiter=100, l2reg=0.1, init='ones',
      warm_start=False, implicit_solve='direct', implicit_tol=1e-5))


def _problem(n=12, p=5, k=3, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(n, p)).astype(np.float32)
  labels = np.arange(n) % k
  model = models.LinearClassifier(k)
  init = jax.tree.map(lambda x: np.ones(x.shape, np.float32), jax.eval_shape(
      model.init, jax.random.PRNGKey(0), jnp.zeros((1, p))))
  return model, init, images, labels


class NewtonTest(absltest.TestCase):

  def test_newton_converges_in_few_steps_with_little_regularization(self):
    with jax.enable_x64(True):
      model, init, images, labels = _problem(n=12, p=30, k=4)
      images = np.float64(images)
      init = jax.tree.map(np.float64, init)
      targets = jax.nn.one_hot(labels, 4, dtype=jnp.float64)
      solve = inner.make_solver(_config(tol=1e-8), model.apply)
      result = solve(init, 1e-3, images, targets)
      self.assertLessEqual(int(result.iterations), 12)
      self.assertLessEqual(float(result.error), 1e-8)
      # Warm start from the solution for slightly different images, as from
      # the previous outer step: a few Newton steps.
      warm = solve(result.params, 1e-3, images * 1.001, targets)
      self.assertLessEqual(int(warm.iterations), 3)
      self.assertLessEqual(float(warm.error), 1e-8)

  def test_newton_multiplies_at_full_precision(self):
    """GPUs multiply float32 matrices in TF32 unless told otherwise; the
    Newton solve and its implicit backward pass ask for full precision."""
    model, init, images, labels = _problem()
    targets = jax.nn.one_hot(labels, 3)
    solve = inner.make_solver(_config(), model.apply)
    hlo = jax.jit(jax.grad(lambda x: jnp.sum(
        solve(init, 0.1, x, targets).params['params']['Dense_0']['kernel'])
                          )).lower(images).as_text()
    dots = [line for line in hlo.splitlines() if 'dot_general' in line]
    self.assertNotEmpty(dots)
    for line in dots:
      self.assertIn('HIGHEST', line)

  def test_error_sees_the_null_space_of_the_gram_matrix(self):
    """With k > p, a residual orthogonal to the images leaves the gradient
    with respect to W at zero; Newton's error must still report it."""
    with jax.enable_x64(True):
      rng = np.random.default_rng(0)
      images = rng.normal(size=(12, 5))
      targets = jax.nn.one_hot(np.arange(12) % 3, 3, dtype=jnp.float64)
      solve = newton.make_solver(tol=1e-10, maxiter=50)
      weights, _, err = solve(jnp.zeros((5, 3)), 0.1, images, targets)
      self.assertLessEqual(float(err), 1e-10)
      coef = newton.coefficients_for(weights, 0.1, images, targets)
      residual = newton.representer_residual(coef, 0.1, images, targets)
      self.assertLess(float(jnp.linalg.norm(residual)), 1e-9)
      # The closed-form coefficients of the solution are exact: a solve from
      # the solution takes no step.
      _, iterations, _ = solve(weights, 0.1, images, targets)
      self.assertEqual(int(iterations), 0)


if __name__ == '__main__':
  absltest.main()
