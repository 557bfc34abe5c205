"""Runs train.py and eval.py as a user would, in subprocesses."""

import glob
import json
import os
import signal
import subprocess
import sys
import time
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized

from configs import test as test_config
from distillation import errors
from distillation import input_pipeline
from distillation import train_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def environment(devices=1, **variables):
  """os.environ for a subprocess with `devices` CPU devices; the suite's
  other XLA flags and its compilation cache (tests/conftest.py) stay."""
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count=')]
  flags.append(f'--xla_force_host_platform_device_count={devices}')
  return dict(os.environ, XLA_FLAGS=' '.join(flags), **variables)


def run(script, *args, devices=1):
  """Runs a repo script; returns (exit code, stderr's last line, stdout)."""
  env = environment(devices)
  proc = subprocess.run([sys.executable, os.path.join(ROOT, script), *args],
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  lines = proc.stderr.strip().splitlines()
  return proc.returncode, lines[-1] if lines else '', proc.stdout


class EndToEndTest(parameterized.TestCase):

  def test_train_then_eval(self):
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    code, last, _ = run('train.py', '--config=configs/test.py',
                        f'--workdir={workdir}', devices=2)
    self.assertEqual(code, 0, last)
    self.assertEqual(sorted(os.listdir(os.path.join(workdir, 'checkpoints'))),
                     ['2', '4', '6'])
    self.assertNotEmpty(glob.glob(os.path.join(workdir, 'events.out.*')))
    self.assertTrue(os.path.isfile(os.path.join(workdir,
                                                'distilled_images.png')))

    export = os.path.join(workdir, 'distilled.npz')
    out = os.path.join(os.path.dirname(workdir), 'result.json')
    code, last, stdout = run('eval.py', f'--workdir={workdir}',
                             f'--export={export}', f'--out={out}')
    self.assertEqual(code, 0, last)
    self.assertFalse(os.path.exists(os.path.join(workdir, 'eval.json')))
    with open(out) as f:
      result = json.load(f)
    self.assertEqual(result, json.loads(stdout.strip().splitlines()[-1]))
    self.assertEqual(result['step'], 6)
    self.assertBetween(result['test_accuracy'], 0.5, 1.0)
    self.assertTrue(os.path.isfile(export))

  def test_bad_config_exits_with_one_line(self):
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    code, last, _ = run('train.py', '--config=configs/test.py',
                        f'--workdir={workdir}', '--config.data.dataset=svhn')
    self.assertNotEqual(code, 0)
    self.assertStartsWith(last, 'ERROR: config.data.dataset=')
    self.assertFalse(os.path.exists(workdir))

  @parameterized.named_parameters(
      ('idx_dir', 'data.idx_dir', '/nonexistent'),
      ('images_per_class', 'distill.images_per_class', 0),
      ('l2reg', 'inner.l2reg', 0.0),
      ('solver', 'inner.solver', 'newton?'),
      ('optimizer', 'optimizer.name', 'adagrad?'),
      ('evaluator', 'eval.nets', ('linear', 'vit')),
      ('net_preset', 'eval.net_preset', 'huge'),
      ('split_seed', 'data.split_seed', -1),
      ('random_draws', 'eval.random_draws', 0),
  )
  def test_bad_config_names_the_field_and_writes_nothing(self, field, value):
    """The same path as above without a process each: train.py prints the
    UserError's message after `ERROR: `."""
    config = test_config.get_config()
    if field == 'data.idx_dir':
      config.data.dataset = 'mnist'
    section, name = field.split('.')
    config[section][name] = value
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    with self.assertRaisesRegex(errors.UserError, f'^config.{field}='):
      train_lib.train_and_evaluate(config, workdir)
    self.assertFalse(os.path.exists(workdir))

  def test_more_real_images_per_class_than_the_data_writes_nothing(self):
    config = test_config.get_config()
    config.distill.images_per_class = 1000
    config.distill.image_init = 'real'
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    with self.assertRaisesRegex(errors.UserError,
                                '^config.distill.images_per_class=1000 '
                                'exceeds the'):
      train_lib.train_and_evaluate(config, workdir)
    self.assertFalse(os.path.exists(workdir))

  def test_sigterm_during_the_imports_stops_with_one_line(self):
    if not os.path.isfile('/proc/self/status'):
      self.skipTest('needs /proc/PID/status to see the handler installed')
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    proc = subprocess.Popen(
        [sys.executable, 'train.py', '--config=configs/test.py',
         f'--workdir={workdir}'], cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not _catches(proc.pid, signal.SIGTERM) and time.time() < deadline:
      time.sleep(0.001)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    self.assertEqual(proc.returncode, 0, err[-2000:])
    self.assertEqual(err.strip().splitlines()[-1],
                     'stopped before training started; nothing to save')
    self.assertFalse(os.path.exists(workdir))

  def test_sigterm_while_loading_data_stops_and_writes_nothing(self):
    """train_lib's own handler, from the start of train_and_evaluate."""
    load = input_pipeline.load_train_and_validation
    before = signal.getsignal(signal.SIGTERM)

    def load_then_sigterm(*args):
      splits = load(*args)
      signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
      return splits

    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    with mock.patch.object(input_pipeline, 'load_train_and_validation',
                           load_then_sigterm):
      with self.assertRaisesRegex(errors.Stopped, errors.STOPPED):
        train_lib.train_and_evaluate(test_config.get_config(), workdir)
    self.assertFalse(os.path.exists(workdir))
    self.assertEqual(signal.getsignal(signal.SIGTERM), before)

  def test_misspelt_config_field_is_one_line(self):
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    code, last, _ = run('train.py', '--config=configs/test.py',
                        f'--workdir={workdir}', '--config.inner.l2rge=1')
    self.assertNotEqual(code, 0)
    self.assertEqual(last, 'ERROR: --config.inner.l2rge is not a config '
                     'field; did you mean --config.inner.l2reg?')
    self.assertFalse(os.path.exists(workdir))

  def test_workdir_that_is_a_file(self):
    path = self.create_tempfile(content='precious').full_path
    code, last, _ = run('train.py', '--config=configs/test.py',
                        f'--workdir={path}')
    self.assertNotEqual(code, 0)
    self.assertIn('is a file', last)
    with open(path) as f:
      self.assertEqual(f.read(), 'precious')

  def test_eval_export_to_a_missing_directory(self):
    workdir = self.create_tempdir().full_path
    code, last, _ = run('eval.py', f'--workdir={workdir}',
                        f'--export={workdir}/no/such/dir/set.npz')
    self.assertNotEqual(code, 0)
    self.assertIn('its directory does not exist', last)
    self.assertEmpty(os.listdir(workdir))

  def test_eval_without_checkpoints(self):
    workdir = self.create_tempdir().full_path
    code, last, _ = run('eval.py', f'--workdir={workdir}')
    self.assertNotEqual(code, 0)
    self.assertIn('has no checkpoints', last)
    self.assertEmpty(os.listdir(workdir))


def _catches(pid, signum):
  """Whether process `pid` has a handler for signal `signum` (Linux)."""
  with open(f'/proc/{pid}/status') as f:
    caught = next(line for line in f if line.startswith('SigCgt:'))
  return bool(int(caught.split()[1], 16) >> (signum - 1) & 1)


if __name__ == '__main__':
  absltest.main()
