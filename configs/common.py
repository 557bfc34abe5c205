"""Parses the argument of a config file: `--config=configs/conv.py:ARG`.

ml_collections passes the text after the colon to `get_config(ARG)`. ARG is
`DATASET,key=value,...`, as in big_vision's and scenic's configs; a mistake
is one line listing what the file accepts (the command line shows it as
`ERROR: --config=... cannot be loaded (ValueError: ...)`).
"""

from typing import Any

DATASETS = ('digits', 'mnist', 'fashion_mnist', 'cifar10')


def parse_arg(file: str, arg: str | None, *, defaults: dict[str, Any],
              **choices: tuple[Any, ...]) -> dict[str, Any]:
  """{'dataset': ..., key: value} for `arg` ('DATASET,key=value,...').

  choices[key]: the valid values of key (the dataset's: DATASETS), matched
  by their text; a key without a default must be given.
  """
  choices = {'dataset': DATASETS, **choices}
  usage = f'{file}:DATASET' + ''.join(
      f'[,{k}=...]' if k in defaults else f',{k}=...'
      for k in choices if k != 'dataset') + ' where ' + '; '.join(
          f'{"DATASET is" if k == "dataset" else k} one of ' + ', '.join(
              f'{v} (default)' if defaults.get(k) == v else str(v)
              for v in options) for k, options in choices.items())
  values = {}
  tokens = [t.strip() for t in (arg or '').split(',') if t.strip()]
  for i, token in enumerate(tokens):
    key, sep, text = token.partition('=')
    if not sep and i == 0:
      key, text = 'dataset', token
    valid = {str(v): v for v in choices.get(key, ())}
    if key in values or text not in valid:
      problem = 'repeats' if key in values else 'is not valid'
      raise ValueError(f'{token!r} {problem}; use {usage}.')
    values[key] = valid[text]
  missing = [k for k in choices if k not in values and k not in defaults]
  if missing:
    given = repr(arg) if arg else 'no argument'
    raise ValueError(f'{", ".join(missing)} missing ({given}); use {usage}.')
  return {**defaults, **values}
