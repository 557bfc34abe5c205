"""Newton's method on the representer coefficients of the linear model.

By the representer theorem the minimizer of the inner objective is
W = X^T A, where X holds the k distilled images and A (k x K) solves

  R(A) = l2reg k A + s softmax(X X^T A) - targets = 0,

with s the row sums of the targets (1 for labels; kept so that derivatives
with respect to the targets are those of the cross-entropy). Newton's method
on R has k K unknowns instead of p K and converges in a few steps; its
systems, and the transposed one of the implicit gradient, are solved exactly
by `linalg.jacobian_solver`.

The solve stops on the whole residual R(A), not only on the gradient with
respect to W, X^T R(A) / k: where X X^T is singular (more images than pixels
or features, or repeated images), a component of A in its null space changes
neither W nor that gradient, yet the implicit gradient differentiates R at A.
"""

from collections.abc import Callable
import functools

import jax
import jax.numpy as jnp
import jax.scipy.linalg
import numpy as np

from distillation import linalg

# Backtracking candidates of the Newton step, all tried at once.
_STEP_SIZES = 0.5 ** np.arange(8)


def representer_residual(coef: jax.Array, l2reg: jax.Array, images: jax.Array,
                         targets: jax.Array) -> jax.Array:
  """R(A): zero exactly when W = images^T A minimizes the inner objective."""
  return _residual(coef, images @ (images.T @ coef), l2reg, targets)


def _residual(coef, logits, l2reg, targets):
  """R(A) given the distilled set's logits X X^T A."""
  mass = jnp.sum(targets, -1, keepdims=True)
  return (l2reg * coef.shape[0] * coef + mass * jax.nn.softmax(logits) -
          targets)


def coefficients_for(weights: jax.Array, l2reg: jax.Array, images: jax.Array,
                     targets: jax.Array) -> jax.Array:
  """The A that the optimality condition assigns to the weights W.

  R(A*) = 0 gives A* = (targets - s softmax(X W*)) / (l2reg k) in closed form.
  As a start, that alone is one fixed-point step from W, a gradient step of
  size 1 / l2reg: far off for a small l2reg. So this returns the A with
  X^T A closest to W, its part in the null space of X X^T (which W cannot
  fix) taken from the closed form: A = (G + eps I)^-1 (X W + eps A_closed)
  with G = X X^T. Where W is the solution, both agree and A = A*.
  """
  k = targets.shape[0]
  mass = jnp.sum(targets, -1, keepdims=True)
  closed = (targets - mass * jax.nn.softmax(images @ weights)) / (l2reg * k)
  gram = images @ images.T
  eps = 1e-6 * jnp.trace(gram) / k
  return jax.scipy.linalg.cho_solve(
      jax.scipy.linalg.cho_factor(gram + eps * jnp.eye(k, dtype=gram.dtype)),
      images @ weights + eps * closed)


def _full_precision(fn: Callable[..., object]) -> Callable[..., object]:
  """Traces `fn` with float32 matrix products at full precision.

  GPUs multiply float32 matrices in TF32 by default; Newton's products then
  cannot reach tol and the solve takes about twice the steps. The products
  are small; the price is a somewhat longer compilation.
  """

  @functools.wraps(fn)
  def wrapped(*args):
    with jax.default_matmul_precision('highest'):
      return fn(*args)

  return wrapped


def make_solver(tol: float, maxiter: int) -> Callable[..., tuple]:
  """Returns `solve(weights, l2reg, images, targets) -> (W, iterations,
  error)`.

  `weights` (p x K) is the starting point; `error` is the larger of the
  gradient norm with respect to W (what the jaxopt solvers report) and
  ||R(A)|| / k, and the solve stops once it is at most `tol` (or after
  `maxiter` steps, or when no step makes progress). Its gradient with
  respect to (l2reg, images, targets) is the implicit one.
  """

  def newton(coef, l2reg, images, targets):
    k = targets.shape[0]
    gram = images @ images.T
    mass = jnp.sum(targets, -1, keepdims=True)

    def objective_and_residual(coef):
      logits = gram @ coef
      loss = jnp.mean(mass[:, 0] * jax.nn.logsumexp(logits, -1) -
                      jnp.sum(targets * logits, -1))
      reg = 0.5 * l2reg * jnp.vdot(coef, logits)
      return loss + reg, _residual(coef, logits, l2reg, targets)

    def error(residual):
      return jnp.maximum(jnp.linalg.norm(images.T @ residual),
                         jnp.linalg.norm(residual)) / k

    def step(carry):
      coef, value, residual, iteration, err, _ = carry
      direction = linalg.jacobian_solver(coef, l2reg, gram, targets)(
          -residual)
      # Armijo backtracking on the inner objective, all candidates at once;
      # the Newton direction descends it (slope = <grad_A f, direction>).
      slope = jnp.vdot(gram @ residual, direction) / k
      steps = jnp.asarray(_STEP_SIZES, coef.dtype)
      values, residuals = jax.vmap(
          lambda t: objective_and_residual(coef + t * direction))(steps)
      errs = jax.vmap(error)(residuals)
      # The largest step that decreases the objective enough (Armijo) or
      # halves the error: near the solution, float32 cannot resolve the
      # objective's decrease, but the full Newton step still shrinks the
      # error fast. When no step does either, the precision is exhausted
      # (with a small l2reg, before tol is met).
      ok = (values <= value + 1e-4 * steps * slope) | (errs < 0.5 * err)
      best = jnp.where(jnp.any(ok), jnp.argmax(ok), jnp.argmin(errs))
      progress = (values[best] < value) | (errs[best] < 0.5 * err)
      coef = jnp.where(progress, coef + steps[best] * direction, coef)
      value = jnp.where(progress, values[best], value)
      residual = jnp.where(progress, residuals[best], residual)
      err = jnp.where(progress, errs[best], err)
      return coef, value, residual, iteration + 1, err, progress

    def not_done(carry):
      *_, iteration, err, progress = carry
      return (err > tol) & (iteration < maxiter) & progress

    value, residual = objective_and_residual(coef)
    coef, _, _, iterations, err, _ = jax.lax.while_loop(
        not_done, step, (coef, value, residual, jnp.asarray(0),
                         error(residual), jnp.asarray(True)))
    return coef, iterations, err

  @jax.custom_vjp
  def solve_coef(coef, l2reg, images, targets):
    return newton(coef, l2reg, images, targets)

  def solve_coef_fwd(coef, l2reg, images, targets):
    coef, iterations, err = newton(coef, l2reg, images, targets)
    return (coef, iterations, err), (coef, l2reg, images, targets)

  @_full_precision
  def solve_coef_bwd(residuals, cotangents):
    """Implicit function theorem: with R(A*(θ), θ) = 0, the cotangent of θ
    is -(dR/dθ)^T u, where (dR/dA)^T u is the cotangent of A*."""
    coef, l2reg, images, targets = residuals
    u = linalg.jacobian_solver(coef, l2reg, images @ images.T, targets,
                               transpose=True)(cotangents[0])
    _, pullback = jax.vjp(functools.partial(representer_residual, coef),
                          l2reg, images, targets)
    return (jnp.zeros_like(coef), *pullback(-u))

  solve_coef.defvjp(solve_coef_fwd, solve_coef_bwd)

  @_full_precision
  def solve(weights, l2reg, images, targets):
    coef = jax.lax.stop_gradient(
        coefficients_for(weights, l2reg, images, targets))
    coef, iterations, err = solve_coef(coef, l2reg, images, targets)
    return images.T @ coef, iterations, err

  return solve
