"""Kills, preemption, corrupt checkpoints and several processes.

These run train.py in subprocesses, as a scheduler would, and compare the
final distilled images with those of an uninterrupted run.
"""

import glob
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from absl.testing import absltest
import numpy as np

from configs import test as test_config
from distillation import checkpointing
from distillation import errors
from distillation import eval_lib
from distillation import train_lib
from tests import end_to_end_test

ROOT = end_to_end_test.ROOT
# 120 steps with a checkpoint every 2: saves are frequent enough to be hit.
LONG_RUN = ('--config=configs/test.py', '--config.num_steps=120',
            '--config.steps_per_dispatch=2', '--config.log_every_steps=10',
            '--config.eval_every_steps=40', '--config.checkpoint_every_steps=2',
            '--config.max_checkpoints_to_keep=2')


def start(workdir, *extra, devices=1, process_id=None, port=None,
          stderr=None):
  """Starts train.py; its stderr goes to a pipe, or to the open file given."""
  env = end_to_end_test.environment(devices, PYTHONUNBUFFERED='1',
                                    PYTHONFAULTHANDLER='1')
  multihost = [] if port is None else [
      '--multihost', f'--coordinator_address=127.0.0.1:{port}',
      '--num_processes=2', f'--process_id={process_id}']
  return subprocess.Popen(
      [sys.executable, 'train.py', f'--workdir={workdir}', *LONG_RUN, *extra,
       *multihost], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
      stderr=stderr or subprocess.PIPE, text=True)


def final_images(workdir):
  _, state, _ = eval_lib.load_distilled(workdir, 'latest')
  return np.asarray(state.params['images']), int(state.step)


def wait_for(predicate, proc, timeout=120):
  deadline = time.time() + timeout
  while not predicate():
    if proc.poll() is not None or time.time() > deadline:
      return False
    time.sleep(0.002)
  return True


class ResilienceTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.reference_dir = os.path.join(
        tempfile.mkdtemp(dir=absltest.TEST_TMPDIR.value), 'reference')
    proc = start(cls.reference_dir)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    cls.reference, _ = final_images(cls.reference_dir)

  def test_sigkill_at_random_moments_then_resume_is_bitwise_exact(self):
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    ckpt_dir = checkpointing.checkpoint_dir(workdir)
    rng = random.Random(0)
    saving = lambda: bool(glob.glob(os.path.join(ckpt_dir, '*tmp*')))
    saved = lambda: any(d.isdigit() for d in os.listdir(ckpt_dir)) if (
        os.path.isdir(ckpt_dir)) else False
    kills = 0
    for moment in ('during a save', 'random', 'during a save', 'random'):
      proc = start(workdir)
      # Each kill comes after this start has saved a checkpoint of its own.
      before = set(os.listdir(ckpt_dir)) if os.path.isdir(ckpt_dir) else set()
      wait_for(lambda: saved() and set(os.listdir(ckpt_dir)) != before, proc)
      if moment == 'random':
        time.sleep(rng.uniform(0.0, 0.5))
      else:
        wait_for(saving, proc, timeout=5)
      if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        kills += 1
      proc.communicate()
    self.assertGreaterEqual(kills, 3)
    proc = start(workdir)
    _, err = proc.communicate(timeout=600)
    self.assertEqual(proc.returncode, 0, err[-2000:])
    images, step = final_images(workdir)
    self.assertEqual(step, 120)
    np.testing.assert_array_equal(images, self.reference)
    self.assertEmpty(glob.glob(os.path.join(ckpt_dir, '*tmp*')))

  def test_sigterm_saves_and_exits_cleanly(self):
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    ckpt_dir = checkpointing.checkpoint_dir(workdir)
    proc = start(workdir)
    self.assertTrue(wait_for(
        lambda: os.path.isdir(ckpt_dir) and any(
            d.isdigit() for d in os.listdir(ckpt_dir)), proc))
    time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    self.assertEqual(proc.returncode, 0, err[-2000:])
    match = re.search(r'Preempted: saved a checkpoint at step (\d+)', err)
    self.assertIsNotNone(match, err[-2000:])
    step = int(match.group(1))
    self.assertLess(step, 120)
    self.assertIn(str(step), os.listdir(ckpt_dir))
    self.assertFalse(os.path.exists(os.path.join(workdir,
                                                 train_lib.PNG_NAME)))
    proc = start(workdir)
    _, err = proc.communicate(timeout=600)
    self.assertEqual(proc.returncode, 0, err[-2000:])
    self.assertIn(f'Resuming at step {step}.', err)
    np.testing.assert_array_equal(final_images(workdir)[0], self.reference)

  def test_two_processes_equal_one_process(self):
    if (reason := gloo_cannot_connect()):
      self.skipTest(reason)
    port = free_port()
    one_dir = os.path.join(self.create_tempdir().full_path, 'one')
    two_dir = os.path.join(self.create_tempdir().full_path, 'two')
    logs = self.create_tempdir().full_path
    runs = {'process 0': (two_dir, dict(devices=2, process_id=0, port=port)),
            'process 1': (two_dir, dict(devices=2, process_id=1, port=port)),
            'one process': (one_dir, dict(devices=4))}
    procs = {}
    for name, (workdir, kwargs) in runs.items():
      log = os.path.join(logs, name.replace(' ', '_'))
      with open(log, 'w') as f:  # The child keeps its own descriptor.
        procs[name] = (start(workdir, '--config.num_steps=20', stderr=f,
                             **kwargs), log)
    failure = wait_all(procs, timeout=240)
    self.assertIsNone(failure, failure)
    two, step = final_images(two_dir)
    one, _ = final_images(one_dir)
    self.assertEqual(step, 20)
    np.testing.assert_allclose(two, one, rtol=1e-3, atol=1e-5)
    self.assertLen(glob.glob(os.path.join(two_dir, 'events.out.*')), 1)
    self.assertTrue(os.path.isfile(os.path.join(two_dir, train_lib.PNG_NAME)))


  def test_latest_and_best_save_the_same_step_on_two_processes(self):
    """Both managers save the last step; Orbax's barriers, named after the
    step, must not collide across them (they did: "already ongoing")."""
    if (reason := gloo_cannot_connect()):
      self.skipTest(reason)
    port = free_port()
    workdir = self.create_tempdir().full_path
    logs = self.create_tempdir().full_path
    procs = {}
    for i in range(2):
      log = os.path.join(logs, str(i))
      with open(log, 'w') as f:
        procs[f'process {i}'] = (subprocess.Popen(
            [sys.executable, '-c', _TWO_MANAGERS, workdir, str(port), str(i)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=f,
            env=end_to_end_test.environment(1, PYTHONFAULTHANDLER='1')),
                                 log)
    failure = wait_all(procs, timeout=120)
    self.assertIsNone(failure, failure)
    for name in (checkpointing.LATEST, checkpointing.BEST):
      self.assertEqual(checkpointing.Checkpoints(
          workdir, name, read_only=True).all_steps(), [1, 2, 3])


# Two processes save steps 1-3 to the latest and the best checkpoints at once.
_TWO_MANAGERS = """
import sys
from typing import NamedTuple
import numpy as np
from distillation import checkpointing, parallel

class State(NamedTuple):
  step: np.ndarray
  x: np.ndarray

workdir, port, index = sys.argv[1], sys.argv[2], int(sys.argv[3])
parallel.initialize_multihost(f'127.0.0.1:{port}', 2, index)
with checkpointing.Checkpoints(workdir) as latest, checkpointing.Checkpoints(
    workdir, checkpointing.BEST) as best:
  for step in (1, 2, 3):
    state = State(np.int32(step), np.full(100, step, np.float32))
    best.save(state, {})
    latest.save(state, {})
"""


def free_port() -> int:
  """A loopback port that was free a moment ago, for the coordinator."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def gloo_cannot_connect() -> str | None:
  """Why gloo (JAX's CPU collectives) cannot connect here, or None.

  Gloo listens on the first local address that the machine's host name
  resolves to, and its peers connect there; a sandbox whose host name maps
  to an address that it filters makes every collective wait forever.
  """
  name = socket.gethostname()
  try:
    infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
  except OSError as e:
    return f'host name {name!r} does not resolve ({e}); gloo needs it to'
  for family, kind, proto, _, address in infos:
    with socket.socket(family, kind, proto) as server:
      try:
        server.bind((address[0], 0))
      except OSError:
        continue
      server.listen()
      try:
        socket.create_connection(server.getsockname()[:2], timeout=5).close()
        return None
      except OSError as e:
        return (f'gloo listens on {address[0]}, the address of host name '
                f'{name!r}, and connecting to it fails here ({e})')
  return f'no address of host name {name!r} can be bound; gloo needs one'


def wait_all(procs: dict[str, tuple[subprocess.Popen, str]],
             timeout: float) -> str | None:
  """Waits for processes (with their stderr logs); None if all exit with 0.

  Else returns what went wrong with every log's tail. The first failure ends
  the wait (the others would wait for it in a collective forever); on
  timeout, each process still running dumps its Python stacks into its log
  (faulthandler, SIGABRT) and dies.
  """
  deadline = time.time() + timeout
  failed = None
  while failed is None and time.time() < deadline:
    codes = {name: proc.poll() for name, (proc, _) in procs.items()}
    if all(code == 0 for code in codes.values()):
      return None
    failed = next((name for name, code in codes.items() if code), None)
    time.sleep(0.1)
  reports = []
  for name, (proc, log) in procs.items():
    if proc.poll() is None:
      proc.send_signal(signal.SIGABRT)
      try:
        proc.wait(timeout=10)
      except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    with open(log) as f:  # Without faulthandler's list of C extensions.
      text = ''.join(l for l in f if not l.startswith('Extension modules'))
    reports.append(f'--- {name} (exit {proc.returncode}):\n{text[-4000:]}')
  cause = f'{failed} failed' if failed else f'timed out after {timeout} s'
  return '\n'.join([cause, *reports])


def _truncate(step_dir):
  for path in glob.glob(os.path.join(step_dir, 'state', '**', 'd', '*'),
                        recursive=True):
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 2)


def _meta(step_dir):
  """A checkpoint step's `meta` item (Orbax writes JSON items as is)."""
  with open(os.path.join(step_dir, 'meta', 'metadata')) as f:
    return json.load(f)


def _edit_meta(step_dir, edit):
  meta = _meta(step_dir)
  edit(meta)
  with open(os.path.join(step_dir, 'meta', 'metadata'), 'w') as f:
    json.dump(meta, f)


class CorruptCheckpointTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.trained = os.path.join(
        tempfile.mkdtemp(dir=absltest.TEST_TMPDIR.value), 'trained')
    cls.reference = cls._train(cls.trained)

  @staticmethod
  def _train(workdir, num_steps=6):
    config = test_config.get_config()
    config.num_steps = num_steps
    return train_lib.train_and_evaluate(config, workdir)

  def _copy_of_trained(self):
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    shutil.copytree(self.trained, workdir)
    return workdir

  def test_falls_back_to_newest_good_checkpoint_and_keeps_the_bad_one(self):
    workdir = self._copy_of_trained()
    bad = os.path.join(checkpointing.checkpoint_dir(workdir), '6')
    _truncate(bad)
    # A save cut short leaves a temporary directory: never a checkpoint.
    os.makedirs(os.path.join(checkpointing.checkpoint_dir(workdir),
                             '8.orbax-checkpoint-tmp-1234', 'state'))

    _, state, _ = eval_lib.load_distilled(workdir)  # Read-only: moves nothing.
    self.assertEqual(int(state.step), 4)
    self.assertTrue(os.path.isdir(bad))

    with self.assertLogs(level='ERROR') as logs:
      state = self._train(workdir)
    # Other errors may be logged too (asyncio reports tensorstore's failed
    # reads of the earlier, read-only attempt whenever they are collected).
    self.assertTrue(any(f'Checkpoint {bad} cannot be restored' in line
                        for line in logs.output), logs.output)
    self.assertEqual(int(state.step), 6)
    np.testing.assert_array_equal(state.params['images'],
                                  self.reference.params['images'])
    self.assertTrue(os.path.isdir(os.path.join(
        checkpointing.set_aside_dir(workdir), '6', 'state')))
    self.assertEqual(sorted(os.listdir(checkpointing.checkpoint_dir(
        workdir))), ['2', '4', '6'])

  def test_a_broken_best_checkpoint_is_skipped(self):
    workdir = self._copy_of_trained()
    best_dir = checkpointing.checkpoint_dir(workdir, checkpointing.BEST)
    (best_step,) = os.listdir(best_dir)
    best_accuracy = _meta(os.path.join(best_dir, best_step))[
        'validation_accuracy']
    _truncate(os.path.join(best_dir, best_step))

    _, state, which = eval_lib.load_distilled(workdir, 'best')
    self.assertEqual((int(state.step), which), (6, 'latest'))

    with self.assertLogs(level='WARNING') as logs:
      state = self._train(workdir, num_steps=8)
    self.assertEqual(int(state.step), 8)
    self.assertTrue(any('No best checkpoint can be restored' in line
                        for line in logs.output), logs.output)
    self.assertTrue(os.path.isdir(os.path.join(checkpointing.set_aside_dir(
        workdir, checkpointing.BEST), best_step)))
    # The best accuracy so far survives it: only a better state is the best.
    latest = os.path.join(checkpointing.checkpoint_dir(workdir), '8')
    self.assertGreaterEqual(_meta(latest)['best_validation_accuracy'],
                            best_accuracy)
    for step in os.listdir(best_dir):
      self.assertGreater(_meta(os.path.join(best_dir, step))[
          'validation_accuracy'], best_accuracy)

  def test_no_silent_restart_when_every_checkpoint_is_broken(self):
    workdir = self._copy_of_trained()
    for step in ('2', '4', '6'):
      _truncate(os.path.join(checkpointing.checkpoint_dir(workdir), step))
    with self.assertRaisesRegex(errors.UserError, 'no checkpoint in'):
      eval_lib.load_distilled(workdir, 'latest')
    aside = checkpointing.set_aside_dir(workdir)
    for _ in range(2):  # The second run finds nothing left to move.
      with self.assertRaisesRegex(
          errors.UserError, f'To start again from step 0 in --workdir='
          f'{workdir}, delete or move {aside}.'):
        self._train(workdir)
    self.assertEqual(sorted(os.listdir(aside)), ['2', '4', '6'])

  def test_an_edited_meta_is_a_broken_step_like_any_other(self):
    """The digest covers the meta: an edited best accuracy or problem
    record is reported and moved aside, and the newest good step used."""
    workdir = self._copy_of_trained()
    latest = os.path.join(checkpointing.checkpoint_dir(workdir), '6')
    _edit_meta(latest, lambda meta: meta['problem'].update({
        'data.validation_size': 110}))
    best_dir = checkpointing.checkpoint_dir(workdir, checkpointing.BEST)
    (best_step,) = os.listdir(best_dir)
    best = os.path.join(best_dir, best_step)
    _edit_meta(best, lambda meta: meta.update(validation_accuracy=0.995))

    with self.assertLogs(level='ERROR') as logs:  # Read-only: moves nothing.
      _, state, which = eval_lib.load_distilled(workdir, 'best')
    self.assertEqual((int(state.step), which), (4, 'latest'))
    for step_dir in (latest, best):
      self.assertIn(f'Checkpoint {step_dir} cannot be restored (ChecksumError',
                    '\n'.join(logs.output))

    with self.assertLogs(level='ERROR'):  # Step 4 is the last: no training.
      state = self._train(workdir, num_steps=4)
    self.assertEqual(int(state.step), 4)
    self.assertTrue(os.path.isdir(os.path.join(
        checkpointing.set_aside_dir(workdir), '6')))

  def test_resume_with_another_model_is_refused(self):
    """The shapes fit (64 conv features of 8x8 images, as 64 pixels), yet
    the learned object differs."""
    workdir = self._copy_of_trained()
    config = test_config.get_config()
    config.num_steps = 8
    config.model.features = 'conv'
    with self.assertRaisesRegex(
        errors.UserError, r"another problem \(model.features: 'pixels' in "
        r"the checkpoint, 'conv' now\); resume"):
      train_lib.train_and_evaluate(config, workdir)
    self.assertEqual(sorted(os.listdir(checkpointing.checkpoint_dir(
        workdir))), ['2', '4', '6'])

  def test_eval_refuses_bad_input_and_writes_nothing(self):
    workdir = self._copy_of_trained()
    eval_config = test_config.get_config().eval
    eval_config.random_draws = 0
    cases = [
        # The export's side JSON would be eval.json itself.
        (dict(export=os.path.join(workdir, 'eval')),
         f'--export={workdir}/eval would write {workdir}/eval.json, which '
         'belongs to --workdir'),
        (dict(eval_config=eval_config), 'config.eval.random_draws=0 must')]
    if os.path.isdir('/proc/self'):  # Not even root may add files there.
      cases.append((dict(export='/proc/x.npz'),
                    '--export=/proc/x.npz: no file can be written in /proc'))
    for kwargs, message in cases:
      with self.assertRaisesRegex(errors.UserError, f'^{re.escape(message)}'):
        eval_lib.evaluate(workdir, baselines=False, **kwargs)
      self.assertFalse(os.path.exists(os.path.join(workdir,
                                                   eval_lib.RESULT_NAME)))


if __name__ == '__main__':
  absltest.main()
