"""Tests of the translation of a full disk into a one-line error."""

import errno
import os

from absl.testing import absltest

from distillation import errors

_FULL = os.strerror(errno.ENOSPC)


class DiskFullTest(absltest.TestCase):

  def test_recognizes_enospc_however_it_is_wrapped(self):
    self.assertTrue(errors.is_disk_full(OSError(errno.ENOSPC, _FULL)))
    # As TensorStore (through Orbax) reports it.
    self.assertTrue(errors.is_disk_full(ValueError(
        f'RESOURCE_EXHAUSTED: Failed to write 203 bytes: {_FULL} '
        "[os_error_code='28']")))
    try:
      try:
        raise OSError(errno.ENOSPC, _FULL)
      except OSError as e:
        raise RuntimeError('save failed') from e
    except RuntimeError as e:
      self.assertTrue(errors.is_disk_full(e))
    self.assertFalse(errors.is_disk_full(OSError(errno.EACCES, 'denied')))

  def test_context_turns_only_a_full_disk_into_a_user_error(self):
    with self.assertRaisesRegex(errors.UserError, '^free some space$'):
      with errors.disk_full_is_user_error('free some space'):
        raise OSError(errno.ENOSPC, _FULL)
    with self.assertRaises(KeyError):
      with errors.disk_full_is_user_error('free some space'):
        raise KeyError('other')


if __name__ == '__main__':
  absltest.main()
