"""Differentiable Siamese Augmentation (DSA) of image batches, in jax.numpy.

A strategy names transforms joined by '_', as DSA writes it:
'color_crop_cutout_flip_scale_rotate'. Each call draws one transform of the
strategy for the whole batch (DSA's default single mode) and a parameter per
image (the siamese variant, one parameter for the whole batch, is what
distillation with augmentation needs: pass a batch of one key's draws).
Everything is a function of the key, so a call is deterministic given it,
and every transform is differentiable with respect to the images: shifts,
masks and flips are linear, scale and rotation sample an affine grid
bilinearly.

The parameters are DSA's published ones: brightness +-0.5, saturation
x[0, 2), contrast x[0.5, 1.5), translation up to 1/8 of the side, a cutout
square of half the side, flip with probability 1/2, scale x[1/1.2, 1.2] per
axis, rotation up to 15 degrees. Pixels moved in from outside are zeros.
"""

import jax
import jax.numpy as jnp
import numpy as np

from distillation import errors

TRANSFORMS = ('color', 'crop', 'cutout', 'flip', 'scale', 'rotate')
DSA_STRATEGY = '_'.join(TRANSFORMS)
BRIGHTNESS = 1.0
SATURATION = 2.0
CONTRAST = 0.5
CROP = 0.125
CUTOUT = 0.5
FLIP = 0.5
SCALE = 1.2
ROTATE_DEGREES = 15.0


def parse_strategy(strategy: str, channels: int,
                   field: str) -> tuple[str, ...]:
  """'crop_flip' -> ('crop', 'flip'); '' or 'none' -> (); 'auto' -> every
  transform, without flip for one-channel images (DC/DSA leave it out for
  digit-like images). `field` names the config field in the error message."""
  if strategy in ('', 'none'):
    return ()
  if strategy == 'auto':
    return tuple(t for t in TRANSFORMS if not (channels == 1 and t == 'flip'))
  names = tuple(strategy.split('_'))
  unknown = [n for n in names if n not in TRANSFORMS]
  if unknown:
    raise errors.UserError(
        f'{field}={strategy!r} has unknown transforms {unknown}; join names '
        f'of {", ".join(TRANSFORMS)} with "_", or use "auto" or "none".')
  return names


def augment(key: jax.Array, images: jax.Array,
            transforms: tuple[str, ...]) -> jax.Array:
  """One transform of `transforms` (drawn with `key`) applied to `images`
  (n, height, width, channels), with a parameter drawn per image."""
  if not transforms:
    return images
  choice_key, key = jax.random.split(key)
  branches = [_FUNCTIONS[name] for name in transforms]
  if len(branches) == 1:
    return branches[0](key, images)
  index = jax.random.randint(choice_key, (), 0, len(branches))
  return jax.lax.switch(index, branches, key, images)


def _uniform(key, n, low, high, dtype):
  return jax.random.uniform(key, (n, 1, 1, 1), dtype, low, high)


def color(key: jax.Array, x: jax.Array) -> jax.Array:
  """Brightness, saturation (a no-op on one channel), then contrast."""
  n, dtype = x.shape[0], x.dtype
  brightness, saturation, contrast = jax.random.split(key, 3)
  x = x + _uniform(brightness, n, -BRIGHTNESS / 2, BRIGHTNESS / 2, dtype)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  x = (x - mean) * _uniform(saturation, n, 0, SATURATION, dtype) + mean
  mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
  return (x - mean) * _uniform(contrast, n, CONTRAST,
                               1 + CONTRAST, dtype) + mean


def crop(key: jax.Array, x: jax.Array) -> jax.Array:
  """Shifts each image by whole pixels, up to CROP of its side each way."""
  n, h, w, _ = x.shape
  pad_h, pad_w = int(h * CROP + 0.5), int(w * CROP + 0.5)
  dy = jax.random.randint(jax.random.fold_in(key, 0), (n,), -pad_h, pad_h + 1)
  dx = jax.random.randint(jax.random.fold_in(key, 1), (n,), -pad_w, pad_w + 1)
  padded = jnp.pad(x, ((0, 0), (pad_h, pad_h), (pad_w, pad_w), (0, 0)))
  return jax.vmap(lambda image, y0, x0: jax.lax.dynamic_slice(
      image, (y0, x0, 0), x.shape[1:]))(padded, pad_h - dy, pad_w - dx)


def cutout(key: jax.Array, x: jax.Array) -> jax.Array:
  """Zeroes a square of CUTOUT times the side at a random place; the square
  may hang over the border."""
  n, h, w, _ = x.shape

  def inside(key, size):
    length = int(size * CUTOUT + 0.5)
    center = jax.random.randint(key, (n, 1), 0, size + 1 - length % 2)
    start = center - length // 2
    index = jnp.arange(size)[None]
    return (index >= start) & (index < start + length)

  rows = inside(jax.random.fold_in(key, 0), h)
  cols = inside(jax.random.fold_in(key, 1), w)
  keep = ~(rows[:, :, None] & cols[:, None, :])
  return x * keep[..., None].astype(x.dtype)


def flip(key: jax.Array, x: jax.Array) -> jax.Array:
  """Mirrors each image left-right with probability FLIP."""
  mirror = jax.random.uniform(key, (x.shape[0], 1, 1, 1)) < FLIP
  return jnp.where(mirror, x[:, :, ::-1], x)


def scale(key: jax.Array, x: jax.Array) -> jax.Array:
  """Stretches each axis by a factor in [1/SCALE, SCALE] about the center."""
  n, dtype = x.shape[0], x.dtype
  factors = jax.random.uniform(key, (n, 2), dtype, 1 / SCALE, SCALE)
  zeros = jnp.zeros((n,), dtype)
  theta = jnp.stack([jnp.stack([factors[:, 0], zeros, zeros], -1),
                     jnp.stack([zeros, factors[:, 1], zeros], -1)], 1)
  return affine(x, theta)


def rotate(key: jax.Array, x: jax.Array) -> jax.Array:
  """Rotates each image about its center by up to ROTATE_DEGREES."""
  n, dtype = x.shape[0], x.dtype
  limit = np.deg2rad(ROTATE_DEGREES)
  angle = jax.random.uniform(key, (n,), dtype, -limit, limit)
  cos, sin, zeros = jnp.cos(angle), jnp.sin(angle), jnp.zeros((n,), dtype)
  theta = jnp.stack([jnp.stack([cos, sin, zeros], -1),
                     jnp.stack([-sin, cos, zeros], -1)], 1)
  return affine(x, theta)


def affine(x: jax.Array, theta: jax.Array) -> jax.Array:
  """Samples x (n, h, w, c) bilinearly at theta (n, 2, 3) applied to each
  output pixel's (column, row) coordinates scaled to [-1, 1] (corner pixel
  centers at -1 and 1); the identity theta returns x."""
  _, h, w, _ = x.shape
  rows, cols = jnp.meshgrid(jnp.linspace(-1, 1, h, dtype=x.dtype),
                            jnp.linspace(-1, 1, w, dtype=x.dtype),
                            indexing='ij')
  grid = jnp.stack([cols, rows, jnp.ones_like(rows)], -1)  # (h, w, 3)
  source = jnp.einsum('hwk,njk->nhwj', grid, theta)
  return jax.vmap(_bilinear)(x, (source[..., 1] + 1) * (h - 1) / 2,
                             (source[..., 0] + 1) * (w - 1) / 2)


def _bilinear(image: jax.Array, y: jax.Array, x: jax.Array) -> jax.Array:
  """image (h, w, c) at fractional pixel positions y, x; zero outside."""
  h, w, _ = image.shape
  y0, x0 = jnp.floor(y), jnp.floor(x)
  out = 0.
  for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
    yi, xi = y0 + dy, x0 + dx
    weight = (1 - jnp.abs(y - yi)) * (1 - jnp.abs(x - xi))
    valid = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
    pixels = image[jnp.clip(yi, 0, h - 1).astype(jnp.int32),
                   jnp.clip(xi, 0, w - 1).astype(jnp.int32)]
    out = out + jnp.where(valid, weight, 0)[..., None] * pixels
  return out


_FUNCTIONS = {'color': color, 'crop': crop, 'cutout': cutout, 'flip': flip,
              'scale': scale, 'rotate': rotate}
