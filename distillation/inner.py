"""The inner problem: fit the classifier on the distilled set.

This is the only module that imports jaxopt (archived upstream), so swapping
the solver for `jax.lax.custom_root` or optimistix is a local change.

The inner objective is L2-regularized multiclass logistic regression with
soft targets,

  f(params; l2reg, images, targets) =
      mean_i CE(targets_i, model(params, images_i)) + l2reg / 2 * ||params||^2,

and its minimizer is differentiated with respect to (l2reg, images, targets)
by the implicit function theorem (`implicit_diff=True`), not by unrolling the
solver's iterations. All hyperparameters are explicit arguments of the
objective; closing over them would silently drop their gradients.
"""

from collections.abc import Callable
import functools
from typing import Any, NamedTuple
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from distillation import errors

with warnings.catch_warnings():
  warnings.simplefilter('ignore')  # jaxopt warns on import that it is archived.
  import jaxopt  # pylint: disable=g-import-not-at-top

Params = Any
ApplyFn = Callable[[Params, jax.Array], jax.Array]
SOLVERS = ('gradient_descent', 'lbfgs')
INITS = ('ones', 'zeros')
# Linear solvers for the implicit function theorem's system H x = v, where H
# is the inner Hessian: jaxopt's default CG on the normal equations, or plain
# CG, valid since H is symmetric positive definite (fewer products, better
# conditioned).
IMPLICIT_SOLVES = {'normal_cg': jaxopt.linear_solve.solve_normal_cg,
                   'cg': jaxopt.linear_solve.solve_cg}


class InnerResult(NamedTuple):
  params: Params
  iterations: jax.Array  # Solver iterations taken.
  error: jax.Array  # The solver's final optimality error (gradient norm).


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


def make_solver(
    inner_config: ml_collections.ConfigDict, apply_fn: ApplyFn
) -> Callable[[Params, jax.Array, jax.Array, jax.Array], InnerResult]:
  """Returns `solve(init, l2reg, images, targets) -> InnerResult`."""
  fun = lambda params, l2reg, images, targets: objective(
      params, l2reg, images, targets, apply_fn=apply_fn)
  if inner_config.implicit_solve not in IMPLICIT_SOLVES:
    raise errors.UserError(
        f'config.inner.implicit_solve={inner_config.implicit_solve!r} is '
        f'unknown; use one of {", ".join(IMPLICIT_SOLVES)}.')
  implicit_solve = functools.partial(
      IMPLICIT_SOLVES[inner_config.implicit_solve],
      tol=inner_config.implicit_tol)
  common = dict(fun=fun, tol=inner_config.tol, maxiter=inner_config.maxiter,
                implicit_diff=True, implicit_diff_solve=implicit_solve)
  if inner_config.solver == 'gradient_descent':
    solver = jaxopt.GradientDescent(**common)
  elif inner_config.solver == 'lbfgs':
    solver = jaxopt.LBFGS(**common)
  else:
    raise errors.UserError(
        f'config.inner.solver={inner_config.solver!r} is unknown; use one of '
        f'{", ".join(SOLVERS)}.')

  def solve(init, l2reg, images, targets):
    params, state = solver.run(init, l2reg, images, targets)
    return InnerResult(params, state.iter_num, state.error)

  return solve
