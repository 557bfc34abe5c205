"""Tests of the workdir lock: one train.py per workdir, none after a crash."""

import os
import signal
import subprocess
import sys

from absl.testing import absltest

from configs import test as test_config
from distillation import checkpointing
from distillation import errors
from distillation import eval_lib
from distillation import train_lib
from distillation import workdirs
from tests import end_to_end_test

# Holds the lock of argv[1] until killed.
_HOLD = """
import sys
from distillation import workdirs
with workdirs.Lock(sys.argv[1]):
  print('locked', flush=True)
  sys.stdin.read()
"""


class LockTest(absltest.TestCase):

  def test_a_second_run_is_refused_and_a_killed_holder_frees_it(self):
    config = test_config.get_config()
    config.num_steps = 2
    workdir = self.create_tempdir().full_path
    train_lib.train_and_evaluate(config, workdir)
    holder = subprocess.Popen(
        [sys.executable, '-c', _HOLD, workdir], cwd=end_to_end_test.ROOT,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    self.addCleanup(holder.kill)
    self.assertEqual(holder.stdout.readline().strip(), 'locked')
    config.num_steps = 4
    with self.assertRaisesRegex(
        errors.UserError, f'--workdir={workdir} is in use by another train.py '
        rf'\(pid {holder.pid} on host .*\); wait for it to end, or pass '
        'another --workdir.'):
      train_lib.train_and_evaluate(config, workdir)
    self.assertEqual(sorted(os.listdir(checkpointing.checkpoint_dir(
        workdir))), ['2'])
    # eval.py reads without the lock.
    self.assertEqual(int(eval_lib.load_distilled(workdir)[1].step), 2)

    holder.send_signal(signal.SIGKILL)  # The kernel releases its lock.
    holder.wait()
    with workdirs.Lock(workdir):
      pass

  def test_the_lock_is_released_on_exit(self):
    workdir = self.create_tempdir().full_path
    with workdirs.Lock(workdir):
      with self.assertRaisesRegex(errors.UserError, f'pid {os.getpid()}'):
        with workdirs.Lock(workdir):
          pass
    with workdirs.Lock(workdir):
      pass


if __name__ == '__main__':
  absltest.main()
