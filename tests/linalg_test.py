"""Tests of the Newton system's solves against dense solves of the Jacobian
that autodiff gives."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from distillation import linalg
from distillation import newton


class JacobianSolverTest(parameterized.TestCase):

  def test_dense_threshold_is_chosen_by_backend(self):
    self.assertEqual(linalg.dense_newton_max('cpu'), 256)
    self.assertEqual(linalg.dense_newton_max('gpu'), 10_000)
    self.assertEqual(linalg.dense_newton_max('tpu'), 10_000)
    self.assertEqual(linalg.dense_newton_max(),
                     linalg.dense_newton_max(jax.default_backend()))

  # dense_max 0: by blocks, whose LAPACK calls are batched (as on
  # accelerators, batched=True) or one per block (as on CPU, False; newton's
  # tests run the default, by platform); 1000: densely (batched plays no
  # part).
  @parameterized.product(transpose=(False, True), k=(3, 8),
                         solve=((0, True), (0, False), (1000, None)))
  def test_jacobian_solver_matches_a_dense_solve(self, transpose, k, solve):
    """Block (Woodbury) and dense solves of dR/dA against the Jacobian of R
    from autodiff; k=8 > p makes X X^T singular."""
    dense_max, batched = solve
    with jax.enable_x64(True):
      rng = np.random.default_rng(k)
      images = rng.normal(size=(k, 5))
      coef = rng.normal(size=(k, 4))
      targets = jax.nn.softmax(rng.normal(size=(k, 4))) * 1.3
      rhs = rng.normal(size=(k, 4))
      jac = jax.jacfwd(newton.representer_residual)(
          coef, 0.05, images, targets).reshape(4 * k, 4 * k)
      expected = jnp.linalg.solve(jac.T if transpose else jac, rhs.ravel())
      solve = linalg.jacobian_solver(coef, 0.05, images @ images.T, targets,
                                    transpose=transpose, dense_max=dense_max,
                                    batched=batched)
      np.testing.assert_allclose(solve(rhs).ravel(), expected, rtol=1e-10,
                                 atol=1e-10)

  @parameterized.product(transpose=(False, True),
                         solve=((0, True), (0, False), (1000, None)),
                         scale=(0.03, 30.0))
  def test_jacobian_solver_is_accurate_in_float32(self, transpose, solve,
                                                  scale):
    """A small l2reg (as learned l2reg ends up), with moderately confident
    predictions (scale 0.03: the Jacobian's condition number is ~7e3) or
    saturated ones (30: the split at the top class avoids cancellation)."""
    dense_max, batched = solve
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(20, 64)).astype(np.float32) ** 2
    targets = np.asarray(jax.nn.softmax(
        5 * rng.normal(size=(20, 10)).astype(np.float32)))
    coef = (scale * rng.normal(size=(20, 10))).astype(np.float32)
    rhs = rng.normal(size=(20, 10)).astype(np.float32)
    with jax.enable_x64(True):
      args = [np.float64(x) for x in (coef, 3e-4, images, targets)]
      jac = jax.jacfwd(newton.representer_residual)(*args).reshape(200, 200)
      expected = np.asarray(jnp.linalg.solve(jac.T if transpose else jac,
                                             np.float64(rhs).ravel()))
    gram = jnp.asarray(images) @ jnp.asarray(images).T
    actual = linalg.jacobian_solver(jnp.asarray(coef), jnp.float32(3e-4), gram,
                                   jnp.asarray(targets), transpose,
                                   dense_max, batched)(rhs)
    self.assertLess(np.linalg.norm(np.ravel(actual) - expected) /
                    np.linalg.norm(expected), 1e-4)


if __name__ == '__main__':
  absltest.main()
