"""Tests of the image grid."""

import os

from absl.testing import absltest
import numpy as np
from PIL import Image

from distillation import visualize


class VisualizeTest(absltest.TestCase):

  def test_grid_layout_and_colours(self):
    images = np.zeros((6, 2, 3, 1), np.float32)  # 3 classes x 2 per class.
    images[0, 0, 0] = 2.0  # Class 0, first image: peak, drawn black.
    images[3, 1, 2] = -1.0  # Class 1, second image: negative peak, white.
    grid = visualize.image_grid(images, num_classes=3, border=1)
    self.assertEqual(grid.shape, (2 * 3 + 1, 3 * 4 + 1, 1))
    self.assertEqual(grid[1, 1, 0], 0.0)
    self.assertEqual(grid[1 + 3 + 1, 1 + 4 + 2, 0], 1.0)
    self.assertEqual(grid[2, 2, 0], 0.5)  # Zero pixels are mid-grey.
    self.assertEqual(grid[0, 0, 0], 1.0)  # Border.

  def test_png(self):
    images = np.random.default_rng(0).normal(size=(10, 4, 4, 3))
    grid = visualize.image_grid(images, num_classes=10, scale=2)
    path = os.path.join(self.create_tempdir().full_path, 'grid.png')
    visualize.save_png(grid, path)
    with Image.open(path) as png:
      self.assertEqual(png.size, (grid.shape[1], grid.shape[0]))
      self.assertEqual(png.mode, 'RGB')


if __name__ == '__main__':
  absltest.main()
