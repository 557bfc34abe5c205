"""Tests of evaluation: the table, its baselines and the checkpoint choice."""

import dataclasses
import json
import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from configs import test as test_config
from distillation import checkpointing
from distillation import errors
from distillation import eval_lib
from distillation import input_pipeline
from distillation import linear_eval
from distillation import net_eval
from distillation import train_lib


class EvalLibTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.workdir = tempfile.mkdtemp(dir=absltest.TEST_TMPDIR.value)
    config = test_config.get_config()
    config.eval.random_draws = 3
    config.distill.learn_labels = True
    train_lib.train_and_evaluate(config, cls.workdir)

  def test_table_and_json(self):
    export = os.path.join(self.create_tempdir().full_path, 'set.npz')
    result = eval_lib.evaluate(self.workdir, export=export)
    with open(os.path.join(self.workdir, eval_lib.RESULT_NAME)) as f:
      self.assertEqual(json.load(f), result)
    rows = {row['method']: row for row in result['table']}
    self.assertEqual(list(rows), ['distilled', 'random_real', 'class_means',
                                  'full_data'])
    self.assertEqual(rows['distilled']['test_accuracy'],
                     result['test_accuracy'])
    self.assertEqual(rows['random_real']['draws'], 3)
    self.assertGreater(rows['random_real']['test_accuracy_std'], 0)
    self.assertEqual(rows['class_means']['images'], 10)
    self.assertEqual(rows['full_data']['images'], 1337)
    self.assertIn(rows['full_data']['l2reg'], (1e-1, 1e-2, 1e-3, 1e-4))
    self.assertGreater(rows['full_data']['test_accuracy'], 0.9)
    exported = np.load(export)
    self.assertEqual(exported['images'].shape, (10, 8, 8, 1))
    self.assertEqual(exported['targets'].shape, (10, 10))

  def test_best_and_latest(self):
    best = eval_lib.evaluate(self.workdir, which='best', baselines=False)
    latest = eval_lib.evaluate(self.workdir, which='latest', baselines=False)
    self.assertEqual(latest['step'], 6)
    self.assertEqual((best['checkpoint'], latest['checkpoint']),
                     ('best', 'latest'))
    self.assertLen(latest['table'], 1)
    with self.assertRaisesRegex(errors.UserError, '--checkpoint=newest'):
      eval_lib.load_distilled(self.workdir, 'newest')

  def test_a_kept_step_of_the_latest_checkpoints(self):
    with checkpointing.Checkpoints(self.workdir, read_only=True) as kept:
      steps = kept.all_steps()
    self.assertGreater(len(steps), 1)
    out = os.path.join(self.create_tempdir().full_path, 'step.json')
    result = eval_lib.evaluate(self.workdir, baselines=False, out=out,
                               step=steps[0])
    self.assertEqual((result['step'], result['checkpoint']),
                     (steps[0], 'latest'))
    _, state, _ = eval_lib.load_distilled(self.workdir, step=steps[-1])
    self.assertEqual(int(state.step), steps[-1])
    with self.assertRaisesRegex(
        errors.UserError, r'--step=999 is not among the checkpoints kept .*'
        rf'\(steps: {", ".join(map(str, steps))}\).*max_checkpoints_to_keep'):
      eval_lib.evaluate(self.workdir, out=out, step=999)

  def test_networks_trained_on_each_set(self):
    eval_config = test_config.get_config().eval
    # Each model with its recipe's augmentation and without any.
    eval_config.nets = ('mlp', 'mlp_noaug')
    eval_config.net_preset = 'cpu'
    eval_config.net_mlp_width = 16
    eval_config.net_mlp_depth = 1
    eval_config.net_epochs = 3
    eval_config.net_seeds = 2
    eval_config.net_full_data = True
    eval_config.net_full_data_epochs = 1
    export = os.path.join(self.create_tempdir().full_path, 'set')
    result = eval_lib.evaluate(self.workdir, export=export,
                               eval_config=eval_config)
    self.assertEqual(result['table'][0]['method'], 'distilled')  # linear
    kinds = [('distilled', 'soft'), ('distilled', 'hard'),
             ('random_real', 'soft'), ('random_real', 'hard'),
             ('class_means', 'hard'), ('full_data', 'hard')]
    self.assertEqual(
        [(r['evaluator'], r['method'], r['labels'])
         for r in result['net_table']],
        [(e, *kind) for e in eval_config.nets for kind in kinds])
    differences = {d['evaluator']: d for d in result['net_differences']}
    self.assertEqual(list(differences), list(eval_config.nets))
    for evaluator in eval_config.nets:
      rows = [r for r in result['net_table'] if r['evaluator'] == evaluator]
      for row in rows:
        self.assertLen(row['per_seed'], 2)
        self.assertAlmostEqual(row['test_accuracy'],
                               np.mean(row['per_seed']))
        self.assertBetween(row['validation_accuracy'], 0.0, 1.0)
        self.assertEqual(row['recipe']['width'], 16)
        self.assertStartsWith(row['recipe_name'], 'cpu(')
        self.assertEqual(row['recipe']['augment'] == 'none',
                         evaluator == 'mlp_noaug')
      self.assertEqual(rows[-1]['images'], 1337)
      self.assertEqual(rows[-1]['recipe']['epochs'], 1)
      for labels, (distilled, random_real) in (('soft', (0, 2)),
                                               ('hard', (1, 3))):
        self.assertAlmostEqual(
            differences[evaluator][f'ior_{labels}'],
            rows[distilled]['test_accuracy'] -
            rows[random_real]['test_accuracy'])
      self.assertAlmostEqual(differences[evaluator]['hlr'],
                             rows[5]['test_accuracy'] -
                             rows[1]['test_accuracy'])
    self.assertIn('mlp_noaug: IOR (soft)', net_eval.format_table(
        result['net_table'], result['net_differences']))
    cached = os.listdir(os.path.join(self.workdir, net_eval.FULL_DATA_CACHE))
    self.assertLen(cached, 2)
    # A second evaluation reads the full-data rows back, marked as cached.
    again = eval_lib.evaluate(
        self.workdir, eval_config=eval_config,
        out=os.path.join(self.create_tempdir().full_path, 'again.json'))
    first = [r for r in result['net_table'] if r['method'] == 'full_data']
    second = [r for r in again['net_table'] if r['method'] == 'full_data']
    self.assertEqual([{**r, 'cached': True} for r in first], second)
    rows = result['net_table']
    exported = np.load(export + '.npz')
    np.testing.assert_array_equal(exported['hard_labels'],
                                  exported['soft_labels'].argmax(-1))
    self.assertEqual(exported['normalization_std'].shape, (1,))
    with open(export + '.json') as f:
      recipes = json.load(f)['recipes']
    self.assertEqual(recipes['mlp'], rows[0]['recipe'])
    self.assertEqual(recipes['convnet']['augment'],
                     'color_crop_cutout_scale_rotate')  # No flip on digits.

  def test_net_sets_choose_the_rows(self):
    eval_config = test_config.get_config().eval
    eval_config.nets = ('mlp',)
    eval_config.net_preset = 'cpu'
    eval_config.net_mlp_width = 8
    eval_config.net_mlp_depth = 1
    eval_config.net_epochs = 1
    eval_config.net_seeds = 1
    # As the command line gives it: one string.
    eval_config.net_sets = ('random_real/hard,class_means',)
    # The accelerators' path, here on CPU.
    eval_config.net_path = 'vmapped'
    result = eval_lib.evaluate(
        self.workdir, eval_config=eval_config,
        out=os.path.join(self.create_tempdir().full_path, 'sets.json'))
    self.assertEqual([(r['method'], r['labels'])
                      for r in result['net_table']],
                     [('random_real', 'hard'), ('class_means', 'hard')])

  def test_no_augment_recipe_is_its_models_without_augmentation(self):
    config = test_config.get_config()
    config.eval.net_preset = 'cpu'
    config.eval.net_epochs = 7
    config.eval.net_augment = 'crop'
    recipes = net_eval.recipes(config)
    for model in ('convnet', 'mlp'):
      self.assertEqual(recipes[model].augment, ('crop',))
      self.assertEqual(recipes[model + '_noaug'], dataclasses.replace(
          recipes[model], augment=(), name='cpu(epochs=7, augment=none)'))
    self.assertEqual(set(recipes), set(eval_lib.EVALUATORS) - {'linear'})

  def test_kernel_presets_are_the_kernel_methods_recipe(self):
    config = test_config.get_config()
    for preset, width, steps in (('kernel', 128, (2000, 1000)),
                                 ('kernel_cpu', 32, (2000, 1000))):
      config.eval.net_preset = preset
      recipe = net_eval.recipes(config)['convnet']
      self.assertEqual(
          (recipe.name, recipe.width, recipe.norm, recipe.optimizer,
           recipe.loss, (recipe.steps, recipe.steps_one_per_class),
           recipe.weight_decay),
          (preset, width, 'none', 'adam', 'mse', steps, 0.0))
    # The DC/DSA presets keep SGD on the cross-entropy for their epochs.
    config.eval.net_preset = 'cpu'
    recipe = net_eval.recipes(config)['convnet']
    self.assertEqual((recipe.optimizer, recipe.loss, recipe.steps),
                     ('sgd', 'cross_entropy', 0))

  @parameterized.parameters(
      ('nets', ('linear', 'resnet'), r'config.eval.nets=.*resnet'),
      ('net_norm', 'batch', r"config.eval.net_norm='batch' is unknown"),
      ('net_width', 0, r'config.eval.net_width=0 must be at least 1'),
      ('net_epochs', 0, r'config.eval.net_epochs=0 must be at least 1'),
      ('net_seeds', 0, r'config.eval.net_seeds=0 must be at least 1'),
      ('net_augment', 'crop_blur', r'config.eval.net_augment='),
      ('net_preset', 'gpu', r"config.eval.net_preset='gpu' is unknown"),
      ('net_path', 'looped', r"config.eval.net_path='looped' is unknown"),
      ('net_optimizer', 'lamb',
       r"config.eval.net_optimizer='lamb' is unknown; use one of sgd, adam"),
      ('net_loss', 'hinge', r"config.eval.net_loss='hinge' is unknown"),
      ('net_steps', -1, r'config.eval.net_steps=-1 must be at least 0'),
      ('net_sets', ('random_real/soft', 'kmeans'),
       r"config.eval.net_sets=.*\['kmeans'\] is not one"))
  def test_bad_network_settings_name_the_field(self, field, value, message):
    config = test_config.get_config()
    config.eval[field] = value
    with self.assertRaisesRegex(errors.UserError, message) as raised:
      eval_lib.check_config(config)
    self.assertNotIn('\n', str(raised.exception))

  def test_export_without_npz_suffix_logs_the_path_written(self):
    export = os.path.join(self.create_tempdir().full_path, 'set')
    with self.assertLogs(level='INFO') as logs:
      eval_lib.evaluate(self.workdir, export=export, baselines=False)
    self.assertTrue(os.path.isfile(export + '.npz'))
    self.assertTrue(any(f'to {export}.npz.' in line for line in logs.output),
                    logs.output)

  def test_out_takes_the_result_and_leaves_the_workdirs_alone(self):
    workdir_result = os.path.join(self.workdir, eval_lib.RESULT_NAME)
    before = (open(workdir_result).read() if os.path.exists(workdir_result)
              else None)
    directory = self.create_tempdir().full_path
    out = os.path.join(directory, 'second.json')
    for _ in range(2):  # The second run replaces its own earlier result.
      result = eval_lib.evaluate(self.workdir, baselines=False, out=out)
      with open(out) as f:
        self.assertEqual(json.load(f), result)
    self.assertEqual(open(workdir_result).read() if os.path.exists(
        workdir_result) else None, before)
    precious = self.create_tempfile(content='precious').full_path
    export = os.path.join(directory, 'set.npz')
    for bad, message in (
        (directory, 'is a directory; pass a file'),
        (os.path.join(directory, 'no', 'r.json'),
         'its directory does not exist'),
        (precious, 'exists and is not a result of eval.py'),
        (os.path.join(directory, 'set.json'), 'a file that --export=')):
      with self.assertRaisesRegex(errors.UserError,
                                  f'^--out={bad}.*{message}'):
        eval_lib.evaluate(self.workdir, export=export, out=bad)
    with open(precious) as f:
      self.assertEqual(f.read(), 'precious')
    self.assertFalse(os.path.exists(export))


class FeatureEvalTest(absltest.TestCase):

  def test_linear_rows_are_heads_on_one_fixed_networks_features(self):
    workdir = self.create_tempdir().full_path
    config = test_config.get_config()
    config.num_steps = 2
    config.eval.random_draws = 1
    config.data.normalize = True
    config.model.features = 'mlp'
    config.model.width = 16
    config.model.depth = 1
    train_lib.train_and_evaluate(config, workdir)
    result = eval_lib.evaluate(workdir)
    rows = {row['method']: row for row in result['table']}
    self.assertEqual(list(rows), ['distilled', 'random_real', 'class_means',
                                  'full_data'])
    # 16 random ReLU features of the digits: far above chance, below pixels.
    self.assertBetween(rows['full_data']['test_accuracy'], 0.5, 0.99)
    distiller, state, _ = eval_lib.load_distilled(workdir, 'best')
    nets = distiller.eval_context()[:1]
    _, validation, test = input_pipeline.load_train_validation_test(
        config.data)
    del validation
    weights = linear_eval._kernel(distiller.fit_inner(state.params,
                                                      context=nets).params)
    accuracy, _ = linear_eval._test(
        weights, linear_eval._features(distiller, nets, test))
    self.assertAlmostEqual(rows['distilled']['test_accuracy'], accuracy,
                           places=5)


if __name__ == '__main__':
  absltest.main()
