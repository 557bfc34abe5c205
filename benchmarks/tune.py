"""Chooses among settings of a config by networks' validation accuracy.

  python benchmarks/tune.py \
      --config=configs/conv.py:fashion_mnist,ipc=1,size=cpu \
      --workdir=workdirs/tune --validation_size=5000 \
      --grid=optimizer.learning_rate=0.01,0.03 --grid=num_steps=300,600 \
      [-- --config.data.idx_dir=DIR]

Each point of the grid (the product of the --grid lists) runs `train.py`
with `--validation_size` training examples held out, then `eval.py
--nobaselines`, in its own workdir (a finished one is reused). The choice
is the point whose distilled set trains the `--evaluator` networks to the
highest mean accuracy on the held-out examples; the test split is not read
for it, so the chosen config's test numbers stay held out. The table
(Markdown) and the results (JSON) land in --out (default: --workdir).
"""

import itertools
import json
import os
import platform
import subprocess
import sys
import time

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# pylint: disable=g-import-not-at-top,wrong-import-position
from distillation import cli
from distillation import errors
# pylint: enable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string('config', None, 'A config as train.py takes it, e.g. '
                    'configs/conv.py:digits,ipc=1,size=cpu.')
flags.DEFINE_string('workdir', None, 'Where the runs go.')
flags.DEFINE_multi_string('grid', [], 'field=v1,v2,...: config values to '
                          'try; several --grid flags make a product.')
flags.DEFINE_integer('validation_size', 5000, 'Training examples held out '
                     'to choose by (config.data.validation_size).')
flags.DEFINE_string('evaluator', 'convnet', 'The evaluator of config.eval.'
                    'nets whose validation accuracy decides.')
flags.DEFINE_string('out', None, 'Where tune_<run_name>.md and .json go '
                    '(default: --workdir).')
flags.DEFINE_bool('run_missing', True, 'Train and evaluate the points '
                  'that have no result yet; --norun_missing tables the '
                  'finished ones only (e.g. while others still run).')
flags.mark_flags_as_required(['config', 'workdir'])


def grid_points(grid: list[str]) -> list[dict[str, str]]:
  """[{field: value}] for the product of 'field=v1,v2' entries."""
  axes = []
  for entry in grid:
    field, sep, values = entry.partition('=')
    if not sep or not field or not values:
      raise app.UsageError(f'--grid={entry}: expected field=v1,v2,..., e.g. '
                           '--grid=optimizer.learning_rate=0.01,0.03.')
    axes.append([(field, value) for value in values.split(',')])
  return [dict(point) for point in itertools.product(*axes)]


def check(config: str, grid: list[str], points: list[dict[str, str]],
          validation_size: int, evaluator: str, extra: list[str]) -> None:
  """Raises a UserError if a point's train.py command line would fail
  before training, with train.py's own message and the --grid entry or
  point it comes from; before anything is run or created."""
  cli.load_config([f'--config={config}'], ROOT)
  for entry in grid:
    field, _, values = entry.partition('=')
    for value in values.split(','):
      try:
        cli.load_config([f'--config={config}', f'--config.{field}={value}'],
                        ROOT)
      except errors.UserError as e:
        # The hint in the terms of --grid, which takes no --config. prefix.
        message = str(e).replace('did you mean --config.', 'did you mean ')
        raise errors.UserError(f'--grid={entry}: {message}') from None
  for point in points:
    # Flags of the config and after -- name themselves.
    parsed = cli.load_config(
        train_args(config, point, validation_size, extra), ROOT)
    try:
      cli.check_train_config(parsed, ROOT)
    except errors.UserError as e:
      raise errors.UserError(f'the point {point_name(point)}: {e}' if point
                             else str(e)) from None
    nets = [n for n in parsed.eval.nets if n != 'linear']
    if evaluator not in nets:
      raise errors.UserError(
          f'--evaluator={evaluator}: not a network of config.eval.nets '
          f'({", ".join(nets) or "none"}); pick one of them, or add it '
          'after -- (--config.eval.nets=...).')


def train_args(config: str, point: dict[str, str], validation_size: int,
               extra: list[str]) -> list[str]:
  """train.py's flags for a point, but --workdir."""
  return [f'--config={config}',
          *[f'--config.{k}={v}' for k, v in point.items()],
          f'--config.data.validation_size={validation_size}', *extra]


def run_name(spec: str) -> str:
  """A config's name for files: configs/conv.py:digits,ipc=1,size=cpu ->
  conv_digits_ipc=1_size=cpu."""
  path, _, arg = spec.partition(':')
  stem = os.path.splitext(os.path.basename(path))[0]
  return '_'.join([stem, *arg.split(',')]) if arg else stem


def point_name(point: dict[str, str]) -> str:
  return '_'.join(f'{field.rpartition(".")[2]}={value}'
                  for field, value in point.items()) or 'as_is'


def choose(results: list[dict], evaluator: str) -> dict:
  """The result with the best validation accuracy of `evaluator` on the
  distilled set (soft labels where learned, else hard)."""
  return max(results, key=lambda r: score(r, evaluator))


def score(result: dict, evaluator: str) -> float:
  rows = {row['labels']: row for row in result['net_table']
          if row['evaluator'] == evaluator and row['method'] == 'distilled'}
  if not rows:
    raise app.UsageError(f'--evaluator={evaluator}: not among the config\'s '
                         'config.eval.nets; pick one that is.')
  return (rows.get('soft') or rows['hard'])['validation_accuracy']


def _portable(arg: str) -> str:
  """A train.py flag as the table shows it: data directories as DIR."""
  name, sep, _ = arg.partition('=')
  return f'{name}=DIR' if sep and name.endswith('_dir') else arg


def _run(args: list[str], log: str) -> float:
  """Runs a script of the repository; its wall time in seconds."""
  start = time.time()
  with open(log, 'a') as f:
    code = subprocess.run([sys.executable, *args], cwd=ROOT, stdout=f,
                          stderr=subprocess.STDOUT, check=False).returncode
  if code:
    sys.exit(f'ERROR: {args[0]} exited with {code}{last_error(log)}; its '
             f'output is in {log}.')
  return time.time() - start


def last_error(log: str) -> str:
  """': <the message>' of the last `ERROR:` line in `log`, or ''."""
  with open(log, errors='replace') as f:
    lines = [line.strip() for line in f if line.startswith('ERROR: ')]
  return f': {lines[-1][len("ERROR: "):].rstrip(".")}' if lines else ''


def evaluator_columns(results: list[dict]) -> list[str]:
  """The network evaluators of the results, in their order."""
  return list(dict.fromkeys(row['evaluator'] for r in results
                            for row in r['net_table']))


def cell(result: dict, evaluator: str, labels: str) -> str:
  rows = [row for row in result['net_table'] if row['evaluator'] == evaluator
          and row['method'] == 'distilled' and row['labels'] == labels]
  if not rows:
    return '—'
  return (f'{100 * rows[0]["validation_accuracy"]:.1f} ± '
          f'{100 * rows[0]["validation_accuracy_std"]:.1f}')


def main(argv):
  extra = argv[1:]
  out = FLAGS.out or FLAGS.workdir
  points = grid_points(FLAGS.grid)
  for flag, path in (('--workdir', FLAGS.workdir), ('--out', out)):
    if os.path.exists(path) and not os.path.isdir(path):
      raise errors.UserError(f'{flag}={path} is a file; pass a directory.')
  if FLAGS.run_missing:
    check(FLAGS.config, FLAGS.grid, points, FLAGS.validation_size,
          FLAGS.evaluator, extra)
  results, missing = [], []
  for point in points:
    # Absolute: train.py and eval.py run in the repository's root.
    workdir = os.path.join(os.path.abspath(FLAGS.workdir),
                           run_name(FLAGS.config), point_name(point))
    result_path = os.path.join(workdir, 'eval.json')
    # Wall times live beside the run, so a reused point keeps its own.
    times_path = os.path.join(workdir, 'tune_times.json')
    if not os.path.exists(result_path) and not FLAGS.run_missing:
      print(f'{point_name(point)}: not run yet, left out', flush=True)
      missing.append(point)
      continue
    if not os.path.exists(result_path):
      os.makedirs(workdir, exist_ok=True)
      log = os.path.join(workdir, 'tune.log')
      times = {'train_seconds': _run(
          ['train.py', f'--workdir={workdir}', *train_args(
              FLAGS.config, point, FLAGS.validation_size, extra)], log)}
      times['eval_seconds'] = _run(
          ['eval.py', f'--workdir={workdir}', '--nobaselines'], log)
      with open(times_path, 'w') as f:
        json.dump(times, f)
    with open(result_path) as f:
      result = json.load(f)
    times = {}
    if os.path.exists(times_path):
      with open(times_path) as f:
        times = json.load(f)
    # Only what the choice reads: eval.py's test numbers stay out of it.
    kept = ('evaluator', 'method', 'labels', 'recipe_name',
            'validation_accuracy', 'validation_accuracy_std')
    results.append({'point': point, **times, 'net_table': [
        {k: row[k] for k in kept} for row in result['net_table']]})
    print(f'{point_name(point)}: {score(results[-1], FLAGS.evaluator):.4f}',
          flush=True)
  if not results:
    raise errors.UserError('no point of the grid has a result yet; run '
                           'without --norun_missing.')
  best = choose(results, FLAGS.evaluator)
  recipe = next(r['recipe_name'] for r in best['net_table']
                if r['evaluator'] == FLAGS.evaluator)
  columns = evaluator_columns(results)
  lines = [
      f'`{FLAGS.config}`: networks trained on each distilled set by each '
      'evaluator, mean ± std of their accuracy on '
      f'{FLAGS.validation_size} held-out training examples (%; the choice, '
      f'by {FLAGS.evaluator} ({recipe}), does not read the test split); '
      'train and eval: wall times. Machine: '
      f'{platform.machine()}, {os.cpu_count()} CPUs. Command: `python '
      f'benchmarks/tune.py --config={FLAGS.config} '
      f'--validation_size={FLAGS.validation_size} ' +
      ' '.join(f'--grid={g}' for g in FLAGS.grid) +
      (f' --evaluator={FLAGS.evaluator}'
       if FLAGS.evaluator != 'convnet' else '') +
      (' -- ' + ' '.join(_portable(a) for a in extra) if extra else '') +
      '`.', '',
      '| setting | ' + ' | '.join(f'{c}, {labels}' for c in columns
                                  for labels in ('soft', 'hard')) +
      ' | train | eval | chosen |',
      '| --- ' * (2 * len(columns) + 4) + '|']
  for result in results:
    lines.append(
        f'| {point_name(result["point"])} | ' +
        ' | '.join(cell(result, c, labels) for c in columns
                   for labels in ('soft', 'hard')) + ' | ' +
        ' | '.join(f'{result[k]:.0f} s' if k in result else '—'
                   for k in ('train_seconds', 'eval_seconds')) +
        f' | {"yes" if result is best else ""} |')
  for point in missing:
    lines.append(f'| {point_name(point)} | ' + ' | '.join(
        ['not run'] * (2 * len(columns)) + ['—', '—', '']) + ' |')
  name = run_name(FLAGS.config)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, f'tune_{name}.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  with open(os.path.join(out, f'tune_{name}.json'), 'w') as f:
    json.dump({'config': FLAGS.config, 'evaluator': FLAGS.evaluator,
               'validation_size': FLAGS.validation_size,
               'chosen': best['point'], 'results': results,
               'not_run': missing}, f, indent=1)
  print(f'chosen: {point_name(best["point"])}')


if __name__ == '__main__':
  cli.run(main, passed_on='train.py')
