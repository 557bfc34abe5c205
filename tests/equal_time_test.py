"""Tests of benchmarks/equal_time.py's reading of train.py's wall time."""

from absl.testing import absltest

from tests import scripts

equal_time = scripts.load_benchmark('equal_time')


class EqualTimeTest(absltest.TestCase):

  def test_seconds_are_linear_between_the_logged_steps(self):
    # Logged every few seconds, from after compilation: a step between two
    # records is neither of them, nor a share of the last.
    times = {51: 24.0, 223: 34.0, 600: 58.0}
    self.assertEqual(equal_time.seconds_at(times, 223), 34.0)
    self.assertAlmostEqual(equal_time.seconds_at(times, 100),
                           24.0 + 10.0 * 49 / 172)
    self.assertEqual(equal_time.seconds_at(times, 10), 24.0)
    self.assertEqual(equal_time.seconds_at(times, 700), 58.0)


if __name__ == '__main__':
  absltest.main()
