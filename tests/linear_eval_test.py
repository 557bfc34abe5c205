"""Tests of the linear evaluator's parts (evaluate() itself: eval_lib_test)."""

from absl.testing import absltest
import numpy as np

from distillation import input_pipeline
from distillation import linear_eval


class LinearEvalTest(absltest.TestCase):

  def test_class_means_of_one_image_per_class_are_the_means(self):
    split = input_pipeline.Split(
        np.array([[0., 2.], [2., 4.], [5., 5.], [7., 7.]], np.float32),
        np.array([0, 0, 1, 1], np.int32))
    means = linear_eval.class_means(split, 1)
    np.testing.assert_allclose(means.images, [[1., 3.], [6., 6.]])
    np.testing.assert_array_equal(means.labels, [0, 1])
    two = linear_eval.class_means(split, 2)
    np.testing.assert_allclose(np.sort(two.images, 0),
                               np.sort(split.images, 0))


if __name__ == '__main__':
  absltest.main()
