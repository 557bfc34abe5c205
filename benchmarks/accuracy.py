"""Trains and evaluates configs, and tabulates test accuracy and wall time.

  python benchmarks/accuracy.py --workdir=workdirs/accuracy \
      --configs=fashion_mnist_ipc1,fashion_mnist_ipc10 \
      [-- --config.data.idx_dir=DIR]

Each config runs `train.py` then `eval.py` (with baselines) in a fresh
workdir, as a user would; the table (Markdown) and the raw results (JSON) land
in --workdir. Arguments after `--` go to train.py.
"""

import json
import os
import platform
import subprocess
import sys
import time

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Where runs and the table go.')
flags.DEFINE_list('configs', [], 'Config names under configs/.')
flags.mark_flags_as_required(['workdir', 'configs'])


def _run(args: list[str]) -> float:
  start = time.time()
  subprocess.run([sys.executable, *args], cwd=ROOT, check=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  return time.time() - start


def main(argv):
  extra = argv[1:]
  rows = []
  for name in FLAGS.configs:
    workdir = os.path.join(os.path.abspath(FLAGS.workdir), name)
    if os.path.exists(workdir):
      raise app.UsageError(f'{workdir} exists; pick a new --workdir.')
    train_s = _run(['train.py', f'--config=configs/{name}.py',
                    f'--workdir={workdir}', *extra])
    eval_s = _run(['eval.py', f'--workdir={workdir}'])
    with open(os.path.join(workdir, 'eval.json')) as f:
      result = json.load(f)
    rows.append({'config': name, 'train_seconds': train_s,
                 'eval_seconds': eval_s, **result})
    print(json.dumps(rows[-1]), flush=True)
  machine = f'{platform.processor() or platform.machine()}, ' \
            f'{os.cpu_count()} CPUs'
  lines = [f'Machine: {machine}. Test accuracy of the linear model; '
           'baselines have the same number of images (random real: mean ± '
           'std over draws).', '',
           '| config | images | distilled | random real | class means | '
           'full data | train time | eval time |',
           '| --- | --- | --- | --- | --- | --- | --- | --- |']
  for row in rows:
    acc = {r['method']: r for r in row['table']}
    cell = lambda m: f'{100 * acc[m]["test_accuracy"]:.2f}%'
    lines.append(
        f'| {row["config"]} | {acc["distilled"]["images"]} | '
        f'{cell("distilled")} | {cell("random_real")} ± '
        f'{100 * acc["random_real"]["test_accuracy_std"]:.2f} | '
        f'{cell("class_means")} | {cell("full_data")} | '
        f'{row["train_seconds"]:.0f} s | {row["eval_seconds"]:.0f} s |')
  with open(os.path.join(FLAGS.workdir, 'accuracy.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  with open(os.path.join(FLAGS.workdir, 'accuracy.json'), 'w') as f:
    json.dump(rows, f, indent=2)
  print('\n'.join(lines))


if __name__ == '__main__':
  app.run(main)
