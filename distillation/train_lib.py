"""The training loop: data on device, resume, checkpoints, metrics, pictures."""

import itertools
import os
import signal
import threading

from absl import logging
from clu import metrics as clu_metrics
import flax
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from distillation import checkpointing
from distillation import errors
from distillation import eval_lib
from distillation import input_pipeline
from distillation import outer
from distillation import parallel
from distillation import visualize
from distillation import workdirs

PNG_NAME = 'distilled_images.png'
_INTERVALS = ('log_every_steps', 'eval_every_steps', 'checkpoint_every_steps')


def _check_loop_config(config: ml_collections.ConfigDict,
                       num_train: int) -> None:
  """Checks the loop's config fields against each other and the data."""
  for name in ('num_steps', 'steps_per_dispatch', 'max_checkpoints_to_keep'
               ) + _INTERVALS:
    if config[name] < 1:
      raise errors.UserError(f'config.{name}={config[name]} must be >= 1.')
  for name in _INTERVALS:
    if config[name] % config.steps_per_dispatch:
      raise errors.UserError(
          f'config.{name}={config[name]} must be a multiple of '
          f'config.steps_per_dispatch={config.steps_per_dispatch}.')
  batch_size = config.data.outer_batch_size
  if batch_size is not None:
    devices = jax.device_count()
    if batch_size < 1 or batch_size % devices or batch_size > num_train:
      raise errors.UserError(
          f'config.data.outer_batch_size={batch_size} must be a positive '
          f'multiple of the {devices} devices and at most the {num_train} '
          'training examples; unset it for full batch.')


def _image_grid(distiller: outer.Distiller, state: outer.OuterState):
  images = np.asarray(jax.device_get(state.params['images']))
  images = images.reshape((-1,) + distiller.info.image_shape)
  return visualize.image_grid(images, distiller.info.class_names,
                              scale=max(1, 64 // images.shape[1]))


def _diverged(what: str, step: int,
              checkpoints: checkpointing.Checkpoints) -> errors.DivergedError:
  steps = checkpoints.all_steps()
  kept = (f'the newest checkpoint, step {steps[-1]}, is the last good one'
          if steps else 'no checkpoint was saved yet')
  return errors.DivergedError(
      f'{what} at step {step}; stopped without saving it ({kept}). Lower '
      'config.optimizer.learning_rate or raise config.inner.l2reg.')


@flax.struct.dataclass
class _Count(clu_metrics.Metric):
  """How many steps raised a flag."""
  total: jax.Array

  @classmethod
  def empty(cls) -> '_Count':
    return cls(total=jnp.zeros((), jnp.int32))

  @classmethod
  def from_model_output(cls, values: jax.Array, **_) -> '_Count':
    return cls(total=jnp.sum(values).astype(jnp.int32))

  def merge(self, other: '_Count') -> '_Count':
    return type(self)(total=self.total + other.total)

  def compute(self) -> jax.Array:
    return self.total


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
  """The outer steps' metrics between two writes."""
  train_loss: clu_metrics.Average.from_output('loss')
  train_accuracy: clu_metrics.Average.from_output('accuracy')
  hypergradient_norm: clu_metrics.Average.from_output('grad_norm')
  inner_iterations: clu_metrics.Average.from_output('inner_iterations')
  inner_error: clu_metrics.LastValue.from_output('last_inner_error')
  inner_unconverged: _Count.from_output('inner_unconverged')
  l2reg: clu_metrics.LastValue.from_output('last_l2reg')


# TrainMetrics of an inner model that counts its implicit solves (CLU reads
# a collection's own annotations only, so not a subclass).
CountedImplicitTrainMetrics = clu_metrics.Collection.create(
    **TrainMetrics.__annotations__,
    implicit_unconverged=_Count.from_output('implicit_unconverged'))


def _pmapped_train_steps(distiller: outer.Distiller, num_steps: int):
  """`distiller.train_steps` under `parallel.pmap`, returning the per-step
  metrics (for the checks) and their `TrainMetrics`, built on the device."""
  collection = (CountedImplicitTrainMetrics
                if distiller.inner_model.counts_implicit_solves
                else TrainMetrics)

  def steps(state, shard):
    state, per_step = distiller.train_steps(state, shard, num_steps=num_steps)
    summary = collection.single_from_model_output(
        **per_step, last_inner_error=per_step['inner_error'][-1:],
        last_l2reg=per_step['l2reg'][-1:])
    return state, (per_step, summary)

  return parallel.pmap(steps)


class _StepChecks:
  """Checks each dispatch's per-step metrics before its state is used.

  A non-finite loss or hypergradient stops the run. An inner solve, or an
  implicit-gradient solve where the model counts them, that ended above its
  tolerance makes the hypergradient inexact: the first one of each is
  warned about, all are counted (`inner_unconverged`,
  `implicit_unconverged`), and with config.inner.strict the run stops.
  """

  def __init__(self, config: ml_collections.ConfigDict,
               checkpoints: checkpointing.Checkpoints):
    self._inner = config.inner
    self._checkpoints = checkpoints
    self._warned = set()

  def __call__(self, metrics: dict[str, np.ndarray], first_step: int) -> None:
    bad = ~(np.isfinite(metrics['loss']) & np.isfinite(metrics['grad_norm']))
    if bad.any():
      raise _diverged('the outer loss or hypergradient is not finite',
                      first_step + int(np.argmax(bad)), self._checkpoints)
    unconverged = metrics['inner_unconverged']
    if unconverged.any():
      i = int(np.argmax(unconverged))
      self._flag('inner_unconverged', (
          f'the inner solve of step {first_step + i} stopped at error '
          f'{metrics["inner_error"][i]:.3g} > config.inner.tol='
          f'{self._inner.tol:g} after {metrics["inner_iterations"][i]} '
          'iterations, so its hypergradient is inexact. Raise '
          'config.inner.maxiter or config.inner.tol, or raise the l2reg'))
    implicit = metrics.get('implicit_unconverged')
    if implicit is not None and implicit.any():
      self._flag('implicit_unconverged', (
          'the implicit-gradient CG of step '
          f'{first_step + int(np.argmax(implicit))} stopped above '
          f'config.inner.implicit_tol={self._inner.implicit_tol:g} (of its '
          'right-hand side\'s norm) after config.inner.implicit_maxiter='
          f'{self._inner.implicit_maxiter} steps, so its hypergradient is '
          'inexact. Raise config.inner.implicit_maxiter or '
          'config.inner.implicit_tol, or raise config.model.body_l2reg'))

  def _flag(self, counter: str, message: str) -> None:
    if self._inner.strict:
      raise errors.DivergedError(
          message + '; config.inner.strict=True stopped the run before '
          'saving this step.')
    if counter not in self._warned:
      logging.warning('%s (counted as %s; warned once).', message, counter)
      self._warned.add(counter)


def _check_finite(state: outer.OuterState, validation_loss: float,
                  checkpoints: checkpointing.Checkpoints) -> None:
  """Stops the run before a diverged state is written anywhere.

  A step's loss is computed before its update, so a finite loss does not
  make the updated state good: an update can blow the images up (finite,
  but the next inner fit is not). The inner model fit on the state, from
  scratch, must have a finite validation loss, and every array must be
  finite.
  """
  leaves = jax.tree.leaves(jax.device_get(state))
  if not (np.isfinite(validation_loss) and all(
      np.isfinite(x).all() for x in leaves
      if np.issubdtype(x.dtype, np.inexact))):
    raise _diverged('the state (or the validation loss of the inner model fit'
                    ' on it) is not finite', int(state.step), checkpoints)


def _refuse_silent_restart(workdir: str) -> None:
  """A workdir whose every checkpoint was broken does not start again from
  step 0 unless the user removes the broken ones."""
  aside = checkpointing.set_aside_dir(workdir)
  if os.path.isdir(aside) and os.listdir(aside):
    raise errors.UserError(
        f'no checkpoint in {checkpointing.checkpoint_dir(workdir)} can be '
        f'restored; the broken ones are in {aside} (the log says why). To '
        f'start again from step 0 in --workdir={workdir}, delete or move '
        f'{aside}.')


def _best_accuracy(best: checkpointing.Checkpoints, resume_target,
                   latest_meta: dict) -> float:
  """The best validation accuracy so far: that of the best checkpoint; if
  it cannot be restored, as the latest checkpoint recorded it."""
  had_best = bool(best.all_steps())
  if (restored := best.restore_newest(resume_target)):
    return restored[1]['validation_accuracy']
  accuracy = latest_meta.get('best_validation_accuracy')
  if had_best:
    logging.warning(
        'No best checkpoint can be restored (the log says why); continuing '
        'with the best validation accuracy so far, %s, as the latest '
        'checkpoint recorded it. %s is written again when it improves.',
        accuracy, best.directory)
  return -np.inf if accuracy is None else accuracy


class _Preemption:
  """Tells, between dispatches, whether the run was asked to stop.

  Schedulers of TPU and GPU jobs send SIGTERM before they evict a job. With
  several processes, JAX's preemption service catches it on any process and
  picks one dispatch at which all processes save together. With one process,
  a SIGTERM handler (installed from the main thread) raises a flag once
  training has started, and before that (data loading, restore) stops the
  run at once with `errors.Stopped`.
  """

  def __init__(self):
    self._multiprocess = jax.process_count() > 1
    self._started = False
    self._noticed = False
    self._previous_handler = None
    if (not self._multiprocess and
        threading.current_thread() is threading.main_thread()):
      self._previous_handler = signal.signal(signal.SIGTERM, self._notice)

  def _notice(self, signum, frame):
    del signum, frame
    if not self._started:
      raise errors.Stopped(errors.STOPPED)
    self._noticed = True

  def start(self) -> None:
    """From now on, a SIGTERM saves the state."""
    self._started = True

  def reached(self, dispatch: int) -> bool:
    """`dispatch` counts this process's dispatches; equal on all processes."""
    if self._multiprocess:
      return multihost_utils.reached_preemption_sync_point(dispatch)
    return self._noticed

  def __enter__(self) -> '_Preemption':
    return self

  def __exit__(self, *exc_info) -> None:
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> outer.OuterState:
  """Distills the configured dataset; resumes from `workdir` if it can.

  Returns the final state (or the state saved on preemption), so tests can
  inspect it. A SIGTERM before training starts raises `errors.Stopped`.
  """
  with _Preemption() as preemption:
    return _train_and_evaluate(config, workdir, preemption)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        preemption: _Preemption) -> outer.OuterState:
  # Everything is checked before anything is created in the workdir.
  workdirs.check(workdir)
  distiller = outer.Distiller(config)
  eval_lib.check_config(config)
  digests = input_pipeline.IdxDigests(workdir)
  train, validation = input_pipeline.load_train_and_validation(config.data,
                                                               digests)
  _check_loop_config(config, len(train))
  distiller.check_train_split(train)
  problem = checkpointing.describe_problem(config, distiller.info,
                                           (train, validation))

  def resume_target(meta):
    template = distiller.state_template()
    checkpointing.check_compatible(meta, config, template, problem)
    return template

  workdirs.create(workdir)
  if jax.process_index() == 0:
    digests.save()
  with errors.disk_full_is_user_error(
      f'the disk of --workdir={workdir} is full; free some space and run the '
      'same command to resume from the newest complete checkpoint.'
  ), workdirs.Lock(workdir), checkpointing.Checkpoints(
      workdir, max_to_keep=config.max_checkpoints_to_keep,
      # eval.py's selection candidates (distillation/selection.py).
      keep_every=config.eval.get('select_every_steps')
  ) as checkpoints, checkpointing.Checkpoints(
      workdir, checkpointing.BEST, max_to_keep=1) as best:
    # Resume order: the newest checkpoint in workdir that restores wins,
    # else a fresh start, unless every checkpoint was found broken.
    if (restored := checkpoints.restore_newest(resume_target)):
      state, latest_meta = restored
      logging.info('Resuming at step %d.', int(state.step))
    else:
      _refuse_silent_restart(workdir)
      state, latest_meta = distiller.init_state(
          jax.random.PRNGKey(config.seed), train), {}
    if int(state.step) >= config.num_steps:
      logging.info('Nothing to do: step %d >= config.num_steps=%d.',
                   int(state.step), config.num_steps)
      return state
    best_accuracy = _best_accuracy(best, resume_target, latest_meta)
    preemption.start()
    state = _train(config, workdir, distiller, state, train, validation,
                   checkpoints=checkpoints, best=best,
                   best_accuracy=best_accuracy, preemption=preemption,
                   meta=checkpointing.make_meta(config, state, problem))
  if int(state.step) < config.num_steps:
    logging.warning('Preempted: saved a checkpoint at step %d and stopped; '
                    'run the same command to resume.', int(state.step))
    return state
  if jax.process_index() == 0:
    visualize.save_png(_image_grid(distiller, state),
                       os.path.join(workdir, PNG_NAME))
  logging.info('Finished at step %d; distilled images in %s.',
               int(state.step), os.path.join(workdir, PNG_NAME))
  return state


def _train(config: ml_collections.ConfigDict, workdir: str,
           distiller: outer.Distiller, state: outer.OuterState,
           train: input_pipeline.Split, validation: input_pipeline.Split,
           *, checkpoints: checkpointing.Checkpoints,
           best: checkpointing.Checkpoints, best_accuracy: float,
           preemption: _Preemption, meta: dict) -> outer.OuterState:
  """Runs outer steps from `state.step` to `config.num_steps`, or until
  preempted; `best` keeps the state of the best validation accuracy, so far
  `best_accuracy`. `meta` is saved with each checkpoint."""
  # Imported once the run is checked: CLU's writers load TensorFlow, seconds
  # that a mistyped config should not wait for.
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)
  if int(state.step) == 0:
    writer.write_hparams({
        k: v for k, v in checkpointing.flatten_dict(config.to_dict()).items()
        if v is not None})
  state = parallel.replicate(state)
  train_shard = parallel.put_sharded(train)
  validation_shard = parallel.put_sharded(validation)
  eval_step = distiller.pmapped_eval_step()
  train_steps = {}  # Compiled per chunk length: steps_per_dispatch, remainder.
  hooks = []
  if jax.process_index() == 0:
    hooks.append(periodic_actions.ReportProgress(
        num_train_steps=config.num_steps, writer=writer,
        every_secs=config.progress_every_secs))
  checks = _StepChecks(config, checkpoints)
  interval = None
  step = int(state.step)
  logging.info('Training from step %d to %d.', step, config.num_steps)
  with metric_writers.ensure_flushes(writer):
    for dispatch in itertools.count():
      if step >= config.num_steps:
        break
      # Chunks align with multiples of steps_per_dispatch, so a resumed run
      # runs exactly the same chunks as an uninterrupted one.
      n = min(config.steps_per_dispatch - step % config.steps_per_dispatch,
              config.num_steps - step)
      if n not in train_steps:
        train_steps[n] = _pmapped_train_steps(distiller, n)
      state, (per_step, summary) = train_steps[n](state, train_shard)
      # One transfer; the summaries then merge on the host in numpy.
      per_step, summary = jax.device_get((per_step, summary))
      checks(per_step, step)
      interval = summary if interval is None else interval.merge(summary)
      step += n
      for hook in hooks:
        hook(step)
      last = step == config.num_steps
      if step % config.log_every_steps == 0 or last:
        writer.write_scalars(step, interval.compute())
        interval = None
      preempted = preemption.reached(dispatch)
      evaluate = step % config.eval_every_steps == 0 or last
      save = step % config.checkpoint_every_steps == 0 or last or preempted
      if evaluate or save:  # Checked before anything is written.
        val = jax.device_get(eval_step(state.params, validation_shard))
        _check_finite(state, val['loss'], checkpoints)
      if evaluate:
        if val['accuracy'] > best_accuracy:
          best_accuracy = float(val['accuracy'])
          best.save(state, {**meta, 'validation_accuracy': best_accuracy})
        writer.write_scalars(step, {
            'validation_loss': val['loss'],
            'validation_accuracy': val['accuracy'],
            'best_validation_accuracy': best_accuracy})
        writer.write_images(step, {'distilled_images':
                                       _image_grid(distiller, state)[None]})
      if save:
        # The best accuracy so far survives a broken best checkpoint.
        checkpoints.save(state, {**meta, 'best_validation_accuracy': (
            best_accuracy if np.isfinite(best_accuracy) else None)})
      if preempted:
        break
  return state
