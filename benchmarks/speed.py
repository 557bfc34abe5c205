"""Speed of the outer step against the seed's algorithm and the hardware.

  python benchmarks/speed.py --idx_dir=DIR [--quick] [--out=DIR] \
      [--solvers=newton,lbfgs]

On the current machine (DIR holds Fashion-MNIST idx files):
1. time to the seed's final test accuracy: the seed's algorithm (jaxopt's
   dataset_distillation example: inner GradientDescent from ones, tol 1e-3,
   maxiter 500, l2reg 0.1; outer jaxopt GradientDescent with its line
   search, 50 iterations; noise init; 10 images) against this project's
   configs, with and without compilation, and when the first outer step
   ends (the fixed cost of a run: set-up and compilation). Each run starts
   in a fresh process, as a user's would (no compiled program carried over
   from another run), --processes times; the table gives medians;
2. steady-state time per outer step for several images per class, full
   batch and minibatch; next to one forward+backward pass over the training
   split (the step's unavoidable work) and, on a GPU, next to the bandwidth
   bound 2 x training-set bytes / measured device copy bandwidth;
3. 1 vs 8 devices (CPU: 8 host devices in a subprocess).
Writes speed.json and speed.md to --out.
"""

import json
import os
import platform
import subprocess
import sys
import time
import warnings

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from configs import fashion_mnist
from configs import linear
from distillation import cli
from distillation import errors
from distillation import input_pipeline
from distillation import outer
from distillation import parallel
import timing  # This directory's, on the path as the script's own.

with warnings.catch_warnings():
  warnings.simplefilter('ignore')
  import jaxopt  # The seed's algorithm, as a reference only.

FLAGS = flags.FLAGS
IMPLICIT_SOLVE = {'newton': 'direct', 'lbfgs': 'cg'}
flags.DEFINE_string('idx_dir', None, 'Fashion-MNIST idx files.')
flags.DEFINE_string('out', 'benchmarks/results', 'Output directory.')
flags.DEFINE_bool('quick', False, 'Fewer configurations and repeats.')
flags.DEFINE_integer('processes', 3, 'Fresh processes per run of part 1 '
                     '(1 with --quick).', lower_bound=1)
flags.DEFINE_string('trace_of', None,
                    'Only one run of part 1 (in a fresh process).')
flags.DEFINE_bool('steps_only', False, 'Only part 2 (for the subprocess).')
flags.DEFINE_list('solvers', ['newton', 'lbfgs'],
                  'Inner solvers of the steady-state table.')


def _block(tree):
  return jax.block_until_ready(tree)


def _data(config):
  train, _ = input_pipeline.load_train_and_validation(config.data)
  test = input_pipeline.load_split(config.data, 'test')
  return train, test


def _accuracy(weights, test):
  return float(jnp.mean(jnp.argmax(test.images @ weights, -1) == test.labels))


def seed_reference(train, test, iterations=50):
  """The seed's algorithm, one outer iteration at a time (so its accuracy
  can be read after each); times exclude those reads."""
  x, y = jnp.asarray(train.images), jnp.asarray(train.labels)
  xt = jnp.asarray(test.images)
  labels = jnp.arange(10)
  init = jnp.ones((784, 10))
  gd = jaxopt.GradientDescent(fun=jaxopt.objective.l2_multiclass_logreg,
                              tol=1e-3, maxiter=500)

  def inner_solution(images):
    return gd.run(init, 0.1, (images, labels)).params

  def outer_loss(images):
    return jaxopt.objective.l2_multiclass_logreg(inner_solution(images), 0.,
                                                 (x, y))

  solver = jaxopt.GradientDescent(fun=outer_loss, tol=1e-3, maxiter=iterations)
  weights = jax.jit(inner_solution)
  images = jax.random.normal(jax.random.PRNGKey(0), (10, 784)) / 784
  trace = []
  for _ in range(2):  # Cold (compiles), then warm.
    elapsed, params = 0.0, images
    start = time.perf_counter()
    state = solver.init_state(params)
    params, state = _block(solver.update(params, state))
    elapsed += time.perf_counter() - start
    run = [(elapsed, float(jnp.mean(jnp.argmax(
        xt @ weights(params), -1) == test.labels)))]
    for _ in range(iterations - 1):
      start = time.perf_counter()
      params, state = _block(solver.update(params, state))
      elapsed += time.perf_counter() - start
      run.append((elapsed, _accuracy(weights(params), test)))
    trace.append(run)
  return trace


def ours(config, train, test, max_steps):
  """Trains `config` one step per dispatch; (seconds, test accuracy) after
  each step, cold (set-up and compilation included) then warm; the reads of
  the accuracy are excluded."""
  start = time.perf_counter()
  distiller = outer.Distiller(config)
  shard = parallel.put_sharded(train)
  step = distiller.pmapped_train_steps(1)
  setup = time.perf_counter() - start
  trace = []
  for elapsed in (setup, 0.0):
    start = time.perf_counter()
    state = parallel.replicate(
        distiller.init_state(jax.random.PRNGKey(config.seed), train))
    elapsed += time.perf_counter() - start
    run = []
    for _ in range(max_steps):
      start = time.perf_counter()
      state, _ = _block(step(state, shard))
      elapsed += time.perf_counter() - start
      (kernel,) = jax.tree.leaves(state.inner_params)  # The step's W.
      run.append((elapsed, _accuracy(kernel, test)))
    trace.append(run)
  return trace


# Part 1's runs: the seed and this project's configs (with arguments).
RUNS = {'seed': None,
        'configs/fashion_mnist.py': fashion_mnist.get_config,
        'configs/linear.py:fashion_mnist,ipc=1': lambda: linear.get_config(
            'fashion_mnist,ipc=1')}


def trace_of(run, train, test):
  """(seconds, test accuracy) after each step of `run`, cold then warm."""
  if run == 'seed':
    return seed_reference(train, test, iterations=10 if FLAGS.quick else 50)
  config = RUNS[run]()
  config.data.idx_dir = FLAGS.idx_dir
  return ours(config, train, test, 40 if FLAGS.quick else 150)


def in_fresh_process(*args, env=None):
  """Runs this script with `args`; returns what it printed after RESULT=."""
  process = subprocess.run(
      [sys.executable, __file__, f'--idx_dir={FLAGS.idx_dir}', *args],
      env=env, capture_output=True, text=True, check=False)
  if process.returncode:
    raise RuntimeError(f'{" ".join(args)} failed:\n{process.stderr[-3000:]}')
  return json.loads(process.stdout.split('RESULT=')[1])


def time_to(trace, target):
  for seconds, accuracy in trace:
    if accuracy >= target:
      return seconds
  return None


def summary(run, traces, target):
  """Medians over processes of the time to `target`, cold and warm."""

  def median(values):
    return None if None in values else float(np.median(values))

  if run == 'seed':  # Its time to its own final accuracy: all its steps.
    cold = [trace[0][-1][0] for trace in traces]
    warm = [trace[1][-1][0] for trace in traces]
    steps = len(traces[0][0])
  else:
    cold = [time_to(trace[0], target) for trace in traces]
    warm = [time_to(trace[1], target) for trace in traces]
    steps = next((i + 1 for i, (_, accuracy) in enumerate(traces[0][0])
                  if accuracy >= target), None)
  return {'run': 'seed (jaxopt GD outer, GD inner)' if run == 'seed'
                 else run,
          'steps': steps,
          'cold_s': median(cold), 'cold_s_each': cold, 'warm_s': median(warm),
          'first_step_s': median([trace[0][0][0] for trace in traces])}


def memory_in_use():
  """The first local device's bytes in use and peak bytes so far (of this
  process); None where the backend does not count them (CPU)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  return {key: stats.get(key) for key in ('bytes_in_use',
                                          'peak_bytes_in_use')}


def step_timings(config, train, repeats):
  """The first call of the outer step (tracing, compilation and one call)
  in seconds, the median ms per outer step after warm-up
  (`steps_per_dispatch` steps per call), and the device memory in use with
  the state and the data resident."""
  distiller = outer.Distiller(config)
  state = parallel.replicate(distiller.init_state(jax.random.PRNGKey(0), train))
  shard = parallel.put_sharded(train)
  n = config.steps_per_dispatch
  step = distiller.pmapped_train_steps(n)
  start = time.perf_counter()
  state, _ = _block(step(state, shard))
  first_call_s = time.perf_counter() - start
  for _ in range(2):
    state, _ = _block(step(state, shard))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    state, _ = _block(step(state, shard))
    times.append((time.perf_counter() - start) / n)
  ms = 1e3 * float(np.median(times))
  return {'first_call_s': first_call_s, 'ms_per_step': ms,
          # The first call less one warm call: tracing and compilation.
          'compile_s': max(0.0, first_call_s - n * ms / 1e3),
          **memory_in_use()}


def steady_step_ms(config, train, repeats):
  """Median ms per outer step, `steps_per_dispatch` steps per call."""
  return step_timings(config, train, repeats)['ms_per_step']


def forward_backward_ms(train, repeats):
  """One pass computing logits and d(loss)/dW over the training split."""
  x, y = jnp.asarray(train.images), jnp.asarray(train.labels)

  @jax.jit
  def grad(w, x, y):  # Data as arguments: XLA would fold constants.
    return jax.grad(lambda w: jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(x @ w, y)))(w)

  return 1e3 * timing.median_seconds(grad, jnp.zeros((784, 10)), x, y,
                                     repeats=repeats)


def copy_bandwidth_gbs(nbytes=1 << 30, repeats=10):
  """Device copy bandwidth (bytes read + written per second)."""
  x = jnp.ones(nbytes // 4, jnp.float32)
  seconds = timing.median_seconds(jax.jit(lambda x: x * 1.0), x,
                                  repeats=repeats)
  return 2 * nbytes / seconds / 1e9


def step_table(train, quick):
  repeats = 5 if quick else 20
  rows = []
  cases = [(1, None, 1), (10, None, 1), (50, None, 1), (1, None, 10),
           (1, 8192, 1)]
  if quick:
    cases = [(1, None, 1), (10, None, 1), (1, 8192, 1)]
  for ipc, batch, per_dispatch in cases:
    config = linear.get_config('fashion_mnist,ipc=1')
    config.data.idx_dir = FLAGS.idx_dir
    config.distill.images_per_class = ipc
    config.data.outer_batch_size = batch
    config.steps_per_dispatch = per_dispatch
    for solver in FLAGS.solvers:
      config.inner.solver = solver
      config.inner.implicit_solve = IMPLICIT_SOLVE[solver]
      rows.append({
          'images_per_class': ipc, 'outer_batch_size': batch or 'full',
          'steps_per_dispatch': per_dispatch, 'solver': solver,
          'devices': jax.device_count(),
          'ms_per_step': steady_step_ms(config, train, repeats)})
      print(json.dumps(rows[-1]), flush=True)
  return rows


def check_flags() -> None:
  """Raises a UserError for a flag that would fail later, before anything
  is timed or written."""
  unknown = [s for s in FLAGS.solvers if s not in IMPLICIT_SOLVE]
  if unknown or not FLAGS.solvers:
    raise errors.UserError(f'--solvers={",".join(FLAGS.solvers)}: pick from '
                           f'{", ".join(IMPLICIT_SOLVE)}.')
  if FLAGS.trace_of is not None and FLAGS.trace_of not in RUNS:
    raise errors.UserError(f'--trace_of={FLAGS.trace_of}: pick one of '
                           f'{", ".join(RUNS)}.')
  if not os.path.isdir(FLAGS.idx_dir):
    raise errors.UserError(f'--idx_dir={FLAGS.idx_dir} is not a directory; '
                           'point it at the Fashion-MNIST idx files.')
  if os.path.exists(FLAGS.out) and not os.path.isdir(FLAGS.out):
    raise errors.UserError(f'--out={FLAGS.out} is a file; pass a directory.')


def main(argv):
  del argv
  check_flags()
  base = fashion_mnist.get_config()
  base.data.idx_dir = FLAGS.idx_dir
  # Before --out is created: the data's errors are the user's to fix.
  train, test = _data(base)
  os.makedirs(FLAGS.out, exist_ok=True)
  if FLAGS.trace_of:
    print('RESULT=' + json.dumps(trace_of(FLAGS.trace_of, train, test)))
    return
  if FLAGS.steps_only:
    print('RESULT=' + json.dumps(step_table(train, FLAGS.quick)))
    return
  result = stamp()

  # 1. Time to the seed's final accuracy. The runs take turns, so that a
  # change in the machine's load falls on all of them alike.
  quick = ['--quick'] if FLAGS.quick else []
  traces = {run: [] for run in RUNS}
  for _ in range(1 if FLAGS.quick else FLAGS.processes):
    for run in RUNS:
      traces[run].append(in_fresh_process(f'--trace_of={run}', *quick))
  target = traces['seed'][0][0][-1][1]
  result['seed_final_test_accuracy'] = target
  result['time_to_seed_accuracy'] = [summary(run, traces[run], target)
                                     for run in RUNS]
  for row in result['time_to_seed_accuracy']:
    print(json.dumps(row), flush=True)

  # 2. Steady-state step times, and what they are up against.
  result['steps'] = step_table(train, FLAGS.quick)
  result['forward_backward_ms'] = forward_backward_ms(train, 20)
  if jax.default_backend() != 'cpu':
    bandwidth = copy_bandwidth_gbs()
    result['copy_bandwidth_gbs'] = bandwidth
    result['bound_ms'] = 2 * train.images.nbytes / (bandwidth * 1e9) * 1e3

  # 3. Eight devices (host devices on CPU; real ones elsewhere if present).
  if jax.default_backend() == 'cpu' and jax.device_count() == 1:
    env = dict(os.environ, XLA_FLAGS=result['xla_flags'] +
               ' --xla_force_host_platform_device_count=8')
    result['steps'] += in_fresh_process(
        '--steps_only', '--quick', f'--solvers={",".join(FLAGS.solvers)}',
        env=env)

  with open(os.path.join(FLAGS.out, 'speed.json'), 'w') as f:
    json.dump(result, f, indent=2)
  markdown = to_markdown(result)
  with open(os.path.join(FLAGS.out, 'speed.md'), 'w') as f:
    f.write(markdown)
  print(markdown)


def stamp():
  """What a table's numbers depend on besides the code's inputs."""
  device = jax.devices()[0]
  return {'machine': f'{platform.processor() or platform.machine()}, '
                     f'{os.cpu_count()} CPUs',
          'device': f'{device.platform}: {device.device_kind}',
          'jax': jax.__version__,
          'commit': _commit(),
          # JAX's persistent cache (JAX_COMPILATION_CACHE_DIR) would load
          # compiled programs instead of compiling them.
          'compilation_cache': jax.config.jax_compilation_cache_dir,
          # Compiler flags change compilation times (and can change speed).
          'xla_flags': os.environ.get('XLA_FLAGS', '')}


def _commit() -> str:
  """The checked-out commit, marked when the tree has uncommitted changes."""
  git = lambda *args: subprocess.run(
      ['git', *args], cwd=os.path.dirname(os.path.abspath(__file__)),
      capture_output=True, text=True).stdout.strip()
  commit = git('rev-parse', '--short', 'HEAD') or 'unknown'
  return commit + ('+changes' if git('status', '--porcelain', '-uno') else '')


def to_markdown(result):
  cache = ('persistent compilation cache in use'
           if result['compilation_cache'] else 'no compilation cache')
  flags_set = (f'; XLA_FLAGS={result["xla_flags"]}' if result['xla_flags']
               else '')
  lines = [f'Machine: {result["machine"]}; device {result["device"]}; '
           f'jax {result["jax"]}; commit {result["commit"]}; '
           f'{cache}{flags_set}.', '',
           f'Time to the seed\'s final test accuracy '
           f'({100 * result["seed_final_test_accuracy"]:.2f}%), medians of '
           f'{len(result["time_to_seed_accuracy"][0]["cold_s_each"])} fresh '
           'processes per run (all cold times in brackets):', '',
           '| run | steps | with compilation | of which to the end of step 1 '
           '| without |', '| --- | --- | --- | --- | --- |']
  fmt = lambda s: 'not reached' if s is None else f'{s:.2f} s'
  seed, *ours_rows = result['time_to_seed_accuracy']
  for row in result['time_to_seed_accuracy']:
    ratio = (f', {seed["cold_s"] / row["cold_s"]:.1f}x faster'
             if row['cold_s'] and row in ours_rows else '')
    each = ', '.join('-' if s is None else f'{s:.2f}'
                     for s in row['cold_s_each'])
    lines.append(f'| {row["run"]} | {row["steps"]} | {fmt(row["cold_s"])}'
                 f'{ratio} ({each}) | {fmt(row["first_step_s"])} | '
                 f'{fmt(row["warm_s"])} |')
  bound = (f'; bandwidth bound {result["bound_ms"]:.3f} ms '
           f'({result["copy_bandwidth_gbs"]:.0f} GB/s copy)'
           if 'bound_ms' in result else '')
  lines += ['', f'Steady state, ms per outer step (one forward+backward pass '
                f'over the training split: {result["forward_backward_ms"]:.3f}'
                f' ms{bound}):', '',
            '| images/class | batch | steps/dispatch | solver | devices | '
            'ms/step |', '| --- | --- | --- | --- | --- | --- |']
  for row in result['steps']:
    lines.append(f'| {row["images_per_class"]} | {row["outer_batch_size"]} | '
                 f'{row["steps_per_dispatch"]} | {row["solver"]} | '
                 f'{row["devices"]} | {row["ms_per_step"]:.3f} |')
  return '\n'.join(lines) + '\n'


if __name__ == '__main__':
  # Here, not at import: benchmarks/device.py imports this file's helpers
  # (and flags) and has a --quick mode without data files.
  flags.mark_flags_as_required(['idx_dir'])
  cli.run(main)
