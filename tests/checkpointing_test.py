"""Tests of the checkpoints: digests, fallbacks, and the resume check."""

import functools
import glob
import json
import os
from typing import NamedTuple

from absl.testing import absltest
from absl.testing import parameterized
import jax
import ml_collections
import numpy as np

from configs import conv
from distillation import checkpointing
from distillation import errors
from distillation import input_pipeline
from distillation import outer


class State(NamedTuple):
  step: np.ndarray
  x: np.ndarray


def _state(step):
  return State(np.int32(step), np.random.default_rng(step).normal(
      size=1000).astype(np.float32))


def _flip_a_byte(step_dir):
  """XORs the middle byte of the largest data file: the values change, and
  nothing else tells (the format has no checksum of its own)."""
  largest = max(glob.glob(os.path.join(step_dir, 'state', '**', 'd', '*'),
                          recursive=True), key=os.path.getsize)
  with open(largest, 'r+b') as f:
    f.seek(os.path.getsize(largest) // 2)
    byte = f.read(1)[0]
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte ^ 0xFF]))


def _edit_meta(step_dir, edit):
  """Changes a value in a step's meta (Orbax writes JSON items as is)."""
  path = os.path.join(step_dir, 'meta', 'metadata')
  with open(path) as f:
    meta = json.load(f)
  edit(meta)
  with open(path, 'w') as f:
    json.dump(meta, f)


class CheckpointsTest(parameterized.TestCase):

  def test_a_flipped_bit_is_detected_and_the_step_before_is_used(self):
    workdir = self.create_tempdir().full_path
    with checkpointing.Checkpoints(workdir) as checkpoints:
      for step in (1, 2):
        checkpoints.save(_state(step), {})
    bad = os.path.join(checkpointing.checkpoint_dir(workdir), '2')
    _flip_a_byte(bad)
    target = lambda meta: _state(0)
    with checkpointing.Checkpoints(workdir, read_only=True) as checkpoints:
      with self.assertLogs(level='ERROR') as logs:
        state, _ = checkpoints.restore_newest(target)
    self.assertIn(f'Checkpoint {bad} cannot be restored (ChecksumError',
                  '\n'.join(logs.output))
    self.assertEqual(int(state.step), 1)
    np.testing.assert_array_equal(state.x, _state(1).x)
    self.assertTrue(os.path.isdir(bad))  # Read-only: moves nothing.

    with checkpointing.Checkpoints(workdir) as checkpoints:
      with self.assertLogs(level='ERROR'):
        state, _ = checkpoints.restore_newest(target)
      self.assertEqual(checkpoints.all_steps(), [1])
    self.assertEqual(int(state.step), 1)
    self.assertTrue(os.path.isdir(os.path.join(
        checkpointing.set_aside_dir(workdir), '2', 'state')))

  def test_none_when_no_step_restores(self):
    workdir = self.create_tempdir().full_path
    with checkpointing.Checkpoints(workdir) as checkpoints:
      self.assertIsNone(checkpoints.restore_newest(lambda meta: _state(0)))
      checkpoints.save(_state(1), {})
    _flip_a_byte(os.path.join(checkpointing.checkpoint_dir(workdir), '1'))
    with checkpointing.Checkpoints(workdir) as checkpoints:
      with self.assertLogs(level='ERROR'):
        self.assertIsNone(checkpoints.restore_newest(lambda meta: _state(0)))
      self.assertEqual(checkpoints.all_steps(), [])


  @parameterized.named_parameters(
      ('best_accuracy', lambda meta: meta.update(validation_accuracy=0.995)),
      ('config', lambda meta: meta['config'].update(l2reg=0.9)),
      ('problem_record',
       lambda meta: meta['problem'].update(validation_size=210)),
  )
  def test_an_edited_meta_is_a_broken_step(self, edit):
    """The digest covers the meta too, so the problem record is only
    compared once it holds: an edited one is a broken step, not a refusal."""
    workdir = self.create_tempdir().full_path
    meta = {'config': {'l2reg': 0.1}, 'problem': {'validation_size': 200},
            'validation_accuracy': 0.9}
    with checkpointing.Checkpoints(workdir) as checkpoints:
      for step in (1, 2):
        checkpoints.save(_state(step), meta)
    bad = os.path.join(checkpointing.checkpoint_dir(workdir), '2')
    _edit_meta(bad, edit)

    def target(saved):
      if saved['problem'] != meta['problem']:
        raise errors.UserError('made for another problem')
      return _state(0)

    with checkpointing.Checkpoints(workdir) as checkpoints:
      with self.assertLogs(level='ERROR') as logs:
        state, restored_meta = checkpoints.restore_newest(target)
      self.assertEqual(checkpoints.all_steps(), [1])
    self.assertIn(f'Checkpoint {bad} cannot be restored (ChecksumError: its '
                  'arrays or meta differ', '\n'.join(logs.output))
    self.assertEqual(int(state.step), 1)
    self.assertEqual(restored_meta['validation_accuracy'], 0.9)
    self.assertTrue(os.path.isdir(os.path.join(
        checkpointing.set_aside_dir(workdir), '2', 'meta')))

  def test_a_checkpoint_from_before_the_meta_digest_restores_with_a_warning(
      self):
    """Such a step is used, so that a run can go on; the digest of its
    arrays, which it has, still catches a flipped bit."""
    workdir = self.create_tempdir().full_path
    with checkpointing.Checkpoints(workdir) as checkpoints:
      for step in (1, 2):
        checkpoints.save(_state(step), {})

    def as_before(meta, step):  # Such a step's meta: a digest of the arrays.
      del meta[checkpointing.DIGEST]
      meta['state_sha256'] = checkpointing.digest(
          jax.tree.leaves(_state(step)))

    for step in (1, 2):
      _edit_meta(os.path.join(checkpointing.checkpoint_dir(workdir),
                              str(step)), functools.partial(as_before,
                                                            step=step))
    _flip_a_byte(os.path.join(checkpointing.checkpoint_dir(workdir), '2'))
    with checkpointing.Checkpoints(workdir, read_only=True) as checkpoints:
      with self.assertLogs(level='WARNING') as logs:
        state, _ = checkpoints.restore_newest(lambda meta: _state(0))
    self.assertEqual(int(state.step), 1)
    np.testing.assert_array_equal(state.x, _state(1).x)
    logs = '\n'.join(logs.output)
    self.assertIn('2 cannot be restored (ChecksumError: its arrays differ',
                  logs)
    self.assertIn('1 predates the digest of its meta', logs)


class CheckCompatibleTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.config = ml_collections.ConfigDict(dict(
        data=dict(dataset='fashion_mnist', validation_size=2, split_seed=0),
        distill=dict(images_per_class=1), inner=dict(l2reg=0.1),
        model=dict(features='pixels', width=64),
        eval=dict(l2reg_grid=(0.1, 0.01))))
    self.info = input_pipeline.DATASETS['fashion_mnist']
    self.data = [input_pipeline.Split(np.zeros((4, 784), np.float32),
                                      np.arange(4))]
    self.state = _state(0)
    # As read back from a checkpoint: JSON, so tuples are lists.
    self.meta = checkpointing._as_json(checkpointing.make_meta(
        self.config, self.state, checkpointing.describe_problem(
            self.config, self.info, self.data)))

  def _check(self, config, data):
    checkpointing.check_compatible(
        self.meta, config, self.state,
        checkpointing.describe_problem(config, self.info, data))

  def test_same_problem_passes(self):
    self._check(self.config, self.data)  # eval.l2reg_grid: tuple vs list.

  def test_another_dataset_with_the_same_shapes(self):
    config = self.config.copy_and_resolve_references()
    config.data.dataset = 'mnist'
    with self.assertRaisesRegex(
        errors.UserError, "made for another problem \\(data.dataset: "
        "'fashion_mnist' in the checkpoint, 'mnist' now\\); resume"):
      self._check(config, self.data)

  def test_other_data_under_the_same_name(self):
    data = [input_pipeline.Split(np.ones((4, 784), np.float32),
                                 np.arange(4))]
    with self.assertRaisesRegex(errors.UserError,
                                r'\(data_sha256: \'[0-9a-f]{16}\' in the '
                                r'checkpoint, \'[0-9a-f]{16}\' now\)'):
      self._check(self.config, data)

  def test_another_model_or_head_loss(self):
    """They define the learned object, even where the shapes fit."""
    for field, value, saved in (('model.features', 'conv', "'pixels'"),
                                ('model.width', 32, '64'),
                                ('inner.l2reg', 0.9, '0.1'),
                                # Absent from this config: the logistic one.
                                ('inner.loss', 'squared', "'logistic'")):
      config = self.config.copy_and_resolve_references()
      section, name = field.split('.')
      config[section][name] = value
      with self.assertRaisesRegex(
          errors.UserError, f'another problem \\({field}: {saved} in the '
          f'checkpoint, {value!r} now\\); resume'):
        self._check(config, self.data)

  def test_a_record_without_the_model_takes_it_from_the_config(self):
    """Records older than their model.*, inner.l2reg and inner.loss fields
    (configs older than inner.loss meant the logistic loss)."""
    for field in ('model.features', 'model.width', 'inner.l2reg',
                  'inner.loss'):
      del self.meta['problem'][field]
    self._check(self.config, self.data)
    config = self.config.copy_and_resolve_references()
    config.inner.loss = 'logistic'
    self._check(config, self.data)
    config.model.features = 'conv'
    with self.assertRaisesRegex(errors.UserError, "model.features: 'pixels'"):
      self._check(config, self.data)
    config = self.config.copy_and_resolve_references()
    config.inner.loss = 'squared'
    with self.assertRaisesRegex(errors.UserError,
                                "inner.loss: 'logistic' in the checkpoint"):
      self._check(config, self.data)

  def test_a_pool_from_before_its_data_field_trained_on_the_set(self):
    # Neither this record nor its config has the field.
    del self.meta['problem']['model.pool_data']
    config = self.config.copy_and_resolve_references()
    config.model.pool_data = 'distilled'
    self._check(config, self.data)
    config.model.pool_data = 'real'
    with self.assertRaisesRegex(
        errors.UserError, "model.pool_data: 'distilled' in the checkpoint, "
        "'real' now"):
      self._check(config, self.data)

  def test_a_record_from_before_softplus_beta_meant_softplus(self):
    del self.meta['problem']['model.softplus_beta']
    config = self.config.copy_and_resolve_references()
    self._check(config, self.data)
    config.model.softplus_beta = 60.0
    with self.assertRaisesRegex(
        errors.UserError, 'model.softplus_beta: 1.0 in the checkpoint, 60.0 '
        'now'):
      self._check(config, self.data)

  def test_other_shapes_name_the_arrays_and_fields(self):
    config = self.config.copy_and_resolve_references()
    config.distill.images_per_class = 2
    with self.assertRaisesRegex(
        errors.UserError, r'^the checkpoints in this workdir were made for '
        r'another problem \(distill.images_per_class: 1 in the checkpoint, '
        r'2 now\), so their arrays do not fit \(x \[1000\] vs \[10\]\)'):
      checkpointing.check_compatible(
          self.meta, config, State(np.int32(0), np.zeros(10)),
          checkpointing.describe_problem(config, self.info, self.data))



def _conv_problem(arg, **model):
  """(config, abstract state, problem) of configs/conv.py:<arg> on random
  digits-shaped data, with model.* fields changed; no program runs."""
  config = conv.get_config(arg)
  config.model.update(model)
  config.distill.image_init = 'noise'  # The state's shapes alone.
  rng = np.random.default_rng(0)
  train = input_pipeline.Split(rng.uniform(size=(20, 64)).astype(np.float32),
                               np.arange(20, dtype=np.int32) % 10)
  distiller = outer.Distiller(config)
  state = jax.eval_shape(
      lambda: distiller.init_state(jax.random.PRNGKey(0), train))
  return config, state, checkpointing.describe_problem(
      config, input_pipeline.DATASETS['digits'], [train])


class ChangedModelRefusalTest(parameterized.TestCase):
  """A changed pool or feature model changes dozens of arrays; the one
  line names the changed fields and counts the arrays."""

  @parameterized.named_parameters(
      ('pool_size', 'pool=1', 'pool=1', dict(pool_size=5),
       ['model.pool_size: 10 in the checkpoint, 5 now']),
      ('features_of_a_pool', 'pool=1', 'pool=1', dict(features='mlp'),
       ["model.features: 'conv' in the checkpoint, 'mlp' now"]),
      ('pool_on_to_off', 'pool=1', 'pool=0', {},
       ['model.pool_size: 10 in the checkpoint, 0 now']),
      ('pool_off_to_on', 'pool=0', 'pool=1', {},
       ['model.pool_size: 0 in the checkpoint, 10 now']),
      ('pool_on_and_other_features', 'pool=1', 'pool=0', dict(features='mlp'),
       ["model.features: 'conv' in the checkpoint, 'mlp' now",
        'model.pool_size: 10 in the checkpoint, 0 now']),
  )
  def test_one_short_line(self, saved_pool, pool, model, fields):
    saved_config, saved_state, saved_problem = _conv_problem(
        f'digits,ipc=1,size=cpu,{saved_pool}')
    meta = checkpointing._as_json(checkpointing.make_meta(
        saved_config, saved_state, saved_problem))
    config, state, problem = _conv_problem(f'digits,ipc=1,size=cpu,{pool}',
                                           **model)
    # Fields that may change on resume are no reason, and not listed.
    config.num_steps += 100
    config.eval.random_draws += 1
    with self.assertRaises(errors.UserError) as refusal:
      checkpointing.check_compatible(meta, config, state, problem)
    line = f'ERROR: {refusal.exception}'
    self.assertLess(len(line), 300, line)
    self.assertLen(line.splitlines(), 1)
    for field in fields:
      self.assertIn(field, line)
    self.assertNotIn('num_steps', line)
    self.assertNotIn('eval.', line)
    self.assertRegex(line, r'\), so \d+ of their arrays do not fit; resume '
                     'with the same config and data, or pass a new '
                     '--workdir.$')


if __name__ == '__main__':
  absltest.main()
