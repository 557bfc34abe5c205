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
    grid = visualize.image_grid(images, ('a', 'b', 'c'), border=1)
    top = visualize._LABEL_HEIGHT  # The names' strip.
    self.assertEqual(grid.shape, (top + 2 * 3 + 1, 3 * 4 + 1, 1))
    self.assertEqual(grid[top + 1, 1, 0], 0.0)
    self.assertEqual(grid[top + 1 + 3 + 1, 1 + 4 + 2, 0], 1.0)
    self.assertEqual(grid[top + 2, 2, 0], 0.5)  # Zero pixels are mid-grey.
    self.assertEqual(grid[top, 0, 0], 1.0)  # Border.

  def test_class_names_are_drawn_above_their_columns(self):
    images = np.zeros((2, 8, 20, 1), np.float32)
    grid = visualize.image_grid(images, ('', 'Bag'), border=1)
    strip = grid[:visualize._LABEL_HEIGHT]
    self.assertTrue(np.all(strip[:, :22] == 1.0))  # No name: white.
    self.assertLess(strip[:, 22:].min(), 0.5)  # Dark text over column 1.

  def test_png(self):
    images = np.random.default_rng(0).normal(size=(10, 4, 4, 3))
    grid = visualize.image_grid(images, [str(i) for i in range(10)],
                                scale=2)
    path = os.path.join(self.create_tempdir().full_path, 'grid.png')
    visualize.save_png(grid, path)
    with Image.open(path) as png:
      self.assertEqual(png.size, (grid.shape[1], grid.shape[0]))
      self.assertEqual(png.mode, 'RGB')


if __name__ == '__main__':
  absltest.main()
