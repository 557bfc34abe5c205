"""Tests of the training loop: outputs, resume, divergence, bad configs."""

import errno
import glob
import os
import shutil
from unittest import mock

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from configs import test as test_config
from distillation import checkpointing
from distillation import errors
from distillation import outer
from distillation import train_lib
from distillation import workdirs
from tests import input_pipeline_test


def _scalars(workdir):
  """{tag: [values]} of the scalars written to workdir's TensorBoard log."""
  events = event_accumulator.EventAccumulator(
      workdir, size_guidance={event_accumulator.TENSORS: 0})
  events.Reload()
  values = {tag: [tensor_util.make_ndarray(e.tensor_proto)
                  for e in events.Tensors(tag)]
            for tag in events.Tags()['tensors']}
  return {tag: [float(v) for v in vs] for tag, vs in values.items()
          if vs[0].ndim == 0}


def _steps(workdir, name=checkpointing.LATEST):
  directory = checkpointing.checkpoint_dir(workdir, name)
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if (
      os.path.isdir(directory)) else []


class TrainLibTest(absltest.TestCase):

  def test_outputs_and_resume_equals_uninterrupted_run(self):
    config = test_config.get_config()
    full_dir = self.create_tempdir().full_path
    full = train_lib.train_and_evaluate(config, full_dir)
    self.assertEqual(int(full.step), 6)
    self.assertEqual(_steps(full_dir), [2, 4, 6])
    self.assertTrue(os.path.isfile(os.path.join(full_dir,
                                                train_lib.PNG_NAME)))
    self.assertNotEmpty(glob.glob(os.path.join(full_dir, 'events.out.*')))

    split_dir = self.create_tempdir().full_path
    config.num_steps = 3
    train_lib.train_and_evaluate(config, split_dir)
    self.assertEqual(_steps(split_dir), [2, 3])
    config.num_steps = 6
    resumed = train_lib.train_and_evaluate(config, split_dir)
    np.testing.assert_array_equal(resumed.params['images'],
                                  full.params['images'])
    jax.tree.map(np.testing.assert_array_equal, resumed.opt_state,
                 full.opt_state)
    # The best checkpoint by validation accuracy is kept apart, resumed too.
    for workdir in (full_dir, split_dir):
      best = os.listdir(checkpointing.checkpoint_dir(workdir,
                                                     checkpointing.BEST))
      self.assertLen(best, 1)
    self.assertEqual(
        os.listdir(checkpointing.checkpoint_dir(full_dir, checkpointing.BEST)),
        os.listdir(checkpointing.checkpoint_dir(split_dir,
                                                checkpointing.BEST)))

  def test_a_pool_run_resumes_exactly(self):
    """The pool's members, optimizer states and ages are saved and restored
    with the rest of the state."""
    config = test_config.get_config()
    config.num_steps = 4
    config.model.features = 'mlp'
    config.model.width = 8
    config.model.depth = 1
    config.model.nets_per_step = 1
    config.model.pool_size = 2
    config.model.pool_max_updates = 3
    config.eval_every_steps = 4  # The best checkpoint: the last one.
    full_dir = self.create_tempdir().full_path
    full = train_lib.train_and_evaluate(config, full_dir)
    self.assertEqual(full.pool['age'].tolist(), [2, 0])  # Member 1 renewed.
    # The same run as if stopped after step 2: its checkpoints up to then.
    split_dir = os.path.join(self.create_tempdir().full_path, 'split')
    shutil.copytree(full_dir, split_dir)
    for name in (checkpointing.LATEST, checkpointing.BEST):
      shutil.rmtree(os.path.join(
          checkpointing.checkpoint_dir(split_dir, name), '4'))
    self.assertEqual(_steps(split_dir), [2])
    resumed = train_lib.train_and_evaluate(config, split_dir)
    jax.tree.map(np.testing.assert_array_equal, resumed, full)

  def test_finished_run_does_no_more_steps(self):
    config = test_config.get_config()
    workdir = self.create_tempdir().full_path
    train_lib.train_and_evaluate(config, workdir)
    # Each run names itself in the lock file; nothing else may change.
    mtimes = lambda: {p: os.path.getmtime(p) for p in glob.glob(
        f'{workdir}/**', recursive=True) if workdirs.LOCK_NAME not in p}
    before = mtimes()
    with mock.patch.object(outer.Distiller, 'train_step') as train_step:
      state = train_lib.train_and_evaluate(config, workdir)
    train_step.assert_not_called()
    self.assertEqual(int(state.step), 6)
    self.assertEqual(before, mtimes())

  def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(self):
    config = test_config.get_config()
    workdir = self.create_tempdir().full_path
    real_step = outer.Distiller.train_step

    def poisoned_step(self, state, shard):
      state, metrics = real_step(self, state, shard)
      metrics['loss'] = jnp.where(state.step == 4, jnp.nan, metrics['loss'])
      return state, metrics

    with mock.patch.object(outer.Distiller, 'train_step', poisoned_step):
      with self.assertRaisesRegex(errors.DivergedError, 'at step 3'):
        train_lib.train_and_evaluate(config, workdir)
    self.assertEqual(_steps(workdir), [2])

  def test_an_update_that_explodes_is_not_saved(self):
    """Its loss is finite (computed before the update); the next is not."""
    config = test_config.get_config()
    config.num_steps = 2
    workdir = self.create_tempdir().full_path
    train_lib.train_and_evaluate(config, workdir)
    config.num_steps = 6
    config.optimizer.learning_rate = 1e30
    config.checkpoint_every_steps = 1
    with self.assertRaisesRegex(
        errors.DivergedError, r'at step 3; stopped without saving it \(the '
        r'newest checkpoint, step 2, is the last good one\)'):
      train_lib.train_and_evaluate(config, workdir)
    self.assertEqual(_steps(workdir), [2])
    self.assertEqual(_steps(workdir, checkpointing.BEST), [2])

  def test_a_non_finite_state_is_not_saved_on_preemption(self):
    config = test_config.get_config()
    config.steps_per_dispatch = 2
    config.log_every_steps = config.eval_every_steps = 6
    config.checkpoint_every_steps = 6
    workdir = self.create_tempdir().full_path
    real_step = outer.Distiller.train_step

    def poisoned_step(self, state, shard):
      state, metrics = real_step(self, state, shard)
      images = jnp.where(state.step == 2, jnp.nan, state.params['images'])
      return state.replace(params={**state.params, 'images': images}), metrics

    with mock.patch.object(outer.Distiller, 'train_step', poisoned_step), \
        mock.patch.object(train_lib._Preemption, 'reached', return_value=True):
      with self.assertRaisesRegex(
          errors.DivergedError,
          r'at step 2; stopped without saving it \(no checkpoint was saved '
          r'yet\)'):
        train_lib.train_and_evaluate(config, workdir)
    self.assertEqual(_steps(workdir), [])
    self.assertEqual(_steps(workdir, checkpointing.BEST), [])

  def test_resume_with_other_data_of_the_same_shapes(self):
    directory = self.create_tempdir().full_path
    for name in ('a', 'b'):
      input_pipeline_test.write_idx_dataset(os.path.join(directory, name),
                                            n_train=60, seed=ord(name))
    shutil.copytree(os.path.join(directory, 'a'),
                    os.path.join(directory, 'a_copy'))
    config = test_config.get_config()
    config.num_steps = 2
    config.data.dataset = 'mnist'
    config.data.verify_digests = False  # Random files, not the originals.
    config.data.validation_size = 20
    config.data.idx_dir = os.path.join(directory, 'a')
    workdir = self.create_tempdir().full_path
    train_lib.train_and_evaluate(config, workdir)
    config.data.dataset = 'fashion_mnist'
    with self.assertRaisesRegex(
        errors.UserError, r"\(data.dataset: 'mnist' in the checkpoint, "
        r"'fashion_mnist' now\); resume with the same config and data"):
      train_lib.train_and_evaluate(config, workdir)
    config.data.dataset = 'mnist'
    config.data.idx_dir = os.path.join(directory, 'b')
    with self.assertRaisesRegex(errors.UserError,
                                r'another problem \(data_sha256: '):
      train_lib.train_and_evaluate(config, workdir)
    # The same files elsewhere are the same problem.
    config.data.idx_dir = os.path.join(directory, 'a_copy')
    self.assertEqual(int(train_lib.train_and_evaluate(config, workdir).step),
                     2)

  def test_resume_with_other_shapes_names_the_field(self):
    config = test_config.get_config()
    config.num_steps = 2
    workdir = self.create_tempdir().full_path
    train_lib.train_and_evaluate(config, workdir)
    config.distill.images_per_class = 2
    with self.assertRaisesRegex(
        errors.UserError, r'distill.images_per_class: 1 in the checkpoint, 2 '
        r'now\), so 3 of their arrays do not fit; resume with the same '
        r'config'):
      train_lib.train_and_evaluate(config, workdir)
    self.assertEqual(_steps(workdir), [2])

  def _assert_strict_stops_at_step_0(self, config):
    """With config.inner.strict, the same run stops before any checkpoint."""
    config.inner.strict = True
    strict_dir = self.create_tempdir().full_path
    with self.assertRaisesRegex(errors.DivergedError,
                                'step 0 .*config.inner.strict=True'):
      train_lib.train_and_evaluate(config, strict_dir)
    self.assertEmpty(_steps(strict_dir))

  def test_unconverged_inner_solves_are_counted_warned_and_strict_stops(self):
    config = test_config.get_config()
    config.inner.maxiter = 2  # Gradient descent cannot reach tol 1e-3.
    workdir = self.create_tempdir().full_path
    with self.assertLogs(level='WARNING') as logs:
      train_lib.train_and_evaluate(config, workdir)
    warnings = [r for r in logs.output if 'config.inner.tol' in r]
    self.assertLen(warnings, 1)  # Once, naming the first step.
    self.assertIn('inner solve of step 0 stopped', warnings[0])
    scalars = _scalars(workdir)
    self.assertEqual(scalars['inner_unconverged'], [2.0, 2.0, 2.0])
    self.assertGreater(min(scalars['inner_error']), 1e-3)

    self._assert_strict_stops_at_step_0(config)

  def test_unconverged_implicit_solves_are_counted_warned_and_strict_stops(
      self):
    config = test_config.get_config()
    config.model.update(features='mlp', width=8, depth=1, linearize=True,
                        activation='softplus', body_l2reg=0.05)
    config.inner.loss = 'squared'
    # One CG step cannot solve the implicit system to 1e-9 of its norm.
    config.inner.implicit_maxiter = 1
    config.inner.implicit_tol = 1e-9
    workdir = self.create_tempdir().full_path
    with self.assertLogs(level='WARNING') as logs:
      train_lib.train_and_evaluate(config, workdir)
    warnings = [r for r in logs.output if 'config.inner.implicit_tol' in r]
    self.assertLen(warnings, 1)
    self.assertIn('implicit-gradient CG of step 0 stopped', warnings[0])
    self.assertEqual(_scalars(workdir)['implicit_unconverged'],
                     [float(config.log_every_steps)] * (
                         config.num_steps // config.log_every_steps))

    self._assert_strict_stops_at_step_0(config)

  def test_bad_loop_config(self):
    workdir = self.create_tempdir().full_path
    for field, value, message in (
        ('num_steps', 0, 'config.num_steps=0 must be >= 1'),
        ('log_every_steps', 3, 'must be a multiple of'),
    ):
      config = test_config.get_config()
      config.steps_per_dispatch = 2 if field == 'log_every_steps' else 1
      config[field] = value
      with self.assertRaisesRegex(errors.UserError, message):
        train_lib.train_and_evaluate(config, workdir)
    config = test_config.get_config()
    config.data.outer_batch_size = 12
    with self.assertRaisesRegex(errors.UserError,
                                'config.data.outer_batch_size=12'):
      train_lib.train_and_evaluate(config, workdir)
    self.assertEmpty(os.listdir(workdir))


  def test_workdir_that_cannot_be_created(self):
    config = test_config.get_config()
    under_a_file = os.path.join(self.create_tempfile().full_path, 'run')
    cases = [(under_a_file, 'cannot be created')]
    if os.path.isdir('/proc/self'):  # Not even root may add files there.
      cases += [('/proc/run', 'cannot be created'),
                ('/proc/self', 'is not writable')]
    for workdir, message in cases:
      with self.assertRaisesRegex(errors.UserError,
                                  f'--workdir={workdir} {message}'):
        train_lib.train_and_evaluate(config, workdir)

  def test_full_disk_is_one_error(self):
    config = test_config.get_config()
    workdir = self.create_tempdir().full_path
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with mock.patch.object(checkpointing.Checkpoints, 'save',
                           side_effect=full):
      with self.assertRaisesRegex(
          errors.UserError, f'the disk of --workdir={workdir} is full; free '
          'some space and run the same command to resume'):
        train_lib.train_and_evaluate(config, workdir)


if __name__ == '__main__':
  absltest.main()
