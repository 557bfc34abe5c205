"""The outer step with random conv features against its unavoidable network work.

  python benchmarks/feature_step.py \
      [--config=configs/conv.py:fashion_mnist,ipc=10,size=cpu]

On Fashion-MNIST-sized random data (no dataset needed), times in one run
(medians of many calls, each its own compiled function):
* the whole outer step of the config (one device);
* the network work it cannot avoid: the real minibatch's forward pass through
  the step's networks, and the forward and backward pass of the distilled
  images through them;
and prints their ratio (docs/features.md; the target is at most 1.5) with
the machine, the jax version and the commit.
"""

import os
import platform
import subprocess
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
flags.DEFINE_string('config', 'configs/conv.py:fashion_mnist,ipc=10,size=cpu',
                    'A config with conv features, as train.py takes it.')
flags.DEFINE_integer('repeats', 20, 'Timed calls per measurement.',
                     lower_bound=1)


def _time_ms(fn, *args) -> float:
  return 1e3 * timing.median_seconds(fn, *args, repeats=FLAGS.repeats)


def main(argv):
  del argv
  config = cli.load_config([f'--config={FLAGS.config}'], ROOT)
  if config.model.features == 'pixels':
    raise errors.UserError(f'--config={FLAGS.config} has pixel features, '
                           'no networks to time; pass a config with conv '
                           'features, e.g. configs/conv.py:digits,ipc=1,'
                           'size=cpu.')
  rng = np.random.default_rng(0)
  info = input_pipeline.dataset_info(config.data)
  n = 20_000
  train = input_pipeline.Split(
      rng.normal(size=(n, info.num_pixels)).astype(np.float32),
      (np.arange(n) % info.num_classes).astype(np.int32))
  distiller = outer.Distiller(config)
  state = distiller.init_state(jax.random.PRNGKey(0), train)
  # One shard, for the one device the step is timed on.
  shard = jax.tree.map(jnp.asarray, parallel.shard_split(train, 1))
  # The whole new state comes back: returning less would let XLA drop the
  # hypergradient.
  step = jax.pmap(distiller.train_step, axis_name=parallel.AXIS,
                  in_axes=(None, 0), out_axes=None,
                  devices=jax.local_devices()[:1])
  step_ms = _time_ms(step, state, shard)

  images = state.params['images']
  batch = jnp.asarray(train.images[:config.data.outer_batch_size])

  @jax.jit
  def network_work(key, images, batch):
    nets = distiller.inner_model.draw(key)
    phi_b = distiller.inner_model.features(nets, batch)
    phi_s, pullback = jax.vjp(lambda x: distiller.inner_model.features(nets, x), images)
    (dimages,) = pullback(jnp.ones_like(phi_s))
    return jnp.sum(phi_b) + jnp.sum(dimages)

  net_ms = _time_ms(network_work, jax.random.PRNGKey(1), images, batch)
  commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'],
                          capture_output=True, text=True, check=False,
                          cwd=os.path.dirname(__file__)).stdout.strip()
  print(f'config {FLAGS.config}: {config.distill.images_per_class} images '
        f'per class, {config.model.nets_per_step} nets of width '
        f'{config.model.width}, batch {config.data.outer_batch_size}, '
        f'solver {config.inner.solver}')
  print(f'machine {platform.machine()} {os.cpu_count()} cores, '
        f'{jax.devices()[0].device_kind}; jax {jax.__version__}; '
        f'commit {commit}')
  print(f'outer step       {step_ms:9.1f} ms')
  print(f'network work     {net_ms:9.1f} ms')
  print(f'ratio            {step_ms / net_ms:9.2f}')


if __name__ == '__main__':
  cli.run(main)
