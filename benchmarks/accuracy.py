"""Trains and evaluates configs, and tabulates test accuracy and wall time.

  python benchmarks/accuracy.py --workdir=workdirs/accuracy \
      --config=configs/linear.py:fashion_mnist,ipc=1 \
      --config=configs/linear.py:fashion_mnist,ipc=10 \
      [-- --config.data.idx_dir=DIR --config.eval.nets=linear,convnet \
          --config.eval.net_preset=cpu]

Each --config (as train.py takes it, with its argument) runs `train.py`
then `eval.py` (with baselines) in a fresh workdir, as a user would.
Arguments after `--` go to train.py, so the `config.eval` fields there
choose the evaluators. The table (Markdown, a row per config and
evaluator), the raw results (JSON) and a plot of accuracy against images
per class (PNG, if matplotlib is installed) land in --out
(default: --workdir); --include adds the rows of earlier runs (e.g. another
dataset's, which needed other arguments) to the table and the plot.
"""

from importlib import metadata
import json
import os
import platform
import subprocess
import sys
import time

from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# pylint: disable=g-import-not-at-top,wrong-import-position
from distillation import cli
from distillation import errors
# pylint: enable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Where runs and the table go.')
flags.DEFINE_multi_string('config', [], 'A config as train.py takes it, '
                          'e.g. configs/linear.py:digits,ipc=1; repeat the '
                          'flag for several.')
flags.DEFINE_list('include', [], 'Output directories of earlier runs of '
                  'this script whose rows join the table and the plot.')
flags.DEFINE_string('out', None, 'Where accuracy.md, .json and .png go '
                    '(default: --workdir), e.g. benchmarks.')
flags.mark_flags_as_required(['workdir'])

# Table columns: (header, method, labels) of the network rows.
_COLUMNS = (('distilled, soft', 'distilled', 'soft'),
            ('distilled, hard', 'distilled', 'hard'),
            ('random real, soft', 'random_real', 'soft'),
            ('random real, hard', 'random_real', 'hard'),
            ('class means', 'class_means', 'hard'),
            ('full data', 'full_data', 'hard'))


def run_name(spec: str) -> str:
  """A config's name for its workdir: configs/conv.py:digits,ipc=1,size=cpu
  -> conv_digits_ipc=1_size=cpu."""
  path, _, arg = spec.partition(':')
  stem = os.path.splitext(os.path.basename(path))[0]
  return '_'.join([stem, *arg.split(',')]) if arg else stem


def panel(spec: str) -> tuple[str, int | None]:
  """(the config without its ipc argument, ipc): a plot's panel and x."""
  path, _, arg = spec.removeprefix('configs/').partition(':')
  rest = [a for a in arg.split(',') if a and not a.startswith('ipc=')]
  ipc = [int(a[4:]) for a in arg.split(',') if a.startswith('ipc=')]
  return ':'.join([path, ','.join(rest)] if rest else [path]), (
      ipc[0] if ipc else None)


def _run(args: list[str]) -> float:
  start = time.time()
  process = subprocess.run([sys.executable, *args], cwd=ROOT, check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True, errors='replace')
  if process.returncode:
    # The program's own one-line error, if it printed one.
    lines = [line for line in process.stderr.splitlines()
             if line.startswith('ERROR: ')]
    sys.exit(f'ERROR: {args[0]} exited with {process.returncode}' +
             (f': {lines[-1][len("ERROR: "):]}' if lines else
              f'; rerun python {" ".join(args)} to see why.'))
  return time.time() - start


def evaluator_rows(result: dict) -> dict[str, dict]:
  """{evaluator: {(method, labels): row}}; the linear table's distilled row
  counts as soft (it uses the set's own, possibly learned, labels), its
  baselines as hard."""
  linear = {}
  for row in result['table']:
    labels = 'soft' if row['method'] == 'distilled' else 'hard'
    linear[(row['method'], labels)] = row
  out = {'linear': linear} if linear else {}
  for row in result.get('net_table', []):
    out.setdefault(row['evaluator'], {})[(row['method'], row['labels'])] = row
  return out


def _cell(row: dict | None) -> str:
  if row is None:
    return '—'
  std = row.get('test_accuracy_std')
  return f'{100 * row["test_accuracy"]:.1f}' + (
      f' ± {100 * std:.1f}' if std else '')


def _commit() -> str:
  def git(*args):
    return subprocess.run(['git', *args], cwd=ROOT, capture_output=True,
                          text=True, check=False).stdout.strip()
  return (git('rev-parse', '--short', 'HEAD') or 'unknown') + (
      '+changes' if git('status', '--porcelain', '-uno') else '')


def full_data_costs(rows: list[dict]) -> set[str]:
  """'; dataset evaluator: N s' for each network full-data row."""
  return {f'; {panel(run["config"])[0]} {r["evaluator"]}: '
          f'{r["seconds"]:.0f} s' for run in rows
          for r in run.get('net_table', []) if r['method'] == 'full_data'}


def table(rows: list[dict]) -> str:
  # A row joined from several evaluations names each of their commits.
  commits = ', '.join(dict.fromkeys(
      c for r in rows for c in r.get('commit', '?').split(', ')))
  machine = (f'{platform.processor() or platform.machine()}, '
             f'{os.cpu_count()} CPUs; jax {metadata.version("jax")}; commit '
             f'{commits}')
  lines = [f'Machine: {machine}. Test accuracy (%; mean ± std over random '
           'draws or network seeds) of each evaluator trained on each set; '
           'linear: the inner model (distilled with its learned labels). '
           'IOR = distilled - random real (same labels), HLR = full data - '
           'distilled (hard). Eval time: of that evaluator\'s rows but '
           'full data, which is trained once per dataset and recipe and '
           'cached' + ''.join(sorted(full_data_costs(rows))) + '.', '',
           '| config | evaluator | recipe | ' + ' | '.join(
               c[0] for c in _COLUMNS) + ' | IOR soft / hard | HLR | '
           'eval time | train time |',
           '| --- ' * (len(_COLUMNS) + 7) + '|']
  trained = set()  # Full-data rows seen: a repeat was read from the cache.
  for run in rows:
    per_evaluator = evaluator_rows(run)
    net_seconds = 0
    for r in run.get('net_table', []):
      key = json.dumps({k: v for k, v in r.items() if k != 'cached'},
                       sort_keys=True)
      # A full-data row read from the cache (marked, or a repeat of an
      # earlier row) cost nothing in this run.
      if r['method'] != 'full_data' or not (r.get('cached') or key in trained):
        net_seconds += r['seconds']
      trained.add(key)
    differences = {d['evaluator']: d for d in run.get('net_differences', [])}
    for evaluator, cells in per_evaluator.items():
      if evaluator == 'linear':
        recipe, seconds = 'l2reg grid', run['eval_seconds'] - net_seconds
      else:
        recipe = next(iter(cells.values()))['recipe_name']
        seconds = sum(r['seconds'] for r in cells.values()
                      if r['method'] != 'full_data')
      diff = differences.get(evaluator, {})
      ior = ' / '.join(f'{100 * diff[k]:+.1f}' if k in diff else '—'
                       for k in ('ior_soft', 'ior_hard'))
      hlr = f'{100 * diff["hlr"]:+.1f}' if 'hlr' in diff else '—'
      lines.append(
          f'| {run["config"].removeprefix("configs/")} | {evaluator} | '
          f'{recipe} | ' + ' | '.join(
              _cell(cells.get(c[1:])) for c in _COLUMNS) +
          f' | {ior} | {hlr} | {seconds:.0f} s | '
          f'{run["train_seconds"]:.0f} s |')
  return '\n'.join(lines) + '\n'


def plot(rows: list[dict], path: str) -> bool:
  """Accuracy against images per class: a panel per dataset and evaluator.
  Returns False (and draws nothing) without matplotlib."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  panels = {}
  for run in rows:
    # configs/conv.py:fashion_mnist,ipc=10,size=cpu: panel
    # conv.py:fashion_mnist,size=cpu, x = 10.
    dataset, ipc = panel(run['config'])
    for evaluator, cells in evaluator_rows(run).items():
      panels.setdefault((dataset, evaluator), []).append((ipc or 1, cells))
  datasets = list(dict.fromkeys(d for d, _ in panels))
  evaluators = list(dict.fromkeys(e for _, e in panels))
  figure, axes = pyplot.subplots(
      len(datasets), len(evaluators), squeeze=False,
      figsize=(4.2 * len(evaluators), 3.4 * len(datasets)))
  for (dataset, evaluator), points in panels.items():
    ax = axes[datasets.index(dataset)][evaluators.index(evaluator)]
    points.sort(key=lambda p: p[0])
    for color, (header, method, labels) in enumerate(_COLUMNS):
      series = [(ipc, cells[(method, labels)]) for ipc, cells in points
                if (method, labels) in cells]
      if not series:
        continue
      x = [ipc for ipc, _ in series]
      y = [100 * r['test_accuracy'] for _, r in series]
      err = [100 * r.get('test_accuracy_std', 0) for _, r in series]
      if method == 'full_data':
        ax.axhline(y[-1], color='black', linestyle='--', label=header)
      else:
        ax.errorbar(x, y, yerr=err, marker='o', capsize=3, label=header,
                    color=f'C{color}',
                    linestyle='-' if method == 'distilled' else ':')
    ax.set_xscale('log')
    ax.set_xticks([ipc for ipc, _ in points], [str(ipc) for ipc, _ in points])
    ax.minorticks_off()
    ax.legend(fontsize=7)
    ax.set_title(f'{dataset}, {evaluator}')
    ax.set_xlabel('images per class')
    ax.set_ylabel('test accuracy (%)')
    ax.grid(alpha=0.3)
  for i, dataset in enumerate(datasets):
    for j, evaluator in enumerate(evaluators):
      if (dataset, evaluator) not in panels:
        axes[i][j].axis('off')  # This dataset's runs had no such evaluator.
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  return True


def check(configs: list[str], include: list[str], workdir: str, out: str,
          extra: list[str]) -> None:
  """Raises a UserError for what would fail before or at the start of a
  run, before anything is run or created."""
  if not configs and not include:
    raise errors.UserError('nothing to tabulate; pass --config=CONFIG (one '
                           'per run) or --include=DIR.')
  for directory in include:
    if not os.path.isfile(os.path.join(directory, 'accuracy.json')):
      raise errors.UserError(f'--include={directory}: no accuracy.json '
                             'there; pass an earlier --out of this script.')
  for flag, path in (('--workdir', workdir), ('--out', out)):
    if os.path.exists(path) and not os.path.isdir(path):
      raise errors.UserError(f'{flag}={path} is a file; pass a directory.')
  for name in configs:
    run_dir = os.path.join(os.path.abspath(workdir), run_name(name))
    if os.path.exists(run_dir):
      raise errors.UserError(f'--config={name}: {run_dir} exists; pick a '
                             'new --workdir.')
    config = cli.load_config([f'--config={name}', *extra], ROOT)
    try:
      cli.check_train_config(config, ROOT)
    except errors.UserError as e:
      raise errors.UserError(f'--config={name}: {e}') from None


def main(argv):
  extra = argv[1:]
  out = FLAGS.out or FLAGS.workdir
  check(FLAGS.config, FLAGS.include, FLAGS.workdir, out, extra)
  rows = []
  for directory in FLAGS.include:
    with open(os.path.join(directory, 'accuracy.json')) as f:
      rows += json.load(f)
  for name in FLAGS.config:
    workdir = os.path.join(os.path.abspath(FLAGS.workdir), run_name(name))
    train_s = _run(['train.py', f'--config={name}',
                    f'--workdir={workdir}', *extra])
    eval_s = _run(['eval.py', f'--workdir={workdir}'])
    with open(os.path.join(workdir, 'eval.json')) as f:
      result = json.load(f)
    rows.append({'config': name, 'train_seconds': train_s,
                 'eval_seconds': eval_s, 'commit': _commit(), **result})
    print(json.dumps(rows[-1]), flush=True)
  os.makedirs(out, exist_ok=True)
  text = table(rows)
  with open(os.path.join(out, 'accuracy.md'), 'w') as f:
    f.write(text)
  with open(os.path.join(out, 'accuracy.json'), 'w') as f:
    json.dump(rows, f, indent=2)
  png = os.path.join(out, 'accuracy.png')
  print(text)
  print(f'Plot: {png}' if plot(rows, png) else
        'No plot: matplotlib is not installed (pip install -r '
        'requirements.txt).')


if __name__ == '__main__':
  cli.run(main, passed_on='train.py')
