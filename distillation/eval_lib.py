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

The evaluators of `config.eval.nets` beyond `linear` train networks from
scratch on each set instead (`net_train`, the field's protocol; see
docs/evaluation.md): the distilled set with its learned soft labels and with
hard ones, and the same baselines, with the same recipe and seeds.
"""

import dataclasses
import hashlib
import json
import os
import time
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
from distillation import augment
from distillation import input_pipeline
from distillation import net_train
from distillation import networks
from distillation import outer

RESULT_NAME = 'eval.json'
CHECKPOINTS = {'best': checkpointing.BEST, 'latest': checkpointing.LATEST}
EVALUATORS = ('linear',) + net_train.MODELS
FULL_DATA_CACHE = 'net_full_data'  # Workdir folder of cached full-data rows.
_NET_FIELDS = ('width', 'depth', 'norm', 'mlp_width', 'mlp_depth', 'epochs',
               'full_data_epochs', 'batch_size', 'learning_rate', 'momentum',
               'weight_decay', 'seeds', 'augment')


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
             baselines: bool = True,
             eval_config: ml_collections.ConfigDict | None = None
             ) -> dict[str, Any]:
  """Tests the distilled set of `workdir` (and baselines); writes eval.json.

  The `eval` section of the checkpoint's config says how, unless
  `eval_config` (another config's `eval` section) replaces it.
  """
  if export and not os.path.isdir(os.path.dirname(os.path.abspath(export))):
    raise errors.UserError(f'--export={export}: its directory does not exist;'
                           ' create it or pick another path.')
  if export and not export.endswith('.npz'):
    export += '.npz'  # What np.savez would write; logged as written.
  distiller, state, which = load_distilled(workdir, which)
  config = distiller.config
  if eval_config is not None:
    config.eval = ml_collections.ConfigDict(eval_config.to_dict())
  nets = evaluators(config)
  recipes = net_recipes(config)
  # The test files are checked here, when first loaded (train.py loads
  # the training files only).
  digests = input_pipeline.IdxDigests(workdir)
  train, validation, test = input_pipeline.load_train_validation_test(
      config.data, digests)
  if jax.process_index() == 0:
    digests.save()
  l2reg, images, targets = distiller.hyperparams(state.params)
  # With random features, the linear rows are heads on the features of one
  # fixed network, the first that validation uses.
  feature_nets = distiller.eval_nets()
  feature_nets = feature_nets and feature_nets[:1]
  linear_splits = [_features(distiller, feature_nets, split)
                   for split in (train, validation, test)]
  weights = _kernel(jax.jit(lambda p: distiller.fit_inner(
      p, nets=feature_nets))(state.params).params)
  accuracy, loss = _test(weights, linear_splits[2])
  table = [_row('distilled', len(images), float(l2reg), [accuracy], [loss])]
  if baselines and 'linear' in nets:
    table += _baselines(distiller, *linear_splits)
  # The networks' normalization: per-channel statistics of the training
  # split as the distiller saw it (after config.data's preprocessing).
  mean, std = input_pipeline.channel_stats(train.images,
                                           distiller.info.image_shape)
  net_table = []
  for name in nets:
    if name != 'linear':
      net_table += _net_rows(distiller, recipes[name], name, state.params,
                             train, validation, test, mean, std,
                             workdir=workdir, baselines=baselines)
  result = {'step': int(state.step), 'checkpoint': which,
            'test_accuracy': accuracy, 'test_loss': loss, 'table': table,
            'net_table': net_table,
            'net_differences': net_differences(net_table)}
  logging.info('Evaluation of %s at step %d (%s checkpoint):\n%s', workdir,
               result['step'], which, format_table(table))
  if net_table:
    logging.info('Networks trained from scratch on each set:\n%s',
                 format_net_table(net_table, result['net_differences']))
  if jax.process_index() == 0:
    with errors.disk_full_is_user_error(
        f'the disk of --workdir={workdir} (or of --export) is full; free '
        'some space and run again.'):
      _write_json(result, os.path.join(workdir, RESULT_NAME))
      if export:
        _export(export, distiller, l2reg, images, targets, mean, std, recipes)
  return result


def evaluators(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """config.eval.nets, checked; a checkpoint older than it means linear.

  The command line gives `--config.eval.nets=linear,convnet` as one string:
  commas separate names too.
  """
  nets = tuple(name.strip() for entry in config.eval.get('nets', ('linear',))
               for name in entry.split(','))
  unknown = [n for n in nets if n not in EVALUATORS]
  if unknown or not nets:
    raise errors.UserError(
        f'config.eval.nets={nets} must list evaluators of '
        f'{", ".join(EVALUATORS)}; {unknown or "none"} is not one.')
  return nets


def check_config(config: ml_collections.ConfigDict) -> None:
  """Checks config.eval, so that train.py fails on it at once rather than
  eval.py after training."""
  evaluators(config)
  net_recipes(config)


def net_recipes(config: ml_collections.ConfigDict
                ) -> dict[str, net_train.Recipe]:
  """The recipe of each network evaluator: config.eval.net_preset's values,
  each replaced by its config.eval.net_<field> where that is set; checked."""
  eval_config = config.eval
  if 'net_presets' not in eval_config:
    return {}
  preset = eval_config.net_preset
  if preset not in eval_config.net_presets:
    raise errors.UserError(
        f'config.eval.net_preset={preset!r} is unknown; use one of '
        f'{", ".join(eval_config.net_presets)}.')
  values, fields, changed = {}, {}, []
  for field in _NET_FIELDS:
    override = eval_config.get(f'net_{field}')
    if override is None:
      values[field] = eval_config.net_presets[preset][field]
      fields[field] = f'config.eval.net_presets.{preset}.{field}'
    else:
      values[field] = override
      fields[field] = f'config.eval.net_{field}'
      changed.append(f'{field}={override}')
  for field in ('width', 'depth', 'mlp_width', 'epochs', 'full_data_epochs',
                'batch_size', 'seeds'):
    if values[field] < 1:
      raise errors.UserError(
          f'{fields[field]}={values[field]} must be at least 1.')
  if values['mlp_depth'] < 0:
    raise errors.UserError(
        f'{fields["mlp_depth"]}={values["mlp_depth"]} must be at least 0.')
  if values['norm'] not in networks.NORMS:
    raise errors.UserError(
        f'{fields["norm"]}={values["norm"]!r} is unknown; use one of '
        f'{", ".join(networks.NORMS)}.')
  if not (values['learning_rate'] > 0 and 0 <= values['momentum'] < 1 and
          values['weight_decay'] >= 0):
    raise errors.UserError(
        f'{fields["learning_rate"]}={values["learning_rate"]}, '
        f'{fields["momentum"]}={values["momentum"]} and '
        f'{fields["weight_decay"]}={values["weight_decay"]} must be positive, '
        'in [0, 1) and non-negative.')
  transforms = augment.parse_strategy(
      values['augment'],
      input_pipeline.dataset_info(config.data).image_shape[-1],
      fields['augment'])
  name = preset + (f'({", ".join(changed)})' if changed else '')
  common = dict(name=name, epochs=values['epochs'],
                full_data_epochs=values['full_data_epochs'],
                batch_size=values['batch_size'],
                learning_rate=float(values['learning_rate']),
                momentum=float(values['momentum']),
                weight_decay=float(values['weight_decay']),
                seeds=values['seeds'], augment=transforms)
  return {
      'convnet': net_train.Recipe(model='convnet', width=values['width'],
                                  depth=values['depth'], norm=values['norm'],
                                  **common),
      'mlp': net_train.Recipe(model='mlp', width=values['mlp_width'],
                              depth=values['mlp_depth'], norm='none',
                              **common),
  }


def _net_rows(distiller: outer.Distiller, recipe: net_train.Recipe,
              evaluator: str, params: dict[str, jax.Array],
              train: input_pipeline.Split, validation: input_pipeline.Split,
              test: input_pipeline.Split, mean: np.ndarray, std: np.ndarray,
              *, workdir: str, baselines: bool) -> list[dict[str, Any]]:
  """Networks of `recipe` trained on the distilled set (soft labels if it
  learned them, and hard ones) and, with `baselines`, on the baselines of
  its size (random_real with the distilled set's label vectors too). Each
  row has the networks' test and validation accuracy: choices between
  configs go by the latter (benchmarks/tune.py)."""
  info, seeds = distiller.info, recipe.seeds
  trainer = net_train.NetTrainer(recipe, info.image_shape, info.num_classes,
                                 mean, std)
  _, images, soft = (np.asarray(x) for x in distiller.hyperparams(params))
  hard = np.eye(info.num_classes, dtype=np.float32)[soft.argmax(-1)]
  learned = 'label_logits' in params
  ipc = distiller.config.distill.images_per_class
  # Every small set is stacked once per seed (random_real draws one per
  # seed), so all of them run the same compiled programs.
  tile = lambda x: np.repeat(x[None], seeds, axis=0)
  sets = [('distilled', 'soft', tile(images), tile(soft))] if learned else []
  sets.append(('distilled', 'hard', tile(images), tile(hard)))
  if baselines:
    draws = [_random_real(train, ipc, seed) for seed in range(seeds)]
    real = np.stack([d.images for d in draws])
    real_hard = np.eye(info.num_classes, dtype=np.float32)[
        np.stack([d.labels for d in draws])]
    # Soft labels alone lift random images: give them the distilled set's
    # label vectors (class-major, by position) to isolate the images' part.
    if learned:
      sets.append(('random_real', 'soft', real, tile(soft)))
    sets.append(('random_real', 'hard', real, real_hard))
    means = _class_means(train, ipc)
    sets.append(('class_means', 'hard', tile(means.images),
                 tile(np.eye(info.num_classes, dtype=np.float32)[
                     means.labels])))
  rows = []
  for method, labels, set_images, set_targets in sets:
    start = time.time()
    trained = trainer.train(
        set_images, set_targets, draws=np.arange(seeds), progress=_progress(
            distiller.config, f'{evaluator} {method}/{labels}'))
    rows.append(_net_row(
        evaluator, recipe, method, labels, set_images.shape[1],
        trainer.accuracy(trained, test.images, test.labels),
        trainer.accuracy(trained, validation.images, validation.labels),
        time.time() - start))
  if baselines and distiller.config.eval.get('net_full_data'):
    rows.append(_full_data_row(
        trainer, evaluator, train, validation, test, workdir,
        distiller.config.eval.get('net_cache_dir'),
        _progress(distiller.config, f'{evaluator} full_data/hard')))
  return rows


def _net_row(evaluator, recipe, method, labels, images, accuracies,
             validation_accuracies, seconds) -> dict[str, Any]:
  return {'evaluator': evaluator, 'recipe_name': recipe.name,
          'method': method, 'labels': labels, 'images': int(images),
          'test_accuracy': float(np.mean(accuracies)),
          'test_accuracy_std': float(np.std(accuracies)),
          'per_seed': [float(a) for a in accuracies],
          'validation_accuracy': float(np.mean(validation_accuracies)),
          'validation_accuracy_std': float(np.std(validation_accuracies)),
          'seconds': float(seconds), 'recipe': recipe.as_dict()}


def _full_data_row(trainer: net_train.NetTrainer, evaluator: str,
                   train: input_pipeline.Split,
                   validation: input_pipeline.Split,
                   test: input_pipeline.Split,
                   workdir: str, cache_dir: str | None,
                   progress) -> dict[str, Any]:
  """Networks trained on the whole training split for
  recipe.full_data_epochs; the row is cached in `cache_dir` (or the workdir)
  under a hash of the recipe and the data, so later evaluations (of other
  sets of the same data too) do not repeat it."""
  recipe = dataclasses.replace(trainer.recipe,
                               epochs=trainer.recipe.full_data_epochs)
  digest = hashlib.sha256(json.dumps(recipe.as_dict(),
                                     sort_keys=True).encode())
  for array in (train.images, train.labels, validation.images,
                validation.labels, test.images, test.labels):
    digest.update(np.ascontiguousarray(array).tobytes())
  path = os.path.join(cache_dir or workdir, FULL_DATA_CACHE,
                      f'{evaluator}-{digest.hexdigest()[:16]}.json')
  if os.path.exists(path):
    with open(path) as f:
      logging.info('%s full_data: cached in %s.', evaluator, path)
      return json.load(f)
  start = time.time()
  targets = np.eye(trainer.num_classes, dtype=np.float32)[train.labels]
  trained = trainer.train(train.images[None], targets[None],
                          epochs=recipe.epochs, progress=progress)
  row = _net_row(evaluator, recipe, 'full_data', 'hard', len(train),
                 trainer.accuracy(trained, test.images, test.labels),
                 trainer.accuracy(trained, validation.images,
                                  validation.labels), time.time() - start)
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _write_json(row, path)
  return row


def _progress(config: ml_collections.ConfigDict, what: str):
  """A callback that logs steps/s and the time left, every
  config.progress_every_secs."""
  start = last = time.time()

  def report(done: int, total: int) -> None:
    nonlocal last
    now = time.time()
    if now - last < config.progress_every_secs and done < total:
      return
    last = now
    rate = done / max(now - start, 1e-9)
    logging.info('%s: step %d/%d, %.1f steps/s, ETA %.0f s.', what, done,
                 total, rate, (total - done) / rate)
  return report


def net_differences(net_table: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """DD-Ranking's differences per evaluator: IOR = distilled - random_real
  (same labels), HLR = full_data - distilled with hard labels."""
  rows = {(r['evaluator'], r['method'], r['labels']): r['test_accuracy']
          for r in net_table}
  out = []
  for evaluator in dict.fromkeys(r['evaluator'] for r in net_table):
    get = lambda method, labels: rows.get((evaluator, method, labels))
    entry = {'evaluator': evaluator}
    for labels in ('soft', 'hard'):
      if None not in (get('distilled', labels), get('random_real', labels)):
        entry[f'ior_{labels}'] = (get('distilled', labels) -
                                  get('random_real', labels))
    if None not in (get('full_data', 'hard'), get('distilled', 'hard')):
      entry['hlr'] = get('full_data', 'hard') - get('distilled', 'hard')
    out.append(entry)
  return out


def format_net_table(net_table: list[dict[str, Any]],
                     differences: list[dict[str, Any]]) -> str:
  lines = [f'{"evaluator":<9} {"method":<12} {"labels":<6} {"images":>7} '
           f'{"test accuracy":>17} {"validation":>10} {"seconds":>8}  recipe']
  for row in net_table:
    lines.append(
        f'{row["evaluator"]:<9} {row["method"]:<12} {row["labels"]:<6} '
        f'{row["images"]:>7} {row["test_accuracy"]:>8.4f} ± '
        f'{row["test_accuracy_std"]:.4f} '
        f'{row["validation_accuracy"]:>10.4f} '
        f'{row["seconds"]:>8.1f}  '
        f'{row["recipe_name"]}')
  names = {'ior_soft': 'IOR (soft)', 'ior_hard': 'IOR (hard)', 'hlr': 'HLR'}
  for entry in differences:
    lines.append(f'{entry["evaluator"]}: ' + ', '.join(
        f'{names[k]} {v:+.4f}' for k, v in entry.items() if k in names))
  return '\n'.join(lines)


def _export(path: str, distiller: outer.Distiller, l2reg, images, targets,
            mean: np.ndarray, std: np.ndarray,
            recipes: dict[str, net_train.Recipe]) -> None:
  """The set as a .npz (images (k, h, w, c) on the scale of the data as
  preprocessed, soft and hard labels, the networks' normalization) and,
  beside it, a .json with the preprocessing, the normalization and the
  recipes: what another framework needs."""
  soft = np.asarray(targets)
  np.savez(path,
           images=np.asarray(images).reshape(
               (-1,) + distiller.info.image_shape),
           labels=distiller.labels, targets=soft, soft_labels=soft,
           hard_labels=soft.argmax(-1), l2reg=np.asarray(l2reg),
           normalization_mean=mean, normalization_std=std)
  side = path[:-len('.npz')] + '.json'
  _write_json({
      'images': 'images (k, height, width, channels) on the scale of the '
                'data after data_preprocessing (pixels in [0, 1] when it is '
                'all off); networks see (images - mean) / std',
      'data_preprocessing': {
          field: distiller.config.data.get(field)
          for field in ('normalize', 'zca', 'zca_reg')},
      'normalization': {'mean': mean.tolist(), 'std': std.tolist()},
      'soft_labels': 'targets: the learned label distributions (one-hot '
                     'if not learned)',
      'hard_labels': 'argmax of soft_labels',
      'recipes': {name: r.as_dict() for name, r in recipes.items()},
  }, side)
  logging.info('Exported %d distilled images to %s.', len(images), path)
  logging.info('Recipes and normalization for networks in %s.', side)


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
  """The linear model's weights (of the only net, if stacked per net)."""
  (kernel,) = jax.tree.leaves(params)
  return np.asarray(kernel).reshape(kernel.shape[-2:])


def _features(distiller: outer.Distiller, nets: list[Any] | None,
              split: input_pipeline.Split,
              batch_size: int = 1000) -> input_pipeline.Split:
  """`split` as the single net of `nets` sees it (as is for pixels), in
  batches to bound the memory of the network's activations."""
  if nets is None:
    return split
  phi = jax.jit(lambda x: distiller.features(nets, x)[0])
  return input_pipeline.Split(np.concatenate([
      np.asarray(phi(split.images[i:i + batch_size]))
      for i in range(0, len(split), batch_size)]), split.labels)


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
