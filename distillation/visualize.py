"""A grid picture of the distilled images: one column per class, named."""

from collections.abc import Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

_LABEL_HEIGHT = 12  # Pixels of the strip of class names above the grid.


def image_grid(images: np.ndarray, class_names: Sequence[str], *,
               scale: int = 1, border: int = 1) -> np.ndarray:
  """Tiles class-major `images` (k, H, W, C) into one (H', W', C) array.

  Column c holds the images of class c, under its name (cut to the column's
  width). Each image is divided by its largest absolute value; grayscale
  maps to gray_r as in the seed's figure (positive pixels dark), colour maps
  [-1, 1] to [0, 1]. Borders are white.
  """
  num_classes = len(class_names)
  k, h, w, c = images.shape
  rows = k // num_classes
  peak = np.abs(images).reshape(k, -1).max(axis=1).reshape(k, 1, 1, 1)
  unit = images / np.maximum(peak, 1e-12)
  pixels = 0.5 - 0.5 * unit if c == 1 else 0.5 + 0.5 * unit
  pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
  h, w = h * scale, w * scale
  grid = np.ones((rows * (h + border) + border,
                  num_classes * (w + border) + border, c), np.float32)
  for i in range(k):
    row, col = i % rows, i // rows
    top, left = border + row * (h + border), border + col * (w + border)
    grid[top:top + h, left:left + w] = pixels[i]
  return np.concatenate([_names(class_names, w, border, c), grid])


def _names(class_names, width, border, channels):
  """A white strip with each class name centred above its column."""
  strip = Image.new('L', (len(class_names) * (width + border) + border,
                          _LABEL_HEIGHT), 255)
  draw = ImageDraw.Draw(strip)
  font = ImageFont.load_default()
  for col, name in enumerate(class_names):
    while name and draw.textlength(name, font=font) > width:
      name = name[:-1]
    left = border + col * (width + border)
    draw.text((left + (width - draw.textlength(name, font=font)) / 2, 0),
              name, fill=0, font=font)
  pixels = np.asarray(strip, np.float32)[..., None] / 255
  return np.repeat(pixels, channels, axis=-1)


def save_png(grid: np.ndarray, path: str) -> None:
  """Writes a grid from `image_grid` as an 8-bit PNG."""
  pixels = np.round(np.clip(grid, 0, 1) * 255).astype(np.uint8)
  Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(
      path)
