"""Command-line mistakes as one line: `ERROR: ...` and exit status 1.

absl and ml_collections report a misspelt `--config.field`, a missing or
broken config file, or a bad flag value with a traceback that buries the
cause. Entry points pass `parse_flags` to `app.run` instead.
"""

import difflib
import os
import re
import sys

from absl import flags
import ml_collections
# The module itself: the package does not export is_config_flag.
from ml_collections.config_flags import config_flags


def parse_flags(argv: list[str],
                flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """Parses `argv` into `flag_values`, as `app.run`'s `flags_parser`.

  Returns the program's name, the only positional argument the entry points
  take; on any mistake, prints one line naming the flag and exits with
  status 1.
  """
  try:
    rest = flag_values(argv)
  except Exception as e:  # pylint: disable=broad-except
    sys.exit(f'ERROR: {_config_error(argv, flag_values) or _one_line(e)}')
  if len(rest) > 1:
    sys.exit(f'ERROR: unexpected argument {" ".join(rest[1:])!r}; every '
             'setting is a flag, --name=value (--helpfull lists them).')
  for name in _config_flags(flag_values):
    # A config file that cannot be read only fails when first used.
    if not isinstance(flag_values[name].value, (ml_collections.ConfigDict,
                                                type(None))):
      sys.exit(f'ERROR: {_config_error(argv, flag_values)}')
  return rest


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
