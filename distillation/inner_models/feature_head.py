"""A linear head on the features of random networks or of a pool's members
(RFAD, FRePo; docs/features.md).

The context of a step is its `nets_per_step` feature networks: fresh random
ones drawn from the step's key, or the members of the pool (`pool.py`) whose
turn it is. One head is fit per network, each on its features of the
(augmented) distilled images; the networks enter the hypergradient as
constants.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from distillation import errors
from distillation import features
from distillation import inner
from distillation import input_pipeline
from distillation import models
from distillation import pool as pool_lib
from distillation.inner_models import base

_KEY = jax.ShapeDtypeStruct((2,), jnp.uint32)


class FeatureHead(base.InnerModel):
  """Heads on `feature_map` features; `pool` is None for random networks."""

  name = 'feature_head'
  linear_head = True

  def __init__(self, config: ml_collections.ConfigDict,
               info: input_pipeline.DatasetInfo):
    self.feature_map = features.FeatureMap(config.model, info.image_shape)
    if config.inner.warm_start:
      raise errors.UserError(
          f'config.inner.warm_start=True does not fit config.model.features='
          f'{config.model.features!r}: each step draws new feature networks, '
          'so the last solution is no start; set it False.')
    self.pool = None
    if pool_lib.enabled(config.model):
      self.pool = pool_lib.Pool(config.model, self.feature_map,
                                info.num_classes)
    self.head = models.LinearClassifier(info.num_classes)
    self.solve = inner.make_solver(config.inner, self.head.apply)
    abstract = jax.eval_shape(self.head.init, _KEY, jax.ShapeDtypeStruct(
        (1, self.feature_map.num_features), jnp.float32))
    self.initial_params = inner.init_params(config.inner, abstract)

  def init_state(self, key):
    return {} if self.pool is None else self.pool.init(key)

  def draw(self, key: jax.Array) -> list[Any]:
    """`nets_per_step` random feature networks, a function of `key`."""
    return self.feature_map.draw(key)

  def context(self, state, step, key) -> list[Any]:
    if self.pool is None:
      return self.draw(key)
    return self.pool.feature_nets(state, self.pool.select(step))

  def eval_context(self, key) -> list[Any]:
    return self.draw(key)

  def linear_context(self, key) -> list[Any]:
    return self.draw(key)[:1]

  def features(self, context: list[Any], images: jax.Array) -> jax.Array:
    """Each net's features of `images`, stacked (nets, n, num_features).

    A loop, not a vmap over the nets: vmapped convolutions become grouped
    ones, which XLA's CPU backend runs several times slower.
    """
    return jnp.stack([self.feature_map(net, images) for net in context])

  def fit(self, context, hyper, init=None, transform=base.identity,
          probe=None) -> inner.InnerResult:
    del probe  # Newton's factorization is exact; jaxopt's CG is not counted.
    l2reg, images, targets = hyper
    # One solve per net, not a vmap: batched LAPACK calls on CPU can
    # deadlock a small thread pool (see linalg._unstacked).
    results = []
    for i, net in enumerate(context):
      start = self.initial_params if init is None else jax.tree.map(
          lambda p, i=i: p[i], init)
      start = jax.tree.map(lambda p: jnp.asarray(p, images.dtype), start)
      results.append(self.solve(start, l2reg,
                                self.feature_map(net, transform(images, i)),
                                targets))
    return jax.tree.map(lambda *x: jnp.stack(x), *results)

  def logits(self, context, params, images) -> jax.Array:
    # The real batch's features need no gradient: the networks are
    # constants.
    phi = jax.lax.stop_gradient(self.features(context, images))
    return jax.vmap(self.head.apply)(params, phi)

  def update(self, state, step, key, hyper, batch):
    if self.pool is None:
      return state
    _, images, targets = hyper
    return self.pool.update(state, step, key, images, targets, batch)
