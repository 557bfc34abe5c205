"""Where the time of one outer step goes (Fashion-MNIST-sized random data).

  python benchmarks/step_breakdown.py [--images_per_class=1]

Times the one-time costs of a run (set-up, tracing and compiling the step),
then, each as its own compiled function (median of many calls): the whole
outer step for several inner-solver settings, the inner solve alone (cold and
warm started), the inner solve with its implicit backward pass, one solve of
the Newton system (and, for comparison, dense solves of its size), and the
pass over the training split.
"""

import os
import sys
import time

from absl import flags
import jax
import jax.numpy as jnp
import jax.scipy.linalg
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from configs import linear
from distillation import cli
from distillation import linalg
from distillation import input_pipeline
from distillation import outer
from distillation import parallel

FLAGS = flags.FLAGS
flags.DEFINE_integer('images_per_class', 1, 'Distilled images per class.',
                     lower_bound=1)
flags.DEFINE_integer('repeats', 50, 'Timed calls per measurement.',
                     lower_bound=1)


def _time_ms(fn, *args):
  out = jax.block_until_ready(fn(*args))
  times = []
  for _ in range(FLAGS.repeats):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  del out
  return 1e3 * float(np.median(times))


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  train = input_pipeline.Split(
      rng.uniform(size=(55000, 784)).astype(np.float32) ** 4,
      rng.integers(0, 10, 55000).astype(np.int32))
  rows = []

  def config_with(**inner):
    config = linear.get_config('fashion_mnist,ipc=1')
    config.distill.images_per_class = FLAGS.images_per_class
    config.distill.image_init = 'real'
    config.inner.update(inner)
    return config

  # A run's one-time costs, first in this process (nothing compiled yet).
  def once(name, fn):
    start = time.perf_counter()
    out = fn()
    rows.append((f'once: {name}', 1e3 * (time.perf_counter() - start)))
    return out

  distiller = once('model, inner solver, optimizer',
                   lambda: outer.Distiller(config_with()))
  shard = once('training split to the device', lambda: jax.block_until_ready(
      parallel.put_sharded(train)))
  state = once('initial state', lambda: jax.block_until_ready(
      parallel.replicate(distiller.init_state(jax.random.PRNGKey(0), train))))
  lowered = once('trace the step', lambda: distiller.pmapped_train_steps(
      1).lower(state, shard))
  compiled = once('compile the step (XLA)', lowered.compile)
  once('run the step', lambda: jax.block_until_ready(compiled(state, shard)))

  for name, inner_overrides, per_dispatch in (
      ('step: newton', {}, 1),
      ('step: newton, 10 steps/dispatch', {}, 10),
      ('step: newton, cold start', {'warm_start': False}, 1),
  ):
    distiller = outer.Distiller(config_with(**inner_overrides))
    state = parallel.replicate(distiller.init_state(jax.random.PRNGKey(0),
                                                    train))
    step = distiller.pmapped_train_steps(per_dispatch)
    for _ in range(5):  # Into the warm-started regime.
      state, _ = jax.block_until_ready(step(state, shard))
    rows.append((name, _time_ms(lambda s: step(s, shard)[0], state) /
                 per_dispatch))
    print(rows[-1], flush=True)

  distiller = outer.Distiller(config_with())
  state = distiller.init_state(jax.random.PRNGKey(0), train)
  solution = jax.jit(distiller.fit_inner)(state.params).params
  rows.append(('inner solve, cold', _time_ms(jax.jit(
      lambda p: distiller.fit_inner(p).params), state.params)))
  rows.append(('inner solve, warm', _time_ms(jax.jit(
      lambda p: distiller.fit_inner(p, solution).params), state.params)))

  def solve_and_pull_back(params):
    out, pullback = jax.vjp(lambda p: distiller.fit_inner(p, solution).params,
                            params)
    return pullback(jax.tree.map(jnp.ones_like, out))

  rows.append(('inner solve + implicit backward, warm',
               _time_ms(jax.jit(solve_and_pull_back), state.params)))
  l2reg, images, targets = distiller.hyperparams(state.params)
  coef = jnp.zeros_like(targets)
  rows.append(('Newton system solve (linalg.jacobian_solver)', _time_ms(
      jax.jit(lambda c, x: linalg.jacobian_solver(c, l2reg, x @ x.T, targets)(
          targets)), coef, images)))
  # Dense solves of the Newton system's size (kK), for comparison.
  n = distiller.num_distilled * distiller.info.num_classes
  factor = jnp.asarray(rng.normal(size=(n, n)), jnp.float32)
  matrix = factor @ factor.T / n + jnp.eye(n)  # Symmetric positive definite.
  vector = jnp.ones(n)
  for name, solve in (
      ('LU', jnp.linalg.solve),
      ('LU, batch of 1', lambda m, v: jnp.linalg.solve(
          m[None], v[None, :, None])[0, :, 0]),
      ('Cholesky', lambda m, v: jax.scipy.linalg.cho_solve(
          jax.scipy.linalg.cho_factor(m), v)),
      ('Cholesky, batch of 1', lambda m, v: jax.scipy.linalg.cho_solve(
          jax.scipy.linalg.cho_factor(m[None]), v[None, :, None])[0, :, 0]),
      ('inverse', lambda m, v: jnp.linalg.inv(m) @ v),
  ):
    rows.append((f'dense solve {n}x{n}: {name}',
                 _time_ms(jax.jit(solve), matrix, vector)))
  images, labels = jnp.asarray(train.images), jnp.asarray(train.labels)

  @jax.jit
  def data_pass(w, images, labels):  # Data as arguments: not folded in.
    return jax.grad(lambda w: jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(images @ w, labels)))(w)

  rows.append(('forward+backward over the training split',
               _time_ms(data_pass, jnp.zeros((784, 10)), images, labels)))
  print(f'\n{jax.devices()[0].device_kind}, images_per_class='
        f'{FLAGS.images_per_class}, jax {jax.__version__}')
  for name, ms in rows:
    print(f'{name:<50} {ms:9.3f} ms')


if __name__ == '__main__':
  cli.run(main)
