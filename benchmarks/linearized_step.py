"""Where the linearized network's outer step spends its time.

  python benchmarks/linearized_step.py \
      [--config=configs/conv.py:fashion_mnist,ipc=10,size=cpu,inner=linearized]
      [--out=benchmarks/linearized_step.md]

On random data of the config's image shape (no dataset needed), times in one
run (medians of --repeats calls, each part its own compiled function, one
device): the whole outer step; the inner fit (CG on the body's offset and
the head's closed form); the fit with its implicit backward pass (custom_root's
CG), whose difference from the fit is the implicit solve; the outer loss and
its gradient in the fit on the real minibatch; and, with a pool, the members'
update. Writes a markdown table with the machine and jax version
(docs/linearized.md reads it).
"""

import os
import platform
import sys

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# pylint: disable=g-import-not-at-top,wrong-import-position
from distillation import cli
from distillation import errors
from distillation import input_pipeline
from distillation import outer
from distillation import parallel
import timing  # This directory's, on the path as the script's own.

FLAGS = flags.FLAGS
flags.DEFINE_string(
    'config', 'configs/conv.py:fashion_mnist,ipc=10,size=cpu,inner=linearized',
    'A config with config.model.linearize, as train.py takes it.')
flags.DEFINE_integer('repeats', 5, 'Timed calls per part.', lower_bound=1)
flags.DEFINE_string('out', None, 'Markdown file to write (else: print only).')


def _time_ms(fn, *args) -> float:
  return 1e3 * timing.median_seconds(fn, *args, repeats=FLAGS.repeats)


def main(argv):
  del argv
  config = cli.load_config([f'--config={FLAGS.config}'], ROOT)
  if not config.model.get('linearize'):
    raise errors.UserError(
        f'--config={FLAGS.config} does not linearize its network; pass one '
        'with inner=linearized (config.model.linearize=True).')
  if FLAGS.out and not os.path.isdir(os.path.dirname(FLAGS.out) or '.'):
    raise errors.UserError(f'--out={FLAGS.out}: its directory does not '
                           'exist.')
  info = input_pipeline.dataset_info(config.data)
  rng = np.random.default_rng(0)
  n = 4 * config.data.outer_batch_size
  train = input_pipeline.Split(
      rng.normal(size=(n, info.num_pixels)).astype(np.float32),
      (np.arange(n) % info.num_classes).astype(np.int32))
  distiller = outer.Distiller(config)
  model = distiller.inner_model
  state = distiller.init_state(jax.random.PRNGKey(0), train)
  shard = jax.tree.map(jnp.asarray, parallel.shard_split(train, 1))
  step = jax.pmap(distiller.train_step, axis_name=parallel.AXIS,
                  in_axes=(None, 0), out_axes=None,
                  devices=jax.local_devices()[:1])
  rows = [('whole outer step', _time_ms(step, state, shard))]
  key = jax.random.PRNGKey(1)
  context = model.context(state.pool, state.step, key)
  hyper = distiller.hyperparams(state.params)
  fit = jax.jit(lambda h: model.fit(context, h).params)
  rows.append(('inner fit (CG on the body offset, head closed form)',
               _time_ms(fit, hyper)))

  def fit_and_backward(hyper):
    params, pullback = jax.vjp(lambda h: model.fit(context, h).params, hyper)
    return pullback(jax.tree.map(jnp.ones_like, params))

  rows.append(('inner fit + implicit backward (custom_root CG)',
               _time_ms(jax.jit(fit_and_backward), hyper)))
  rows.append(('  of which the implicit backward', rows[-1][1] - rows[-2][1]))
  params = fit(hyper)
  batch = jnp.asarray(train.images[:config.data.outer_batch_size])
  labels = jax.nn.one_hot(train.labels[:len(batch)], info.num_classes)
  outer_grad = jax.jit(jax.grad(lambda p: jnp.mean(jnp.sum(
      -labels * jax.nn.log_softmax(model.logits(context, p, batch)), -1))))
  rows.append((f'outer loss and its gradient ({len(batch)} real images)',
               _time_ms(outer_grad, params)))
  if model.pool is not None:
    update = jax.jit(lambda s, h: model.update(s, state.step, key, h, None))
    rows.append(('pool update', _time_ms(update, state.pool, hyper)))
  lines = [
      f'`{FLAGS.config}`: images per class {config.distill.images_per_class}'
      f', width {config.model.width}, base networks per step '
      f'{config.model.nets_per_step}, CG {config.inner.maxiter} + '
      f'{config.inner.implicit_maxiter} steps (unrolled: '
      f'{config.inner.cg_unroll}), batch {config.data.outer_batch_size}. '
      f'Machine: {platform.machine()}, {os.cpu_count()} CPUs, '
      f'{jax.devices()[0].device_kind}; jax {jax.__version__}. Median of '
      f'{FLAGS.repeats} calls. Command: `python benchmarks/linearized_step.py '
      f'--config={FLAGS.config}`.', '', '| part | ms |', '| --- | --- |']
  lines += [f'| {name} | {ms:.0f} |' for name, ms in rows]
  text = '\n'.join(lines) + '\n'
  print(text)
  if FLAGS.out:
    with open(FLAGS.out, 'w') as f:
      f.write(text)


if __name__ == '__main__':
  cli.run(main)
