"""Data parallelism: device layout of the data and the one `pmap` call.

The training split is padded, cut into one contiguous shard per local device
and kept resident on device; a 0/1 `mask` marks the padding. Step functions
take an unreplicated state and a sharded batch, and reduce over the axis
`AXIS` with unconditional collectives, so one device and many devices (on one
or several processes) run the same code.
"""

from collections.abc import Callable
import math

import jax
import numpy as np

from distillation import input_pipeline

AXIS = 'batch'


def _local_mesh() -> jax.sharding.Mesh:
  return jax.sharding.Mesh(np.asarray(jax.local_devices()), (AXIS,))


# Rows per shard are padded to a multiple of this: XLA's GPU matrix products
# tile the row axis and would otherwise copy the whole shard into a padded
# buffer in every step.
ROW_MULTIPLE = 128


def shard_split(split: input_pipeline.Split,
                num_shards: int) -> dict[str, np.ndarray]:
  """Cuts `split` into `num_shards` near-equal parts, each padded at its end
  to the same number of rows: (num_shards, rows_per_shard, ...)."""
  rows = ROW_MULTIPLE * math.ceil(len(split) / num_shards / ROW_MULTIPLE)
  bounds = np.linspace(0, len(split), num_shards + 1).round().astype(int)

  def cut(x):
    out = np.zeros((num_shards, rows) + x.shape[1:], x.dtype)
    for shard, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
      out[shard, :stop - start] = x[start:stop]
    return out

  return {'images': cut(split.images), 'labels': cut(split.labels),
          'mask': cut(np.ones(len(split), np.float32))}


def put_sharded(split: input_pipeline.Split) -> dict[str, jax.Array]:
  """Puts this process's shards of `split` on its devices, where they stay.

  `split` is cut into one shard per device of the whole run; with several
  processes, each keeps only the shards of its own devices. The shards are
  the same however the devices are spread over processes.
  """
  local = jax.local_device_count()
  first = jax.process_index() * local
  shards = jax.tree.map(lambda x: x[first:first + local],
                        shard_split(split, jax.device_count()))
  sharding = jax.sharding.NamedSharding(_local_mesh(),
                                        jax.sharding.PartitionSpec(AXIS))
  return jax.device_put(shards, sharding)


def replicate(tree):
  """Places `tree` on all local devices, as `pmap` returns an unreplicated
  output; a state placed otherwise makes the second step compile again."""
  return jax.device_put(tree, jax.sharding.NamedSharding(
      _local_mesh(), jax.sharding.PartitionSpec()))


def initialize_multihost(coordinator_address: str | None = None,
                         num_processes: int | None = None,
                         process_id: int | None = None) -> None:
  """Joins a multi-process run; must come before any other JAX call.

  Arguments left None are detected by JAX where it can (TPU VMs, SLURM,
  ...). Collectives then span the devices of all processes. On CPU, they
  go through gloo.
  """
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


def pmap(fn: Callable) -> Callable:
  """pmaps `fn(state, batch)`: state unreplicated, batch sharded.

  Every output must be identical on all devices (reduced over `AXIS`), so
  it comes back unreplicated. The state is small (the distilled set and its
  optimizer state), so it is not donated.
  """
  return jax.pmap(fn, axis_name=AXIS, in_axes=(None, 0), out_axes=None)
