"""eval.py's library: tests the distilled set of a workdir with the
evaluators of its config, and writes the result.

`linear_eval` refits the inner model on the set and on baselines of the
same size; `net_eval` trains networks from scratch on them (the field's
protocol, docs/evaluation.md). This module loads the checkpoint, runs the
evaluators of `config.eval.nets`, writes the result (eval.json, or --out)
and exports the set.
"""

import json
import os
import tempfile
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from distillation import checkpointing
from distillation import errors
from distillation import input_pipeline
from distillation import linear_eval
from distillation import net_eval
from distillation import net_train
from distillation import outer
from distillation import selection
from distillation import workdirs

RESULT_NAME = 'eval.json'
CHECKPOINTS = {'best': checkpointing.BEST, 'latest': checkpointing.LATEST}
EVALUATORS = ('linear',) + net_eval.EVALUATORS


def load_distilled(workdir: str, which: str = 'latest',
                   step: int | None = None
                  ) -> tuple[outer.Distiller, outer.OuterState, str]:
  """Restores the newest restorable checkpoint of `workdir`, read-only, with
  the config it was trained with.

  `which` is 'latest' or 'best' (by validation accuracy); without a best
  checkpoint that restores, the newest latest one that does is used.
  `step`: that step of the latest checkpoints instead (how many are kept:
  config.max_checkpoints_to_keep). Returns the checkpoint used too.
  """
  if which not in CHECKPOINTS:
    raise errors.UserError(f'--checkpoint={which} is unknown; use one of '
                           f'{", ".join(CHECKPOINTS)}.')
  if not os.path.isdir(checkpointing.checkpoint_dir(workdir)):
    raise errors.UserError(
        f'--workdir={workdir} has no checkpoints/ directory; train into it '
        'first with train.py --workdir.')
  if step is not None:
    return _restore(workdir, 'latest', step)
  for name in dict.fromkeys((which, 'latest')):
    if os.path.isdir(checkpointing.checkpoint_dir(workdir, CHECKPOINTS[name])):
      if (restored := _restore(workdir, name)):
        return restored
    logging.warning('No %s checkpoint in %s can be restored.', name, workdir)
  raise errors.UserError(
      f'no checkpoint in --workdir={workdir} can be restored (the log says '
      'why); train into this workdir first.')


def _restore(workdir: str, name: str, step: int | None = None
            ) -> tuple[outer.Distiller, outer.OuterState, str] | None:
  """The newest restorable step (or `step`) of the checkpoints `name`."""
  distillers = []

  def target(meta):
    distillers.append(outer.Distiller(ml_collections.ConfigDict(
        meta['config'])))
    return distillers[-1].state_template()

  with checkpointing.Checkpoints(workdir, CHECKPOINTS[name],
                                 read_only=True) as checkpoints:
    if step is not None and step not in checkpoints.all_steps():
      raise errors.UserError(
          f'--step={step} is not among the checkpoints kept in --workdir='
          f'{workdir} (steps: {", ".join(map(str, checkpoints.all_steps()))}'
          '); pick one of them, or train with --config.max_checkpoints_to_'
          'keep large enough to keep it.')
    if (restored := checkpoints.restore_newest(target, step)):
      return distillers[-1], restored[0], name
  if step is not None:
    raise errors.UserError(f'--step={step}: its checkpoint in --workdir='
                           f'{workdir} cannot be restored (the log says '
                           'why); pick another step.')
  return None


def evaluate(workdir: str, export: str | None = None, which: str = 'best',
             baselines: bool = True,
             eval_config: ml_collections.ConfigDict | None = None,
             out: str | None = None,
             step: int | None = None) -> dict[str, Any]:
  """Tests the distilled set of `workdir` (and baselines); writes the result
  to `out`, or the workdir's eval.json.

  The `eval` section of the checkpoint's config says how, unless
  `eval_config` (another config's `eval` section) replaces it. `which`:
  'best' is the set config.eval.select picks (`selection`; by default the
  best checkpoint by the inner model's validation accuracy), 'latest' the
  newest checkpoint. `step`: that step of the latest checkpoints instead.
  """
  if export:
    export = _check_export(export, workdir)
  result_path = _result_path(workdir, out, export)
  select = which == 'best' and step is None
  distiller, state, which = load_distilled(workdir, which, step)
  config = distiller.config
  if eval_config is not None:
    config.eval = ml_collections.ConfigDict(eval_config.to_dict())
  check_config(config)
  nets = evaluators(config)
  recipes = net_eval.recipes(config)
  # The test files are checked here, when first loaded (train.py loads
  # the training files only).
  digests = input_pipeline.IdxDigests(workdir)
  train, validation, test = input_pipeline.load_train_validation_test(
      config.data, digests)
  if jax.process_index() == 0:
    digests.save()
  # The networks' normalization: per-channel statistics of the training
  # split as the distiller saw it (after config.data's preprocessing).
  mean, std = input_pipeline.channel_stats(train.images,
                                           distiller.info.image_shape)
  chosen = None
  if select and selection.criterion(config) != selection.INNER:
    candidate, chosen = selection.choose(
        distiller, _candidates(workdir, distiller, train), validation, mean,
        std)
    params, step_done, which = (candidate.params, candidate.step,
                                candidate.source)
  else:
    params, step_done = state.params, int(state.step)
  l2reg, images, targets = distiller.hyperparams(params)
  if 'linear' in nets and not distiller.inner_model.linear_head:
    distiller.linear_context()  # Its one-line error names the field.
  # The distilled set's linear row, with baselines if asked for; none
  # without a linear head to refit.
  table = (linear_eval.evaluate(distiller, params, train, validation, test,
                                baselines=baselines and 'linear' in nets)
           if distiller.inner_model.linear_head else [])
  net_table = []
  for name in nets:
    if name != 'linear':
      net_table += net_eval.evaluate(distiller, recipes[name], name, params,
                                     train, validation, test, mean, std,
                                     workdir=workdir, baselines=baselines)
  result = {'step': step_done, 'checkpoint': which,
            # The linear row's; None without a linear head (the networks'
            # rows are in net_table).
            'test_accuracy': table[0]['test_accuracy'] if table else None,
            'test_loss': table[0]['test_loss'] if table else None,
            'table': table,
            'net_table': net_table,
            'net_differences': net_eval.differences(net_table)}
  if chosen is not None:
    result['selection'] = chosen
  if table:
    logging.info('Evaluation of %s at step %d (%s checkpoint):\n%s', workdir,
                 result['step'], which, linear_eval.format_table(table))
  if net_table:
    logging.info('Networks trained from scratch on each set:\n%s',
                 net_eval.format_table(net_table, result['net_differences']))
  if jax.process_index() == 0:
    with errors.disk_full_is_user_error(
        f'the disk of --workdir={workdir} (or of --out or --export) is full; '
        'free some space and run again.'):
      workdirs.write_json(result, result_path)
      if export:
        _export(export, distiller, l2reg, images, targets, mean, std, recipes)
  return result


def _candidates(workdir: str, distiller: outer.Distiller,
                train: input_pipeline.Split) -> list[selection.Candidate]:
  """The candidates of `selection.candidate_steps` that restore, with the
  initial set rebuilt as train.py built it (the config's seed, the same
  training split)."""
  steps = {}
  for name in CHECKPOINTS:
    if os.path.isdir(checkpointing.checkpoint_dir(workdir, CHECKPOINTS[name])):
      with checkpointing.Checkpoints(workdir, CHECKPOINTS[name],
                                     read_only=True) as checkpoints:
        steps[name] = checkpoints.all_steps()
  candidates = []
  for step, source in selection.candidate_steps(
      steps.get('latest', []), steps.get('best', []),
      distiller.config.eval.get('select_every_steps')):
    if source == selection.INITIAL:
      params = distiller.init_state(
          jax.random.PRNGKey(distiller.config.seed), train).params
    else:
      try:
        params = _restore(workdir, source, step)[1].params
      except errors.UserError:  # Logged with its path by the restore.
        logging.warning('Step %d of the %s checkpoints cannot be restored; '
                        'it is left out of the selection.', step, source)
        continue
    candidates.append(selection.Candidate(step, source, params))
  return candidates


def _result_path(workdir: str, out: str | None, export: str | None) -> str:
  """Where the result goes: the workdir's eval.json, or `out` if it is a
  new file or an earlier result that nothing else of this run writes."""
  if out is None:
    return os.path.join(workdir, RESULT_NAME)
  if os.path.isdir(out):
    raise errors.UserError(f'--out={out} is a directory; pass a file, e.g. '
                           f'--out={os.path.join(out, RESULT_NAME)}.')
  if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
    raise errors.UserError(f'--out={out}: its directory does not exist; '
                           'create it or pick another path.')
  if export and os.path.abspath(out) in (
      os.path.abspath(export), os.path.abspath(export[:-4] + '.json')):
    raise errors.UserError(f'--out={out} is a file that --export={export} '
                           'writes; pick another path.')
  if os.path.exists(out) and not _is_result(out):
    raise errors.UserError(f'--out={out} exists and is not a result of '
                           'eval.py; pick another path or remove it.')
  return out


def _is_result(path: str) -> bool:
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, ValueError):
    return False
  return isinstance(data, dict) and 'table' in data and 'step' in data


def evaluators(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """config.eval.nets, checked; a checkpoint older than it means linear."""
  nets = net_eval.names(config.eval.get('nets', ('linear',)))
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
  net_eval.recipes(config)
  selection.criterion(config)
  if config.eval.get('net_path') is not None:
    # Checked only when set: the default asks the backend, which starts it.
    net_eval.trainer_path(config)
  net_eval.net_sets(config)
  if config.eval.random_draws < 1:
    raise errors.UserError(
        f'config.eval.random_draws={config.eval.random_draws} must be at '
        'least 1.')


def _check_export(export: str, workdir: str) -> str:
  """The .npz path that --export writes (with the suffix added, as np.savez
  adds it), once it is known that it and its side .json can be written and
  are none of the workdir's own files; before anything is written."""
  path = export if export.endswith('.npz') else export + '.npz'
  directory = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(directory):
    raise errors.UserError(f'--export={export}: its directory does not exist;'
                           ' create it or pick another path.')
  own_file = os.path.realpath(os.path.join(workdir, RESULT_NAME))
  own_dirs = [os.path.realpath(os.path.join(workdir, name)) + os.sep
              for name in (checkpointing.LATEST, checkpointing.BEST,
                           checkpointing.CORRUPT, net_eval.FULL_DATA_CACHE)]
  for file in (path, path[:-len('.npz')] + '.json'):
    real = os.path.realpath(file)
    if real == own_file or real.startswith(tuple(own_dirs)):
      raise errors.UserError(
          f'--export={export} would write {file}, which belongs to '
          f'--workdir={workdir}; pick another path.')
    if os.path.isdir(file) or (os.path.exists(file) and
                               not os.access(file, os.W_OK)):
      raise errors.UserError(f'--export={export}: {file} cannot be '
                             'overwritten; pick another path.')
  try:  # Whether the directory takes new files, leaving none behind.
    tempfile.TemporaryFile(dir=directory).close()
  except OSError as e:
    raise errors.UserError(
        f'--export={export}: no file can be written in {directory} '
        f'({e.strerror}); pick another path.') from e
  return path


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
  workdirs.write_json({
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
