"""Device mesh, shardings, and host-local batches turned into global arrays.

One data-parallel mesh axis spans every device of every process. Parameters and optimizer state are replicated;
batches are sharded on their leading axis. Inside one jit-compiled step, reductions over the batch (the loss,
BatchNorm statistics) are therefore over the global batch: exact SyncBN with no extra code.
"""
from __future__ import annotations

import os
from typing import Sequence

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ctxseg_jax.config import ConfigError

DATA_AXIS = 'data'


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh named 'data' over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def per_process_batch_size(global_batch_size: int, mesh: Mesh, key: str) -> int:
  """The number of examples each process loads; raises ConfigError naming `key` when it does not divide."""
  num_devices = mesh.devices.size
  if global_batch_size % num_devices:
    raise ConfigError(f'config.{key}={global_batch_size} must be a multiple of the number of devices '
                     f'({num_devices}: {jax.process_count()} process(es) x {jax.local_device_count()} local); '
                     f'try --config.{key}={max(num_devices, global_batch_size // num_devices * num_devices)}')
  return global_batch_size // jax.process_count()


def to_global(host_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's slice of the batch into arrays sharded over the whole mesh."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in host_batch.items()}


def maybe_initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None) -> None:
  """Calls jax.distributed.initialize() when this run spans several processes.

  Explicit arguments win; otherwise multi-process launches are recognised from the environment of a Cloud TPU
  VM slice (several TPU_WORKER_HOSTNAMES), SLURM (SLURM_NTASKS > 1), Open MPI, or JAX's own variables.
  """
  if coordinator_address or (num_processes or 1) > 1:
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  elif _launched_multiprocess():
    jax.distributed.initialize()
  else:
    return
  logging.info('Distributed: process %d of %d, %d local / %d global devices', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def _launched_multiprocess() -> bool:
  env = os.environ
  if env.get('JAX_COORDINATOR_ADDRESS'):
    return True
  if ',' in env.get('TPU_WORKER_HOSTNAMES', ''):
    return True
  for key in ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
    if int(env.get(key, '1') or 1) > 1:
      return True
  return False
