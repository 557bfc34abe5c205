"""Evaluation of a distilled set: fit the inner model on it, test it."""

import json
import os
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from distillation import checkpointing
from distillation import errors
from distillation import input_pipeline
from distillation import outer
from distillation import parallel

RESULT_NAME = 'eval.json'


def load_distilled(workdir: str) -> tuple[outer.Distiller, outer.OuterState]:
  """Restores the newest restorable checkpoint of `workdir`, read-only, with
  the config it was trained with."""
  directory = checkpointing.checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    raise errors.UserError(
        f'--workdir={workdir} has no checkpoints/ directory; train into it '
        'first with train.py --workdir.')
  distillers = []

  def target(meta):
    distillers.append(outer.Distiller(ml_collections.ConfigDict(
        meta['config'])))
    return distillers[-1].init_state(jax.random.PRNGKey(0))

  with checkpointing.Checkpoints(workdir, read_only=True) as checkpoints:
    restored = checkpoints.restore_newest(target)
  if restored is None:
    raise errors.UserError(f'{directory} holds no finished checkpoint; '
                           'train into this workdir first.')
  return distillers[-1], restored[0]


def evaluate(workdir: str, export: str | None = None) -> dict[str, Any]:
  """Tests the newest distilled set of `workdir`; writes `eval.json`."""
  distiller, state = load_distilled(workdir)
  test = input_pipeline.load_split(distiller.config.data, 'test')
  metrics = jax.device_get(distiller.pmapped_eval_step()(
      state.params, parallel.put_sharded(test)))
  result = {'step': int(state.step),
            'test_accuracy': float(metrics['accuracy']),
            'test_loss': float(metrics['loss'])}
  logging.info('Evaluation: %s', result)
  if jax.process_index() == 0:
    _write_json(result, os.path.join(workdir, RESULT_NAME))
    if export:
      images = np.asarray(state.params['images']).reshape(
          (-1,) + distiller.info.image_shape)
      np.savez(export, images=images, labels=distiller.labels)
      logging.info('Exported %d distilled images to %s.', len(images), export)
  return result


def _write_json(data: dict[str, Any], path: str) -> None:
  """Writes via a temporary file, so a crash never leaves half a file."""
  with open(path + '.tmp', 'w') as f:
    json.dump(data, f, indent=2)
  os.replace(path + '.tmp', path)
