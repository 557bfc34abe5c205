"""The workdir of a training run: created with a clear error, and locked.

Two `train.py` runs writing one workdir would interleave their checkpoints,
and one run's results would be lost without a word. Process 0 of a run holds
an exclusive `flock` on `<workdir>/train.lock` while it trains. The kernel
releases it when the process ends in any way (a SIGKILL or a crash
included), so a lock is never stale; the file itself stays and names the
last holder. `eval.py` only reads, and takes no lock.

`write_json` writes a result file so that a crash never leaves half of it.
"""

import datetime
import errno
import fcntl
import json
import os
import socket
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from distillation import errors

LOCK_NAME = 'train.lock'


def check(workdir: str) -> None:
  """Fails if `workdir` cannot be a directory; writes nothing."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise errors.UserError(
        f'--workdir={workdir} is a file; pass a directory (new or from an '
        'earlier run).')


def create(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise errors.UserError(
        f'--workdir={workdir} cannot be created ({e.strerror}); pass a '
        'directory on a writable file system.') from e


def write_json(data: dict[str, Any], path: str) -> None:
  """Writes via a temporary file, so a crash never leaves half a file."""
  with open(path + '.tmp', 'w') as f:
    json.dump(data, f, indent=2)
  os.replace(path + '.tmp', path)


class Lock:
  """Holds `<workdir>/train.lock` for the duration of a `with` block.

  Only process 0 locks; with several processes, all of them learn whether it
  could, so none waits for the others in a collective after it failed.
  """

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_NAME)
    self._file = None

  def __enter__(self) -> 'Lock':
    error = None
    if jax.process_index() == 0:
      try:
        self._acquire()
      except errors.UserError as e:
        error = e
    if jax.process_count() > 1:
      locked = multihost_utils.broadcast_one_to_all(np.int32(error is None))
      if not locked and error is None:
        error = errors.UserError(
            f'--workdir={self.workdir}: process 0 could not lock it; its log '
            'says why.')
    if error is not None:
      raise error
    return self

  def _acquire(self) -> None:
    try:
      # Not truncated on open: the text names the holder until we hold it.
      self._file = open(self.path, 'a+', encoding='utf-8')
    except OSError as e:
      raise errors.UserError(
          f'--workdir={self.workdir} is not writable ({e.strerror}); pass a '
          'directory on a writable file system.') from e
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
        # Some network file systems have no locks; run, but say so.
        logging.warning('Cannot lock %s (%s); make sure no other train.py '
                        'writes to this workdir.', self.path, e.strerror)
        return
      self._file.seek(0)
      holder = self._file.read().strip() or 'a process that is starting'
      self._file.close()
      self._file = None
      raise errors.UserError(
          f'--workdir={self.workdir} is in use by another train.py ({holder});'
          ' wait for it to end, or pass another --workdir.') from e
    self._file.truncate(0)
    self._file.write(
        f'pid {os.getpid()} on host {socket.gethostname()}, since '
        f'{datetime.datetime.now().isoformat(timespec="seconds")}\n')
    self._file.flush()

  def __exit__(self, *exc_info) -> None:
    if self._file is not None:
      self._file.close()  # Closing the descriptor releases the lock.
      self._file = None
