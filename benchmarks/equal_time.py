"""Validation accuracy of the networks against train minutes, per inner model.

  python benchmarks/curve.py --run=head=W1 --run=linearized=W2 \
      --steps=100,300,600 --name=NAME --out=benchmarks/curve -- \
      --config=CONFIG --config.eval.nets=convnet
  python benchmarks/equal_time.py --curve=benchmarks/curve/curve_NAME.json \
      --run=head=W1 --run=linearized=W2 --out=benchmarks/equal_time

For each run of a curve.py table (its networks' validation accuracy at each
kept step), reads from the run's TensorBoard log the train.py wall time at
that step (the `uptime` scalar, linear between the logged steps around
it: compilation, validation and checkpoints included, as a user waits for
them) and writes
equal_time_NAME.md and .png: accuracy against minutes, one line per run, so
inner models of different step costs compare at equal compute. Runs must
come from one machine, each alone on it. The test split is in no cell.
"""

import glob
import json
import os
import platform
import sys

from absl import flags
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# pylint: disable=g-import-not-at-top,wrong-import-position
from distillation import cli
from distillation import errors

FLAGS = flags.FLAGS
flags.DEFINE_string('curve', None, 'A JSON file that curve.py wrote.')
flags.DEFINE_multi_string('run', [], 'LABEL=WORKDIR, the labels of --curve.')
flags.DEFINE_string('out', None, 'Directory for the table and the plot.')


def uptimes(workdir: str) -> dict[int, float]:
  """Step -> seconds since train.py started, from the run's event files."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.python.framework import tensor_util  # pylint: disable=g-import-not-at-top,g-direct-tensorflow-import
  out = {}
  for path in sorted(glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == 'uptime':
          out[event.step] = float(tensor_util.MakeNdarray(value.tensor))
  return out


def seconds_at(times: dict[int, float], step: int) -> float:
  """The uptime at `step`, linear between the logged steps around it (the
  log is periodic, every config.progress_every_secs); the nearest end's
  value outside them."""
  logged = sorted(times)
  return float(np.interp(step, logged, [times[s] for s in logged]))


def main(argv):
  del argv
  for name in ('curve', 'out'):
    if not FLAGS[name].value:
      raise errors.UserError(f'--{name} is needed.')
  if not os.path.isfile(FLAGS.curve):
    raise errors.UserError(f'--curve={FLAGS.curve}: no such file; pass the '
                           'JSON that benchmarks/curve.py wrote.')
  with open(FLAGS.curve) as f:
    curve = json.load(f)
  runs = {}
  for spec in FLAGS.run:
    label, sep, workdir = spec.partition('=')
    if not sep or label not in curve['runs']:
      raise errors.UserError(f'--run={spec}: expected LABEL=WORKDIR with a '
                             f'label of --curve ({", ".join(curve["runs"])}).')
    if not glob.glob(os.path.join(workdir, 'events.out.tfevents.*')):
      raise errors.UserError(f'--run={spec}: no TensorBoard log there; pass '
                             'the --workdir of a train.py run.')
    runs[label] = uptimes(workdir)
  if not runs:
    raise errors.UserError('--run is needed, once per run of --curve.')
  rows = []
  for label, times in runs.items():
    for step, results in sorted(curve['networks'][label].items(),
                                key=lambda x: int(x[0])):
      seconds = seconds_at(times, int(step))
      for r in results:
        rows.append(dict(run=label, step=int(step), minutes=seconds / 60,
                         evaluator=r['evaluator'], labels=r['labels'],
                         accuracy=100 * r['validation_accuracy'],
                         std=100 * r['validation_accuracy_std']))
  os.makedirs(FLAGS.out, exist_ok=True)
  stem = os.path.join(FLAGS.out, f'equal_time_{curve["name"]}')
  with open(stem + '.json', 'w') as f:
    json.dump(rows, f, indent=1)
  lines = [
      f'`{curve["name"]}`: validation accuracy (%, held-out training images; '
      'mean ± std over the networks) of networks trained from scratch on the '
      'set of each kept step, against the minutes train.py had run by then '
      f'(`uptime`). Machine: {platform.machine()}, {os.cpu_count()} CPUs, '
      'each run alone. Command: `python benchmarks/equal_time.py '
      f'--curve={FLAGS.curve} ' + ' '.join(f'--run={r}=WORKDIR' for r in runs)
      + f' --out={FLAGS.out}`, from the curve.py table beside it.', '',
      '| run | outer steps | train minutes | evaluator | labels | accuracy |',
      '| --- | --- | --- | --- | --- | --- |']
  lines += [f'| {r["run"]} | {r["step"]} | {r["minutes"]:.1f} | '
            f'{r["evaluator"]} | {r["labels"]} | {r["accuracy"]:.1f} ± '
            f'{r["std"]:.1f} |' for r in rows]
  lines += [f'| random real | — | — | {r["evaluator"]} | {r["labels"]} | '
            f'{100 * r["validation_accuracy"]:.1f} ± '
            f'{100 * r["validation_accuracy_std"]:.1f} |'
            for r in curve.get('random_real', [])]
  with open(stem + '.md', 'w') as f:
    f.write('\n'.join(lines) + '\n')
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  for (run, labels) in sorted({(r['run'], r['labels']) for r in rows}):
    points = [r for r in rows if r['run'] == run and r['labels'] == labels]
    ax.errorbar([r['minutes'] for r in points],
                [r['accuracy'] for r in points],
                yerr=[r['std'] for r in points], marker='o', capsize=3,
                label=f'{run}, {labels} labels')
  # The baseline under the same recipe: random real images, hard labels.
  for r in curve.get('random_real', []):
    if r['labels'] == 'hard':
      ax.axhline(100 * r['validation_accuracy'], color='gray', ls='--',
                 label=f'random real, hard labels ({r["evaluator"]})')
  ax.set_xlabel('train.py minutes (2-core CPU)' if os.cpu_count() == 2 else
                'train.py minutes')
  ax.set_ylabel('validation accuracy (%)')
  ax.set_title(curve['name'], fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(stem + '.png', dpi=120)
  print('\n'.join(lines))


if __name__ == '__main__':
  cli.run(main)
