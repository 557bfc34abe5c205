"""A pool of trained feature networks (FRePo, RCIG): a feature source.

With `config.model.pool_size` > 0 (and `pool_max_updates` > 0), the outer
step fits its heads on the features of `nets_per_step` members of a pool
instead of fresh random networks. A member is a feature network of
`config.model` plus a dense classifier; after the outer update, the members
used take `pool_steps` steps of `pool_optimizer` at `pool_learning_rate` on
the cross-entropy of `pool_data`: the distilled set with its current (soft)
labels (FRePo, RCIG), or the step's real minibatch, sharded over the devices
(IDM). A member is re-initialized once it has taken
`pool_max_updates` of them. Initial ages are staggered (member i starts at
i * pool_max_updates // pool_size), so re-initializations spread out.

The pool is part of the outer state: every step is a function of the state
alone, the same on every device, so resume and any number of devices give
the same run. Members enter the hypergradient as constants.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from distillation import errors
from distillation import features
from distillation import parallel

OPTIMIZERS = ('adam', 'sgd')
DATA = ('distilled', 'real')


def enabled(model_config: ml_collections.ConfigDict | None) -> bool:
  """Whether the config asks for a pool (fields absent: no)."""
  if model_config is None:
    return False
  for field in ('pool_size', 'pool_max_updates'):
    if model_config.get(field, 0) < 0:
      raise errors.UserError(
          f'config.model.{field}={model_config[field]} must be at least 0.')
  return (model_config.get('pool_size', 0) > 0 and
          model_config.get('pool_max_updates', 0) > 0)


class Pool:
  """Functions of the pool's state, a dict of arrays stacked per member:
  'features' and 'head' (the members' parameters), 'opt_state' and 'age'
  (optimizer steps taken since the member's initialization)."""

  def __init__(self, model_config: ml_collections.ConfigDict,
               feature_map: features.FeatureMap, num_classes: int,
               random_head: bool = False):
    self.size = model_config.pool_size
    self.steps = model_config.pool_steps
    self.max_updates = model_config.pool_max_updates
    self.nets_per_step = model_config.nets_per_step
    if self.nets_per_step > self.size:
      raise errors.UserError(
          f'config.model.nets_per_step={self.nets_per_step} exceeds config.'
          f'model.pool_size={self.size}: each step uses that many distinct '
          'members; lower it or grow the pool.')
    if self.steps < 1:
      raise errors.UserError(
          f'config.model.pool_steps={self.steps} must be at least 1.')
    lr = model_config.pool_learning_rate
    if not 0 < lr < float('inf'):
      raise errors.UserError(
          f'config.model.pool_learning_rate={lr} must be positive and '
          'finite.')
    name = model_config.pool_optimizer
    if name not in OPTIMIZERS:
      raise errors.UserError(
          f'config.model.pool_optimizer={name!r} is unknown; use one of '
          f'{", ".join(OPTIMIZERS)}.')
    self.optimizer = {'adam': optax.adam, 'sgd': optax.sgd}[name](lr)
    self.data = model_config.get('pool_data', 'distilled')
    if self.data not in DATA:
      raise errors.UserError(
          f'config.model.pool_data={self.data!r} is unknown; use one of '
          f'{", ".join(DATA)}.')
    self.feature_map = feature_map
    self.num_classes = num_classes
    self.random_head = random_head

  def _member(self, key: jax.Array) -> dict[str, Any]:
    """A new member and its optimizer state. The classifier starts at zero,
    so a new member's features are those of a fresh random network; with
    `random_head`, at random_head_kernel(key), for a linearized network
    whose logits must depend on its body from the start."""
    shape = (self.feature_map.num_features, self.num_classes)
    kernel = (random_head_kernel(key, shape) if self.random_head else
              jnp.zeros(shape))
    params = {'features': self.feature_map.init(key),
              'head': {'kernel': kernel,
                       'bias': jnp.zeros((self.num_classes,))}}
    return {**params, 'opt_state': self.optimizer.init(params)}

  def init(self, key: jax.Array) -> dict[str, Any]:
    """The pool at step 0: member i from fold_in(key, i), of staggered age."""
    members = [self._member(jax.random.fold_in(key, i))
               for i in range(self.size)]
    pool = jax.tree.map(lambda *x: jnp.stack(x), *members)
    pool['age'] = jnp.asarray([i * self.max_updates // self.size
                               for i in range(self.size)], jnp.int32)
    return pool

  def select(self, step: jax.Array) -> list[jax.Array]:
    """The members used at `step`: the next nets_per_step, in turn."""
    return [(step * self.nets_per_step + j) % self.size
            for j in range(self.nets_per_step)]

  def update(self, pool: dict[str, Any], step: jax.Array, key: jax.Array,
             images: jax.Array, targets: jax.Array,
             batch: dict[str, jax.Array]) -> dict[str, Any]:
    """The pool after the members used at `step` learn pool_data: the
    updated distilled set (images, targets), or this device's shard of the
    step's real `batch` (call under `parallel.pmap`)."""
    members = self.select(step)
    if self.data == 'real':
      return self.train(pool, members, batch['images'],
                        jax.nn.one_hot(batch['labels'], self.num_classes),
                        key, mask=batch['mask'])
    return self.train(pool, members, images, targets, key)

  def feature_nets(self, pool: dict[str, Any],
                   index: list[jax.Array]) -> list[Any]:
    """The feature networks of members `index`, as constants."""
    return [jax.lax.stop_gradient(jax.tree.map(lambda x, i=i: x[i],
                                               pool['features']))
            for i in index]

  def _loss(self, params: dict[str, Any], images: jax.Array,
            targets: jax.Array, weights: jax.Array | None = None
            ) -> jax.Array:
    """Mean cross-entropy over the rows; with `weights`, their weighted
    sum instead."""
    phi = self.feature_map(params['features'], images)
    logits = phi @ params['head']['kernel'] + params['head']['bias']
    losses = optax.softmax_cross_entropy(logits, targets)
    return jnp.mean(losses) if weights is None else jnp.sum(weights * losses)

  def _grads(self, params: dict[str, Any], images: jax.Array,
             targets: jax.Array, mask: jax.Array | None) -> dict[str, Any]:
    """The loss's gradient: on a set every device holds whole (`mask`
    None), or the masked mean over a batch sharded along parallel.AXIS."""
    if mask is None:
      return jax.grad(self._loss)(params, images, targets)
    grads = jax.grad(self._loss)(params, images, targets, mask)
    grads, count = jax.lax.psum((grads, jnp.sum(mask)), parallel.AXIS)
    return jax.tree.map(lambda g: g / count, grads)

  def train(self, pool: dict[str, Any], index: list[jax.Array],
            images: jax.Array, targets: jax.Array,
            key: jax.Array, mask: jax.Array | None = None) -> dict[str, Any]:
    """Members `index` after pool_steps steps on (images, targets); one
    that reaches max_updates is replaced by a member from
    fold_in(key, its index). With `mask`, the rows are this device's shard
    of a batch (0 marks padding) and the steps are on the whole batch: call
    under `parallel.pmap`."""
    images, targets = jax.lax.stop_gradient((images, targets))
    for i in index:
      member = jax.tree.map(lambda x, i=i: x[i], pool)
      params = {'features': member['features'], 'head': member['head']}
      opt_state = member['opt_state']
      # Unrolled: XLA's CPU backend runs a network's step several times
      # slower inside a loop.
      for _ in range(self.steps):
        grads = self._grads(params, images, targets, mask)
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
      age = member['age'] + self.steps
      fresh = self._member(jax.random.fold_in(key, i))
      renew = age >= self.max_updates
      member = jax.tree.map(
          lambda new, old: jnp.where(renew, new, old),
          {**fresh, 'age': jnp.zeros_like(age)},
          {**params, 'opt_state': opt_state, 'age': age})
      pool = jax.tree.map(lambda x, m, i=i: x.at[i].set(m), pool, member)
    return pool


def random_head_kernel(key: jax.Array, shape: tuple[int, int]) -> jax.Array:
  """A dense head of standard normal entries, drawn from fold_in(key, 1):
  on features normalized by sqrt(num_features) (`features.FeatureMap`), its
  logits are of order one whatever the width."""
  return jax.random.normal(jax.random.fold_in(key, 1), shape)
