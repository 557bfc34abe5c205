"""The outer problem: learn the distilled images by gradient descent.

Pure JAX (with flax, optax and, through `inner`, jaxopt): the state, its
initialization and the step functions. The loop, checkpoints and metric
writers live in `train_lib`.

One outer step: fit the inner model (`inner_models/`: a linear head on the
pixels or on networks' features, or the linearized network) on the distilled
set (with config.distill.augment, on a random DSA transform of the images,
drawn anew per network), evaluate the cross-entropy of its predictions on
this device's training shard, sum the loss's gradient with respect to the
fit over all devices, and pull that cotangent back through the fit's
implicit-differentiation rule to get the hypergradient. The step does not
know which inner model it has.
The cotangent is reduced before the implicit backward pass, so the linear
system of the implicit function theorem is solved once, with the same
right-hand side on every device, whatever the number of devices.
"""

from collections.abc import Callable
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from distillation import augment
from distillation import errors
from distillation import inner
from distillation import input_pipeline
from distillation import inner_models
from distillation import parallel

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
OPTIMIZERS = ('sgd', 'momentum', 'adam')
SCHEDULES = ('constant', 'cosine', 'warmup_cosine')
IMAGE_INITS = ('noise', 'real', 'means')
_KEY = jax.ShapeDtypeStruct((2,), jnp.uint32)  # A jax.random.PRNGKey.
# fold_in(step key, this) draws the step's networks (the inner model's
# context): the same on every device (the minibatch keys fold in the device
# index instead).
_NETS_STREAM = 2**31 - 1
# fold_in(step key, this) draws the step's augmentation of the distilled
# images, the same on every device too.
_AUGMENT_STREAM = 2**31 - 2
# fold_in(step key, this) draws the inner model's state update (the pool's
# re-initialized members); fold_in(state key, this) its initial state.
_POOL_STREAM = 2**31 - 3


class OuterState(flax.struct.PyTreeNode):
  """Everything that determines the rest of a run.

  Attributes:
    step: number of outer updates applied so far.
    params: the learned outer parameters: 'images' (k, num_pixels); with
      config.distill.learn_labels, 'label_logits' (k, num_classes), the soft
      targets being their softmax; with config.distill.learn_l2reg,
      'log_l2reg' (a scalar); with config.distill.learn_temperature,
      'log_temperature' (a scalar: the outer loss's logits are multiplied
      by its exp, Platt scaling).
    opt_state: the Optax state of `params`.
    inner_params: the inner solution of the last step, for warm starts
      (`InnerModel.next_params`: for the models that never warm-start, the
      initial one).
    rng: base key; step s uses fold_in(rng, s), so nothing else is saved.
    pool: the inner model's state (`InnerModel.init_state`): with
      config.model.pool_size, the pool of trained networks (`pool.Pool`);
      else empty, and no part of a checkpoint.
  """
  step: jax.Array
  params: dict[str, jax.Array]
  opt_state: optax.OptState
  inner_params: Any
  rng: jax.Array
  pool: dict[str, Any] = flax.struct.field(default_factory=dict)


class Distiller:
  """Binds a config to the model, the inner solver and the outer optimizer.

  Construction checks every config value it uses, so a bad config fails
  before any data is read or any file is written.
  """

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.info = input_pipeline.dataset_info(config.data)
    ipc = config.distill.images_per_class
    if ipc < 1:
      raise errors.UserError(
          f'config.distill.images_per_class={ipc} must be at least 1.')
    if not 0 < config.inner.l2reg < np.inf:
      raise errors.UserError(
          f'config.inner.l2reg={config.inner.l2reg} must be positive and '
          'finite: it makes the inner problem strongly convex, so its '
          'solution and the implicit gradient exist.')
    if config.distill.image_init not in IMAGE_INITS:
      raise errors.UserError(
          f'config.distill.image_init={config.distill.image_init!r} is '
          f'unknown; use one of {", ".join(IMAGE_INITS)}.')
    if config.distill.learn_l2reg and not (
        0 < config.distill.l2reg_min <= config.inner.l2reg):
      raise errors.UserError(
          f'config.distill.l2reg_min={config.distill.l2reg_min} must be '
          f'positive and at most config.inner.l2reg={config.inner.l2reg}.')
    if config.distill.learn_labels and not config.distill.label_temperature > 0:
      raise errors.UserError(
          f'config.distill.label_temperature='
          f'{config.distill.label_temperature} must be positive.')
    # Before the inner model: its shapes start JAX's backend, which logs.
    self.optimizer = make_optimizer(config.optimizer, config.num_steps)
    self.inner_model = inner_models.make(config, self.info)
    # Training steps only: validation and eval.py fit on the images as is.
    self.transforms = augment.parse_strategy(
        config.distill.get('augment', 'none'), self.info.image_shape[-1],
        'config.distill.augment')
    # Class-major labels: examples [c * ipc, (c + 1) * ipc) belong to class c.
    self.labels = np.repeat(np.arange(self.info.num_classes), ipc)

  @property
  def num_distilled(self) -> int:
    return len(self.labels)

  def init_state(self, rng: jax.Array,
                 train: input_pipeline.Split | None = None) -> OuterState:
    """The state at step 0.

    Images are N(0, 1) / num_pixels ('noise', the seed's), random training
    images of each class ('real') or the means of images_per_class random
    groups of each class ('means'); the last two need `train`. Learned label
    logits start at one_hot / label_temperature, learned log-l2reg at
    log(config.inner.l2reg).
    """
    # Two compiled functions, not a dozen small ones run eagerly (each would
    # compile on first use: much of the set-up time of a short run).
    draw, rng = self._draws(rng)
    if self.config.distill.image_init == 'noise':
      images = draw
    else:
      images = self._real_images(int(draw), train)
    return self._state_with(images, rng)

  @functools.partial(jax.jit, static_argnums=0)
  def _draws(self, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The noise images, or a seed for picking real images; the state's key."""
    init_rng, rng = jax.random.split(rng)
    if self.config.distill.image_init == 'noise':
      return jax.random.normal(init_rng, (
          self.num_distilled, self.info.num_pixels)) / self.info.num_pixels, rng
    return jax.random.randint(init_rng, (), 0, 2**31 - 1), rng

  @functools.partial(jax.jit, static_argnums=0)
  def _state_with(self, images: jax.Array, rng: jax.Array) -> OuterState:
    params = {'images': images}
    if self.config.distill.learn_labels:
      params['label_logits'] = jax.nn.one_hot(
          self.labels, self.info.num_classes
      ) / self.config.distill.label_temperature
    if self.config.distill.learn_l2reg:
      params['log_l2reg'] = jnp.log(jnp.float32(self.config.inner.l2reg))
    if self.config.distill.get('learn_temperature'):
      params['log_temperature'] = jnp.zeros((), jnp.float32)
    return OuterState(
        step=jnp.zeros((), jnp.int32), params=params,
        opt_state=self.optimizer.init(params),
        inner_params=self.inner_model.initial_params, rng=rng,
        pool=self.inner_model.init_state(
            jax.random.fold_in(rng, _POOL_STREAM)))

  def state_template(self) -> OuterState:
    """Zeros in the structure and shapes of the state: what a checkpoint is
    restored into."""
    abstract = jax.eval_shape(self._state_with, jax.ShapeDtypeStruct(
        (self.num_distilled, self.info.num_pixels), jnp.float32), _KEY)
    return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract)

  def check_train_split(self, train: input_pipeline.Split) -> None:
    """Fails if config.distill.image_init draws more images of a class
    from `train` than it has."""
    if self.config.distill.image_init == 'noise':
      return
    ipc = self.config.distill.images_per_class
    counts = np.bincount(train.labels, minlength=self.info.num_classes)
    if counts.min() < ipc:
      c = int(counts.argmin())
      raise errors.UserError(
          f'config.distill.images_per_class={ipc} exceeds the {counts[c]} '
          f'training images of class {c}, from which config.distill.'
          f'image_init={self.config.distill.image_init!r} draws; lower it, '
          'or use image_init=noise.')

  def _real_images(self, seed: int,
                   train: input_pipeline.Split | None) -> jax.Array:
    if train is None:
      raise ValueError(f'image_init={self.config.distill.image_init!r} needs '
                       'the training split.')
    self.check_train_split(train)
    ipc = self.config.distill.images_per_class
    images = []
    for c in range(self.info.num_classes):
      members = np.flatnonzero(train.labels == c)
      members = np.random.default_rng([seed, c]).permutation(members)
      if self.config.distill.image_init == 'real':
        images.append(train.images[members[:ipc]])
      else:  # The means of ipc random groups of the class.
        images.append(np.stack([train.images[group].mean(0) for group in
                                np.array_split(members, ipc)]))
    return jnp.asarray(np.concatenate(images))

  def hyperparams(
      self, params: dict[str, jax.Array]
  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Maps outer parameters to the inner problem's (l2reg, images, targets)."""
    if 'label_logits' in params:
      targets = jax.nn.softmax(params['label_logits'])
    else:
      targets = jax.nn.one_hot(self.labels, self.info.num_classes)
    if 'log_l2reg' in params:
      l2reg = jnp.exp(params['log_l2reg'])
    else:
      l2reg = jnp.asarray(self.config.inner.l2reg)
    return l2reg, params['images'], targets

  def eval_context(self) -> Any:
    """The inner model's fixed context of validation and eval.py."""
    return self.inner_model.eval_context(jax.random.fold_in(
        jax.random.PRNGKey(self.config.seed), _NETS_STREAM))

  def linear_context(self) -> Any:
    """The inner model's context of the linear evaluator."""
    return self.inner_model.linear_context(jax.random.fold_in(
        jax.random.PRNGKey(self.config.seed), _NETS_STREAM))

  def fit_inner(self, params: dict[str, jax.Array], init: Any = None,
                context: Any = None, augment_key: jax.Array | None = None,
                probe: jax.Array | None = None) -> inner.InnerResult:
    """Fits the inner model on the distilled set given by `params`, in
    `context` (None: the fixed one of validation). With `augment_key`, on
    the images transformed by `self.transforms`, drawn from
    fold_in(augment_key, member index). `probe`: see InnerModel.fit."""
    if context is None:
      context = self.eval_context()
    transform = lambda images, i: self._augment(images, augment_key, i)
    return self.inner_model.fit(context, self.hyperparams(params), init,
                                transform, probe)

  def _augment(self, images: jax.Array, key: jax.Array | None,
               index: int) -> jax.Array:
    """Flat `images` under the transform drawn from fold_in(key, index);
    as they are without a key."""
    if key is None:
      return images
    return augment.augment(
        jax.random.fold_in(key, index),
        images.reshape((-1,) + self.info.image_shape),
        self.transforms).reshape(images.shape)

  def _batch_loss(self, inner_params, log_temperature: jax.Array | None,
                  context: Any, batch: Batch):
    """Sum over `batch` (masked) of the cross-entropy and of the correct
    predictions, each averaged over the context's members."""
    logits = self.inner_model.logits(context, inner_params, batch['images'])
    if log_temperature is not None:
      logits = logits * jnp.exp(log_temperature)
    # One-hot targets rather than integer labels: the same loss, but its
    # gradient is dense (no gather and scatter over the rows), which XLA
    # compiles faster and runs no slower.
    losses = optax.softmax_cross_entropy(
        logits, jax.nn.one_hot(batch['labels'], self.info.num_classes))
    correct = logits.argmax(-1) == batch['labels']
    losses, correct = jnp.mean(losses, 0), jnp.mean(correct, 0)
    return jnp.sum(batch['mask'] * losses), jnp.sum(batch['mask'] * correct)

  def _select_batch(self, shard: Batch, rng: jax.Array) -> Batch:
    """The full shard, or a minibatch sampled from its real (unmasked) rows."""
    batch_size = self.config.data.get('outer_batch_size')
    if not batch_size:
      return shard
    local = batch_size // jax.lax.axis_size(parallel.AXIS)
    rng = jax.random.fold_in(rng, jax.lax.axis_index(parallel.AXIS))
    num_real = jnp.sum(shard['mask']).astype(jnp.int32)
    index = jax.random.randint(rng, (local,), 0, num_real)
    return jax.tree.map(lambda x: x[index], shard)

  def loss_and_hypergradient(
      self, params: dict[str, jax.Array], batch: Batch, init: Any = None,
      context: Any = None, augment_key: jax.Array | None = None
  ) -> tuple[dict[str, jax.Array], Metrics, Any]:
    """Outer loss over `batch` on all devices and its gradient wrt `params`.

    Runs under `parallel.pmap` (collectives on AXIS). `context`: the inner
    model's (the same on every device; None: validation's); `augment_key`:
    that of the distilled images' augmentation (the same on every device
    too), or None.
    Returns the hypergradient, the step's metrics and the inner solution.
    """
    if context is None:
      context = self.eval_context()

    def inner_solution(params, probe):
      result = self.fit_inner(params, init, context, augment_key, probe)
      return result.params, (result.iterations, result.error)

    inner_params, pullback, (iterations, error) = jax.vjp(
        inner_solution, params, jnp.zeros((), jnp.float32), has_aux=True)
    log_temperature = params.get('log_temperature')
    (loss_sum, correct), (dparams, dtemperature) = jax.value_and_grad(
        self._batch_loss, argnums=(0, 1), has_aux=True)(
            inner_params, log_temperature, context, batch)
    count = jnp.sum(batch['mask'])
    loss_sum, correct, count, dparams, dtemperature = jax.lax.psum(
        (loss_sum, correct, count, dparams, dtemperature), parallel.AXIS)
    grads, implicit_unconverged = pullback(
        jax.tree.map(lambda g: g / count, dparams))
    if log_temperature is not None:  # The inner solution ignores it.
      grads = {**grads, 'log_temperature': dtemperature / count}
    iterations, error = jnp.max(iterations), jnp.max(error)  # Over nets.
    metrics = {
        'loss': loss_sum / count,
        'accuracy': correct / count,
        'grad_norm': optax.tree.norm(grads),
        'inner_iterations': iterations,
        'inner_error': error,
        # The implicit gradient assumes an optimal inner solution.
        'inner_unconverged': error > self.config.inner.tol,
        'l2reg': self.hyperparams(params)[0],
    }
    if self.inner_model.counts_implicit_solves:
      # Its implicit-gradient solves that stopped above their tolerance.
      metrics['implicit_unconverged'] = implicit_unconverged > 0.5
    return grads, metrics, inner_params

  def train_step(self, state: OuterState,
                 shard: Batch) -> tuple[OuterState, Metrics]:
    """One outer update; runs under `parallel.pmap`."""
    key = jax.random.fold_in(state.rng, state.step)
    batch = self._select_batch(shard, key)
    context = self.inner_model.context(state.pool, state.step,
                                       jax.random.fold_in(key, _NETS_STREAM))
    grads, metrics, inner_params = self.loss_and_hypergradient(
        state.params, batch,
        state.inner_params if self.config.inner.warm_start else None,
        context,
        jax.random.fold_in(key, _AUGMENT_STREAM) if self.transforms else None)
    updates, opt_state = self.optimizer.update(grads, state.opt_state,
                                               state.params)
    params = self._project(optax.apply_updates(state.params, updates))
    new_pool = self.inner_model.update(
        state.pool, state.step, jax.random.fold_in(key, _POOL_STREAM),
        self.hyperparams(params), batch)
    return state.replace(
        step=state.step + 1, params=params, opt_state=opt_state,
        inner_params=self.inner_model.next_params(state.inner_params,
                                                  inner_params),
        pool=new_pool), metrics

  def _project(self, params: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Keeps a learned l2reg at or above config.distill.l2reg_min: below
    it, float32 cannot resolve the inner problem, whose solution then grows
    without bound."""
    if 'log_l2reg' not in params:
      return params
    floor = jnp.log(jnp.float32(self.config.distill.l2reg_min))
    return {**params, 'log_l2reg': jnp.maximum(params['log_l2reg'], floor)}

  def train_steps(self, state: OuterState, shard: Batch, *,
                  num_steps: int) -> tuple[OuterState, Metrics]:
    """`num_steps` outer updates in one dispatch; metrics stacked per step."""
    if num_steps == 1:
      # Not a loop of one: XLA's CPU backend runs the convolutions of a
      # model pool's training several times slower inside a loop.
      state, metrics = self.train_step(state, shard)
      return state, jax.tree.map(lambda x: x[None], metrics)
    return jax.lax.scan(lambda s, _: self.train_step(s, shard), state,
                        length=num_steps)

  def eval_step(self, params: dict[str, jax.Array],
                shard: Batch) -> Metrics:
    """Loss and accuracy on `shard` of the inner model fit from scratch, in
    the fixed context of validation."""
    context = self.eval_context()
    inner_params = self.fit_inner(params, context=context).params
    loss_sum, correct = self._batch_loss(
        inner_params, params.get('log_temperature'), context, shard)
    loss_sum, correct, count = jax.lax.psum(
        (loss_sum, correct, jnp.sum(shard['mask'])), parallel.AXIS)
    return {'loss': loss_sum / count, 'accuracy': correct / count}

  def pmapped_train_steps(self, num_steps: int) -> Callable:
    return parallel.pmap(
        functools.partial(self.train_steps, num_steps=num_steps))

  def pmapped_eval_step(self) -> Callable:
    return parallel.pmap(self.eval_step)


def make_optimizer(opt_config: ml_collections.ConfigDict,
                   num_steps: int) -> optax.GradientTransformation:
  """The Optax optimizer of the outer parameters, with its schedule."""
  lr = opt_config.learning_rate
  if not 0 < lr < np.inf:
    raise errors.UserError(
        f'config.optimizer.learning_rate={lr} must be positive and finite.')
  if opt_config.schedule == 'constant':
    schedule = lr
  elif opt_config.schedule == 'cosine':
    schedule = optax.cosine_decay_schedule(lr, num_steps)
  elif opt_config.schedule == 'warmup_cosine':
    if not 0 <= opt_config.warmup_steps < num_steps:
      raise errors.UserError(
          f'config.optimizer.warmup_steps={opt_config.warmup_steps} must be '
          f'in [0, config.num_steps={num_steps}).')
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, lr, opt_config.warmup_steps, num_steps)
  else:
    raise errors.UserError(
        f'config.optimizer.schedule={opt_config.schedule!r} is unknown; use '
        f'one of {", ".join(SCHEDULES)}.')
  if opt_config.name == 'sgd':
    return optax.sgd(schedule)
  if opt_config.name == 'momentum':
    return optax.sgd(schedule, momentum=opt_config.momentum)
  if opt_config.name == 'adam':
    return optax.adam(schedule)
  raise errors.UserError(
      f'config.optimizer.name={opt_config.name!r} is unknown; use one of '
      f'{", ".join(OPTIMIZERS)}.')
