"""Which set eval.py reports: chosen by networks trained on the candidates.

train.py keeps the best checkpoint by the inner model's validation accuracy,
which can keep rising while networks trained on the set do worse
(docs/evaluation.md). With `config.eval.select` set to a network evaluator,
eval.py instead trains `config.eval.select_seeds` networks of that
evaluator's recipe, with hard labels, on each candidate: the images the run
started from (step 0, rebuilt from the config's seed), the latest
checkpoints kept at multiples of `config.eval.select_every_steps`, the
newest one and the best one. The candidate with the highest mean
validation accuracy is reported, so that the reported set is never worse on
validation than the real images it started from. The test split plays no
part.
"""

import dataclasses
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from distillation import errors
from distillation import input_pipeline
from distillation import net_eval
from distillation import net_train
from distillation import outer

INNER = 'inner'  # train.py's best checkpoint, by the inner model.
INITIAL = 'initial'  # Step 0: the images the run started from.
LABELS = 'hard'


@dataclasses.dataclass(frozen=True)
class Candidate:
  step: int
  source: str  # INITIAL, or the checkpoints it was read from: latest | best.
  params: dict[str, Any]


def criterion(config: ml_collections.ConfigDict) -> str:
  """config.eval.select, checked: INNER (also for a config older than it)
  or a network evaluator."""
  select = config.eval.get('select', INNER)
  if select != INNER and select not in net_eval.EVALUATORS:
    raise errors.UserError(
        f'config.eval.select={select!r} is unknown; use {INNER} (train.py\'s '
        'best checkpoint by the inner model) or a network evaluator: '
        f'{", ".join(net_eval.EVALUATORS)}.')
  if select != INNER:
    if 'net_presets' not in config.eval:
      raise errors.UserError(
          f'config.eval.select={select!r} needs network presets, which this '
          'config predates; pass --config with a current config.')
    if config.eval.select_seeds < 1:
      raise errors.UserError(
          f'config.eval.select_seeds={config.eval.select_seeds} must be at '
          'least 1.')
  every = config.eval.get('select_every_steps')
  if every is not None and (every < 1 or
                            every % config.checkpoint_every_steps):
    raise errors.UserError(
        f'config.eval.select_every_steps={every} must be a positive multiple'
        f' of config.checkpoint_every_steps={config.checkpoint_every_steps},'
        ' so that checkpoints are saved at its multiples; or unset it.')
  return select


def recipe(config: ml_collections.ConfigDict) -> net_train.Recipe:
  """The selecting networks' recipe: config.eval.select's, with
  config.eval.select_seeds seeds, named so."""
  full = net_eval.recipes(config)[config.eval.select]
  seeds = config.eval.select_seeds
  name = (f'{full.name[:-1]}, seeds={seeds})' if full.name.endswith(')')
          else f'{full.name}(seeds={seeds})')
  return dataclasses.replace(full, seeds=seeds, name=name)


def candidate_steps(latest: list[int], best: list[int],
                    every: int | None) -> list[tuple[int, str]]:
  """(step, source) of the candidates, by step: step 0 (INITIAL), the
  `latest` steps at multiples of `every`, the newest of them and the newest
  `best` step; each step once, from the latest checkpoints where both have
  it."""
  chosen = {0: INITIAL}
  for step in latest:
    if step and ((every and step % every == 0) or step == max(latest)):
      chosen[step] = 'latest'
  if best and max(best) not in chosen:
    chosen[max(best)] = 'best'
  return sorted(chosen.items())


def choose(distiller: outer.Distiller, candidates: list[Candidate],
           validation: input_pipeline.Split,
           mean: np.ndarray, std: np.ndarray
           ) -> tuple[Candidate, dict[str, Any]]:
  """The candidate whose networks do best on `validation` (the latest step
  on a tie), and the record of the choice for eval.json."""
  config = distiller.config
  net_recipe = recipe(config)
  info = distiller.info
  trainer = net_train.NetTrainer(
      net_recipe, info.image_shape, info.num_classes, mean, std,
      path=net_eval.trainer_path(config))
  start = time.time()
  scores = []
  for candidate in candidates:
    _, images, targets = (np.asarray(x) for x in
                          distiller.hyperparams(candidate.params))
    hard = np.eye(info.num_classes, dtype=np.float32)[targets.argmax(-1)]
    # The same seeds for every candidate: their networks differ only by
    # the set, so the comparison is paired.
    nets = trainer.train(images[None], hard[None])
    accuracies = trainer.accuracy(nets, validation.images, validation.labels)
    scores.append({'step': candidate.step, 'source': candidate.source,
                   'validation_accuracy': float(np.mean(accuracies)),
                   'validation_accuracy_std': float(np.std(accuracies)),
                   'per_seed': [float(a) for a in accuracies]})
    logging.info('Selection by %s %s: step %d (%s), validation accuracy '
                 '%.4f.', config.eval.select, net_recipe.name, candidate.step,
                 candidate.source, scores[-1]['validation_accuracy'])
  best = max(range(len(candidates)),
             key=lambda i: (scores[i]['validation_accuracy'],
                            candidates[i].step))
  chosen = candidates[best]
  record = {
      'criterion': f'mean validation accuracy of {net_recipe.seeds} '
                   f'{config.eval.select} networks ({net_recipe.name}) '
                   f'trained on each candidate with {LABELS} labels',
      'evaluator': config.eval.select, 'recipe_name': net_recipe.name,
      'recipe': net_recipe.as_dict(), 'labels': LABELS,
      'chosen_step': chosen.step, 'chosen_source': chosen.source,
      'candidates': scores, 'seconds': time.time() - start}
  if chosen.source == INITIAL and jax.process_index() == 0:
    logging.warning(
        'Distilling did not help this setting on validation: the initial '
        'images (step 0) beat every kept checkpoint, so they are reported.')
  return chosen, record
