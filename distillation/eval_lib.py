"""Evaluation of a distilled set against baselines of the same size.

The distilled set is fit as it was distilled (its solver, its learned or
configured l2reg and labels). Each baseline is fit with L-BFGS on hard
labels, with the l2reg of `config.eval.l2reg_grid` that does best on the
validation split, so baselines are as strong as the model allows:

* random_real: images_per_class random training images of each class (mean
  and std over `config.eval.random_draws` draws);
* class_means: images_per_class k-means centroids of each class (the class
  mean for one image per class);
* full_data: the whole training split, the ceiling.
"""

import json
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from distillation import checkpointing
from distillation import errors
from distillation import inner
from distillation import input_pipeline
from distillation import outer

RESULT_NAME = 'eval.json'
CHECKPOINTS = {'best': checkpointing.BEST, 'latest': checkpointing.LATEST}


def load_distilled(workdir: str, which: str = 'latest'
                  ) -> tuple[outer.Distiller, outer.OuterState, str]:
  """Restores the newest restorable checkpoint of `workdir`, read-only, with
  the config it was trained with.

  `which` is 'latest' or 'best' (by validation accuracy); without a best
  checkpoint that restores, the newest latest one that does is used.
  Returns the checkpoint used too.
  """
  if which not in CHECKPOINTS:
    raise errors.UserError(f'--checkpoint={which} is unknown; use one of '
                           f'{", ".join(CHECKPOINTS)}.')
  if not os.path.isdir(checkpointing.checkpoint_dir(workdir)):
    raise errors.UserError(
        f'--workdir={workdir} has no checkpoints/ directory; train into it '
        'first with train.py --workdir.')
  distillers = []

  def target(meta):
    distillers.append(outer.Distiller(ml_collections.ConfigDict(
        meta['config'])))
    return distillers[-1].state_template()

  for name in dict.fromkeys((which, 'latest')):
    if os.path.isdir(checkpointing.checkpoint_dir(workdir, CHECKPOINTS[name])):
      with checkpointing.Checkpoints(workdir, CHECKPOINTS[name],
                                     read_only=True) as checkpoints:
        if (restored := checkpoints.restore_newest(target)):
          return distillers[-1], restored[0], name
    logging.warning('No %s checkpoint in %s can be restored.', name, workdir)
  raise errors.UserError(
      f'no checkpoint in --workdir={workdir} can be restored (the log says '
      'why); train into this workdir first.')


def evaluate(workdir: str, export: str | None = None, which: str = 'best',
             baselines: bool = True) -> dict[str, Any]:
  """Tests the distilled set of `workdir` (and baselines); writes eval.json."""
  if export and not os.path.isdir(os.path.dirname(os.path.abspath(export))):
    raise errors.UserError(f'--export={export}: its directory does not exist;'
                           ' create it or pick another path.')
  if export and not export.endswith('.npz'):
    export += '.npz'  # What np.savez would write; logged as written.
  distiller, state, which = load_distilled(workdir, which)
  config = distiller.config
  test = input_pipeline.load_split(config.data, 'test')
  l2reg, images, targets = distiller.hyperparams(state.params)
  weights = _kernel(jax.jit(distiller.fit_inner)(state.params).params)
  accuracy, loss = _test(weights, test)
  table = [_row('distilled', len(images), float(l2reg), [accuracy], [loss])]
  if baselines:
    train, validation = input_pipeline.load_train_and_validation(config.data)
    table += _baselines(distiller, train, validation, test)
  result = {'step': int(state.step), 'checkpoint': which,
            'test_accuracy': accuracy, 'test_loss': loss, 'table': table}
  logging.info('Evaluation of %s at step %d (%s checkpoint):\n%s', workdir,
               result['step'], which, format_table(table))
  if jax.process_index() == 0:
    with errors.disk_full_is_user_error(
        f'the disk of --workdir={workdir} (or of --export) is full; free '
        'some space and run again.'):
      _write_json(result, os.path.join(workdir, RESULT_NAME))
      if export:
        np.savez(export,
                 images=np.asarray(images).reshape(
                     (-1,) + distiller.info.image_shape),
                 labels=distiller.labels, targets=np.asarray(targets),
                 l2reg=np.asarray(l2reg))
        logging.info('Exported %d distilled images to %s.', len(images),
                     export)
  return result


def format_table(table: list[dict[str, Any]]) -> str:
  lines = [f'{"method":<12} {"images":>7} {"l2reg":>9} {"test accuracy":>17}'
           f' {"test loss":>9}']
  for row in table:
    std = (f' ± {row["test_accuracy_std"]:.4f}'
           if row['test_accuracy_std'] else '')
    lines.append(f'{row["method"]:<12} {row["images"]:>7} {row["l2reg"]:>9.2e}'
                 f' {row["test_accuracy"]:>8.4f}{std:<9} '
                 f'{row["test_loss"]:>9.4f}')
  return '\n'.join(lines)


def _row(method, images, l2reg, accuracies, losses) -> dict[str, Any]:
  return {'method': method, 'images': int(images), 'l2reg': float(l2reg),
          'test_accuracy': float(np.mean(accuracies)),
          'test_accuracy_std': float(np.std(accuracies)),
          'test_loss': float(np.mean(losses)), 'draws': len(accuracies)}


def _baselines(distiller: outer.Distiller, train: input_pipeline.Split,
               validation: input_pipeline.Split,
               test: input_pipeline.Split) -> list[dict[str, Any]]:
  config = distiller.config
  grid = sorted(config.eval.l2reg_grid, reverse=True)
  if not grid or min(grid) <= 0:
    raise errors.UserError(
        f'config.eval.l2reg_grid={config.eval.l2reg_grid} must hold positive '
        'values.')
  fit = _BaselineFit(distiller, grid, validation)
  ipc = config.distill.images_per_class
  rows = []
  draws = [fit(_random_real(train, ipc, seed)) for seed in range(
      config.eval.random_draws)]
  results = [_test(w, test) for w, _ in draws]
  rows.append(_row('random_real', ipc * distiller.info.num_classes,
                   np.median([l2reg for _, l2reg in draws]),
                   [a for a, _ in results], [l for _, l in results]))
  for method, subset in (('class_means', _class_means(train, ipc)),
                         ('full_data', train)):
    weights, l2reg = fit(subset)
    accuracy, loss = _test(weights, test)
    rows.append(_row(method, len(subset), l2reg, [accuracy], [loss]))
  return rows


class _BaselineFit:
  """Fits hard-label logistic regression, choosing l2reg on validation."""

  def __init__(self, distiller, grid, validation):
    self._grid = grid
    self._validation = validation
    self._num_classes = distiller.info.num_classes
    self._init = jax.tree.map(jnp.zeros_like, distiller.inner_init)
    solver_config = ml_collections.ConfigDict(dict(
        solver='lbfgs', tol=distiller.config.eval.baseline_tol,
        maxiter=distiller.config.eval.baseline_maxiter,
        implicit_solve='cg', implicit_tol=1e-5, init='zeros'))
    self._solve = jax.jit(inner.make_solver(solver_config,
                                            distiller.model.apply))

  def __call__(self, split: input_pipeline.Split) -> tuple[Any, float]:
    """(weights, l2reg) of the best l2reg; from large to small l2reg, each
    fit starts from the previous solution."""
    targets = jax.nn.one_hot(split.labels, self._num_classes)
    params, best = self._init, None
    for l2reg in self._grid:
      params = self._solve(params, l2reg, split.images, targets).params
      accuracy = _test(_kernel(params), self._validation)[0]
      if best is None or accuracy > best[0]:
        best = (accuracy, _kernel(params), l2reg)
    return best[1], best[2]


def _kernel(params) -> np.ndarray:
  (kernel,) = jax.tree.leaves(params)
  return np.asarray(kernel)


def _test(weights: np.ndarray, split: input_pipeline.Split
          ) -> tuple[float, float]:
  logits = jnp.asarray(split.images) @ weights
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, split.labels)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == split.labels)
  return float(accuracy), float(jnp.mean(loss))


def _random_real(train: input_pipeline.Split, ipc: int,
                 seed: int) -> input_pipeline.Split:
  rng = np.random.default_rng(seed)
  index = np.concatenate([
      rng.choice(np.flatnonzero(train.labels == c), ipc, replace=False)
      for c in np.unique(train.labels)])
  return train.take(index)


def _class_means(train: input_pipeline.Split, ipc: int,
                 iterations: int = 20) -> input_pipeline.Split:
  """ipc k-means centroids per class (Lloyd's algorithm, seeded)."""
  images, labels = [], []
  for c in np.unique(train.labels):
    members = train.images[train.labels == c]
    centroids = members[np.random.default_rng(int(c)).choice(
        len(members), ipc, replace=False)]
    for _ in range(iterations if ipc > 1 else 0):
      distances = ((members ** 2).sum(1)[:, None] - 2 * members @ centroids.T
                   + (centroids ** 2).sum(1)[None])
      assignment = distances.argmin(1)
      centroids = np.stack([
          members[assignment == j].mean(0) if np.any(assignment == j)
          else centroids[j] for j in range(ipc)])
    if ipc == 1:
      centroids = members.mean(0, keepdims=True)
    images.append(centroids)
    labels.append(np.full(ipc, c))
  return input_pipeline.Split(np.concatenate(images).astype(np.float32),
                              np.concatenate(labels).astype(np.int32))


def _write_json(data: dict[str, Any], path: str) -> None:
  """Writes via a temporary file, so a crash never leaves half a file."""
  with open(path + '.tmp', 'w') as f:
    json.dump(data, f, indent=2)
  os.replace(path + '.tmp', path)
