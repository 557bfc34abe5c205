"""Tests of the command line's one-line errors."""

import os

from absl import flags
from absl.testing import absltest
from absl.testing import parameterized
from ml_collections import config_flags

from distillation import cli
from distillation import errors
from tests import end_to_end_test

TEST_CONFIG = os.path.join(end_to_end_test.ROOT, 'configs', 'test.py')


def _parse(*args):
  """Parses args as train.py's flags would be; returns them or the exit."""
  argv = ['train.py', *args]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'Config file.',
                                  flag_values=flag_values, sys_argv=argv)
  flags.DEFINE_string('workdir', None, 'Workdir.', flag_values=flag_values)
  flags.mark_flags_as_required(['config', 'workdir'], flag_values)
  try:
    cli.parse_flags(argv, flag_values)
  except SystemExit as e:
    return str(e.code)
  return flag_values


class ParseFlagsTest(parameterized.TestCase):

  def test_good_flags(self):
    flag_values = _parse(f'--config={TEST_CONFIG}', '--workdir=w',
                         '--config.inner.l2reg=0.5')
    self.assertEqual(flag_values.config.inner.l2reg, 0.5)

  @parameterized.named_parameters(
      ('misspelt_field', ['--workdir=w', '--config.inner.l2rge=1'],
       r'--config.inner.l2rge is not a config field; did you mean '
       r'--config.inner.l2reg\?'),
      ('unknown_group', ['--workdir=w', '--config.foo.bar=1'],
       r'--config.foo.bar is not a config field; the fields are those of '
       r'.*configs/test.py.'),
      ('bad_value', ['--workdir=w', '--config.num_steps=abc'],
       r'flag --config.num_steps=abc: invalid literal'),
      ('misspelt_flag', ['--workdr=w'], r"Unknown command line flag 'workdr'"),
      ('missing_flag', [], r'flag --workdir=None: Flag --workdir must have a '
       'value other than None.'),
      ('stray_argument', ['--workdir=w', 'extra'],
       r"unexpected argument 'extra'; every setting is a flag"),
  )
  def test_one_line(self, args, message):
    error = _parse(f'--config={TEST_CONFIG}', *args)
    self.assertRegex(error, f'^ERROR: {message}')
    self.assertLen(error.splitlines(), 1)

  def test_config_file_that_cannot_be_loaded(self):
    missing = os.path.join(self.create_tempdir().full_path, 'missing.py')
    self.assertEqual(_parse(f'--config={missing}', '--workdir=w'),
                     f'ERROR: --config={missing}: no such file; pass a '
                     'config file such as configs/default.py.')
    broken = self.create_tempfile('broken.py', content='x = (\n').full_path
    for extra in ([], ['--config.num_steps=3']):
      error = _parse(f'--config={broken}', '--workdir=w', *extra)
      self.assertRegex(error, f'^ERROR: --config={broken} cannot be loaded '
                       r'\(SyntaxError: .*, line 1\)\.$')
    failing = self.create_tempfile('failing.py', content=(
        'def get_config():\n  raise ValueError("no such setting")\n')).full_path
    self.assertEqual(_parse(f'--config={failing}', '--workdir=w'),
                     f'ERROR: --config={failing} cannot be loaded '
                     '(ValueError: no such setting).')

  def test_config_argument(self):
    conv = os.path.join(end_to_end_test.ROOT, 'configs', 'conv.py')
    flag_values = _parse(f'--config={conv}:digits,ipc=1,size=cpu',
                         '--workdir=w', '--config.num_steps=5')
    self.assertEqual(flag_values.config.num_steps, 5)
    error = _parse(f'--config={conv}:bad', '--workdir=w')
    self.assertRegex(error, f'^ERROR: --config={conv}:bad cannot be loaded '
                     r"\(ValueError: 'bad' is not valid; use "
                     r'configs/conv.py:DATASET,.* size one of paper '
                     r'\(default\), cpu; pool one of 0, 1; '
                     r'inner one of head \(default\), linearized\.\)\.$')
    self.assertLen(error.splitlines(), 1)
    error = _parse(f'--config={conv}:digits,ipc=1,size=cpu', '--workdir=w',
                   '--config.inner.l2rge=1')
    self.assertEqual(error, 'ERROR: --config.inner.l2rge is not a config '
                     'field; did you mean --config.inner.l2reg?')


class BenchmarkScriptsTest(absltest.TestCase):
  """The helpers of the scripts of benchmarks/ (tests/benchmarks_cli_test
  runs the scripts)."""

  def _parse(self, *args):
    flag_values = flags.FlagValues()
    flags.DEFINE_string('workdir', None, 'Workdir.', flag_values=flag_values)
    try:
      return cli.parse_flags(['tune.py', *args], flag_values,
                             passed_on='train.py')
    except SystemExit as e:
      return str(e.code)

  def test_arguments_after_the_separator_are_passed_on(self):
    self.assertEqual(self._parse('--workdir=w', '--', '--config.a=1', 'b'),
                     ['tune.py', '--config.a=1', 'b'])
    self.assertEqual(self._parse('--workdir=w'), ['tune.py'])
    self.assertEqual(
        self._parse('--workdir=w', 'stray', '--', '--config.a=1'),
        "ERROR: unexpected argument 'stray'; every setting is a flag, "
        '--name=value (--helpfull lists them), and flags for train.py go '
        'after --.')

  def test_load_config_reads_the_config_flags_only(self):
    config = cli.load_config([f'--config={TEST_CONFIG}', '--workdir=w',
                              '--config.num_steps=7', '--multihost'])
    self.assertEqual(config.num_steps, 7)
    self.assertIsNone(cli.load_config(['--workdir=w']))
    conv = 'configs/conv.py:digits,ipc=1,size=cpu'
    config = cli.load_config([f'--config={conv}'], end_to_end_test.ROOT)
    self.assertEqual(config.model.features, 'conv')
    for args, message in (
        (['--config.num_steps=7'],
         '--config.num_steps needs a config file too; add --config=FILE.'),
        ([f'--config={TEST_CONFIG}', '--config.num_stepz=7'],
         '--config.num_stepz is not a config field; did you mean '
         '--config.num_steps?'),
        ([f'--config={TEST_CONFIG}', '--config.num_steps=x'],
         "flag --config.num_steps=x: invalid literal for int() with base 10: "
         "'x'")):
      with self.assertRaises(errors.UserError) as refusal:
        cli.load_config(args)
      self.assertEqual(str(refusal.exception), message)


if __name__ == '__main__':
  absltest.main()
