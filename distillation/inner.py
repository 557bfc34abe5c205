"""The inner problem: fit the classifier on the distilled set.

The inner objective (`config.inner.loss`) is L2-regularized multiclass
logistic regression with soft targets ('logistic', the default),

  f(params; l2reg, images, targets) =
      mean_i CE(targets_i, model(params, images_i)) + l2reg / 2 * ||params||^2,

or ridge regression on the targets ('squared', as KIP, RFAD, FRePo and
RCIG), mean_i ||model(params, images_i) - targets_i||^2 / 2 + the same
penalty. The minimizer is differentiated with respect to (l2reg, images,
targets) by the implicit function theorem (for the squared loss, through
the linear solve of its closed form), not by unrolling a solver.
All hyperparameters are explicit arguments of the objective; closing over
them would silently drop their gradients.

Solvers (`config.inner.solver`) of the logistic loss:
* gradient_descent, lbfgs: jaxopt's, for any model, with `implicit_diff=True`;
  `config.inner.implicit_solve` picks the linear solver of their implicit
  system. With inner_models/linearized.py (its `custom_root`), the only
  module that imports jaxopt (archived upstream), so swapping them for
  `jax.lax.custom_root` or optimistix is a local change.
* newton: exact Newton on the representer coefficients of the linear model
  (`newton.py`); it solves its implicit system with its own factorization,
  which `config.inner.implicit_solve='direct'` states.
The squared loss is solved in closed form (`ridge_weights`), so the solver
and its settings play no part in it.
"""

from collections.abc import Callable
import functools
from typing import Any, NamedTuple
import warnings

import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.scipy.linalg
import ml_collections
import numpy as np
import optax

from distillation import errors
from distillation import newton

with warnings.catch_warnings():
  warnings.simplefilter('ignore')  # jaxopt warns on import that it is archived.
  import jaxopt  # pylint: disable=g-import-not-at-top

Params = Any
ApplyFn = Callable[[Params, jax.Array], jax.Array]
LOSSES = ('logistic', 'squared')
SOLVERS = ('gradient_descent', 'lbfgs', 'newton')
INITS = ('ones', 'zeros')


def _solve_lu(matvec: Callable[[Any], Any], b: Any) -> Any:
  """Dense LU solve of matvec(x) = b for a pytree b; it materializes the
  matrix, so it suits small models only."""
  flat_b, unravel = jax.flatten_util.ravel_pytree(b)
  matrix = jax.vmap(lambda v: jax.flatten_util.ravel_pytree(matvec(unravel(
      v)))[0], out_axes=1)(jnp.eye(flat_b.size, dtype=flat_b.dtype))
  return unravel(jnp.linalg.solve(matrix, flat_b))


# Linear solvers of the jaxopt solvers' implicit system J^T x = v, where J is
# the inner Hessian: jaxopt's default CG on the normal equations; plain CG
# (J is symmetric positive definite: fewer products, better conditioned); or
# a dense LU solve.
IMPLICIT_SOLVES = {'normal_cg': jaxopt.linear_solve.solve_normal_cg,
                   'cg': jaxopt.linear_solve.solve_cg,
                   'lu': _solve_lu}
# Newton's implicit system is solved by the factorization of its steps.
NEWTON_IMPLICIT_SOLVE = 'direct'


class InnerResult(NamedTuple):
  params: Params
  iterations: jax.Array  # Solver iterations taken.
  error: jax.Array  # The solver's final optimality error (see make_solver).


def objective(params: Params, l2reg: jax.Array, images: jax.Array,
              targets: jax.Array, *, apply_fn: ApplyFn) -> jax.Array:
  """L2-regularized cross-entropy of `apply_fn(params, images)`."""
  logits = apply_fn(params, images)
  data_loss = jnp.mean(optax.softmax_cross_entropy(logits, targets))
  sq_norm = sum(jnp.vdot(p, p) for p in jax.tree.leaves(params))
  return data_loss + 0.5 * l2reg * sq_norm


def init_params(inner_config: ml_collections.ConfigDict,
                abstract_params: Params) -> Params:
  """The solver's starting point, shaped like `abstract_params`."""
  fill = {'ones': np.ones, 'zeros': np.zeros}.get(inner_config.init)
  if fill is None:
    raise errors.UserError(
        f'config.inner.init={inner_config.init!r} is unknown; use one of '
        f'{", ".join(INITS)}.')
  return jax.tree.map(lambda p: fill(p.shape, p.dtype), abstract_params)


def implicit_diff_solve(inner_config: ml_collections.ConfigDict,
                        setting: str, maxiter: int | None = None) -> Callable:
  """The jaxopt solvers' implicit-system solve that
  config.inner.implicit_solve names, to config.inner.implicit_tol (and
  `maxiter` steps, None: jaxopt's default); else a UserError naming
  `setting`, the solver it is for."""
  name = inner_config.implicit_solve
  if name not in IMPLICIT_SOLVES:
    raise errors.UserError(
        f'config.inner.implicit_solve={name!r} is unknown for {setting}; use '
        f'one of {", ".join(IMPLICIT_SOLVES)}.')
  if name == 'lu':
    return IMPLICIT_SOLVES[name]
  return functools.partial(IMPLICIT_SOLVES[name],
                           tol=inner_config.implicit_tol, maxiter=maxiter)


def make_solver(
    inner_config: ml_collections.ConfigDict, apply_fn: ApplyFn
) -> Callable[[Params, jax.Array, jax.Array, jax.Array], InnerResult]:
  """Returns `solve(init, l2reg, images, targets) -> InnerResult`.

  The solve has converged when `error <= inner_config.tol`: for the jaxopt
  solvers and the squared loss's closed form `error` is the norm of the
  objective's gradient; for newton, the larger of that and the norm of its
  representer residual over k.
  """
  solver, name = inner_config.solver, inner_config.implicit_solve
  loss = inner_config.get('loss', 'logistic')  # Older configs: logistic.
  if loss not in LOSSES:
    raise errors.UserError(
        f'config.inner.loss={loss!r} is unknown; use one of '
        f'{", ".join(LOSSES)}.')
  if solver not in SOLVERS:
    raise errors.UserError(
        f'config.inner.solver={solver!r} is unknown; use one of '
        f'{", ".join(SOLVERS)}.')
  if loss == 'squared':
    return _ridge
  if solver == 'newton':
    if name != NEWTON_IMPLICIT_SOLVE:
      raise errors.UserError(
          f'config.inner.implicit_solve={name!r} does not fit '
          f"config.inner.solver='newton', which solves its implicit system "
          f'with the factorization of its own steps; set '
          f'config.inner.implicit_solve={NEWTON_IMPLICIT_SOLVE}.')
    return _newton(inner_config)
  implicit_solve = implicit_diff_solve(
      inner_config, f'config.inner.solver={solver!r}')
  fun = lambda params, l2reg, images, targets: objective(
      params, l2reg, images, targets, apply_fn=apply_fn)
  jaxopt_solver = {'gradient_descent': jaxopt.GradientDescent,
                   'lbfgs': jaxopt.LBFGS}[solver](
                       fun=fun, tol=inner_config.tol,
                       maxiter=inner_config.maxiter, implicit_diff=True,
                       implicit_diff_solve=implicit_solve)

  def solve(init, l2reg, images, targets):
    params, state = jaxopt_solver.run(init, l2reg, images, targets)
    return InnerResult(params, state.iter_num, state.error)

  return solve


def ridge_weights(l2reg: jax.Array, images: jax.Array,
                  targets: jax.Array) -> jax.Array:
  """The minimizer W (p x K) of mean_i ||x_i W - y_i||^2 / 2 + l2reg / 2
  ||W||^2 over the k rows x_i of `images` (k x p).

  W = X^T (X X^T + l2reg k I)^-1 Y on the k x k Gram matrix (kernel ridge)
  when k <= p, else the same W as (X^T X + l2reg k I)^-1 X^T Y on the p x p
  covariance (e.g. a whole training split). A Cholesky solve that JAX
  differentiates exactly, reusing its factorization (custom_linear_solve).
  """
  k, p = images.shape
  with jax.default_matmul_precision('highest'):  # Not TF32 on GPUs.
    if k <= p:
      gram = images @ images.T + l2reg * k * jnp.eye(k, dtype=images.dtype)
      return images.T @ jax.scipy.linalg.solve(gram, targets, assume_a='pos')
    cov = images.T @ images + l2reg * k * jnp.eye(p, dtype=images.dtype)
    return jax.scipy.linalg.solve(cov, images.T @ targets, assume_a='pos')


def _linear_kernel(init, images, targets, setting, fix):
  """The single (num_features, num_classes) kernel of the linear model's
  params `init`, and their treedef; else a UserError naming `setting`."""
  leaves, treedef = jax.tree.flatten(init)
  if len(leaves) != 1 or leaves[0].shape != (images.shape[1],
                                             targets.shape[1]):
    raise errors.UserError(
        f'{setting} needs the linear model (one (num_features, num_classes) '
        f'kernel); {fix} for other models.')
  return leaves[0], treedef


def _ridge(init, l2reg, images, targets):
  """The squared loss's solve: `ridge_weights` in the linear model's
  params; its error is the norm of the objective's gradient there."""
  _, treedef = _linear_kernel(init, images, targets,
                              "config.inner.loss='squared'",
                              'use the logistic loss')
  weights = ridge_weights(l2reg, images, targets)
  with jax.default_matmul_precision('highest'):
    grad = (images.T @ (images @ weights - targets) / images.shape[0] +
            l2reg * weights)
  return InnerResult(jax.tree.unflatten(treedef, [weights]),
                     jnp.asarray(1), jnp.linalg.norm(grad))


def _newton(inner_config):
  """`newton.make_solver` on the linear model's single kernel."""
  solve_weights = newton.make_solver(inner_config.tol, inner_config.maxiter)

  def solve(init, l2reg, images, targets):
    kernel, treedef = _linear_kernel(init, images, targets,
                                     'config.inner.solver=newton',
                                     'use lbfgs')
    weights, iterations, err = solve_weights(kernel, l2reg, images, targets)
    return InnerResult(jax.tree.unflatten(treedef, [weights]), iterations,
                       err)

  return solve
