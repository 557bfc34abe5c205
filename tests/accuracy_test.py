"""Tests of benchmarks/accuracy.py's table (not its runs)."""

from absl.testing import absltest

from tests import scripts

accuracy = scripts.load_benchmark('accuracy')


def _run(config, commit, test_accuracy):
  return {'config': config, 'commit': commit, 'train_seconds': 10.0,
          'eval_seconds': 5.0, 'net_table': [],
          'table': [{'method': 'distilled', 'test_accuracy': test_accuracy}]}


class TableTest(absltest.TestCase):

  def test_names_each_commit_once_in_first_seen_order(self):
    rows = [_run('configs/linear.py:digits,ipc=1', 'aaa', 0.9),
            _run('configs/linear.py:digits,ipc=10', 'bbb, aaa', 0.95),
            _run('configs/linear.py:mnist,ipc=1', 'ccc', 0.8)]
    header = accuracy.table(rows).splitlines()[0]
    self.assertIn('commit aaa, bbb, ccc.', header)

  def test_a_row_per_run_and_evaluator_with_its_accuracy(self):
    lines = accuracy.table([_run('configs/linear.py:digits,ipc=1', 'aaa',
                                 0.9)]).splitlines()
    self.assertLen(lines, 5)
    self.assertTrue(lines[4].startswith('| linear.py:digits,ipc=1 | linear |'))
    self.assertIn('| 90.0 |', lines[4])


if __name__ == '__main__':
  absltest.main()
