"""The one exception type that entry points turn into a one-line message."""


class UserError(Exception):
  """Bad input a user can fix: a config value, a data path or a workdir.

  The message names the offending field and says how to fix it; `train.py`
  and `eval.py` print it on one line and exit with a non-zero status.
  """


class DivergedError(UserError):
  """The outer loss or hypergradient stopped being finite."""
