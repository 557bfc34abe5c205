"""Tests of the inner solver: optimality, an independent fit, implicit grads."""

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
    implicit_solve = 'lu' if solver == 'newton' else 'normal_cg'
  return ml_collections.ConfigDict(dict(
      solver=solver, tol=tol, maxiter=maxiter, l2reg=0.1, init='ones',
      warm_start=False, implicit_solve=implicit_solve,
      implicit_tol=implicit_tol))


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
    model, init, images, labels = _problem()
    targets = jax.nn.one_hot(labels, 3)
    solve = jax.jit(inner.make_solver(_config(solver), model.apply))
    result = solve(init, 0.1, images, targets)
    grad = jax.grad(inner.objective)(result.params, 0.1, images, targets,
                                     apply_fn=model.apply)
    self.assertLess(float(jnp.linalg.norm(grad['params']['Dense_0']['kernel'])),
                    1e-5)
    # scikit-learn minimizes ||W||^2 / 2 + C * sum_i CE_i: C = 1 / (n l2reg).
    reference = linear_model.LogisticRegression(
        C=1 / (len(labels) * 0.1), fit_intercept=False, tol=1e-10,
        max_iter=10000).fit(images, labels)
    np.testing.assert_allclose(result.params['params']['Dense_0']['kernel'],
                               reference.coef_.T, atol=1e-4)

  @parameterized.parameters('lbfgs', 'newton')
  def test_soft_targets_solution_is_stationary(self, solver):
    model, init, images, _ = _problem()
    targets = jax.nn.softmax(np.random.default_rng(1).normal(size=(12, 3)))
    result = inner.make_solver(_config(solver), model.apply)(
        init, 0.05, images, targets)
    grad = jax.grad(inner.objective)(result.params, 0.05, images, targets,
                                     apply_fn=model.apply)
    self.assertLess(float(optax.tree.norm(grad)), 1e-5)

  @parameterized.parameters(
      ('gradient_descent', 'normal_cg'), ('gradient_descent', 'cg'),
      ('lbfgs', 'normal_cg'), ('lbfgs', 'cg'), ('lbfgs', 'lu'),
      ('newton', 'lu'))
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
      reference = make_g('lbfgs')
      targets = jax.nn.one_hot(labels, 3, dtype=jnp.float64)
      args = (jnp.float64(0.1), jnp.asarray(images), targets)
      grads = jax.grad(make_g(solver, implicit_solve), argnums=(0, 1, 2))(
          *args)
      rng = np.random.default_rng(3)
      for i, arg in enumerate(args):
        direction = rng.normal(size=np.shape(arg))
        eps = 1e-5
        plus = list(args); plus[i] = arg + eps * direction
        minus = list(args); minus[i] = arg - eps * direction
        numeric = (reference(*plus) - reference(*minus)) / (2 * eps)
        analytic = jnp.sum(grads[i] * direction)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)

  @parameterized.product(transpose=(False, True), k=(3, 8),
                         dense_max=(0, 1000))
  def test_jacobian_solver_matches_a_dense_solve(self, transpose, k,
                                                 dense_max):
    """Block (Woodbury) and dense solves of dR/dA against the Jacobian of R
    from autodiff; k=8 > p makes X X^T singular."""
    with jax.enable_x64(True):
      rng = np.random.default_rng(k)
      images = rng.normal(size=(k, 5))
      coef = rng.normal(size=(k, 4))
      targets = jax.nn.softmax(rng.normal(size=(k, 4))) * 1.3
      rhs = rng.normal(size=(k, 4))
      jac = jax.jacfwd(inner.representer_residual)(
          coef, 0.05, images, targets).reshape(4 * k, 4 * k)
      expected = jnp.linalg.solve(jac.T if transpose else jac, rhs.ravel())
      solve = inner.jacobian_solver(coef, 0.05, images @ images.T, targets,
                                    transpose=transpose, dense_max=dense_max)
      np.testing.assert_allclose(solve(rhs).ravel(), expected, rtol=1e-10,
                                 atol=1e-10)

  @parameterized.product(transpose=(False, True), dense_max=(0, 1000),
                         scale=(0.03, 30.0))
  def test_jacobian_solver_is_accurate_in_float32(self, transpose, dense_max,
                                                  scale):
    """A small l2reg (as learned l2reg ends up), with moderately confident
    predictions (scale 0.03: the Jacobian's condition number is ~7e3) or
    saturated ones (30: the split at the top class avoids cancellation)."""
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(20, 64)).astype(np.float32) ** 2
    targets = np.asarray(jax.nn.softmax(
        5 * rng.normal(size=(20, 10)).astype(np.float32)))
    coef = (scale * rng.normal(size=(20, 10))).astype(np.float32)
    rhs = rng.normal(size=(20, 10)).astype(np.float32)
    with jax.enable_x64(True):
      args = [np.float64(x) for x in (coef, 3e-4, images, targets)]
      jac = jax.jacfwd(inner.representer_residual)(*args).reshape(200, 200)
      expected = np.asarray(jnp.linalg.solve(jac.T if transpose else jac,
                                             np.float64(rhs).ravel()))
    gram = jnp.asarray(images) @ jnp.asarray(images).T
    actual = inner.jacobian_solver(jnp.asarray(coef), jnp.float32(3e-4), gram,
                                   jnp.asarray(targets), transpose,
                                   dense_max)(rhs)
    self.assertLess(np.linalg.norm(np.ravel(actual) - expected) /
                    np.linalg.norm(expected), 1e-4)

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
    with self.assertRaisesRegex(errors.UserError, 'lu with newton'):
      inner.make_solver(_config('newton', implicit_solve='normal_cg'),
                        model.apply)

  def test_newton_converges_in_few_steps_with_little_regularization(self):
    model, init, images, labels = _problem(n=12, p=30, k=4)
    targets = jax.nn.one_hot(labels, 4)
    solve = inner.make_solver(_config('newton', tol=1e-5), model.apply)
    result = solve(init, 1e-3, images, targets)
    self.assertLessEqual(int(result.iterations), 10)
    self.assertLess(float(result.error), 1e-5)
    # Warm start from the solution for slightly different images, as from
    # the previous outer step: at most two Newton steps.
    warm = solve(result.params, 1e-3, images * 1.001, targets)
    self.assertLessEqual(int(warm.iterations), 2)
    self.assertLess(float(warm.error), 1e-5)

  def test_newton_multiplies_at_full_precision(self):
    """GPUs multiply float32 matrices in TF32 unless told otherwise; the
    Newton solve and its implicit backward pass ask for full precision."""
    model, init, images, labels = _problem()
    targets = jax.nn.one_hot(labels, 3)
    solve = inner.make_solver(_config('newton'), model.apply)
    hlo = jax.jit(jax.grad(lambda x: jnp.sum(
        solve(init, 0.1, x, targets).params['params']['Dense_0']['kernel'])
                          )).lower(images).as_text()
    dots = [line for line in hlo.splitlines() if 'dot_general' in line]
    self.assertNotEmpty(dots)
    for line in dots:
      self.assertIn('HIGHEST', line)


if __name__ == '__main__':
  absltest.main()
