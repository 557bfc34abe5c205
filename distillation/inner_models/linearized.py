"""The network itself as the inner model, linearized around a base network
(RCIG: Loo et al., "Dataset Distillation with Convexified Implicit
Gradients", ICML 2023).

A base network is a body b0 (the feature network of `config.model`) and a
dense head a0. Around it the network is linearized in its body: with phi the
body's features and J = d phi / d b at b0,

  f(x; W, delta) = phi(x; b0) W + (J(x) delta) a0,

linear in the head W and the body offset delta. Fit on the distilled set
(X, Y) with ridge penalties,

  L(W, delta) = mean_i ||f(x_i) - y_i||^2 / 2 + l2reg / 2 ||W||^2
                + body_l2reg / 2 ||delta||^2,

the inner problem is a convex quadratic. W has the closed form of
`inner.ridge_weights` on the residual targets Y - (J delta) a0; eliminating
it leaves

  F(delta) = l2reg / 2 tr(R^T (G + l2reg k I)^-1 R) + body_l2reg / 2 ||delta||^2,
  R = Y - (J delta) a0,  G = phi phi^T  (k x k),

which conjugate gradients minimizes matrix-free (Hessian-vector products by
jvp of grad), for config.inner.maxiter steps or until ||grad F|| <=
config.inner.tol. The hypergradient is the implicit function theorem on
grad F(delta*) = 0 (`jaxopt.implicit_diff.custom_root`, its system solved
by CG: config.inner.implicit_maxiter steps or a residual of implicit_tol
times the right-hand side's; the Hessian is symmetric positive definite),
plus the direct term through W's closed form. The implicit solves that stop
above that residual are counted (`fit`'s probe; `implicit_unconverged`).
config.inner.cg_unroll writes both CG loops out step by step (for XLA's CPU
backend: see `conjugate_gradients`).

Base networks: each step's `nets_per_step` fresh random ones, or the pool's
members (`pool.py`) whose turn it is, trained on the distilled set. Their
heads start at random, not zero, so that the logits depend on the body from
the first step.

The head's loss: squared (the KRR head of KIP, FRePo and RCIG), as above; or
logistic (the seed's), whose inner loss, the cross-entropy of f with the same
penalties, is still convex in (W, delta) but has no closed form in W: both
are fit jointly by config.inner.solver (jaxopt's gradient_descent or lbfgs,
to config.inner.tol) and differentiated by jaxopt's implicit rule with
config.inner.implicit_solve, as the head on features is.
"""

from collections.abc import Callable
from typing import Any
import warnings

import jax
import jax.numpy as jnp
import jax.scipy.linalg
import ml_collections
import numpy as np
import optax

from distillation import errors
from distillation import features
from distillation import inner
from distillation import input_pipeline
from distillation import pool as pool_lib
from distillation.inner_models import base

with warnings.catch_warnings():
  warnings.simplefilter('ignore')  # jaxopt warns on import that it is archived.
  import jaxopt  # pylint: disable=g-import-not-at-top

_KEY = jax.ShapeDtypeStruct((2,), jnp.uint32)
# The jaxopt solvers of the logistic head, fit jointly with the body offset.
_JOINT_SOLVERS = {'gradient_descent': jaxopt.GradientDescent,
                  'lbfgs': jaxopt.LBFGS}


def _vdot(a: Any, b: Any) -> jax.Array:
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a),
                                            jax.tree.leaves(b)))


def conjugate_gradients(matvec: Callable[[Any], Any], b: Any, x0: Any,
                        tol: float, maxiter: int, unroll: bool = False
                        ) -> tuple[Any, jax.Array, jax.Array]:
  """Solves matvec(x) = b (symmetric positive definite) from x0 until the
  residual's norm is at most `tol` or `maxiter` steps; (x, steps taken,
  the residual's norm as CG's recursion tracks it).

  unroll: all maxiter steps as straight-line code, each a no-op once the
  residual is small enough, instead of a while loop; XLA's CPU backend runs
  convolutions an order of magnitude slower inside a loop. Not
  differentiated: custom_root gives the solution's derivative.
  """
  axpy = lambda a, x, y: jax.tree.map(lambda u, v: a * u + v, x, y)
  r = jax.tree.map(jnp.subtract, b, matvec(x0))
  rr = _vdot(r, r)
  carry = (x0, r, r, rr, jnp.zeros((), jnp.int32))

  def body(carry):
    x, r, p, rr, i = carry
    active = rr > tol**2
    ap = matvec(p)
    # Zero steps once converged (where p, and so p.Ap, may vanish).
    alpha = jnp.where(active, rr / jnp.where(active, _vdot(p, ap), 1.0), 0.0)
    x = axpy(alpha, p, x)
    r = axpy(-alpha, ap, r)
    rr_new = jnp.where(active, _vdot(r, r), rr)
    p = jax.tree.map(lambda u, v: jnp.where(active, u, v),
                     axpy(rr_new / jnp.where(active, rr, 1.0), p, r), p)
    return x, r, p, rr_new, i + active.astype(jnp.int32)

  if unroll:
    for _ in range(maxiter):
      carry = body(carry)
  else:
    carry = jax.lax.while_loop(
        lambda c: (c[3] > tol**2) & (c[4] < maxiter), body, carry)
  return carry[0], carry[4], jnp.sqrt(carry[3])


class Linearized(base.InnerModel):
  """The linearized network; fits stacked per base network, each
  {'kernel': W (num_features, num_classes), 'delta': the body's offset}."""

  name = 'linearized'

  def __init__(self, config: ml_collections.ConfigDict,
               info: input_pipeline.DatasetInfo):
    model_config, inner_config = config.model, config.inner
    self.feature_map = features.FeatureMap(model_config, info.image_shape)
    self.num_classes = info.num_classes
    self.loss = inner_config.get('loss', 'logistic')
    if self.loss not in ('squared', 'logistic'):
      raise errors.UserError(
          f'config.inner.loss={self.loss!r} is unknown; use squared or '
          'logistic.')
    if self.loss == 'logistic' and inner_config.solver not in _JOINT_SOLVERS:
      raise errors.UserError(
          f'config.inner.solver={inner_config.solver!r} does not fit '
          "config.inner.loss='logistic' with config.model.linearize=True, "
          'whose head and body offset are fit jointly by a jaxopt solver; '
          f"set config.inner.solver to one of {', '.join(_JOINT_SOLVERS)}.")
    # Only the squared loss's own CG reports its implicit solves (`fit`).
    self.counts_implicit_solves = self.loss == 'squared'
    if inner_config.warm_start:
      raise errors.UserError(
          'config.inner.warm_start=True does not fit config.model.linearize='
          'True: each step has other base networks, so the last solution is '
          'no start; set it False.')
    self.body_l2reg = model_config.body_l2reg
    if not 0 < self.body_l2reg < np.inf:
      raise errors.UserError(
          f'config.model.body_l2reg={self.body_l2reg} must be positive and '
          'finite: it makes the inner problem strongly convex.')
    for field in ('maxiter', 'implicit_maxiter'):
      if inner_config[field] < 1:
        raise errors.UserError(
            f'config.inner.{field}={inner_config[field]} must be at least 1.')
    for field in ('tol', 'implicit_tol'):
      if not inner_config[field] > 0:
        raise errors.UserError(
            f'config.inner.{field}={inner_config[field]} must be positive.')
    self.tol, self.maxiter = inner_config.tol, inner_config.maxiter
    self.unroll = inner_config.get('cg_unroll', False)
    self.pool = None
    if pool_lib.enabled(model_config):
      self.pool = pool_lib.Pool(model_config, self.feature_map,
                                info.num_classes, random_head=True)
    implicit_tol = inner_config.implicit_tol
    implicit_maxiter = inner_config.implicit_maxiter

    def implicit_solve(matvec, b):
      """CG on the implicit system, to a residual of implicit_tol ||b||;
      an unconverged solve subtracts 1 from the probe's slot (`_optimality`)."""
      x0 = jax.tree.map(jnp.zeros_like, b)
      tol = implicit_tol * jnp.sqrt(_vdot(b, b))
      (delta, slot), _, residual = conjugate_gradients(
          matvec, b, x0, tol, implicit_maxiter, self.unroll)
      return delta, slot - (residual > tol).astype(slot.dtype)

    self._solve_delta = jaxopt.implicit_diff.custom_root(
        self._optimality, has_aux=True, solve=implicit_solve)(self._minimize)
    if self.loss == 'logistic':
      solve = inner.implicit_diff_solve(
          inner_config, 'the linearized logistic head', implicit_maxiter)
      self._joint = _JOINT_SOLVERS[inner_config.solver](
          fun=self._logistic_objective, tol=self.tol, maxiter=self.maxiter,
          implicit_diff=True, implicit_diff_solve=solve)
    body = jax.eval_shape(self.feature_map.init, _KEY)
    self.initial_params = {
        'kernel': np.zeros((self.feature_map.num_features, info.num_classes),
                           np.float32),
        'delta': jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), body)}

  def _member(self, key: jax.Array) -> dict[str, Any]:
    """A random base network: body and head kernel (as a pool member's)."""
    return {'features': self.feature_map.init(key),
            'kernel': pool_lib.random_head_kernel(
                key, (self.feature_map.num_features, self.num_classes))}

  def init_state(self, key):
    return {} if self.pool is None else self.pool.init(key)

  def context(self, state, step, key) -> list[dict[str, Any]]:
    if self.pool is None:
      return self.eval_context(key)
    return [jax.lax.stop_gradient({'features': jax.tree.map(
        lambda x, i=i: x[i], state['features']),
                                   'kernel': state['head']['kernel'][i]})
            for i in self.pool.select(step)]

  def eval_context(self, key) -> list[dict[str, Any]]:
    return [self._member(jax.random.fold_in(key, i))
            for i in range(self.feature_map.nets_per_step)]

  def _linearize(self, member, images):
    """phi(images; b0) and delta -> (J delta) a0, the tangent logits."""
    phi, jvp = jax.linearize(lambda b: self.feature_map(b, images),
                             member['features'])
    return phi, lambda delta: jvp(delta) @ member['kernel']

  def _objective(self, delta, l2reg, images, targets, member):
    """F(delta): the inner loss with the head W at its closed form."""
    phi, tangent = self._linearize(member, images)
    return self._reduced(delta, l2reg, phi, tangent, targets)

  def _reduced(self, delta, l2reg, phi, tangent, targets):
    k = phi.shape[0]
    residual = targets - tangent(delta)
    with jax.default_matmul_precision('highest'):  # Not TF32 on GPUs.
      gram = phi @ phi.T + l2reg * k * jnp.eye(k, dtype=phi.dtype)
      data = 0.5 * l2reg * jnp.vdot(residual, jax.scipy.linalg.solve(
          gram, residual, assume_a='pos'))
    return data + 0.5 * self.body_l2reg * _vdot(delta, delta)

  def _optimality(self, solution, probe, l2reg, images, targets, member):
    """grad F(delta) = 0, and slot = probe for the probe's slot.

    The slot's block of the implicit system is the identity and its
    cotangent zero, so its exact solution is 0 and it changes nothing else;
    the probe's cotangent is minus what `implicit_solve` returns for it, so
    1 per unconverged solve (the only way out of a backward pass).
    """
    delta, slot = solution
    return (jax.grad(self._objective)(delta, l2reg, images, targets, member),
            slot - probe)

  def _minimize(self, init, probe, l2reg, images, targets, member):
    """CG on the quadratic F from `init`'s delta; ((delta, probe), (steps,
    ||grad F||))."""
    init = init[0]
    phi, tangent = self._linearize(member, images)
    grad = jax.grad(lambda d: self._reduced(d, l2reg, phi, tangent, targets))
    hvp = lambda v: jax.jvp(grad, (init,), (v,))[1]
    # F is quadratic: grad F(d) = H d - b with b = -grad F(0).
    zero = jax.tree.map(jnp.zeros_like, init)
    b = jax.tree.map(jnp.negative, grad(zero))
    delta, steps, _ = conjugate_gradients(hvp, b, init, self.tol,
                                          self.maxiter, self.unroll)
    error = jnp.sqrt(_vdot(grad(delta), grad(delta)))
    return (delta, probe), (steps, error)

  def _logistic_objective(self, params, l2reg, images, targets, member):
    """The inner loss with the logistic head: cross-entropy of f, with the
    ridge penalties on W and delta."""
    phi, tangent = self._linearize(member, images)
    with jax.default_matmul_precision('highest'):
      logits = phi @ params['kernel'] + tangent(params['delta'])
    data = jnp.mean(optax.softmax_cross_entropy(logits, targets))
    return data + 0.5 * (l2reg * jnp.vdot(params['kernel'], params['kernel'])
                         + self.body_l2reg * _vdot(params['delta'],
                                                   params['delta']))

  def fit(self, context, hyper, init=None, transform=base.identity,
          probe=None) -> inner.InnerResult:
    l2reg, images, targets = hyper
    probe = jnp.zeros((), images.dtype) if probe is None else probe.astype(
        images.dtype)
    results = []
    for i, member in enumerate(context):
      x = transform(images, i)
      start = jax.tree.map(lambda p: jnp.zeros(p.shape, x.dtype),
                           self.initial_params['delta'])
      member = jax.tree.map(lambda p: jnp.asarray(p, x.dtype), member)
      if self.loss == 'logistic':
        # Jointly, from W = 0 and delta = 0 (the base network's body).
        params, state = self._joint.run(
            {'kernel': jnp.zeros(self.initial_params['kernel'].shape,
                                 x.dtype), 'delta': start},
            l2reg, x, targets, member)
        results.append(inner.InnerResult(params, state.iter_num,
                                         state.error))
        continue
      (delta, _), (steps, error) = self._solve_delta(
          (start, probe), probe, l2reg, x, targets, member)
      phi, tangent = self._linearize(member, x)
      kernel = inner.ridge_weights(l2reg, phi, targets - tangent(delta))
      results.append(inner.InnerResult({'kernel': kernel, 'delta': delta},
                                       steps, error))
    return jax.tree.map(lambda *x: jnp.stack(x), *results)

  def logits(self, context, params, images) -> jax.Array:
    out = []
    for i, member in enumerate(context):
      phi, dphi = jax.jvp(
          lambda b, x=images: self.feature_map(b, x),
          (member['features'],),
          (jax.tree.map(lambda d, i=i: d[i], params['delta']),))
      with jax.default_matmul_precision('highest'):
        out.append(phi @ params['kernel'][i] + dphi @ member['kernel'])
    return jnp.stack(out)

  def update(self, state, step, key, hyper, batch):
    if self.pool is None:
      return state
    _, images, targets = hyper
    return self.pool.update(state, step, key, images, targets, batch)
