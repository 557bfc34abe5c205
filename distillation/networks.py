"""The networks that evaluate a distilled set by training on it from scratch.

`ConvNet` is the field's ConvNet (DC, DSA, MTT, DD-Ranking): `depth` blocks of
[3x3 conv, instance norm, ReLU, 2x2 average pool], then a dense layer. `MLP`
is a stack of ReLU layers. Both take images (n, height, width, channels).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

NORMS = ('instance', 'none')
# The hidden layers' nonlinearity: ReLU, the evaluators', or softplus, a
# smooth one whose Hessian the linearized inner model (RCIG) can use.
ACTIVATIONS = ('relu', 'softplus')


def activate(x: jax.Array, activation: str, beta: float = 1.0) -> jax.Array:
  """ReLU, or softplus(beta x) / beta: softplus at beta 1, tending to ReLU
  as beta grows while staying smooth (RCIG distils at beta 60)."""
  if activation == 'softplus':
    return nn.softplus(beta * x) / beta
  return nn.relu(x)


class InstanceNorm(nn.Module):
  """Normalizes each sample's channels over height and width, then applies a
  learned per-channel scale and bias (GroupNorm with one group a channel)."""
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
    x = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
    scale = self.param('scale', nn.initializers.ones, (x.shape[-1],))
    bias = self.param('bias', nn.initializers.zeros, (x.shape[-1],))
    return x * scale + bias


class ConvNet(nn.Module):
  num_classes: int
  width: int = 128
  depth: int = 3
  norm: str = 'instance'  # instance | none

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = conv_blocks(x, self.width, self.depth, self.norm)
    return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))


def conv_blocks(x: jax.Array, width: int, depth: int, norm: str,
                activation: str = 'relu', beta: float = 1.0) -> jax.Array:
  """The ConvNet without its dense layer; called inside a compact method,
  its layers belong to (and are named in) the calling module."""
  for _ in range(depth):
    x = nn.Conv(width, (3, 3), padding='SAME')(x)
    if norm == 'instance':
      x = InstanceNorm()(x)
    x = activate(x, activation, beta)
    # A 1-pixel map is not pooled further (8x8 digits reach it at depth 3);
    # odd sizes round down, as PyTorch's AvgPool2d does.
    if min(x.shape[1:3]) >= 2:
      x = avg_pool(x)
  return x


def avg_pool(x: jax.Array) -> jax.Array:
  """2x2 average pooling, stride 2, an odd last row or column dropped.

  A reshape and a mean rather than nn.avg_pool (a window reduction), which
  runs slower on CPU.
  """
  n, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class MLP(nn.Module):
  num_classes: int
  width: int = 128
  depth: int = 2  # Hidden layers.

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = mlp_layers(x, self.width, self.depth)
    return nn.Dense(self.num_classes)(x)


def mlp_layers(x: jax.Array, width: int, depth: int,
               activation: str = 'relu', beta: float = 1.0) -> jax.Array:
  """The MLP's hidden layers (flattening first), as `conv_blocks`."""
  x = x.reshape((x.shape[0], -1))
  for _ in range(depth):
    x = activate(nn.Dense(width)(x), activation, beta)
  return x
