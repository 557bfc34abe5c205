"""Trains networks from scratch on a small set and tests them: the field's
protocol for judging a distilled set (DC/DSA).

The recipe: SGD with momentum and weight decay (added to the gradient, as
PyTorch does), the learning rate cut x0.1 after the first half of the epochs
(rounded up), minibatches of `batch_size` (the whole set if smaller) drawn
from a fresh shuffle each epoch (the last one short), per-channel
normalization, DSA augmentation of each minibatch, and cross-entropy on the
given (soft or one-hot) targets. The kernel methods' recipe swaps in Adam
with warm-up and cosine decay, a squared loss and a fixed step count
(`Recipe.optimizer`, `loss`, `steps`).

All `seeds` networks of a set train together in one compiled program, the
networks spread over the local devices (`parallel.pmap`), by one of two
paths (PATHS; `default_path` picks by backend): `vmapped`, the accelerators'
default, vmaps them and loops over many steps per call; `unrolled`, CPU's,
runs one step per call as straight-line code (see `_train_nets`). Either
path runs on any backend, so the tests run both on CPU. Each network's
result depends only on its seed and data, not on the path or on how many
devices there are (up to float32 rounding).
"""

from collections.abc import Callable, Sequence
import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from distillation import augment
from distillation import networks
from distillation import parallel

MODELS = ('convnet', 'mlp')
# How the networks of a device train: vmapped, with a loop over the steps of
# a call, or unrolled, one step per call.
PATHS = ('vmapped', 'unrolled')
_TEST_BATCH = 500  # Test images per call.


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How one evaluator trains its networks; recorded with every result."""
  name: str  # The preset, plus any fields changed from it.
  model: str  # convnet | mlp
  width: int
  depth: int
  norm: str  # instance | none (convnet)
  epochs: int
  full_data_epochs: int  # For the full training split (costly).
  batch_size: int
  learning_rate: float
  momentum: float
  weight_decay: float
  seeds: int
  augment: tuple[str, ...]  # DSA transforms; () for none.
  # The kernel methods' recipe (FRePo, RCIG) differs in these; the defaults
  # are DC/DSA's. optimizer: sgd (momentum, the learning rate x0.1 after
  # half the steps) | adam (linear warm-up over warmup_steps from 0, then
  # cosine decay to 1%). loss: cross_entropy | mse (half the squared error
  # to the targets centred by -1 / num_classes, averaged over classes too).
  # steps > 0: that many steps instead of `epochs` (steps_one_per_class for
  # a set of one image per class, if > 0); the full-data row keeps epochs.
  optimizer: str = 'sgd'
  loss: str = 'cross_entropy'
  steps: int = 0
  steps_one_per_class: int = 0
  warmup_steps: int = 0

  def as_dict(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), 'augment': '_'.join(self.augment)
            or 'none'}


def make_model(recipe: Recipe, num_classes: int) -> nn.Module:
  if recipe.model == 'convnet':
    return networks.ConvNet(num_classes, recipe.width, recipe.depth,
                            recipe.norm)
  return networks.MLP(num_classes, recipe.width, recipe.depth)


def default_path(backend: str | None = None) -> str:
  """The path for `backend` (default: JAX's): unrolled on CPU, whose XLA
  backend runs a network's step many times slower in a loop or vmapped
  (`_train_nets`); vmapped elsewhere, where one call of many steps saves a
  dispatch per step."""
  return 'unrolled' if (backend or jax.default_backend()) == 'cpu' else (
      'vmapped')


class NetTrainer:
  """Trains and tests `recipe.seeds` networks on sets of one size.

  Compiled programs are cached on the trainer: sets of the same size (the
  distilled set and its baselines) reuse them. `path`: one of PATHS
  (default: `default_path()`).
  """

  def __init__(self, recipe: Recipe, image_shape: tuple[int, int, int],
               num_classes: int, mean: np.ndarray, std: np.ndarray,
               num_devices: int | None = None, path: str | None = None):
    self.recipe = recipe
    self.image_shape = tuple(image_shape)
    self.num_classes = num_classes
    self._mean = np.asarray(mean, np.float32)
    self._std = np.asarray(std, np.float32)
    self._model = make_model(recipe, num_classes)
    self._devices = min(num_devices or jax.local_device_count(),
                        recipe.seeds)
    self.path = path or default_path()
    if self.path not in PATHS:
      raise ValueError(f'path={self.path!r} is unknown; use one of '
                       f'{", ".join(PATHS)}.')
    self._unrolled = self.path == 'unrolled'
    self._init = jax.jit(jax.vmap(self._init_net))
    self._train = parallel.pmap(self._train_nets)
    self._test = parallel.pmap(self._test_nets)

  def schedule(self, num_examples: int) -> tuple[int, int]:
    """(batch size, steps per epoch) for a set of `num_examples`."""
    batch = min(self.recipe.batch_size, num_examples)
    return batch, math.ceil(num_examples / batch)

  def num_steps(self, num_examples: int, epochs: int | None = None) -> int:
    """Training steps on a set of `num_examples`; `epochs` (the full-data
    row's) counts epochs even where the recipe counts steps."""
    if epochs is None and self.recipe.steps:
      if num_examples == self.num_classes and self.recipe.steps_one_per_class:
        return self.recipe.steps_one_per_class
      return self.recipe.steps
    return (epochs or self.recipe.epochs) * self.schedule(num_examples)[1]

  def train(
      self, images: np.ndarray, targets: np.ndarray, *,
      draws: Sequence[int] | None = None, epochs: int | None = None,
      steps_per_call: int | None = None,
      progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Trains the networks of seeds 0 .. recipe.seeds - 1; for `accuracy`.

    Args:
      images: (sets, n, num_pixels) in [0, 1]; network s trains on set
        draws[s] (default: set 0 for all), e.g. one random draw per seed.
      targets: (sets, n, num_classes), soft or one-hot.
      draws: which set each seed trains on.
      epochs: overrides recipe.epochs (the full-data row uses fewer).
      steps_per_call: steps per device call of the vmapped path (default:
        about 1/20 of all; unrolled, always one); `progress(done, total)` is
        called after each call.
    """
    seeds = self.recipe.seeds
    draws = np.zeros(seeds, np.int32) if draws is None else np.asarray(
        draws, np.int32)
    n = images.shape[1]
    total = self.num_steps(n, epochs)
    if self._unrolled:
      steps_per_call = 1
    steps_per_call = steps_per_call or max(1, math.ceil(total / 20))
    nets = self._init(self._keys(seeds))
    nets['draw'] = jnp.asarray(draws)
    nets = self._shard(nets)
    data = {'images': jnp.asarray(images, jnp.float32).reshape(
                images.shape[:2] + self.image_shape),
            'targets': jnp.asarray(targets, jnp.float32)}
    # SGD's cut after half the epochs (rounded up), or steps.
    steps_per_epoch = self.schedule(n)[1]
    decay_step = (math.ceil(total / steps_per_epoch) + 1) // 2 * (
        steps_per_epoch)
    done = 0
    while done < total:
      stop = min(total, done + steps_per_call)
      nets = self._shard(self._train(
          {**data, 'start': done, 'stop': stop, 'decay_step': decay_step,
           'total': total},
          nets))
      done = stop
      if progress:
        progress(done, total)
    return nets

  def accuracy(self, nets: dict[str, Any], images: np.ndarray,
               labels: np.ndarray) -> np.ndarray:
    """Accuracy of each of `train`'s networks on flat `images`."""
    size = min(_TEST_BATCH, len(labels))
    correct = 0
    for start in range(0, len(labels), size):
      batch_images = images[start:start + size]
      batch_labels = labels[start:start + size]
      if len(batch_labels) < size:  # Padded: one program serves all batches.
        pad = size - len(batch_labels)
        batch_images = np.concatenate([batch_images, np.zeros(
            (pad,) + batch_images.shape[1:], batch_images.dtype)])
        batch_labels = np.concatenate([batch_labels,
                                       np.full(pad, -1, batch_labels.dtype)])
      correct = correct + self._test(
          {'images': batch_images.reshape((size,) + self.image_shape),
           'labels': batch_labels}, nets)
    return np.asarray(jax.device_get(correct))[:self.recipe.seeds] / len(
        labels)

  def _keys(self, seeds: int) -> jax.Array:
    return jax.vmap(jax.random.PRNGKey)(jnp.arange(seeds))

  def _shard(self, tree):
    """(seeds, ...) -> (devices, seeds per device, ...), padding with copies
    of the last network. On the host: a pmap output lies replicated on the
    devices, not sharded as the next call takes it."""
    def cut(x):
      x = np.asarray(jax.device_get(x))
      per_device = math.ceil(self.recipe.seeds / self._devices)
      pad = per_device * self._devices - self.recipe.seeds
      x = np.concatenate([x[:self.recipe.seeds]] + [x[-1:]] * pad)
      return x.reshape((self._devices, per_device) + x.shape[1:])
    return jax.tree.map(cut, tree)

  def _init_net(self, key: jax.Array) -> dict[str, Any]:
    params = self._model.init(jax.random.fold_in(key, 0), jnp.zeros(
        (1,) + self.image_shape))
    if self.recipe.optimizer == 'adam':
      return {'params': params, 'adam': optax.scale_by_adam().init(params),
              'key': key}
    return {'params': params, 'momentum': jax.tree.map(jnp.zeros_like, params),
            'key': key}

  def _normalize(self, images: jax.Array) -> jax.Array:
    return (images - self._mean) / self._std

  def _train_nets(self, data: dict[str, Any], nets: dict[str, Any]):
    """Steps [start, stop) of this device's networks; returns all devices'.

    Unrolled (CPU's default), one step, and the networks as straight-line
    code: XLA's CPU backend runs a network's step many times slower inside a
    loop (while, scan) or vmapped (grouped convolutions) than that.
    """
    if self._unrolled:
      nets = self._unroll(
          lambda net: self._step(data, net, data['start']), nets)
    else:
      nets = jax.vmap(lambda net: jax.lax.fori_loop(
          data['start'], data['stop'],
          lambda step, net: self._step(data, net, step), net))(nets)
    return jax.lax.all_gather(nets, parallel.AXIS, tiled=True)

  def _unroll(self, fn, nets):
    """fn applied to each network of `nets`, as straight-line code."""
    count = len(nets['key'])
    outputs = [fn(jax.tree.map(lambda x: x[i], nets)) for i in range(count)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outputs)

  def _step(self, data: dict[str, Any], net: dict[str, Any],
            step: jax.Array) -> dict[str, Any]:
    recipe = self.recipe
    n = data['images'].shape[1]
    batch, steps_per_epoch = self.schedule(n)
    epoch, position = step // steps_per_epoch, step % steps_per_epoch
    order = jax.random.permutation(
        jax.random.fold_in(jax.random.fold_in(net['key'], 1), epoch), n)
    order = jnp.pad(order, (0, batch * steps_per_epoch - n))
    index = jax.lax.dynamic_slice(order, (position * batch,), (batch,))
    mask = (position * batch + jnp.arange(batch)) < n
    images = self._normalize(data['images'][net['draw'], index])
    images = augment.augment(
        jax.random.fold_in(jax.random.fold_in(net['key'], 2), step), images,
        recipe.augment)
    targets = data['targets'][net['draw'], index]

    def loss_fn(params):
      logits = self._model.apply(params, images)
      if recipe.loss == 'mse':
        losses = 0.5 * jnp.mean(
            (logits - (targets - 1 / self.num_classes))**2, -1)
      else:
        losses = optax.softmax_cross_entropy(logits, targets)
      return jnp.sum(mask * losses) / jnp.sum(mask)

    grads = jax.grad(loss_fn)(net['params'])
    if recipe.optimizer == 'adam':
      # Weight decay as an L2 term's gradient, as for SGD.
      grads = jax.tree.map(lambda g, p: g + recipe.weight_decay * p, grads,
                           net['params'])
      updates, adam = optax.scale_by_adam().update(grads, net['adam'])
      learning_rate = self._warmup_cosine(step, data['total'])
      params = jax.tree.map(lambda p, u: p - learning_rate * u, net['params'],
                            updates)
      return {**net, 'params': params, 'adam': adam}
    learning_rate = recipe.learning_rate * jnp.where(
        step < data['decay_step'], 1.0, 0.1)
    momentum = jax.tree.map(
        lambda m, g, p: recipe.momentum * m + g + recipe.weight_decay * p,
        net['momentum'], grads, net['params'])
    params = jax.tree.map(lambda p, m: p - learning_rate * m, net['params'],
                          momentum)
    return {**net, 'params': params, 'momentum': momentum}

  def _warmup_cosine(self, step: jax.Array, total: jax.Array) -> jax.Array:
    """The Adam recipe's rate: linear from 0 over warmup_steps, then cosine
    decay to 1% at `total`."""
    rate, warmup = self.recipe.learning_rate, self.recipe.warmup_steps
    step = jnp.asarray(step, jnp.float32)
    progress = jnp.clip((step - warmup) / jnp.maximum(total - warmup, 1),
                        0.0, 1.0)
    cosine = rate * (0.01 + 0.99 * 0.5 * (1 + jnp.cos(jnp.pi * progress)))
    return jnp.where(step < warmup, rate * step / max(warmup, 1), cosine)

  def _test_nets(self, batch: dict[str, jax.Array], nets: dict[str, Any]):
    """Correct predictions on one test batch (labels -1: padding), per
    network of all devices."""
    def correct(net):
      logits = self._model.apply(net['params'],
                                 self._normalize(batch['images']))
      return jnp.sum(jnp.argmax(logits, -1) == batch['labels'])
    if self._unrolled:
      counts = self._unroll(correct, nets)
    else:
      counts = jax.vmap(correct)(nets)
    return jax.lax.all_gather(counts, parallel.AXIS, tiled=True)
