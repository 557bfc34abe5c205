"""Validation accuracy against outer steps: the compute curve of a config.

  python train.py --config=configs/conv.py:fashion_mnist,ipc=10,size=cpu \
      --workdir=workdirs/curve/random --config.num_steps=3000 \
      --config.checkpoint_every_steps=100 --config.max_checkpoints_to_keep=100
  python benchmarks/curve.py --run=random=workdirs/curve/random \
      [--run=pool=workdirs/curve/pool] --steps=300,1000,3000 \
      --name=conv_fashion_mnist_ipc=10_size=cpu --out=benchmarks/curve

Each --run (LABEL=WORKDIR) is one train.py run that kept a checkpoint at
each of --steps. For every run and step, `eval.py --step` trains the
config's networks on that step's distilled set; the table shows their
accuracy on the held-out training images (config.data.validation_size),
and the linear head's periodic validation accuracy (train.py's, at the
same step). The first run's first step is tested with baselines too, for
random real images under the same recipes. Arguments after `--` go to
eval.py (e.g. `--config=CONFIG --config.eval.nets=convnet` for fewer
evaluators). The test split is in no
cell. Results are kept per step in --out/<name>/ and reused.
"""

import json
import os
import platform
import subprocess
import sys

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# pylint: disable=g-import-not-at-top,wrong-import-position
from distillation import cli
from distillation import errors
# pylint: enable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_multi_string('run', [], 'LABEL=WORKDIR of a train.py run; '
                          'repeat for several.')
flags.DEFINE_list('steps', ['300', '1000', '3000'], 'Outer steps to test '
                  '(each a kept checkpoint of every run).')
flags.DEFINE_string('name', None, 'The files\' name: curve_<name>.md, '
                    '.json, .png.')
flags.DEFINE_string('out', None, 'Where the files go.')
flags.mark_flags_as_required(['name', 'out'])


def parse_runs(specs: list[str]) -> dict[str, str]:
  """{label: workdir} of 'LABEL=WORKDIR' entries."""
  if not specs:
    raise app.UsageError('--run=LABEL=WORKDIR is required (one per run).')
  runs = {}
  for spec in specs:
    label, sep, workdir = spec.partition('=')
    if not sep or not label or not workdir:
      raise app.UsageError(f'--run={spec}: expected LABEL=WORKDIR, e.g. '
                           '--run=random=workdirs/curve/random.')
    if label in runs:
      raise app.UsageError(f'--run={spec}: the label {label} is taken; give '
                           'each run its own.')
    runs[label] = workdir
  return runs


def check_runs(runs: dict[str, str]) -> None:
  """Raises a UserError unless each run's workdir is a train.py run's."""
  for label, workdir in runs.items():
    if not os.path.isdir(workdir):
      raise errors.UserError(f'--run={label}={workdir}: no such directory; '
                             'pass the --workdir of a train.py run.')
    if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
      raise errors.UserError(
          f'--run={label}={workdir}: no checkpoints there; pass the '
          '--workdir of a train.py run (with config.max_checkpoints_to_keep '
          'large enough to keep each of --steps).')


def parse_steps(steps: list[str]) -> list[int]:
  """The sorted --steps, each a positive integer."""
  try:
    parsed = sorted(int(s) for s in steps)
  except ValueError:
    parsed = []
  if not parsed or parsed[0] < 1:
    raise app.UsageError(f'--steps={",".join(steps)}: expected positive '
                         'integers, e.g. --steps=300,1000,3000.')
  return parsed


def head_validation(workdir: str) -> dict[int, float]:
  """{step: the linear head's validation accuracy} as train.py logged it
  (TensorBoard events; TensorFlow is only needed here)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  accuracy = {}
  for name in sorted(os.listdir(workdir)):
    if not name.startswith('events.out.tfevents'):
      continue
    for record in tf.data.TFRecordDataset(os.path.join(workdir, name)):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        if value.tag == 'validation_accuracy':
          accuracy[event.step] = float(
              tf.make_ndarray(value.tensor) if value.HasField('tensor')
              else value.simple_value)
  return accuracy


def evaluate(workdir: str, step: int, path: str, baselines: bool,
             extra: list[str]) -> dict:
  """eval.py's result for `step` of `workdir`, from `path` if there."""
  if not os.path.exists(path):
    log = path[:-len('.json')] + '.log'
    with open(log, 'w') as f:
      code = subprocess.run(
          [sys.executable, 'eval.py', f'--workdir={workdir}',
           f'--step={step}', f'--out={path}',
           '--baselines' if baselines else '--nobaselines', *extra],
          cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=False
      ).returncode
    if code:
      sys.exit(f'ERROR: eval.py exited with {code}{last_error(log)}; its '
             f'output is in {log}.')
  with open(path) as f:
    return json.load(f)


def last_error(log: str) -> str:
  """': <the message>' of the last `ERROR:` line in `log`, or ''."""
  with open(log, errors='replace') as f:
    lines = [line.strip() for line in f if line.startswith('ERROR: ')]
  return f': {lines[-1][len("ERROR: "):].rstrip(".")}' if lines else ''


def validation(result: dict, method: str) -> dict[tuple[str, str], tuple]:
  """{(evaluator, labels): (mean, std)} of `method`'s network rows."""
  return {(row['evaluator'], row['labels']): (row['validation_accuracy'],
                                              row['validation_accuracy_std'])
          for row in result['net_table'] if row['method'] == method}


def plot(curves: dict, baseline: dict, steps: list[int], columns: list,
         path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
  evaluators = sorted({e for e, _ in columns})
  figure, axes = pyplot.subplots(1, len(evaluators), squeeze=False,
                                 figsize=(5 * len(evaluators), 4),
                                 sharey=True)
  for ax, evaluator in zip(axes[0], evaluators):
    for color, (label, curve) in enumerate(curves.items()):
      for labels, style in (('soft', '-'), ('hard', '--')):
        if (evaluator, labels) in columns:
          xs = [s for s in steps if s in curve]
          ax.plot(xs, [100 * curve[s][(evaluator, labels)][0] for s in xs],
                  style, marker='o', color=f'C{color}',
                  label=f'distilled, {label}, {labels} labels')
    if (evaluator, 'hard') in baseline:
      ax.axhline(100 * baseline[(evaluator, 'hard')][0], color='gray',
                 linestyle=':', label='random real, hard labels')
    ax.set_xscale('log')
    ax.set_xticks(steps, [str(s) for s in steps])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel('outer steps')
    ax.set_title(f'{evaluator} networks')
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel('validation accuracy (%)')
  axes[0][-1].legend(fontsize=8)
  figure.suptitle(FLAGS.name)
  figure.tight_layout()
  figure.savefig(path, dpi=110)


def main(argv):
  runs = parse_runs(FLAGS.run)
  steps = parse_steps(FLAGS.steps)
  check_runs(runs)
  # Absolute: eval.py runs in the repository's root.
  runs = {label: os.path.abspath(workdir) for label, workdir in runs.items()}
  if os.sep in FLAGS.name or not FLAGS.name.strip('.'):
    raise errors.UserError(f'--name={FLAGS.name}: a file name without '
                           f'{os.sep}, e.g. --name=conv_digits.')
  if os.path.exists(FLAGS.out) and not os.path.isdir(FLAGS.out):
    raise errors.UserError(f'--out={FLAGS.out} is a file; pass a directory.')
  # eval.py's own one-line error for a bad --config after --.
  cli.load_config(argv[1:], ROOT)
  results_dir = os.path.join(os.path.abspath(FLAGS.out), FLAGS.name)
  os.makedirs(results_dir, exist_ok=True)
  curves, heads, baseline = {}, {}, {}
  for i, (label, workdir) in enumerate(runs.items()):
    curves[label], logged = {}, head_validation(workdir)
    heads[label] = {s: logged.get(s) for s in steps}
    for step in steps:
      if not os.path.isdir(os.path.join(workdir, 'checkpoints', str(step))):
        # A run stopped early (or keeping fewer) has no row there.
        print(f'{label}: no checkpoint of step {step} in {workdir}; its '
              'cells stay empty.', flush=True)
        continue
      with_baselines = i == 0 and step == steps[0]
      path = os.path.join(results_dir, f'{label}_step={step}.json')
      result = evaluate(workdir, step, path, with_baselines, argv[1:])
      curves[label][step] = validation(result, 'distilled')
      if with_baselines:
        baseline = validation(result, 'random_real')
  # The rows every step has (a reused result may have more).
  columns = sorted(set.intersection(*(set(rows) for c in curves.values()
                                      for rows in c.values())),
                   key=lambda k: (k[0], k[1] != 'soft'))

  def cell(value):
    return '—' if value is None else f'{100 * value[0]:.1f} ± {100 * value[1]:.1f}'

  lines = [
      f'`{FLAGS.name}`: validation accuracy (%, held-out training images; '
      'mean ± std over the networks) of networks trained from scratch on the '
      'distilled set of each kept step, and of the linear head as train.py '
      f'validated it. Machine: {platform.machine()}, {os.cpu_count()} CPUs. '
      'Command: `python benchmarks/curve.py ' +
      ' '.join(f'--run={label}=WORKDIR' for label in runs) +
      f' --steps={",".join(map(str, steps))} --name={FLAGS.name}' +
      (' -- ' + ' '.join(argv[1:]) if argv[1:] else '') + '` on the '
      'train.py runs of benchmarks/README.md. An empty cell: the run kept no '
      'checkpoint of that step.', '',
      '| run | outer steps | linear head | ' +
      ' | '.join(f'{e}, {labels}' for e, labels in columns) + ' |',
      '| --- ' * (3 + len(columns)) + '|']
  for label, curve in curves.items():
    for step in steps:
      head = heads[label][step]
      lines.append(f'| {label} | {step} | ' +
                   ('—' if head is None else f'{100 * head:.1f}') + ' | ' +
                   ' | '.join(cell(curve.get(step, {}).get(k))
                              for k in columns) +
                   ' |')
  lines.append('| random real | — | — | ' +
               ' | '.join(cell(baseline.get(k)) for k in columns) + ' |')
  stem = os.path.join(FLAGS.out, f'curve_{FLAGS.name}')
  with open(stem + '.md', 'w') as f:
    f.write('\n'.join(lines) + '\n')
  with open(stem + '.json', 'w') as f:
    json.dump({'name': FLAGS.name, 'steps': steps, 'runs': list(runs),
               'linear_head': heads,
               'networks': {label: {str(s): [
                   {'evaluator': e, 'labels': l, 'validation_accuracy': v[0],
                    'validation_accuracy_std': v[1]}
                   for (e, l), v in curve[s].items()] for s in curve}
                            for label, curve in curves.items()},
               'random_real': [{'evaluator': e, 'labels': l,
                                'validation_accuracy': v[0],
                                'validation_accuracy_std': v[1]}
                               for (e, l), v in baseline.items()]},
              f, indent=1)
  plot(curves, baseline, steps, columns, stem + '.png')
  print('\n'.join(lines))


if __name__ == '__main__':
  cli.run(main, passed_on='eval.py')
