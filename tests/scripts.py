"""Loads a script of benchmarks/ as a module, for its tests."""

import importlib.util
import os
import types

from absl import flags

_BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(__file__)),
                           'benchmarks')
_DEFINED = set()  # Flags the scripts loaded so far defined.


def load_benchmark(name: str) -> types.ModuleType:
  """benchmarks/<name>.py as a module. The scripts define flags of the same
  names (--out), so those of scripts loaded before are dropped first; the
  tests read no flag."""
  for flag in _DEFINED & set(flags.FLAGS):
    delattr(flags.FLAGS, flag)
  before = set(flags.FLAGS)
  spec = importlib.util.spec_from_file_location(
      f'benchmarks_{name}', os.path.join(_BENCHMARKS, f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  _DEFINED.update(set(flags.FLAGS) - before)
  return module
