"""The linear evaluator: the inner model refit on the distilled set, against
baselines of the same size.

The distilled set is fit as it was distilled (its solver, its learned or
configured l2reg and labels). Each baseline is fit with the same loss
(config.inner.loss; the logistic one by L-BFGS) on hard labels, with the
l2reg of `config.eval.l2reg_grid` that does best on the
validation split, so baselines are as strong as the model allows:

* random_real: images_per_class random training images of each class (mean
  and std over `config.eval.random_draws` draws);
* class_means: images_per_class k-means centroids of each class (the class
  mean for one image per class);
* full_data: the whole training split, the ceiling.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from distillation import errors
from distillation import inner
from distillation import input_pipeline
from distillation import outer


def evaluate(distiller: outer.Distiller, params: dict[str, jax.Array],
             train: input_pipeline.Split, validation: input_pipeline.Split,
             test: input_pipeline.Split, *, baselines: bool
             ) -> list[dict[str, Any]]:
  """The table: the distilled set's row, then (with `baselines`) theirs."""
  l2reg, images, _ = distiller.hyperparams(params)
  # With random features, the linear rows are heads on the features of one
  # fixed network, the first that validation uses.
  context = distiller.linear_context()
  linear_splits = [_features(distiller, context, split)
                   for split in (train, validation, test)]
  weights = _kernel(jax.jit(lambda p: distiller.fit_inner(
      p, context=context))(params).params)
  accuracy, loss = _test(weights, linear_splits[2])
  table = [_row('distilled', len(images), float(l2reg), [accuracy], [loss])]
  if baselines:
    table += _baselines(distiller, *linear_splits)
  return table


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
  draws = [fit(random_real(train, ipc, seed)) for seed in range(
      config.eval.random_draws)]
  results = [_test(w, test) for w, _ in draws]
  rows.append(_row('random_real', ipc * distiller.info.num_classes,
                   np.median([l2reg for _, l2reg in draws]),
                   [a for a, _ in results], [l for _, l in results]))
  for method, subset in (('class_means', class_means(train, ipc)),
                         ('full_data', train)):
    weights, l2reg = fit(subset)
    accuracy, loss = _test(weights, test)
    rows.append(_row(method, len(subset), l2reg, [accuracy], [loss]))
  return rows


class _BaselineFit:
  """Fits the inner loss on hard labels, choosing l2reg on validation."""

  def __init__(self, distiller, grid, validation):
    self._grid = grid
    self._validation = validation
    self._num_classes = distiller.info.num_classes
    model = distiller.inner_model
    self._init = jax.tree.map(jnp.zeros_like, model.initial_params)
    solver_config = ml_collections.ConfigDict(dict(
        solver='lbfgs', tol=distiller.config.eval.baseline_tol,
        maxiter=distiller.config.eval.baseline_maxiter,
        implicit_solve='cg', implicit_tol=1e-5, init='zeros',
        loss=distiller.config.inner.get('loss', 'logistic')))
    self._solve = jax.jit(inner.make_solver(solver_config, model.head.apply))

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
  """The linear model's weights (of the only net, if stacked per net)."""
  (kernel,) = jax.tree.leaves(params)
  return np.asarray(kernel).reshape(kernel.shape[-2:])


def _features(distiller: outer.Distiller, context: Any,
              split: input_pipeline.Split,
              batch_size: int = 1000) -> input_pipeline.Split:
  """`split` as the single net of `context` sees it (as is for pixels), in
  batches to bound the memory of the network's activations."""
  if context is None:
    return split
  phi = jax.jit(lambda x: distiller.inner_model.features(context, x)[0])
  return input_pipeline.Split(np.concatenate([
      np.asarray(phi(split.images[i:i + batch_size]))
      for i in range(0, len(split), batch_size)]), split.labels)


def _test(weights: np.ndarray, split: input_pipeline.Split
          ) -> tuple[float, float]:
  logits = jnp.asarray(split.images) @ weights
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, split.labels)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == split.labels)
  return float(accuracy), float(jnp.mean(loss))


def random_real(train: input_pipeline.Split, ipc: int,
                 seed: int) -> input_pipeline.Split:
  rng = np.random.default_rng(seed)
  index = np.concatenate([
      rng.choice(np.flatnonzero(train.labels == c), ipc, replace=False)
      for c in np.unique(train.labels)])
  return train.take(index)


def class_means(train: input_pipeline.Split, ipc: int,
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
