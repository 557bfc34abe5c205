"""The network evaluators: networks trained from scratch on each set.

`config.eval.nets` beyond `linear` (`net_train`, the field's protocol; see
docs/evaluation.md) train networks on the distilled set with its learned
soft labels and with hard ones, and on the linear evaluator's baselines of
the same size, with the same recipe and seeds; full-data rows are cached.
DD-Ranking's differences (IOR, HLR) summarize each evaluator's rows.
Each model has a second evaluator, `<model>_noaug`: the same recipe without
augmentation (DD-Ranking's augmentation-robust view), so that a set which
helps only networks trained with DSA shows it.
"""

import dataclasses
import hashlib
import json
import os
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from distillation import augment
from distillation import errors
from distillation import input_pipeline
from distillation import linear_eval
from distillation import net_train
from distillation import networks
from distillation import outer
from distillation import workdirs

FULL_DATA_CACHE = 'net_full_data'  # Workdir folder of cached full-data rows.
# The suffix of an evaluator that trains its model without augmentation.
NO_AUGMENT = '_noaug'
EVALUATORS = net_train.MODELS + tuple(m + NO_AUGMENT for m in net_train.MODELS)
_NET_FIELDS = ('width', 'depth', 'norm', 'mlp_width', 'mlp_depth', 'epochs',
               'full_data_epochs', 'batch_size', 'learning_rate', 'momentum',
               'weight_decay', 'seeds', 'augment', 'optimizer', 'loss',
               'steps', 'steps_one_per_class', 'warmup_steps')
# What a preset older than a field means by its absence: DC/DSA's recipe.
_NET_DEFAULTS = {'optimizer': 'sgd', 'loss': 'cross_entropy', 'steps': 0,
                 'steps_one_per_class': 0, 'warmup_steps': 0}
OPTIMIZERS = ('sgd', 'adam')
LOSSES = ('cross_entropy', 'mse')


def names(entries) -> tuple[str, ...]:
  """A config's tuple of names. The command line gives `--config.eval.nets=
  linear,convnet` as one string: commas separate names too."""
  return tuple(name.strip() for entry in entries for name in entry.split(','))


SETS = ('distilled/soft', 'distilled/hard', 'random_real/soft',
        'random_real/hard', 'class_means/hard', 'full_data/hard')


def net_sets(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The `method/labels` rows that config.eval.net_sets asks for (all where
  a config older than it lacks it). Its entries are methods or
  method/labels."""
  if 'net_sets' not in config.eval:
    return SETS
  entries = names(config.eval.net_sets)
  methods = {s.split('/')[0] for s in SETS}
  unknown = [e for e in entries if e not in SETS and e not in methods]
  if unknown or not entries:
    raise errors.UserError(
        f'config.eval.net_sets={entries} must list methods '
        f'({", ".join(sorted(methods))}) or method/labels ({", ".join(SETS)})'
        f'; {unknown or "none"} is not one.')
  return tuple(s for s in SETS if s in entries or s.split('/')[0] in entries)


def trainer_path(config: ml_collections.ConfigDict) -> str:
  """config.eval.net_path, checked; unset (or a config older than it): the
  backend's (`net_train.default_path`). Not part of the recipe: it changes
  no result beyond float32 rounding, so cached rows stay valid."""
  path = config.eval.get('net_path')
  if path is None:
    return net_train.default_path()
  if path not in net_train.PATHS:
    raise errors.UserError(
        f'config.eval.net_path={path!r} is unknown; use one of '
        f'{", ".join(net_train.PATHS)} (or leave it unset for the '
        "backend's).")
  return path


def recipes(config: ml_collections.ConfigDict
                ) -> dict[str, net_train.Recipe]:
  """The recipe of each network evaluator (EVALUATORS):
  config.eval.net_preset's values, each replaced by its
  config.eval.net_<field> where that is set, checked; `<model>_noaug` has
  its model's recipe without augmentation."""
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
      values[field] = eval_config.net_presets[preset].get(
          field, _NET_DEFAULTS.get(field))
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
  for field in ('mlp_depth', 'steps', 'steps_one_per_class', 'warmup_steps'):
    if values[field] < 0:
      raise errors.UserError(
          f'{fields[field]}={values[field]} must be at least 0.')
  for field, valid in (('optimizer', OPTIMIZERS), ('loss', LOSSES)):
    if values[field] not in valid:
      raise errors.UserError(
          f'{fields[field]}={values[field]!r} is unknown; use one of '
          f'{", ".join(valid)}.')
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
  def recipe(model, transforms, changed):
    if model == 'convnet':
      shape = dict(width=values['width'], depth=values['depth'],
                   norm=values['norm'])
    else:
      shape = dict(width=values['mlp_width'], depth=values['mlp_depth'],
                   norm='none')
    return net_train.Recipe(
        name=preset + (f'({", ".join(changed)})' if changed else ''),
        model=model, epochs=values['epochs'],
        full_data_epochs=values['full_data_epochs'],
        batch_size=values['batch_size'],
        learning_rate=float(values['learning_rate']),
        momentum=float(values['momentum']),
        weight_decay=float(values['weight_decay']),
        seeds=values['seeds'], augment=transforms,
        optimizer=values['optimizer'], loss=values['loss'],
        steps=values['steps'],
        steps_one_per_class=values['steps_one_per_class'],
        warmup_steps=values['warmup_steps'], **shape)

  # Without augmentation, the name says so (and drops any net_augment).
  plain = [c for c in changed if not c.startswith('augment=')] + [
      'augment=none']
  out = {}
  for model in net_train.MODELS:
    out[model] = recipe(model, transforms, changed)
    out[model + NO_AUGMENT] = recipe(model, (), plain)
  return out


def evaluate(distiller: outer.Distiller, recipe: net_train.Recipe,
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
                                 mean, std, path=trainer_path(distiller.config))
  _, images, soft = (np.asarray(x) for x in distiller.hyperparams(params))
  hard = np.eye(info.num_classes, dtype=np.float32)[soft.argmax(-1)]
  learned = 'label_logits' in params
  ipc = distiller.config.distill.images_per_class
  # Every small set is stacked once per seed (random_real draws one per
  # seed), so all of them run the same compiled programs.
  tile = lambda x: np.repeat(x[None], seeds, axis=0)
  # Only the sets config.eval.net_sets asks for are built (class_means runs
  # k-means on the training split).
  wanted = net_sets(distiller.config)
  sets = []
  if learned and 'distilled/soft' in wanted:
    sets.append(('distilled', 'soft', tile(images), tile(soft)))
  if 'distilled/hard' in wanted:
    sets.append(('distilled', 'hard', tile(images), tile(hard)))
  if baselines and {'random_real/soft', 'random_real/hard'} & set(wanted):
    draws = [linear_eval.random_real(train, ipc, seed) for seed in range(seeds)]
    real = np.stack([d.images for d in draws])
    real_hard = np.eye(info.num_classes, dtype=np.float32)[
        np.stack([d.labels for d in draws])]
    # Soft labels alone lift random images: give them the distilled set's
    # label vectors (class-major, by position) to isolate the images' part.
    if learned and 'random_real/soft' in wanted:
      sets.append(('random_real', 'soft', real, tile(soft)))
    if 'random_real/hard' in wanted:
      sets.append(('random_real', 'hard', real, real_hard))
  if baselines and 'class_means/hard' in wanted:
    means = linear_eval.class_means(train, ipc)
    sets.append(('class_means', 'hard', tile(means.images),
                 tile(np.eye(info.num_classes, dtype=np.float32)[
                     means.labels])))
  rows = []
  for method, labels, set_images, set_targets in sets:
    start = time.time()
    trained = trainer.train(
        set_images, set_targets, draws=np.arange(seeds), progress=_progress(
            distiller.config, f'{evaluator} {method}/{labels}'))
    rows.append(_row(
        evaluator, recipe, method, labels, set_images.shape[1],
        trainer.accuracy(trained, test.images, test.labels),
        trainer.accuracy(trained, validation.images, validation.labels),
        time.time() - start))
  if (baselines and distiller.config.eval.get('net_full_data') and
      'full_data/hard' in wanted):
    rows.append(_full_data_row(
        trainer, evaluator, train, validation, test, workdir,
        distiller.config.eval.get('net_cache_dir'),
        _progress(distiller.config, f'{evaluator} full_data/hard')))
  return rows


def _row(evaluator, recipe, method, labels, images, accuracies,
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
      # Marked, so that tables of wall time do not count its seconds again.
      return {**json.load(f), 'cached': True}
  start = time.time()
  targets = np.eye(trainer.num_classes, dtype=np.float32)[train.labels]
  trained = trainer.train(train.images[None], targets[None],
                          epochs=recipe.epochs, progress=progress)
  row = _row(evaluator, recipe, 'full_data', 'hard', len(train),
                 trainer.accuracy(trained, test.images, test.labels),
                 trainer.accuracy(trained, validation.images,
                                  validation.labels), time.time() - start)
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    workdirs.write_json(row, path)
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


def differences(net_table: list[dict[str, Any]]) -> list[dict[str, Any]]:
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


def format_table(net_table: list[dict[str, Any]],
                     differences: list[dict[str, Any]]) -> str:
  lines = [f'{"evaluator":<13} {"method":<12} {"labels":<6} {"images":>7} '
           f'{"test accuracy":>17} {"validation":>10} {"seconds":>8}  recipe']
  for row in net_table:
    lines.append(
        f'{row["evaluator"]:<13} {row["method"]:<12} {row["labels"]:<6} '
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
