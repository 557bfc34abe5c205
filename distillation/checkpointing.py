"""Orbax checkpoints of the outer state, with the config that produced them.

Each checkpoint step holds two items: `state` (the whole `OuterState`) and
`meta` (JSON: the config, the state's array shapes, what defines the
problem, the validation accuracy, and a SHA-256 of the state's arrays and of
the rest of the meta), so `eval.py` needs nothing but the workdir, a resume
with another problem or an incompatible config is refused, and a checkpoint
whose files changed after the save (a flipped bit, an edited value) is
never restored.
"""

from collections.abc import Callable, Iterable
import hashlib
import json
import logging as std_logging
import os
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from distillation import errors
from distillation import input_pipeline


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
CORRUPT = 'corrupt_checkpoints'  # Steps that failed to restore, moved here.


def checkpoint_dir(workdir: str, name: str = LATEST) -> str:
  return os.path.join(os.path.abspath(workdir), name)


def set_aside_dir(workdir: str, name: str = LATEST) -> str:
  """Where steps of `<workdir>/<name>` that cannot be restored are moved."""
  return os.path.join(os.path.abspath(workdir), CORRUPT, name)


class ChecksumError(Exception):
  """A restored checkpoint differs from the one saved: its files changed."""


# The meta's key of the checkpoint's SHA-256 (`checkpoint_digest`). Older
# checkpoints have `state_sha256` instead: a digest of the arrays alone.
DIGEST = 'sha256'
_ARRAYS_DIGEST = 'state_sha256'


def _named_leaves(tree: Any) -> dict[str, Any]:
  """{'params/images': leaf, ...}: the names state_shapes gives."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path, simple=True, separator='/'): leaf
          for path, leaf in flat}


def state_shapes(state: Any) -> dict[str, list[int]]:
  """{'params/images': [k, p], ...}: what a checkpoint must match."""
  return {name: list(jax.numpy.shape(leaf))
          for name, leaf in _named_leaves(state).items()}


def digest(arrays: Iterable[np.ndarray]) -> str:
  """SHA-256 of the arrays' dtypes, shapes and bytes, in order."""
  sha = hashlib.sha256()
  for array in arrays:
    _update(sha, array)
  return sha.hexdigest()


def checkpoint_digest(arrays: dict[str, np.ndarray],
                      meta: dict[str, Any]) -> str:
  """SHA-256 of everything a restore trusts: the named arrays (names,
  dtypes, shapes and bytes, by name) and the canonical JSON of `meta`
  (sorted keys, without its own DIGEST)."""
  sha = hashlib.sha256()
  for name in sorted(arrays):
    sha.update(name.encode())
    _update(sha, arrays[name])
  sha.update(json.dumps({k: v for k, v in meta.items() if k != DIGEST},
                        sort_keys=True, separators=(',', ':')).encode())
  return sha.hexdigest()


def _update(sha: Any, array: np.ndarray) -> None:
  array = np.ascontiguousarray(array)
  sha.update(f'{array.dtype.str}{array.shape}'.encode())
  sha.update(array.reshape(-1).view(np.uint8))


# The config fields that define the distillation problem; with the image
# shape, the classes and the data itself, a resume must not change them.
# They include what defines the learned object: the inner model's feature
# source and its settings (every model.* field) and the head's loss,
# inner.loss (cross-entropy or squared error) plus inner.l2reg / 2 times
# its squared weights.
PROBLEM_FIELDS = ('data.dataset', 'data.validation_size', 'data.split_seed',
                  'distill.images_per_class', 'inner.l2reg', 'inner.loss')
# What a config older than a field meant by its absence.
_ABSENT_MEANS = {'inner.loss': 'logistic', 'model.pool_size': 0,
                 'model.pool_optimizer': 'adam',
                 'model.pool_learning_rate': 3e-4, 'model.pool_steps': 1,
                 'model.pool_max_updates': 100,
                 'model.pool_data': 'distilled', 'model.linearize': False,
                 'model.body_l2reg': 1e-3, 'model.activation': 'relu',
                 'model.softplus_beta': 1.0}


def _problem_fields(config: dict[str, Any]) -> dict[str, Any]:
  """PROBLEM_FIELDS and the model.* fields of a config (as a dict)."""
  flat = _ABSENT_MEANS | flatten_dict(config)
  return {field: flat.get(field) for field in PROBLEM_FIELDS} | {
      k: v for k, v in flat.items() if k.startswith('model.')}


def describe_problem(config: ml_collections.ConfigDict,
                     info: input_pipeline.DatasetInfo,
                     splits: Iterable[input_pipeline.Split]
                     ) -> dict[str, Any]:
  """What a checkpoint was distilled from: PROBLEM_FIELDS and model.*,
  the image shape and classes, and a digest of the training and validation
  splits as loaded (so the same dataset read from another idx_dir compares
  equal)."""
  problem = _problem_fields(config.to_dict())
  problem['image_shape'] = list(info.image_shape)
  problem['num_classes'] = info.num_classes
  problem['data_sha256'] = digest(
      a for split in splits for a in (split.images, split.labels))[:16]
  return _as_json(problem)


def make_meta(config: ml_collections.ConfigDict, state: Any,
              problem: dict[str, Any]) -> dict[str, Any]:
  return {'config': config.to_dict(), 'state_shapes': state_shapes(state),
          'problem': problem}


def _as_json(tree: Any) -> Any:
  """As read back from JSON: tuples become lists, so they compare equal."""
  return json.loads(json.dumps(tree))


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
               max_to_keep: int | None = None, keep_every: int | None = None,
               read_only: bool = False):
    """`max_to_keep`: the newest steps kept (None: all); `keep_every`:
    steps at its multiples are kept as well."""
    quiet_orbax_logs()
    self.workdir = os.path.abspath(workdir)
    self.directory = checkpoint_dir(workdir, name)
    self.read_only = read_only
    policies = [ocp.checkpoint_managers.LatestN(max_to_keep)]
    if keep_every:
      policies.append(ocp.checkpoint_managers.EveryNSteps(keep_every))
    self._manager = ocp.CheckpointManager(
        self.directory, item_names=('state', 'meta'),
        options=ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(
                policies), create=not read_only,
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
    """Saves `state` under its own step (asynchronously, on every process),
    with the SHA-256 of its arrays and `meta` added to `meta`.

    A step saved already (by a run that was killed before its next regular
    checkpoint) holds the same state, and is kept.
    """
    if int(state.step) in self._manager.all_steps():
      return
    state = jax.device_get(state)
    meta = _as_json(meta)  # As it will read back.
    meta[DIGEST] = checkpoint_digest(_named_leaves(state), meta)
    self._manager.save(
        int(state.step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def restore_newest(
      self, make_target: Callable[[dict[str, Any]], Any],
      step: int | None = None
  ) -> tuple[Any, dict[str, Any]] | None:
    """Restores the newest checkpoint that can be restored.

    Args:
      make_target: maps a checkpoint's meta, once its digest holds, to the
        state to restore into; raises a UserError if the checkpoint does not
        fit.
      step: only this step is tried (one of `all_steps()`).

    Returns:
      (state as host arrays, meta), or None if no checkpoint restores. A step
      that fails to restore, or whose arrays and meta do not match the
      SHA-256 saved with them, is reported with its path and skipped; unless
      read-only, it is moved to `set_aside_dir`, so it is kept for
      inspection but neither retried nor in the way of a new save.
    """
    for step in reversed(self.all_steps() if step is None else [step]):
      try:
        meta, arrays = self._read(step)
        state = _fill(jax.device_get(make_target(meta)), arrays)
        if DIGEST not in meta and _ARRAYS_DIGEST in meta and digest(
            jax.tree.leaves(state)) != meta[_ARRAYS_DIGEST]:
          raise ChecksumError('its arrays differ from those saved (their '
                              'SHA-256 does not match)')
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
    return None

  def _read(self, step: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A step's meta and named arrays, as saved; checked against their
    digest, if the step has one."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore(), state=ocp.args.StandardRestore()))
    meta, arrays = restored.meta, _named_leaves(restored.state)
    if DIGEST in meta:
      if checkpoint_digest(arrays, meta) != meta[DIGEST]:
        raise ChecksumError('its arrays or meta differ from those saved '
                            '(their SHA-256 does not match)')
    else:
      # Written before the digest covered the meta: still restored, so that
      # a run can go on, with its arrays checked if it has their digest.
      logging.warning(
          'Checkpoint %s predates the digest of its meta: its config, '
          'accuracy and problem record are trusted as they read%s.',
          self.step_path(step), '' if _ARRAYS_DIGEST in meta else
          ', and its arrays too')
    return meta, arrays

  def _set_aside(self, step: int) -> None:
    """Moves a step that cannot be restored out of Orbax's sight."""
    if jax.process_index() == 0:
      aside = set_aside_dir(self.workdir, os.path.basename(self.directory))
      os.makedirs(aside, exist_ok=True)
      target = os.path.join(aside, str(step))
      suffix = 0
      while os.path.exists(target):
        suffix += 1
        target = os.path.join(aside, f'{step}.{suffix}')
      os.rename(self.step_path(step), target)
      logging.warning('Moved %s to %s.', self.step_path(step), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'set aside checkpoint {step}')
    self._manager.reload()

  def __enter__(self) -> 'Checkpoints':
    return self

  def __exit__(self, *exc_info) -> None:
    """Waits for pending saves, also when training stops with an error."""
    self._manager.wait_until_finished()
    self._manager.close()


def _fill(target: Any, arrays: dict[str, np.ndarray]) -> Any:
  """`target`'s structure with the arrays of the same names, which must
  have its leaves' shapes and dtypes."""
  leaves = _named_leaves(target)
  if leaves.keys() != arrays.keys() or any(
      np.shape(leaf) != np.shape(arrays[name]) or
      np.asarray(leaf).dtype != np.asarray(arrays[name]).dtype
      for name, leaf in leaves.items()):
    raise ValueError('its arrays do not fit the state: '
                     f'{state_shapes(arrays)} vs {state_shapes(target)}')
  return jax.tree.unflatten(jax.tree.structure(target),
                            [arrays[name] for name in leaves])


def check_compatible(meta: dict[str, Any], config: ml_collections.ConfigDict,
                     target: Any, problem: dict[str, Any]) -> None:
  """Raises a UserError if a checkpoint was made for another problem (see
  `describe_problem`) or its arrays do not fit `target`'s shapes, naming
  what differs."""
  # Checkpoints written before the problem was recorded have none; those
  # written before some of its fields were, have them in their config.
  saved_problem = ({**_problem_fields(meta['config']), **meta['problem']}
                   if 'problem' in meta else problem)
  differences = {
      k: (saved_problem.get(k), problem.get(k))
      for k in sorted(saved_problem.keys() | problem.keys())
      if saved_problem.get(k) != problem.get(k)}
  saved, wanted = meta['state_shapes'], state_shapes(target)
  arrays = sorted(k for k in saved.keys() | wanted.keys()
                  if saved.get(k) != wanted.get(k))
  if arrays:  # Other config fields may explain the shapes: list them too.
    old = flatten_dict(_as_json(meta['config']))
    new = flatten_dict(_as_json(config.to_dict()))
    differences = {k: (old.get(k), new.get(k))
                   for k in sorted(old.keys() | new.keys())
                   if old.get(k) != new.get(k) and not _may_change(k)
                   } | differences
  if not differences and not arrays:
    return
  fields = ', '.join(f'{k}: {old!r} in the checkpoint, {new!r} now'
                     for k, (old, new) in differences.items())
  shapes = ''
  if len(arrays) == 1:
    shapes = (f', so their arrays do not fit ({arrays[0]} '
              f'{saved.get(arrays[0])} vs {wanted.get(arrays[0])})')
  elif arrays:  # A pool has dozens: the fields say why, a count suffices.
    shapes = f', so {len(arrays)} of their arrays do not fit'
  raise errors.UserError(
      'the checkpoints in this workdir were made for another problem' +
      (f' ({fields})' if fields else '') + f'{shapes}; resume with the same '
      'config and data, or pass a new --workdir.')


# Config fields that a resume may change (docs/operations.md) and that
# shape no array of the state, so they never explain a refusal.
_MAY_CHANGE = ('num_steps', 'log_every_steps', 'eval_every_steps',
               'checkpoint_every_steps', 'max_checkpoints_to_keep',
               'progress_every_secs', 'steps_per_dispatch', 'data.idx_dir',
               'data.tfds_data_dir', 'data.verify_digests',
               'optimizer.learning_rate', 'inner.maxiter', 'inner.tol',
               'inner.implicit_tol', 'inner.strict')


def _may_change(field: str) -> bool:
  return field in _MAY_CHANGE or field.startswith('eval.')
