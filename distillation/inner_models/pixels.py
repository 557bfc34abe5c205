"""The seed's inner model: a linear classifier on the pixels."""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from distillation import inner
from distillation import input_pipeline
from distillation import models
from distillation.inner_models import base

_KEY = jax.ShapeDtypeStruct((2,), jnp.uint32)


class Pixels(base.InnerModel):
  """Multiclass logistic (or ridge) regression on the flat images; its
  solution may warm-start the next step's solve (config.inner.warm_start)."""

  name = 'pixels'
  linear_head = True

  def __init__(self, config: ml_collections.ConfigDict,
               info: input_pipeline.DatasetInfo):
    self.head = models.LinearClassifier(info.num_classes)
    self.solve = inner.make_solver(config.inner, self.head.apply)
    # Shapes only: concrete arguments would compile small programs.
    abstract = jax.eval_shape(self.head.init, _KEY, jax.ShapeDtypeStruct(
        (1, info.num_pixels), jnp.float32))
    self.initial_params = inner.init_params(config.inner, abstract)

  def context(self, state, step, key) -> None:
    del state, step, key
    return None

  def eval_context(self, key) -> None:
    del key
    return None

  def linear_context(self, key) -> None:
    del key
    return None

  def features(self, context, images: jax.Array) -> jax.Array:
    del context
    return images[None]

  def fit(self, context, hyper, init=None, transform=base.identity,
          probe=None) -> inner.InnerResult:
    del probe  # Newton's factorization is exact; jaxopt's CG is not counted.
    del context
    l2reg, images, targets = hyper
    init = self.initial_params if init is None else init
    init = jax.tree.map(lambda p: jnp.asarray(p, images.dtype), init)
    return self.solve(init, l2reg, transform(images, 0), targets)

  def logits(self, context, params: Any, images: jax.Array) -> jax.Array:
    del context
    return self.head.apply(params, images)[None]

  def next_params(self, previous, fitted):
    # Kept whether or not it warm-starts: a checkpoint holds the last fit.
    del previous
    return fitted
