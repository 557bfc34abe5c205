"""Orbax checkpoints of the outer state, with the config that produced them.

Each checkpoint step holds two items: `state` (the whole `OuterState`) and
`meta` (JSON: the config and the state's array shapes), so `eval.py` needs
nothing but the workdir, and a resume with an incompatible config is caught
before Orbax meets arrays of the wrong shape.
"""

from collections.abc import Callable
import logging as std_logging
import os
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import orbax.checkpoint as ocp

from distillation import errors


class _DropOrbaxInfo(std_logging.Filter):
  """Orbax logs a dozen INFO lines per save; keep its warnings only."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return (record.levelno >= std_logging.WARNING or
            f'{os.sep}orbax{os.sep}' not in record.pathname)


def quiet_orbax_logs() -> None:
  logger = logging.get_absl_logger()
  if not any(isinstance(f, _DropOrbaxInfo) for f in logger.filters):
    logger.addFilter(_DropOrbaxInfo())


LATEST = 'checkpoints'  # Every checkpoint_every_steps; what resume uses.
BEST = 'best_checkpoint'  # The best by validation accuracy so far.


def checkpoint_dir(workdir: str, name: str = LATEST) -> str:
  return os.path.join(os.path.abspath(workdir), name)


def state_shapes(state: Any) -> dict[str, list[int]]:
  """{'params/images': [k, p], ...}: what a checkpoint must match."""
  flat, _ = jax.tree_util.tree_flatten_with_path(state)
  return {jax.tree_util.keystr(path, simple=True, separator='/'): list(
      jax.numpy.shape(leaf)) for path, leaf in flat}


def make_meta(config: ml_collections.ConfigDict, state: Any) -> dict[str, Any]:
  return {'config': config.to_dict(), 'state_shapes': state_shapes(state)}


def flatten_dict(tree: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten_dict(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


class Checkpoints:
  """A CheckpointManager over `<workdir>/<name>`, or read-only for eval.

  The state is saved as host (numpy) arrays: it is small, and numpy arrays
  are written once by the primary process in a multi-process run, whereas
  the pmap output lives on each process's own devices only.
  """

  def __init__(self, workdir: str, name: str = LATEST, *,
               max_to_keep: int | None = None, read_only: bool = False):
    quiet_orbax_logs()
    self.workdir = os.path.abspath(workdir)
    self.directory = checkpoint_dir(workdir, name)
    self.read_only = read_only
    self._manager = ocp.CheckpointManager(
        self.directory, item_names=('state', 'meta'),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=not read_only,
            read_only=read_only,
            # Saves cut short (a kill mid-save) leave temporary directories,
            # which are never listed as steps; remove them on start.
            cleanup_tmp_directories=not read_only,
            # With several processes, Orbax names its barriers after the
            # step; the latest and the best checkpoint both save the last
            # step, and the same names at once fail ("already ongoing").
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                barrier_sync_key_prefix=name)))

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def step_path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, state: Any, meta: dict[str, Any]) -> None:
    """Saves `state` under its own step (asynchronously, on every process).

    A step saved already (by a run that was killed before its next regular
    checkpoint) holds the same state, and is kept.
    """
    if int(state.step) in self._manager.all_steps():
      return
    self._manager.save(
        int(state.step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(jax.device_get(state)),
            meta=ocp.args.JsonSave(meta)))

  def restore_newest(
      self, make_target: Callable[[dict[str, Any]], Any]
  ) -> tuple[Any, dict[str, Any]] | None:
    """Restores the newest checkpoint that can be restored.

    Args:
      make_target: maps a checkpoint's meta to the state to restore into;
        raises a UserError if the checkpoint does not fit.

    Returns:
      (state as host arrays, meta), or None if there is no checkpoint. A step
      that fails to restore is reported with its path and skipped; unless
      read-only, it is moved to `<workdir>/corrupt_checkpoints/`, so it is
      kept for inspection but neither retried nor in the way of a new save.
    """
    steps = self.all_steps()
    if not steps:
      return None
    for step in reversed(steps):
      try:
        meta = self._manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore())).meta
        target = jax.device_get(make_target(meta))
        state = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target))).state
      except errors.UserError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        logging.error('Checkpoint %s cannot be restored (%s: %s).',
                      self.step_path(step), type(e).__name__,
                      str(e).splitlines()[0] if str(e) else '')
        if not self.read_only:
          self._set_aside(step)
        continue
      logging.info('Restored checkpoint %s.', self.step_path(step))
      return state, meta
    raise errors.UserError(
        f'no checkpoint in {self.directory} can be restored (the log says '
        'why); move that directory away to start afresh.')

  def _set_aside(self, step: int) -> None:
    """Moves a step that cannot be restored out of Orbax's sight."""
    if jax.process_index() == 0:
      aside = os.path.join(self.workdir, 'corrupt_checkpoints',
                           os.path.basename(self.directory))
      os.makedirs(aside, exist_ok=True)
      target = os.path.join(aside, str(step))
      suffix = 0
      while os.path.exists(target):
        suffix += 1
        target = os.path.join(aside, f'{step}.{suffix}')
      os.rename(self.step_path(step), target)
      logging.warning('Moved %s to %s; resuming from an older checkpoint.',
                      self.step_path(step), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'set aside checkpoint {step}')
    self._manager.reload()

  def __enter__(self) -> 'Checkpoints':
    return self

  def __exit__(self, *exc_info) -> None:
    """Waits for pending saves, also when training stops with an error."""
    self._manager.wait_until_finished()
    self._manager.close()


def check_compatible(meta: dict[str, Any], config: ml_collections.ConfigDict,
                     target: Any) -> None:
  """Raises a UserError if the saved arrays do not fit `target`'s shapes,
  naming the arrays and the config fields that differ."""
  saved, wanted = meta['state_shapes'], state_shapes(target)
  arrays = sorted(k for k in saved.keys() | wanted.keys()
                  if saved.get(k) != wanted.get(k))
  if not arrays:
    return
  old, new = flatten_dict(meta['config']), flatten_dict(config.to_dict())
  fields = ', '.join(f'{k}: {old.get(k)!r} in the checkpoint, {new.get(k)!r} '
                     'now' for k in sorted(old.keys() | new.keys())
                     if old.get(k) != new.get(k))
  shapes = ', '.join(f'{k} {saved.get(k)} vs {wanted.get(k)}' for k in arrays)
  raise errors.UserError(
      f'the checkpoints in this workdir were made with another config '
      f'({fields}), so their arrays do not fit ({shapes}); resume with the '
      'same config, or pass a new --workdir.')
