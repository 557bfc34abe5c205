"""Orbax checkpoints of the outer state, with the config that produced them.

Each checkpoint step holds two items: `state` (the whole `OuterState`) and
`meta` (JSON: the config and the state's array shapes), so `eval.py` needs
nothing but the workdir, and a resume with an incompatible config is caught
before Orbax meets arrays of the wrong shape.
"""

import logging as std_logging
import os
from typing import Any

from absl import logging
import jax
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


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def state_shapes(state: Any) -> dict[str, list[int]]:
  """{'params/images': [k, p], ...}: what a checkpoint must match."""
  flat, _ = jax.tree_util.tree_flatten_with_path(state)
  return {jax.tree_util.keystr(path, simple=True, separator='/'): list(
      jax.numpy.shape(leaf)) for path, leaf in flat}


def make_meta(config: ml_collections.ConfigDict, state: Any) -> dict[str, Any]:
  return {'config': config.to_dict(), 'state_shapes': state_shapes(state)}


class Checkpoints:
  """A CheckpointManager over `<workdir>/checkpoints`, or read-only for eval."""

  def __init__(self, workdir: str, *, max_to_keep: int | None = None,
               read_only: bool = False):
    quiet_orbax_logs()
    self.directory = checkpoint_dir(workdir)
    self._manager = ocp.CheckpointManager(
        self.directory, item_names=('state', 'meta'),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=not read_only,
            read_only=read_only))

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def step_path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, state: Any, meta: dict[str, Any]) -> None:
    """Saves `state` under its own step (asynchronously, on every process)."""
    self._manager.save(
        int(state.step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def restore_meta(self, step: int) -> dict[str, Any]:
    return self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def restore(self, step: int, target: Any) -> Any:
    """Restores the state of `step` into the structure and placement of
    `target`, after checking that the saved shapes match it."""
    meta = self.restore_meta(step)
    check_compatible(meta, target, self.step_path(step))
    return self._manager.restore(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target))).state

  def __enter__(self) -> 'Checkpoints':
    return self

  def __exit__(self, *exc_info) -> None:
    """Waits for pending saves, also when training stops with an error."""
    self._manager.wait_until_finished()
    self._manager.close()


def check_compatible(meta: dict[str, Any], target: Any, path: str) -> None:
  """Raises a UserError naming the arrays whose saved shape differs."""
  saved, wanted = meta['state_shapes'], state_shapes(target)
  differing = sorted(k for k in saved.keys() | wanted.keys()
                     if saved.get(k) != wanted.get(k))
  if differing:
    details = '; '.join(f'{k}: saved {saved.get(k)}, config gives '
                        f'{wanted.get(k)}' for k in differing)
    raise errors.UserError(
        f'checkpoint {path} does not fit this config ({details}); use the '
        'config it was trained with, or a new --workdir.')
  logging.info('checkpoint %s matches the config.', path)
