"""The one-shot device benchmark: what a session with a lent GPU (or TPU) runs
once, within --budget_s seconds of its start.

  python benchmarks/device.py --idx_dir=DIR [--out=benchmarks]
  python benchmarks/device.py --quick --out=DIR  # CPU, digits, < 1 minute

DIR holds the Fashion-MNIST idx files. On the device it finds:
1. the outer step of the seed's setting (configs/fashion_mnist.py),
   `linear.py:fashion_mnist,ipc=10` and the paper-sized
   `conv.py:fashion_mnist,ipc=N` at 1, 10 and 50 images per class (and at
   10 with inner=linearized, the network inner model): its first
   call (tracing, compilation and one call), ms per step after warm-up, and
   the device memory in use (speed.py's `step_timings`);
2. the networks evaluator, the `paper` preset's ConvNet, on random real
   images at 10 and 50 per class: its first call and network-steps per
   second over a tenth of a row's steps, on the path eval.py would take
   there (or --net_path), and what a whole row would take at that rate;
3. one whole `paper` ConvNet row at 50 images per class (random real
   images, hard labels: a baseline, which needs no distilled set) with its
   test accuracy, if the estimate fits in the budget left.
A part that the budget no longer allows is recorded as skipped. Writes
device.json and device.md to --out (speed.py's flags --idx_dir, --out and
--quick, with --out's default here benchmarks/).

--quick runs the same code on scikit-learn's digits (offline), with the
networks and the outer steps shrunk, conv.py's ipc=10 row left out (the
code of its ipc=1 row) and XLA's optimizations off, so that
the suite runs it (and it cannot rot while no accelerator is lent).
"""

import json
import math
import os
import sys
import time

if __name__ == '__main__' and '--quick' in sys.argv[1:]:
  # Before JAX starts: --quick measures nothing worth keeping, and without
  # LLVM's optimizations its many small programs compile in about half the
  # time (as in tests/conftest.py).
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_backend_optimization_level=0')
# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
import jax
# The module itself: the package does not export ConfigFileFlagParser.
from ml_collections.config_flags import config_flags
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
from distillation import cli
from distillation import errors
from distillation import input_pipeline
from distillation import linear_eval
from distillation import net_eval
from distillation import net_train
import speed  # Its timing helpers and flags (--idx_dir, --out, --quick).

FLAGS = flags.FLAGS
flags.DEFINE_float('budget_s', 420.0, 'Seconds from the start within which '
                   'to finish; later parts are skipped.', lower_bound=0)
flags.DEFINE_enum('net_path', None, net_train.PATHS,
                  "The networks evaluator's path (default: the backend's).")

# (config, and its --quick stand-in on digits; None: --quick skips it, the
# code of the row before at another size).
OUTER = (('configs/fashion_mnist.py', 'configs/default.py'),
         ('configs/linear.py:fashion_mnist,ipc=10',
          'configs/linear.py:digits,ipc=10'),
         ('configs/conv.py:fashion_mnist,ipc=1',
          'configs/conv.py:digits,ipc=1,size=cpu'),
         ('configs/conv.py:fashion_mnist,ipc=10', None),
         # The linearized network inner model (RCIG), paper-sized.
         ('configs/conv.py:fashion_mnist,ipc=10,inner=linearized', None),
         ('configs/conv.py:fashion_mnist,ipc=50',
          'configs/conv.py:digits,ipc=50,size=cpu'))
EVALUATOR_IPC = (10, 50)
FULL_ROW_IPC = 50


def load_config(spec: str, quick: bool):
  """The config of `spec`, as train.py parses it; with `quick`, shrunk."""
  config = config_flags.ConfigFileFlagParser('config').parse(
      os.path.join(ROOT, spec))
  if config.data.dataset == 'fashion_mnist':
    config.data.idx_dir = FLAGS.idx_dir
  config.eval.net_preset = 'paper'
  if quick:
    config.model.width = 8
    config.model.nets_per_step = 1
    if config.data.outer_batch_size:
      config.data.outer_batch_size = 128
    config.eval.net_width = 8
    config.eval.net_seeds = 2
    config.eval.net_epochs = 4
    # One transform compiles in a fraction of the time of all of them.
    config.eval.net_augment = 'crop'
  return config


class Data:
  """Splits loaded once per data config (the conv configs share theirs)."""

  def __init__(self):
    self._splits = {}

  def __call__(self, config):
    key = config.data.to_json()
    if key not in self._splits:
      self._splits[key] = input_pipeline.load_train_validation_test(
          config.data)
    return self._splits[key]


def outer_row(spec, config, data, repeats):
  train, _, _ = data(config)
  row = {'config': spec, 'images_per_class': config.distill.images_per_class,
         'solver': ('squared' if config.inner.loss == 'squared'
                    else config.inner.solver),
         'features': config.model.features,
         'steps_per_dispatch': config.steps_per_dispatch,
         **speed.step_timings(config, train, repeats)}
  return row


def _random_real(config, train, ipc, seeds):
  """Random real images per seed, hard labels: (seeds, n, ...) each."""
  draws = [linear_eval.random_real(train, ipc, seed) for seed in range(seeds)]
  num_classes = input_pipeline.dataset_info(config.data).num_classes
  return (np.stack([d.images for d in draws]),
          np.eye(num_classes, dtype=np.float32)[
              np.stack([d.labels for d in draws])])


def evaluator_trainer(config, data, path):
  recipe = net_eval.recipes(config)['convnet']
  info = input_pipeline.dataset_info(config.data)
  train, _, _ = data(config)
  mean, std = input_pipeline.channel_stats(train.images, info.image_shape)
  return net_train.NetTrainer(recipe, info.image_shape, info.num_classes,
                              mean, std, path=path)


def evaluator_rate(config, data, trainer):
  """Network-steps per second over a tenth of a row's steps (two calls on
  the vmapped path, the row's size of call), after a first call."""
  recipe = trainer.recipe
  train, _, _ = data(config)
  ipc = config.distill.images_per_class
  images, targets = _random_real(config, train, ipc, recipe.seeds)
  n = images.shape[1]
  steps_per_epoch = trainer.schedule(n)[1]
  total = trainer.num_steps(n)
  # What train() would use for the whole row.
  per_call = 1 if trainer.path == 'unrolled' else max(1, math.ceil(total / 20))
  start = time.perf_counter()
  jax.block_until_ready(trainer.train(images, targets, epochs=1,
                                      steps_per_call=per_call))
  first_call_s = time.perf_counter() - start
  epochs = min(recipe.epochs, max(1, math.ceil(2 * per_call /
                                               steps_per_epoch)))
  start = time.perf_counter()
  jax.block_until_ready(trainer.train(images, targets, epochs=epochs,
                                      steps_per_call=per_call))
  seconds = time.perf_counter() - start
  rate = recipe.seeds * epochs * steps_per_epoch / seconds
  return {'images_per_class': ipc, 'recipe': recipe.name,
          'width': recipe.width, 'seeds': recipe.seeds,
          'path': trainer.path, 'steps_per_network': total,
          'steps_per_call': per_call, 'timed_steps': epochs * steps_per_epoch,
          'first_call_s': first_call_s, 'network_steps_per_s': rate,
          'row_estimate_s': recipe.seeds * total / rate,
          **speed.memory_in_use()}


def full_row(config, data, trainer):
  """The paper ConvNet row on random real images (programs compiled by
  `evaluator_rate` already), with its test accuracy."""
  train, _, test = data(config)
  ipc = config.distill.images_per_class
  images, targets = _random_real(config, train, ipc, trainer.recipe.seeds)
  start = time.perf_counter()
  nets = trainer.train(images, targets)
  accuracies = trainer.accuracy(nets, test.images, test.labels)
  return {'evaluator': 'convnet', 'recipe': trainer.recipe.name,
          'method': 'random_real', 'labels': 'hard',
          'images': int(images.shape[1]), 'path': trainer.path,
          'test_accuracy': float(np.mean(accuracies)),
          'test_accuracy_std': float(np.std(accuracies)),
          'per_seed': [float(a) for a in accuracies],
          'seconds': time.perf_counter() - start}


def run(quick: bool, budget_s: float, net_path: str | None):
  """All parts, each while the budget lasts; the result (device.json)."""
  start = time.perf_counter()
  left = lambda: budget_s - (time.perf_counter() - start)
  data = Data()
  result = {**speed.stamp(), 'quick': quick, 'budget_s': budget_s,
            'devices': jax.device_count(), 'outer_steps': [],
            'evaluator': []}
  repeats = 2 if quick else 10
  for spec, quick_spec in OUTER:
    spec = quick_spec if quick else spec
    if spec is None:
      continue
    if left() <= 0:
      result['outer_steps'].append({'config': spec, 'skipped': 'budget'})
      continue
    result['outer_steps'].append(
        outer_row(spec, load_config(spec, quick), data, repeats))
    print(json.dumps(result['outer_steps'][-1]), flush=True)
  trainers = {}
  for ipc in EVALUATOR_IPC:
    spec = (f'configs/conv.py:digits,ipc={ipc},size=cpu' if quick else
            f'configs/conv.py:fashion_mnist,ipc={ipc}')
    if left() <= 0:
      result['evaluator'].append({'images_per_class': ipc,
                                  'skipped': 'budget'})
      continue
    config = load_config(spec, quick)
    trainer = evaluator_trainer(config, data, net_path)
    trainers[ipc] = config, trainer
    result['evaluator'].append(evaluator_rate(config, data, trainer))
    print(json.dumps(result['evaluator'][-1]), flush=True)
  rate = next((r for r in result['evaluator']
               if r['images_per_class'] == FULL_ROW_IPC and 'skipped' not in r),
              None)
  # A margin for the test accuracy and for the rate's noise.
  if rate is None or 1.25 * rate['row_estimate_s'] + 10 > left():
    result['full_row'] = {
        'images_per_class': FULL_ROW_IPC, 'skipped': 'budget',
        'estimate_s': rate and rate['row_estimate_s'], 'left_s': left()}
  else:
    config, trainer = trainers[FULL_ROW_IPC]
    result['full_row'] = full_row(config, data, trainer)
  print(json.dumps(result['full_row']), flush=True)
  result['seconds'] = time.perf_counter() - start
  return result


def _mib(value):
  return '-' if value is None else f'{value / 2**20:.0f}'


def to_markdown(result) -> str:
  cache = ('persistent compilation cache in use'
           if result['compilation_cache'] else 'no compilation cache')
  flags_set = (f'; XLA_FLAGS={result["xla_flags"]}' if result['xla_flags']
               else '')
  quick = ' `--quick` (digits, shrunk: not a measurement).' if result[
      'quick'] else ''
  lines = [f'Device {result["device"]} ({result["devices"]} devices); '
           f'machine {result["machine"]}; jax {result["jax"]}; commit '
           f'{result["commit"]}; {cache}{flags_set}; '
           f'{result["seconds"]:.0f} s in all.{quick}', '',
           'Outer step: the first call (tracing, compilation, one call), '
           'compilation (the first call less a warm one) and the median ms '
           'per step after warm-up; device memory in use with the state and '
           'the data resident, and the process\'s peak so far (MiB; - where '
           'the backend does not count it):', '',
           '| config | images/class | head | first call (s) | compilation (s) '
           '| ms/step | memory | peak |',
           '| --- | --- | --- | --- | --- | --- | --- | --- |']
  for row in result['outer_steps']:
    if 'skipped' in row:
      lines.append(f'| {row["config"]} | skipped (budget) | | | | | | |')
      continue
    lines.append(
        f'| {row["config"]} | {row["images_per_class"]} | {row["solver"]} | '
        f'{row["first_call_s"]:.2f} | {row["compile_s"]:.2f} | '
        f'{row["ms_per_step"]:.3f} | {_mib(row["bytes_in_use"])} | '
        f'{_mib(row["peak_bytes_in_use"])} |')
  lines += ['', 'Networks evaluator (ConvNet, random real images): network-'
            'steps per second over the timed steps, after a first call; a '
            'whole row at that rate:', '',
            '| images/class | recipe | path | seeds | steps per network | '
            'steps per call | first call (s) | network-steps/s | row (s, '
            'estimate) | memory |',
            '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |']
  for row in result['evaluator']:
    if 'skipped' in row:
      lines.append(f'| {row["images_per_class"]} | skipped (budget) '
                   '| | | | | | | | |')
      continue
    lines.append(
        f'| {row["images_per_class"]} | {row["recipe"]} | {row["path"]} | '
        f'{row["seeds"]} | {row["steps_per_network"]} | '
        f'{row["steps_per_call"]} | {row["first_call_s"]:.2f} | '
        f'{row["network_steps_per_s"]:.1f} | {row["row_estimate_s"]:.1f} | '
        f'{_mib(row["bytes_in_use"])} |')
  row = result['full_row']
  lines.append('')
  if 'skipped' in row:
    estimate = row['estimate_s']
    lines.append(
        f'Whole row at {row["images_per_class"]} images per class: skipped '
        f'(estimate {"-" if estimate is None else f"{estimate:.0f}"} s, '
        f'{max(row["left_s"], 0):.0f} s of the budget left).')
  else:
    lines.append(
        f'Whole row: `{row["evaluator"]}` ({row["recipe"]}, path '
        f'{row["path"]}) on {row["method"]}/{row["labels"]}, '
        f'{row["images"]} images: test accuracy '
        f'{100 * row["test_accuracy"]:.2f}% ± '
        f'{100 * row["test_accuracy_std"]:.2f} over '
        f'{len(row["per_seed"])} seeds, {row["seconds"]:.1f} s (compiled '
        'already).')
  return '\n'.join(lines) + '\n'


def main(argv):
  del argv
  if not FLAGS.quick and not FLAGS.idx_dir:
    raise app.UsageError('--idx_dir (the Fashion-MNIST idx files) is needed '
                         'without --quick.')
  if FLAGS.idx_dir and not os.path.isdir(FLAGS.idx_dir):
    raise errors.UserError(f'--idx_dir={FLAGS.idx_dir} is not a directory; '
                           'point it at the Fashion-MNIST idx files.')
  result = run(FLAGS.quick, FLAGS.budget_s, FLAGS.net_path)
  os.makedirs(FLAGS.out, exist_ok=True)
  with open(os.path.join(FLAGS.out, 'device.json'), 'w') as f:
    json.dump(result, f, indent=2)
  markdown = to_markdown(result)
  with open(os.path.join(FLAGS.out, 'device.md'), 'w') as f:
    f.write(markdown)
  print(markdown)


if __name__ == '__main__':
  FLAGS.set_default('out', os.path.join(ROOT, 'benchmarks'))
  cli.run(main)
