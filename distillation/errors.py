"""The exception types that entry points turn into a one-line message."""

from collections.abc import Iterator
import contextlib
import errno
import os


class UserError(Exception):
  """Bad input a user can fix: a config value, a data path or a workdir.

  The message names the offending field and says how to fix it; `train.py`
  and `eval.py` print it on one line and exit with a non-zero status.
  """


class DivergedError(UserError):
  """The outer loss or hypergradient stopped being finite."""


STOPPED = 'stopped before training started; nothing to save'


class Stopped(BaseException):
  """A SIGTERM came before training started: there is nothing to save, so
  the run stops at once, and `train.py` exits with status 0.

  Not an Exception: the handlers of failed reads, which set a checkpoint
  aside as broken, must let it through.
  """


def is_disk_full(error: BaseException) -> bool:
  """Whether `error`, or an error it was raised from, is a full disk.

  Orbax (through TensorStore) and TensorFlow report ENOSPC as their own
  exception types, with the operating system's message in theirs.
  """
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    if os.strerror(errno.ENOSPC) in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


@contextlib.contextmanager
def disk_full_is_user_error(message: str) -> Iterator[None]:
  """Turns a full disk met inside the block into `UserError(message)`."""
  try:
    yield
  except UserError:
    raise
  except Exception as e:  # Writers re-raise ENOSPC under many types.
    if is_disk_full(e):
      raise UserError(message) from e
    raise
