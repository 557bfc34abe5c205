"""Feature maps of the inner model: the linear head is fit on phi(images).

`config.model.features`:
* pixels: phi is the identity, the seed's model (no FeatureMap at all);
* conv: the evaluators' ConvNet without its dense layer (`depth` blocks of
  [3x3 conv of `width` channels, instance norm or none, ReLU, 2x2 average
  pool]), flattened;
* mlp: `depth` hidden ReLU layers of `width`.
`config.model.activation` may replace ReLU by softplus (the linearized
inner model's choice, `inner_models/linearized.py`), softplus(beta x) / beta
with beta `config.model.softplus_beta`.

The networks are random (RFAD): each outer step draws
`config.model.nets_per_step` of them with Flax's default initialization, and
nothing about them is kept; or they are members of a pool that learns
(`pool.py`). Features are divided by sqrt(num_features), so
the Gram matrix phi phi^T has entries of order one whatever the width: the
inner l2reg then means the same for every feature map.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from distillation import errors
from distillation import networks

FEATURES = ('pixels', 'conv', 'mlp')


class ConvFeatures(nn.Module):
  width: int
  depth: int
  norm: str
  activation: str = 'relu'
  beta: float = 1.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = networks.conv_blocks(x, self.width, self.depth, self.norm,
                             self.activation, self.beta)
    return x.reshape((x.shape[0], -1))


class MLPFeatures(nn.Module):
  width: int
  depth: int
  activation: str = 'relu'
  beta: float = 1.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return networks.mlp_layers(x, self.width, self.depth, self.activation,
                               self.beta)


class FeatureMap:
  """A random network's features of flat images (n, num_pixels)."""

  def __init__(self, model_config: ml_collections.ConfigDict,
               image_shape: Sequence[int]):
    self.image_shape = tuple(image_shape)
    for field in ('width', 'depth', 'nets_per_step'):
      if model_config[field] < 1:
        raise errors.UserError(
            f'config.model.{field}={model_config[field]} must be at least 1.')
    activation = model_config.get('activation', 'relu')
    if activation not in networks.ACTIVATIONS:
      raise errors.UserError(
          f'config.model.activation={activation!r} is unknown; use one of '
          f'{", ".join(networks.ACTIVATIONS)}.')
    # Older checkpoints' configs have no softplus_beta: softplus itself.
    beta = model_config.get('softplus_beta', 1.0)
    if not 0 < beta < float('inf'):
      raise errors.UserError(
          f'config.model.softplus_beta={beta} must be positive and finite.')
    if model_config.features == 'conv':
      if model_config.norm not in networks.NORMS:
        raise errors.UserError(
            f'config.model.norm={model_config.norm!r} is unknown; use one of '
            f'{", ".join(networks.NORMS)}.')
      self.module = ConvFeatures(model_config.width, model_config.depth,
                                 model_config.norm, activation, beta)
    else:
      self.module = MLPFeatures(model_config.width, model_config.depth,
                                activation, beta)
    self.nets_per_step = model_config.nets_per_step
    num_pixels = 1
    for size in self.image_shape:
      num_pixels *= size
    self.num_features = jax.eval_shape(
        lambda key, x: self(self.init(key), x),
        jax.ShapeDtypeStruct((2,), jnp.uint32),
        jax.ShapeDtypeStruct((1, num_pixels), jnp.float32)).shape[1]

  def init(self, key: jax.Array) -> Any:
    """One random network's parameters."""
    return self.module.init(key, jnp.zeros((1,) + self.image_shape))

  def draw(self, key: jax.Array) -> list[Any]:
    """The step's `nets_per_step` networks, a function of `key` only."""
    return [self.init(jax.random.fold_in(key, i))
            for i in range(self.nets_per_step)]

  def __call__(self, params: Any, images: jax.Array) -> jax.Array:
    """Features (n, num_features) of flat images (n, num_pixels)."""
    x = images.reshape((images.shape[0],) + self.image_shape)
    phi = self.module.apply(params, x)
    return phi / jnp.sqrt(jnp.asarray(phi.shape[1], phi.dtype))


def make(model_config: ml_collections.ConfigDict | None,
         image_shape: Sequence[int]) -> FeatureMap | None:
  """The configured feature map; None for pixels (or no model section, as
  in checkpoints written before there was one)."""
  name = 'pixels' if model_config is None else model_config.features
  if name not in FEATURES:
    raise errors.UserError(
        f'config.model.features={name!r} is unknown; use one of '
        f'{", ".join(FEATURES)}.')
  return None if name == 'pixels' else FeatureMap(model_config, image_shape)
