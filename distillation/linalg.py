"""Linear solves with the Jacobian of Newton's representer residual.

The residual R(A) = l2reg k A + s softmax(G A) - targets (see `newton`) has the
Jacobian dR/dA = l2reg k I + S (G (x) I), where G = X X^T is the Gram matrix of
the k distilled images and S the per-example softmax Jacobian. Newton's steps
and its implicit gradient both solve systems with it (or its transpose);
`jacobian_solver` does either, densely or by blocks.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jax.scipy.linalg


def _unstacked(fn: Callable[..., Any],
               batched: bool | None) -> Callable[..., Any]:
  """Maps `fn` over the leading axis: in one batched call, or (batched
  False) with one call per slice; None: per slice on CPU only.

  jaxlib's batched LAPACK kernels on CPU split a batch over the thread pool
  they already run in and wait for it; two at once can deadlock a small
  pool (seen with 2 cores). Unbatched calls do not wait, so on CPU the
  blocks are factored and solved one at a time.
  """

  def per_slice(*args):
    outs = [fn(*[a[i] for a in args]) for i in range(len(args[0]))]
    return jax.tree.map(lambda *x: jnp.stack(x), *outs)

  if batched is None:
    return lambda *args: jax.lax.platform_dependent(*args, cpu=per_slice,
                                                    default=fn)
  return fn if batched else per_slice


def _block_lu_factor(m, batched):
  return _unstacked(jax.scipy.linalg.lu_factor, batched)(m)


def _block_lu_solve(lu, piv, b, trans=0, *, batched):
  return _unstacked(lambda lu, piv, b: jax.scipy.linalg.lu_solve(
      (lu, piv), b, trans=trans), batched)(lu, piv, b)


# Up to this many unknowns (k * K), the Newton system is solved densely;
# beyond, by blocks. On CPUs the block solve wins early (O(K k^3) flops); on
# accelerators one large Cholesky factorization beats many small batched LUs
# until its (kK)^2 matrix gets large (400 MB at 10^4 unknowns).
# benchmarks/speed.py measures both sides of these thresholds.
DENSE_NEWTON_MAX = {'cpu': 256, 'accelerator': 10_000}


def dense_newton_max(backend: str | None = None) -> int:
  """DENSE_NEWTON_MAX for `backend` (default: JAX's)."""
  return DENSE_NEWTON_MAX[
      'cpu' if (backend or jax.default_backend()) == 'cpu' else 'accelerator']


def jacobian_solver(coef: jax.Array, l2reg: jax.Array, gram: jax.Array,
                    targets: jax.Array, transpose: bool = False,
                    dense_max: int | None = None,
                    batched: bool | None = None
                    ) -> Callable[[jax.Array], jax.Array]:
  """Returns X -> (dR/dA)^-1 X, or (dR/dA)^-T X, for k x K matrices X.

  Up to `dense_max` unknowns (default: `dense_newton_max()`) densely, by a
  Cholesky factorization of a (kK x kK) matrix (below); beyond, by blocks:

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
  The dense form needs neither (tests/linalg_test.py checks both in float32).
  `batched`: the K blocks in batched LAPACK calls (True) or one call each
  (False); None: one call each on CPU only (see `_unstacked`).
  """
  k, num_classes = coef.shape
  probs = jax.nn.softmax(gram @ coef)
  mass = jnp.sum(targets, -1, keepdims=True)
  lam = l2reg * k
  if dense_max is None:
    dense_max = dense_newton_max()
  if k * num_classes <= dense_max:
    # S = C C^T with C block-diagonal over examples,
    # C_i = sqrt(s_i) (diag(sqrt(p_i)) - p_i sqrt(p_i)^T). By the
    # push-through identity, (lam I + C C^T G)^-1 = (I - C N^-1 C^T G) / lam
    # with N = lam I + C^T G C, symmetric positive definite even where G is
    # singular: a Cholesky factorization, cheaper and more accurate in
    # float32 than an LU of dR/dA itself.
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
  m_lu = _block_lu_factor(m, batched)
  # The system is B - P Q^T: B = M, P = U, Q = W, or transposed B = M^T,
  # P = W, Q = U. The capacitance I - Q^T B^-1 P has blocks
  # diag(x_c) H_c diag(y_c) summed over c, with H_c = G M_c^-1 or its
  # transpose M_c^-T G: one block solve with k right-hand sides, not 2k
  # plus a (2k x kK x 2k) product.
  h = _block_lu_solve(*m_lu, jnp.broadcast_to(gram, m.shape), trans=1,
                       batched=batched)
  if transpose:
    left, right = (a, b), (p, r)
  else:
    left, right, h = (p, r), (a, b), jnp.swapaxes(h, 1, 2)
  capacitance_lu = jax.scipy.linalg.lu_factor(
      jnp.eye(2 * k, dtype=coef.dtype) - jnp.block(
          [[jnp.einsum('ci,cij,cj->ij', x, h, y) for y in right]
           for x in left]))

  def woodbury(rhs):  # (B - P Q^T)^-1 rhs = B^-1 (rhs + P t).
    y = _block_lu_solve(*m_lu, rhs.T[:, :, None], trans=int(transpose),
                        batched=batched)
    qy = y[..., 0] if transpose else y[..., 0] @ gram
    t = jax.scipy.linalg.lu_solve(
        capacitance_lu, jnp.concatenate([jnp.sum(x * qy, 0) for x in left]))
    pt = right[0] * t[:k] + right[1] * t[k:]
    pt = pt @ gram if transpose else pt
    return _block_lu_solve(*m_lu, (rhs.T + pt)[:, :, None],
                           trans=int(transpose), batched=batched)[..., 0].T

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
