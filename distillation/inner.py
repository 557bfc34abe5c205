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

Solvers: jaxopt's gradient descent (the seed's) and L-BFGS work for any
model; `newton` is exact and fast for the linear model only. By the
representer theorem the minimizer is W = X^T A, where X holds the k distilled
images and A (k x K) solves the fixed point

  R(A) = l2reg * k * A + s * softmax(X X^T A) - targets = 0,

with s the row sums of the targets (1 for labels; kept so that derivatives
with respect to the targets are those of the cross-entropy).

Newton's method on R needs k*K unknowns instead of p*K and converges in a few
steps (two or three from the previous outer step's solution). Its systems,
and the transposed one of the implicit gradient, are solved exactly
(`jacobian_solver`): on accelerators by one Cholesky factorization of a
symmetric positive definite (kK x kK) matrix; on CPUs, beyond 256 unknowns,
in O(K k^3) rather than O((kK)^3), as the Jacobian is K diagonal blocks of
size k plus a low-rank part.
"""

from collections.abc import Callable
import functools
from typing import Any, NamedTuple
import warnings

import jax
import jax.flatten_util
import jax.scipy.linalg
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
SOLVERS = ('gradient_descent', 'lbfgs', 'newton')
INITS = ('ones', 'zeros')
# Linear solvers for the implicit function theorem's system J^T x = v, where J
# is the Jacobian of the optimality condition: jaxopt's default CG on the
# normal equations; plain CG where J is the inner Hessian (symmetric positive
# definite: fewer products, better conditioned); or a dense LU solve.
def _solve_lu(matvec: Callable[[Any], Any], b: Any) -> Any:
  """Dense LU solve of matvec(x) = b for a pytree b (materializes the matrix,
  so only for small systems such as newton's kK unknowns)."""
  flat_b, unravel = jax.flatten_util.ravel_pytree(b)
  matrix = jax.vmap(lambda v: jax.flatten_util.ravel_pytree(matvec(unravel(
      v)))[0], out_axes=1)(jnp.eye(flat_b.size, dtype=flat_b.dtype))
  return unravel(jnp.linalg.solve(matrix, flat_b))


IMPLICIT_SOLVES = {'normal_cg': jaxopt.linear_solve.solve_normal_cg,
                   'cg': jaxopt.linear_solve.solve_cg,
                   'lu': _solve_lu}
# Backtracking candidates of the Newton step, all tried at once.
_NEWTON_STEP_SIZES = 0.5 ** np.arange(8)


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
  name = inner_config.implicit_solve
  if name not in IMPLICIT_SOLVES or (
      inner_config.solver == 'newton' and name != 'lu'):
    raise errors.UserError(
        f'config.inner.implicit_solve={name!r} is unknown or does not fit '
        f'config.inner.solver={inner_config.solver!r}; use one of '
        f'{", ".join(IMPLICIT_SOLVES)} (lu with newton, which solves its '
        'implicit system directly, as it does its Newton steps).')
  if inner_config.solver == 'newton':
    return _newton_solver(inner_config)
  implicit_solve = IMPLICIT_SOLVES[name]
  if name != 'lu':
    implicit_solve = functools.partial(implicit_solve,
                                       tol=inner_config.implicit_tol)
  fun = lambda params, l2reg, images, targets: objective(
      params, l2reg, images, targets, apply_fn=apply_fn)
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


def representer_residual(coef: jax.Array, l2reg: jax.Array, images: jax.Array,
                         targets: jax.Array) -> jax.Array:
  """R(A): zero exactly when W = images^T A minimizes the inner objective."""
  return _residual(coef, images @ (images.T @ coef), l2reg, targets)


def _residual(coef, logits, l2reg, targets):
  """R(A) given the distilled set's logits X X^T A."""
  mass = jnp.sum(targets, -1, keepdims=True)
  return (l2reg * coef.shape[0] * coef + mass * jax.nn.softmax(logits) -
          targets)


def _unstacked(fn: Callable[..., Any]) -> Callable[..., Any]:
  """Maps `fn` over the leading axis with one call per slice.

  jaxlib's batched LAPACK kernels on CPU split a batch over the thread pool
  they already run in and wait for it; two at once can deadlock a small
  pool (seen with 2 cores). Unbatched calls do not wait, so on CPU the
  blocks are factored and solved one at a time.
  """

  def per_slice(*args):
    outs = [fn(*[a[i] for a in args]) for i in range(len(args[0]))]
    return jax.tree.map(lambda *x: jnp.stack(x), *outs)

  return lambda *args: jax.lax.platform_dependent(*args, cpu=per_slice,
                                                  default=fn)


_block_lu_factor = _unstacked(jax.scipy.linalg.lu_factor)


def _block_lu_solve(lu, piv, b, trans=0):
  return _unstacked(lambda lu, piv, b: jax.scipy.linalg.lu_solve(
      (lu, piv), b, trans=trans))(lu, piv, b)


# Up to this many unknowns (k * K), the Newton system is solved densely;
# beyond, by blocks. On CPUs the block solve is cheaper above 256. On
# accelerators, cuSOLVER's LU of many small blocks is slow and one Cholesky
# factorization of the whole system takes a few large kernels, up to where
# its (kK)^2 matrix gets large (400 MB at 10^4 unknowns).
DENSE_NEWTON_MAX = {'cpu': 256, 'accelerator': 10_000}


def jacobian_solver(coef: jax.Array, l2reg: jax.Array, gram: jax.Array,
                    targets: jax.Array, transpose: bool = False,
                    dense_max: int | None = None
                    ) -> Callable[[jax.Array], jax.Array]:
  """Returns X -> (dR/dA)^-1 X, or (dR/dA)^-T X, for k x K matrices X.

  Up to `dense_max` unknowns (default: DENSE_NEWTON_MAX for the platform)
  densely, by a Cholesky factorization of a (kK x kK) matrix (below);
  beyond, by blocks:

  dR/dA = l2reg k I + S (G (x) I), with G = X X^T and S block-diagonal over
  examples: S_i = s_i (diag(p_i) - p_i p_i^T), the softmax Jacobian. With t
  the top class of p_i and r_i = p_i without its top entry,

    diag(p) - p p^T = E - r p^T - p_t e_t r^T,

  where E = diag(p) but E_tt = p_t (1 - p_t): a diagonal part plus rank 2
  per example. The diagonal part acts on each
  class's column of A separately, so dR/dA = M - U W^T with K blocks
  M_c = l2reg k I + diag(s E_c) G of size k and a rank-2k U W^T; the
  Woodbury identity then costs O(K k^3) instead of O((kK)^3) for the dense
  (kK x kK) matrix. Splitting at the top class keeps E from cancelling
  against the low-rank part when predictions are confident (small l2reg);
  one step of iterative refinement with the exact product does the rest.
  The dense form needs neither (tests/inner_test.py checks both in float32).
  """
  k, num_classes = coef.shape
  probs = jax.nn.softmax(gram @ coef)
  mass = jnp.sum(targets, -1, keepdims=True)
  lam = l2reg * k
  if dense_max is None:
    dense_max = DENSE_NEWTON_MAX[
        'cpu' if jax.default_backend() == 'cpu' else 'accelerator']
  if k * num_classes <= dense_max:
    # S = C C^T with C block-diagonal over examples,
    # C_i = sqrt(s_i) (diag(sqrt(p_i)) - p_i sqrt(p_i)^T). By the
    # push-through identity, (lam I + C C^T G)^-1 = (I - C N^-1 C^T G) / lam
    # with N = lam I + C^T G C, symmetric positive definite even where G is
    # singular: a Cholesky factorization, not an LU (cuSOLVER's kernels for
    # 100 unknowns take 32 us against 133 us on an H200).
    root = jnp.sqrt(probs)
    c = jnp.sqrt(mass)[:, :, None] * (
        root[:, :, None] * jnp.eye(num_classes, dtype=coef.dtype) -
        probs[:, :, None] * root[:, None, :])
    n = jnp.einsum('ij,iac,jad->icjd', gram, c, c).reshape(
        k * num_classes, k * num_classes)
    cho = jax.scipy.linalg.cho_factor(
        n + lam * jnp.eye(k * num_classes, dtype=coef.dtype), lower=True)

    def through_n(v):  # C N^-1 C^T v.
      z = jax.scipy.linalg.cho_solve(cho, jnp.einsum('iac,ia->ic', c,
                                                     v).ravel())
      return jnp.einsum('iac,ic->ia', c, z.reshape(v.shape))

    if transpose:
      return lambda rhs: (rhs - gram @ through_n(rhs)) / lam
    return lambda rhs: (rhs - through_n(gram @ rhs)) / lam
  top = jax.nn.one_hot(jnp.argmax(probs, -1), num_classes, dtype=coef.dtype)
  p_top = jnp.sum(probs * top, -1, keepdims=True)
  rest = probs - p_top * top
  diag = mass * (rest + p_top * (1 - p_top) * top)
  # Leading axis: the class c. M_c = l2reg k I + diag(s E_c) G; per class,
  # U_c = [diag(a_c), diag(b_c)] and W_c = [G diag(p_c), G diag(r_c)] with
  # a = s r, b = s p_t e_t (all K x k below).
  m = lam * jnp.eye(k, dtype=coef.dtype) + diag.T[:, :, None] * gram
  a, b = (mass * rest).T, (mass * p_top * top).T
  p, r = probs.T, rest.T
  m_lu = _block_lu_factor(m)
  # The system is B - P Q^T: B = M, P = U, Q = W, or transposed B = M^T,
  # P = W, Q = U. The capacitance I - Q^T B^-1 P has blocks
  # diag(x_c) H_c diag(y_c) summed over c, with H_c = G M_c^-1 or its
  # transpose M_c^-T G: one block solve with k right-hand sides, not 2k
  # plus a (2k x kK x 2k) product.
  h = _block_lu_solve(*m_lu, jnp.broadcast_to(gram, m.shape), trans=1)
  if transpose:
    left, right = (a, b), (p, r)
  else:
    left, right, h = (p, r), (a, b), jnp.swapaxes(h, 1, 2)
  capacitance_lu = jax.scipy.linalg.lu_factor(
      jnp.eye(2 * k, dtype=coef.dtype) - jnp.block(
          [[jnp.einsum('ci,cij,cj->ij', x, h, y) for y in right]
           for x in left]))

  def woodbury(rhs):  # (B - P Q^T)^-1 rhs = B^-1 (rhs + P t).
    y = _block_lu_solve(*m_lu, rhs.T[:, :, None], trans=int(transpose))
    qy = y[..., 0] if transpose else y[..., 0] @ gram
    t = jax.scipy.linalg.lu_solve(
        capacitance_lu, jnp.concatenate([jnp.sum(x * qy, 0) for x in left]))
    pt = right[0] * t[:k] + right[1] * t[k:]
    pt = pt @ gram if transpose else pt
    return _block_lu_solve(*m_lu, (rhs.T + pt)[:, :, None],
                           trans=int(transpose))[..., 0].T

  def softmax_jacobian(v):  # S v.
    return mass * (probs * v - probs * jnp.sum(probs * v, -1, keepdims=True))

  def product(x):
    if transpose:
      return lam * x + gram @ softmax_jacobian(x)
    return lam * x + softmax_jacobian(gram @ x)

  def solve(rhs):
    x = woodbury(rhs)
    return x + woodbury(rhs - product(x))

  return solve


def _full_precision(fn: Callable[..., Any]) -> Callable[..., Any]:
  """Traces `fn` with float32 matrix products at full precision.

  GPUs multiply float32 matrices in TF32 by default; Newton's products then
  cannot reach tol: a warm-started solve took 5.4 steps instead of 3.3 at 1
  image per class, 6.7 instead of 2.4 at 50 (H200). The products are small;
  the price is compilation (roughly 1 s more on that GPU, estimated across
  two machines).
  """

  @functools.wraps(fn)
  def wrapped(*args):
    with jax.default_matmul_precision('highest'):
      return fn(*args)

  return wrapped


def _newton_solver(inner_config):
  """Newton's method on the representer coefficients A (linear model).

  Its implicit gradient solves the transposed Newton system at the solution:
  the backward pass is one `jacobian_solver` and one vector-Jacobian product
  of R.
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

    def error(residual):  # ||gradient wrt W||, as the other solvers report.
      return jnp.linalg.norm(images.T @ residual) / k

    def step(carry):
      coef, value, residual, iteration, err, _ = carry
      direction = jacobian_solver(coef, l2reg, gram, targets)(-residual)
      # Armijo backtracking on the inner objective, all candidates at once;
      # the Newton direction descends it (slope = <grad_A f, direction>).
      slope = jnp.vdot(gram @ residual, direction) / k
      steps = jnp.asarray(_NEWTON_STEP_SIZES, coef.dtype)
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
      return (err > inner_config.tol) & (iteration < inner_config.maxiter) & (
          progress)

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
    u = jacobian_solver(coef, l2reg, images @ images.T, targets,
                        transpose=True)(cotangents[0])
    _, pullback = jax.vjp(functools.partial(representer_residual, coef),
                          l2reg, images, targets)
    return (jnp.zeros_like(coef), *pullback(-u))

  solve_coef.defvjp(solve_coef_fwd, solve_coef_bwd)

  @_full_precision
  def solve(init, l2reg, images, targets):
    leaves, treedef = jax.tree.flatten(init)
    if len(leaves) != 1 or leaves[0].shape != (images.shape[1],
                                               targets.shape[1]):
      raise errors.UserError(
          'config.inner.solver=newton needs the linear model (one '
          '(num_pixels, num_classes) kernel); use lbfgs for other models.')
    # Starting point: the A with images^T A closest to W = init (a ridge-
    # regularized least squares solve of k unknowns per class, as X X^T may
    # be singular); exact if init is the solution (warm start).
    gram = images @ images.T
    ridge = 1e-6 * jnp.trace(gram) / gram.shape[0]
    coef = jax.lax.stop_gradient(jax.scipy.linalg.cho_solve(
        jax.scipy.linalg.cho_factor(
            gram + ridge * jnp.eye(gram.shape[0], dtype=gram.dtype)),
        images @ leaves[0]))
    coef, iterations, err = solve_coef(coef, l2reg, images, targets)
    return InnerResult(jax.tree.unflatten(treedef, [images.T @ coef]),
                       iterations, err)

  return solve
