"""Tests of the selection of the reported set by networks' validation."""

import json
import os

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from configs import conv
from configs import test as test_config
from distillation import checkpointing
from distillation import errors
from distillation import eval_lib
from distillation import input_pipeline
from distillation import selection
from distillation import train_lib


def _config(learning_rate):
  """Pixels of real digits, 8 steps, networks that select: tiny MLPs."""
  config = test_config.get_config()
  config.distill.image_init = 'real'
  config.optimizer.learning_rate = learning_rate
  config.num_steps = 8
  config.max_checkpoints_to_keep = 1
  config.eval.select = 'mlp'
  config.eval.select_seeds = 2
  config.eval.select_every_steps = 4
  config.eval.net_preset = 'cpu'
  config.eval.net_mlp_width = 32
  config.eval.net_mlp_depth = 1
  config.eval.net_epochs = 30
  config.eval.net_augment = 'none'
  return config


class CandidatesTest(absltest.TestCase):

  def test_initial_multiples_newest_and_best_once_each(self):
    self.assertEqual(
        selection.candidate_steps([40, 45, 50, 55], [35], every=20),
        [(0, 'initial'), (35, 'best'), (40, 'latest'), (55, 'latest')])
    # The best step is read from the latest checkpoints where they have it.
    self.assertEqual(selection.candidate_steps([10, 20], [20], every=None),
                     [(0, 'initial'), (20, 'latest')])
    self.assertEqual(selection.candidate_steps([], [], every=5),
                     [(0, 'initial')])

  def test_recipe_names_its_seeds(self):
    config = _config(1e-3)
    recipe = selection.recipe(config)
    self.assertEqual((recipe.model, recipe.seeds, recipe.width, recipe.name),
                     ('mlp', 2, 32, 'cpu(mlp_width=32, mlp_depth=1, '
                      'epochs=30, augment=none, seeds=2)'))
    config.eval.select = 'convnet_noaug'
    config.eval.net_mlp_width = config.eval.net_mlp_depth = None
    config.eval.net_epochs = config.eval.net_augment = None
    self.assertEqual(selection.recipe(config).name,
                     'cpu(augment=none, seeds=2)')

  def test_conv_configs_select_by_their_convnets(self):
    for arg in ('digits,ipc=1,size=cpu', 'fashion_mnist,ipc=10,size=cpu',
                'mnist,ipc=50,size=cpu', 'fashion_mnist,ipc=10',
                'fashion_mnist,ipc=50,size=cpu,inner=linearized'):
      config = conv.get_config(arg)
      self.assertEqual(selection.criterion(config), 'convnet', arg)
      self.assertEqual(
          config.eval.select_every_steps % config.checkpoint_every_steps, 0)
      self.assertBetween(config.eval.select_every_steps,
                         config.checkpoint_every_steps,
                         max(config.checkpoint_every_steps,
                             config.num_steps // 3))


class CriterionTest(parameterized.TestCase):

  @parameterized.parameters(
      ('select', 'resnet', r"config.eval.select='resnet' is unknown; use "
       r'inner .* convnet'),
      ('select_seeds', 0, r'config.eval.select_seeds=0 must be at least 1'),
      ('select_every_steps', 3, r'config.eval.select_every_steps=3 must be a'
       r' positive multiple of config.checkpoint_every_steps=2'))
  def test_bad_fields_name_themselves(self, field, value, message):
    config = _config(1e-3)
    config.eval[field] = value
    with self.assertRaisesRegex(errors.UserError, message) as raised:
      eval_lib.check_config(config)
    self.assertNotIn('\n', str(raised.exception))

  def test_default_is_the_inner_models_best_checkpoint(self):
    self.assertEqual(selection.criterion(test_config.get_config()),
                     selection.INNER)


class SelectionTest(absltest.TestCase):

  def test_a_learning_rate_that_ruins_the_images_selects_step_0(self):
    workdir = self.create_tempdir().full_path
    config = _config(learning_rate=30.0)
    train_lib.train_and_evaluate(config, workdir)
    with checkpointing.Checkpoints(workdir, read_only=True) as kept:
      self.assertEqual(kept.all_steps(), [4, 8])  # Multiples of 4, newest.
    export = os.path.join(self.create_tempdir().full_path, 'set.npz')
    with self.assertLogs(level='WARNING') as logs:
      result = eval_lib.evaluate(workdir, export=export, baselines=False)
    record = result['selection']
    scores = {c['step']: c['validation_accuracy']
              for c in record['candidates']}
    # With the best checkpoint's step (3 or 6) if it is another one.
    self.assertContainsSubset({0, 4, 8}, set(scores))
    self.assertLessEqual(len(scores), 4)
    self.assertEqual((result['step'], result['checkpoint'],
                      record['chosen_step'], record['chosen_source']),
                     (0, 'initial', 0, 'initial'))
    self.assertEqual(max(scores, key=scores.get), 0)
    self.assertGreater(scores[0], max(scores[4], scores[8]) + 0.1)
    self.assertIn('Distilling did not help this setting on validation',
                  '\n'.join(logs.output))
    self.assertEqual(record['recipe']['seeds'], 2)
    with open(os.path.join(workdir, eval_lib.RESULT_NAME)) as f:
      self.assertEqual(json.load(f)['selection'], record)
    # The initial images as train.py drew them: training images of their
    # class, the config's seed choosing which.
    train, _ = input_pipeline.load_train_and_validation(
        config.data, input_pipeline.IdxDigests(workdir))
    exported = np.load(export)
    images = exported['images'].reshape(len(exported['images']), -1)
    for image, label in zip(images, exported['hard_labels']):
      match = np.flatnonzero((train.images == image).all(-1))
      self.assertLen(match, 1)
      self.assertEqual(train.labels[match[0]], label)
    # --checkpoint=latest skips the selection.
    latest = eval_lib.evaluate(workdir, which='latest', baselines=False,
                               out=os.path.join(workdir, 'latest.json'))
    self.assertEqual((latest['step'], latest['checkpoint']), (8, 'latest'))
    self.assertNotIn('selection', latest)

  def test_a_resumed_run_selects_as_an_uninterrupted_one(self):
    config = _config(learning_rate=0.01)
    whole = self.create_tempdir().full_path
    train_lib.train_and_evaluate(config, whole)
    halves = self.create_tempdir().full_path
    config.num_steps = 6
    train_lib.train_and_evaluate(config, halves)
    config.num_steps = 8
    train_lib.train_and_evaluate(config, halves)
    results = [eval_lib.evaluate(w, baselines=False)['selection']
               for w in (whole, halves)]
    for record in results:
      del record['seconds']
    self.assertEqual(results[0], results[1])
    scores = [c['validation_accuracy'] for c in results[0]['candidates']]
    chosen = [c['step'] for c in results[0]['candidates']][int(np.argmax(
        scores))]
    self.assertEqual(results[0]['chosen_step'], chosen)


if __name__ == '__main__':
  absltest.main()
