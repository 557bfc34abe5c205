"""Tests of the inner solvers: optimality, an independent fit, implicit
gradients (cold and warm started) against finite differences in float64."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from sklearn import linear_model

from distillation import errors
from distillation import inner
from distillation import models


def _config(solver, tol=1e-6, maxiter=2000, implicit_solve=None,
            implicit_tol=1e-5):
  if implicit_solve is None:
    implicit_solve = 'direct' if solver == 'newton' else 'normal_cg'
  return ml_collections.ConfigDict(dict(
      solver=solver, tol=tol, maxiter=maxiter, l2reg=0.1, init='ones',
      warm_start=False, implicit_solve=implicit_solve,
      implicit_tol=implicit_tol))


def _check_partials(grads, value, args, eps, rtol, atol):
  """grads[i] along a random direction against central differences of
  value in args[i], for each argument."""
  rng = np.random.default_rng(3)
  for i, arg in enumerate(args):
    direction = rng.normal(size=np.shape(arg))
    plus = list(args); plus[i] = arg + eps * direction
    minus = list(args); minus[i] = arg - eps * direction
    numeric = (value(*plus) - value(*minus)) / (2 * eps)
    np.testing.assert_allclose(jnp.sum(grads[i] * direction), numeric,
                               rtol=rtol, atol=atol)


def _problem(n=12, p=5, k=3, seed=0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(n, p)).astype(dtype)
  labels = np.arange(n) % k
  model = models.LinearClassifier(k)
  init = jax.tree.map(lambda x: np.ones(x.shape, dtype), jax.eval_shape(
      model.init, jax.random.PRNGKey(0), jnp.zeros((1, p))))
  return model, init, images, labels


class InnerTest(parameterized.TestCase):

  @parameterized.parameters('gradient_descent', 'lbfgs', 'newton')
  def test_solution_is_stationary_and_matches_sklearn(self, solver):
    # float64: in float32 whether gradient descent gets below 1e-6 depends on
    # the CPU's rounding; what the solver guarantees is its own error <= tol.
    with jax.enable_x64(True):
      model, init, images, labels = _problem(dtype=np.float64)
      targets = jax.nn.one_hot(labels, 3, dtype=jnp.float64)
      solve = jax.jit(inner.make_solver(_config(solver), model.apply))
      result = solve(init, 0.1, images, targets)
      self.assertLessEqual(float(result.error), 1e-6)
      # Accelerated gradient descent measures its error at its extrapolated
      # point, not at the iterate it returns: allow a factor 10 there.
      grad = jax.grad(inner.objective)(result.params, 0.1, images, targets,
                                       apply_fn=model.apply)
      self.assertLessEqual(float(optax.tree.norm(grad)), 1e-5)
    # scikit-learn minimizes ||W||^2 / 2 + C * sum_i CE_i: C = 1 / (n l2reg).
    reference = linear_model.LogisticRegression(
        C=1 / (len(labels) * 0.1), fit_intercept=False, tol=1e-10,
        max_iter=10000).fit(images, labels)
    np.testing.assert_allclose(result.params['params']['Dense_0']['kernel'],
                               reference.coef_.T, atol=1e-5)

  @parameterized.parameters('lbfgs', 'newton')
  def test_soft_targets_solution_is_stationary(self, solver):
    with jax.enable_x64(True):
      model, init, images, _ = _problem(dtype=np.float64)
      targets = jax.nn.softmax(np.random.default_rng(1).normal(size=(12, 3)))
      result = inner.make_solver(_config(solver), model.apply)(
          init, 0.05, images, targets)
      self.assertLessEqual(float(result.error), 1e-6)
      grad = jax.grad(inner.objective)(result.params, 0.05, images, targets,
                                       apply_fn=model.apply)
      self.assertLessEqual(float(optax.tree.norm(grad)), 1e-6)

  @parameterized.parameters(
      ('gradient_descent', 'normal_cg'), ('gradient_descent', 'cg'),
      ('lbfgs', 'normal_cg'), ('lbfgs', 'cg'), ('lbfgs', 'lu'),
      ('newton', 'direct'))
  def test_implicit_gradient_matches_finite_differences(self, solver,
                                                        implicit_solve):
    with jax.enable_x64(True):
      model, init, images, labels = _problem(dtype=np.float64)
      probe = np.random.default_rng(2).normal(size=(5, 3))

      def make_g(solver, implicit_solve='cg'):
        solve = inner.make_solver(
            _config(solver, tol=1e-11, maxiter=20000,
                    implicit_solve=implicit_solve, implicit_tol=1e-10),
            model.apply)

        def g(l2reg, images, targets):
          w = solve(init, l2reg, images, targets).params['params']['Dense_0']
          return jnp.sum(w['kernel'] * probe)
        return g

      # Finite differences need a solution accurate to far below eps; L-BFGS
      # reaches it, accelerated gradient descent stops too early to be used.
      # Compiled once for its six calls below.
      reference = jax.jit(make_g('lbfgs'))
      targets = jax.nn.one_hot(labels, 3, dtype=jnp.float64)
      args = (jnp.float64(0.1), jnp.asarray(images), targets)
      grads = jax.jit(jax.grad(make_g(solver, implicit_solve),
                               argnums=(0, 1, 2)))(*args)
      _check_partials(grads, reference, args, eps=1e-5, rtol=1e-6, atol=1e-9)

  @parameterized.parameters(
      ('gradient_descent', 'cg'), ('lbfgs', 'cg'), ('newton', 'direct'))
  def test_warm_started_gradient_matches_finite_differences(
      self, solver, implicit_solve):
    """Warm start from the exact solution, with more images than pixels
    (k=12 > p=5: X X^T is singular), at the tolerance of a real run. The
    solve stops at once; its implicit gradient must still be right."""
    with jax.enable_x64(True):
      model, init, images, labels = _problem(dtype=np.float64)
      targets = jax.nn.one_hot(labels, 3, dtype=jnp.float64)
      probe = np.random.default_rng(2).normal(size=(5, 3))
      tight = inner.make_solver(_config('lbfgs', tol=1e-12, maxiter=20000,
                                        implicit_solve='cg'), model.apply)
      solve = inner.make_solver(_config(solver, tol=1e-5,
                                        implicit_solve=implicit_solve,
                                        implicit_tol=1e-10), model.apply)
      exact = jax.jit(tight)(init, 0.1, images, targets).params

      def value(solve, start, images):
        w = solve(start, 0.1, images, targets).params['params']['Dense_0']
        return jnp.sum(w['kernel'] * probe)

      direction = np.random.default_rng(3).normal(size=images.shape)
      analytic = jnp.vdot(jax.jit(jax.grad(functools.partial(
          value, solve, exact)))(jnp.asarray(images)), direction)
      eps = 1e-5
      reference = jax.jit(functools.partial(value, tight, init))
      numeric = (reference(images + eps * direction) -
                 reference(images - eps * direction)) / (2 * eps)
      np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)

  @parameterized.parameters((12, 5), (4, 5))
  def test_squared_loss_is_ridge_regression(self, n, p):
    """The closed form on the k x k Gram matrix (k <= p) or the p x p
    covariance (k > p), against scikit-learn's Ridge, which minimizes
    ||Y - X W||^2 + alpha ||W||^2: alpha = k l2reg; and its gradient (a
    linear solve differentiated by JAX) against finite differences."""
    with jax.enable_x64(True):
      model, init, images, _ = _problem(n=n, p=p, dtype=np.float64)
      targets = jax.nn.softmax(np.random.default_rng(1).normal(size=(n, 3)))
      config = _config('newton')
      config.loss = 'squared'
      solve = inner.make_solver(config, model.apply)
      result = solve(init, 0.05, images, targets)
      weights = result.params['params']['Dense_0']['kernel']
      reference = linear_model.Ridge(alpha=n * 0.05, fit_intercept=False,
                                     solver='svd').fit(images, targets)
      np.testing.assert_allclose(weights, reference.coef_.T, rtol=1e-10)
      self.assertLessEqual(float(result.error), 1e-12)

      probe = np.random.default_rng(2).normal(size=(p, 3))

      @jax.jit
      def g(l2reg, images, targets):
        w = solve(init, l2reg, images, targets).params['params']['Dense_0']
        return jnp.sum(w['kernel'] * probe)

      args = (jnp.float64(0.05), jnp.asarray(images), targets)
      grads = jax.jit(jax.grad(g, argnums=(0, 1, 2)))(*args)
      _check_partials(grads, g, args, eps=1e-6, rtol=1e-7, atol=1e-10)

  def test_bad_config_values(self):
    model, init, *_ = _problem()
    with self.assertRaisesRegex(errors.UserError, 'config.inner.solver'):
      inner.make_solver(_config('newton?'), model.apply)
    bad_init = _config('lbfgs')
    bad_init.init = 'random'
    with self.assertRaisesRegex(errors.UserError, 'config.inner.init'):
      inner.init_params(bad_init, init)
    with self.assertRaisesRegex(errors.UserError,
                                'config.inner.implicit_solve'):
      inner.make_solver(_config('lbfgs', implicit_solve='lu?'), model.apply)
    with self.assertRaisesRegex(errors.UserError,
                                'config.inner.implicit_solve=direct'):
      inner.make_solver(_config('newton', implicit_solve='lu'), model.apply)
    bad_loss = _config('newton')
    bad_loss.loss = 'hinge'
    with self.assertRaisesRegex(errors.UserError,
                                "^config.inner.loss='hinge' is unknown; use "
                                'one of logistic, squared.$'):
      inner.make_solver(bad_loss, model.apply)


if __name__ == '__main__':
  absltest.main()
