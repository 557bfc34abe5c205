"""Wall-clock timing shared by the benchmark scripts (no flags, so that any
script can import it)."""

import time

import jax
import numpy as np


def median_seconds(fn, *args, repeats: int) -> float:
  """Median wall time of fn(*args) over `repeats` calls, after one call that
  compiles (and is not timed)."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))
