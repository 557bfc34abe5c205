"""Command-line mistakes as one line: `ERROR: ...` and exit status 1.

absl and ml_collections report a misspelt `--config.field`, a missing or
broken config file, or a bad flag value with a traceback that buries the
cause. Entry points pass `parse_flags` to `app.run` instead; the scripts of
benchmarks/ call `run`, and check the train.py or eval.py command lines
they will start with `load_config` and `check_train_config`.
"""

from collections.abc import Callable
import contextlib
import difflib
import functools
import os
import re
import sys

from absl import app
from absl import flags
import ml_collections
# The module itself: the package does not export is_config_flag.
from ml_collections.config_flags import config_flags

from distillation import errors


def parse_flags(argv: list[str],
                flag_values: flags.FlagValues = flags.FLAGS, *,
                passed_on: str | None = None) -> list[str]:
  """Parses `argv` into `flag_values`, as `app.run`'s `flags_parser`.

  Returns the program's name, the only positional argument the entry points
  take, and, where `passed_on` names the program they go to, the arguments
  after `--`; on any mistake, prints one line naming the flag and exits with
  status 1.
  """
  try:
    rest = flag_values(argv)
  except Exception as e:  # pylint: disable=broad-except
    sys.exit(f'ERROR: {_config_error(argv, flag_values) or _one_line(e)}')
  after = argv[argv.index('--') + 1:] if '--' in argv else []
  # absl also returns words before `--`; those are typos, not flags for
  # the program the script starts.
  stray = rest[1:len(rest) - len(after)] if passed_on else rest[1:]
  if stray:
    sys.exit(f'ERROR: unexpected argument {" ".join(stray)!r}; every '
             'setting is a flag, --name=value (--helpfull lists them)' +
             (f', and flags for {passed_on} go after --.' if passed_on
              else '.'))
  for name in _config_flags(flag_values):
    # A config file that cannot be read only fails when first used.
    if not isinstance(flag_values[name].value, (ml_collections.ConfigDict,
                                                type(None))):
      sys.exit(f'ERROR: {_config_error(argv, flag_values)}')
  return rest


def run(main: Callable[[list[str]], None], *,
        passed_on: str | None = None) -> None:
  """`app.run(main)` for a script of benchmarks/: its flags parsed as by
  `parse_flags`, and a UserError or absl UsageError from `main` printed as
  one `ERROR:` line (absl prints the whole usage text above a UsageError)."""

  def checked_main(argv: list[str]) -> None:
    try:
      main(argv)
    except (errors.UserError, app.UsageError) as e:
      sys.exit(f'ERROR: {e}')

  app.run(checked_main, flags_parser=functools.partial(
      parse_flags, passed_on=passed_on))


def load_config(args: list[str], cwd: str | None = None
                ) -> ml_collections.ConfigDict | None:
  """The config that the `--config` flags among `args` (a command line for
  train.py or eval.py, without the program) give, as read from `cwd`; None
  if they have none. Other flags are left to the program.

  Raises:
    errors.UserError: the program's own one-line error, e.g. for a field
      that does not exist or a file that cannot be loaded.
  """
  argv = ['', *_config_args(args)]
  if len(argv) == 1:
    return None
  if _value(argv, 'config') is None:
    raise errors.UserError(f'{argv[1].split("=")[0]} needs a config file '
                           'too; add --config=FILE.')
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'The config.',
                                  flag_values=flag_values, sys_argv=argv,
                                  lock_config=True)
  with contextlib.chdir(cwd or os.getcwd()):
    try:
      flag_values(argv)
      config = flag_values['config'].value
    except Exception as e:  # pylint: disable=broad-except
      raise errors.UserError(_config_error(argv, flag_values) or
                             _one_line(e)) from None
    if not isinstance(config, ml_collections.ConfigDict):
      raise errors.UserError(_config_error(argv, flag_values) or
                             '--config cannot be loaded.')
  return config


def _config_args(args: list[str]) -> list[str]:
  """The `--config` flags of `args` (`--config VALUE` as one)."""
  kept = []
  for i, arg in enumerate(args):
    if re.match(r'--?(?:no)?config(?:[.=]|$)', arg):
      kept.append(arg)
      if re.fullmatch(r'--?config', arg) and i + 1 < len(args):
        kept.append(args[i + 1])
  return kept


def check_train_config(config: ml_collections.ConfigDict,
                       cwd: str | None = None) -> None:
  """Raises the UserError that train.py would raise for `config`'s values
  before it reads any data (an unknown dataset, a rate that is not
  positive, an idx_dir that is no directory (relative to `cwd`), ...).

  Imports JAX, which takes seconds: so not at the top, where the flags are
  checked in a fraction of one.
  """
  # pylint: disable=g-import-not-at-top
  from distillation import eval_lib
  from distillation import input_pipeline
  from distillation import outer
  # pylint: enable=g-import-not-at-top
  outer.Distiller(config)
  eval_lib.check_config(config)
  input_pipeline.dataset_info(config.data)
  idx_dir = config.data.get('idx_dir')
  if idx_dir and not os.path.isdir(os.path.join(cwd or '', idx_dir)):
    raise errors.UserError(f'config.data.idx_dir={idx_dir!r} is not a '
                           'directory; point it at the idx files.')


def _config_flags(flag_values: flags.FlagValues) -> list[str]:
  return [name for name in flag_values
          if config_flags.is_config_flag(flag_values[name])]


def _config_error(argv: list[str], flag_values: flags.FlagValues
                  ) -> str | None:
  """What is wrong with a config file flag or its overrides, if anything."""
  for name in _config_flags(flag_values):
    path = _value(argv, name)
    if path is None:
      continue
    file = path.split(':', 1)[0]
    if not os.path.isfile(file):
      return (f'--{name}={path}: no such file; pass a config file such as '
              'configs/default.py.')
    try:
      config = config_flags.ConfigFileFlagParser(name).parse(path)
    except Exception as e:  # pylint: disable=broad-except
      return f'--{name}={path} cannot be loaded ({_one_line(e)}).'
    if not isinstance(config, ml_collections.ConfigDict):
      return f'--{name}={path} cannot be loaded (no readable get_config()).'
    fields = _fields(config)
    for field in _overrides(argv, name):
      if field not in fields:
        match = difflib.get_close_matches(field, fields, n=1)
        hint = (f'did you mean --{name}.{match[0]}?' if match else
                f'the fields are those of {file}.')
        return f'--{name}.{field} is not a config field; {hint}'
  return None


def _value(argv: list[str], name: str) -> str | None:
  """The value of `--name=VALUE` or `--name VALUE` in argv (the last one)."""
  value = None
  for i, arg in enumerate(argv):
    if match := re.fullmatch(rf'--?{re.escape(name)}=(.*)', arg):
      value = match.group(1)
    elif re.fullmatch(rf'--?{re.escape(name)}', arg) and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def _overrides(argv: list[str], name: str) -> list[str]:
  """Field paths of `--name.a.b=...` (or `--noname.a.b`) in argv."""
  return [match.group(1) for arg in argv if (match := re.match(
      rf'--?(?:no)?{re.escape(name)}\.([^=]+)', arg))]


def _fields(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  """Every field path of `config`, nested ConfigDicts included."""
  paths = []
  for key, value in config.items():
    paths.append(prefix + key)
    if isinstance(value, ml_collections.ConfigDict):
      paths += _fields(value, f'{prefix}{key}.')
  return paths


def _one_line(error: BaseException) -> str:
  """The gist of an exception: its type and its message's last line (absl
  and config_flags append tracebacks and help to the first)."""
  if isinstance(error, SyntaxError):
    return f'SyntaxError: {error.msg}, line {error.lineno}'
  message = error.args[0] if isinstance(error, KeyError) and error.args else (
      error)
  lines = [line.strip() for line in str(message).splitlines() if line.strip()]
  if not lines:
    return type(error).__name__
  if isinstance(error, flags.Error):
    return lines[0]
  if re.match(r'\w+(Error|Exception): ', lines[-1]):  # A traceback's end.
    return lines[-1]
  return f'{type(error).__name__}: {lines[-1]}'
