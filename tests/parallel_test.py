"""Tests of the data layout across devices."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from distillation import input_pipeline
from distillation import parallel


class ParallelTest(parameterized.TestCase):

  @parameterized.parameters((101, 8), (300, 2), (5, 1), (256, 1))
  def test_shards_are_near_equal_padded_and_keep_every_row(self, n, shards):
    rng = np.random.default_rng(n)
    split = input_pipeline.Split(rng.normal(size=(n, 3)).astype(np.float32),
                                 rng.integers(0, 10, n).astype(np.int32))
    out = parallel.shard_split(split, shards)
    rows = out['images'].shape[1]
    self.assertEqual(out['images'].shape, (shards, rows, 3))
    self.assertEqual(rows % parallel.ROW_MULTIPLE, 0)
    self.assertLess(rows - n / shards, parallel.ROW_MULTIPLE)
    real = out['mask'].astype(bool)
    counts = real.sum(1)
    self.assertLessEqual(counts.max() - counts.min(), 1)
    # Real rows come first in each shard, in order; padding is zeros.
    for shard_mask in real:
      self.assertTrue(np.all(shard_mask[:shard_mask.sum()]))
    np.testing.assert_array_equal(out['images'][real], split.images)
    np.testing.assert_array_equal(out['labels'][real], split.labels)
    self.assertEqual(np.abs(out['images'][~real]).sum(), 0)


if __name__ == '__main__':
  absltest.main()
