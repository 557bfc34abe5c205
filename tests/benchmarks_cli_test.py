"""Tests of the benchmark scripts' one-line errors (benchmarks/*.py).

Each runs a script as a user would, from an empty directory, with a bad
flag, grid, run spec or path: it must print one `ERROR:` line, exit with a
non-zero status, and create nothing. All of them stop before any training.
"""

import os
import subprocess
import sys

from absl.testing import absltest
from absl.testing import parameterized

from tests import end_to_end_test

CONFIG = 'configs/conv.py:digits,ipc=1,size=cpu'


class BenchmarksCliTest(parameterized.TestCase):

  def _refusal(self, script, *args):
    """The one line that benchmarks/<script>.py prints for `args`, run in
    an empty directory that must stay empty."""
    cwd = self.create_tempdir().full_path
    proc = subprocess.run(
        [sys.executable, os.path.join(end_to_end_test.ROOT, 'benchmarks',
                                      f'{script}.py'), *args],
        cwd=cwd, env=end_to_end_test.environment(), capture_output=True,
        text=True, check=False, timeout=120)
    self.assertNotEqual(proc.returncode, 0, proc.stderr)
    output = (proc.stdout + proc.stderr).strip()
    self.assertLen(output.splitlines(), 1, output)
    self.assertStartsWith(output, 'ERROR: ')
    self.assertEmpty(os.listdir(cwd))
    return output

  # The cases: the grid field's own error, not train.py's exit.
  def test_tune_checks_grid_fields_against_the_config(self):
    self.assertEqual(
        self._refusal('tune', f'--config={CONFIG}', '--workdir=W',
                      '--validation_size=300',
                      '--grid=nonexistent.field=1,2', '--',
                      '--config.num_steps=20'),
        'ERROR: --grid=nonexistent.field=1,2: --config.nonexistent.field is '
        'not a config field; the fields are those of configs/conv.py.')

  @parameterized.named_parameters(
      ('no_values', ['--grid=bad'],
       r'--grid=bad: expected field=v1,v2,..., e.g. '
       r'--grid=optimizer\.learning_rate=0\.01,0\.03\.$'),
      ('misspelt_field', ['--grid=inner.l2rge=0.1'],
       r'--grid=inner\.l2rge=0\.1: .* did you mean inner\.l2reg\?$'),
      ('bad_type', ['--grid=num_steps=10,ten'],
       r'--grid=num_steps=10,ten: flag --config\.num_steps=ten: invalid '),
      ('after_the_separator', ['--grid=num_steps=10', '--',
                               '--config.num_stpes=20'],
       r'--config\.num_stpes is not a config field; did you mean '
       r'--config\.num_steps\?$'),
      ('missing_config', ['--config=configs/nope.py'],
       r'--config=configs/nope\.py: no such file'),
      ('stray_argument', ['stray'],
       r"unexpected argument 'stray'.* flags for train\.py go after --\.$"),
      ('misspelt_flag', ['--grdi=num_steps=10'],
       r"Unknown command line flag 'grdi'"),
  )
  def test_tune_refuses(self, args, message):
    config = [] if any(a.startswith('--config=') for a in args) else [
        f'--config={CONFIG}']
    self.assertRegex(self._refusal('tune', *config, '--workdir=W', *args),
                     f'^ERROR: {message}')

  def test_tune_checks_values_before_any_point(self):
    # Past the flags, the values (imports JAX, so once for both cases).
    self.assertEqual(
        self._refusal('tune', f'--config={CONFIG}', '--workdir=W',
                      '--grid=optimizer.learning_rate=0.1,-1'),
        'ERROR: the point learning_rate=-1: config.optimizer.learning_rate='
        '-1.0 must be positive and finite.')

  def test_curve_refuses_a_missing_flag(self):
    self.assertEqual(
        self._refusal('curve', '--run=x=.', '--out=O'),
        'ERROR: flag --name=None: Flag --name must have a value other than '
        'None.')

  def test_curve_refuses_a_missing_workdir(self):
    self.assertEqual(
        self._refusal('curve', '--run=x=DOES_NOT_EXIST', '--steps=10,20',
                      '--name=t', '--out=O', '--', f'--config={CONFIG}'),
        'ERROR: --run=x=DOES_NOT_EXIST: no such directory; pass the '
        '--workdir of a train.py run.')

  @parameterized.named_parameters(
      ('no_run', ['--steps=10'], r'--run=LABEL=WORKDIR is required'),
      ('bad_run', ['--run=x', '--steps=10'],
       r'--run=x: expected LABEL=WORKDIR, e.g. '),
      ('not_a_run', ['--run=x=.', '--steps=10'],
       r'--run=x=\.: no checkpoints there; pass the --workdir of a '
       r'train\.py run'),
      ('bad_steps', ['--run=x=.', '--steps=10,ten'],
       r'--steps=10,ten: expected positive integers'),
  )
  def test_curve_refuses(self, args, message):
    self.assertRegex(self._refusal('curve', '--out=O', '--name=t', *args),
                     f'^ERROR: {message}')

  @parameterized.named_parameters(
      ('nothing_to_do', ['--workdir=W'], r'nothing to tabulate; pass '),
      ('missing_include', ['--workdir=W', '--include=I'],
       r'--include=I: no accuracy\.json there'),
      ('misspelt_field', ['--workdir=W', f'--config={CONFIG}', '--',
                          '--config.inner.l2rge=1'],
       r'--config\.inner\.l2rge is not a config field; did you mean '
       r'--config\.inner\.l2reg\?$'),
  )
  def test_accuracy_refuses(self, args, message):
    self.assertRegex(self._refusal('accuracy', *args), f'^ERROR: {message}')

  # Scripts that import JAX at the top: one case each, as they are slow.
  def test_speed_refuses_a_missing_idx_dir(self):
    self.assertEqual(
        self._refusal('speed', '--idx_dir=DOES_NOT_EXIST', '--out=O'),
        'ERROR: --idx_dir=DOES_NOT_EXIST is not a directory; point it at the '
        'Fashion-MNIST idx files.')

  def test_step_breakdown_refuses_a_bad_flag(self):
    self.assertEqual(self._refusal('step_breakdown', '--repeats=0'),
                     'ERROR: flag --repeats=0: 0 is not a positive integer')

  def test_feature_step_refuses_a_missing_config(self):
    self.assertEqual(
        self._refusal('feature_step', '--config=configs/nope.py'),
        'ERROR: --config=configs/nope.py: no such file; pass a config file '
        'such as configs/default.py.')

  def test_linearized_step_refuses_a_head_config(self):
    self.assertEqual(
        self._refusal('linearized_step', f'--config={CONFIG}'),
        f'ERROR: --config={CONFIG} does not linearize its network; pass one '
        'with inner=linearized (config.model.linearize=True).')

  def test_device_refuses_a_missing_idx_dir(self):
    self.assertEqual(
        self._refusal('device', '--idx_dir=DOES_NOT_EXIST', '--out=O'),
        'ERROR: --idx_dir=DOES_NOT_EXIST is not a directory; point it at the '
        'Fashion-MNIST idx files.')

  def test_equal_time_refuses_a_missing_curve(self):
    self.assertEqual(
        self._refusal('equal_time', '--curve=C.json', '--run=a=W', '--out=O'),
        'ERROR: --curve=C.json: no such file; pass the JSON that '
        'benchmarks/curve.py wrote.')


if __name__ == '__main__':
  absltest.main()
